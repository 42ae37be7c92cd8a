"""The output objective's probes (sensitivity.py) run from the cut before the nodes they
change, not from the graph inputs.

A probe changes a site's consumer weights (and a squeeze-excite site's squeeze), so every
node before the first one that reads them computes what the dense model does. Each probe is
run as the piece of the graph from there on (segments.piece: the nodes from that position in
topological order, and the Constant nodes that make those weights where they come earlier,
as TensorFlow and Paddle exports put them), fed the dense values of the tensors that cross
the cut (a skip branch's too) and the graph inputs. On the two detectors of the bench
a site's consumer has 45% (YOLOv8n) and 48% (ddddocr's) of the conv FLOPs at or after it
on average (docs/channels.md "Conversion time").

The crossing tensors come from runs of the dense model pruned to them, for several sites at
once: the sites in cut order, packed into groups whose tensors fit `budget` bytes over all
the probe samples (capture.plan_groups), one dense pass a group. A site whose cut would
leave a graph output before it (an early output) runs whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx

from ..calib.tokens import on_tokens
from ..capture import Runtime, activation_bytes, capture_session, plan_groups, session
from ..fidelity import scored_outputs
from ..segments import piece, reads


class Cuts:
    """The dense model `proto`, the probe samples `feeds`, and the dense values of the
    tensors crossing the cuts of the current group (fetch)."""

    def __init__(self, proto: onnx.ModelProto, feeds: list[dict], runtime: Any = None,
                 token_mask: str | None = None) -> None:
        self.proto, self.feeds, self.token_mask = proto, feeds, token_mask
        self.runtime = runtime or Runtime()
        self.nodes = list(proto.graph.node)
        self.outputs = self.scored(proto)
        self.tensors = all(o.type.HasField("tensor_type") for o in proto.graph.output)
        self.made = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.values: dict[str, list[np.ndarray]] = {}

    # the graph outputs the probes score: all but a decoder's KV cache (its layer's own keys
    # and values, not what the logits see)
    scored = staticmethod(scored_outputs)

    def position(self, weights: Iterable[str]) -> int | None:
        """The first node that reads one of `weights`; None where the piece from there
        would not make every graph output (or no node reads them)."""
        want = set(weights)
        if not self.tensors:  # a sequence output (skl2onnx's ZipMap): the whole model
            return None
        at = [i for i, n in enumerate(self.nodes) if want & reads(n)]
        if not at:
            return None
        p = min(at)
        return p if all(self.made.get(o, -1) >= p for o in self.outputs) else None

    def crossing(self, p: int, weights: Iterable[str] = ()) -> list[str]:
        """The tensors nodes before `p` make that nodes from `p` on read (`weights`, made
        in the piece by their Constant nodes, aside)."""
        read = set().union(*(reads(n) for n in self.nodes[p:])) - set(weights)
        return sorted(x for x in read if self.made.get(x, p) < p)

    def groups(self, positions: list[int], budget: int) -> list[list[int]]:
        """The positions (each once, in order) packed so that a group's crossing tensors
        fit `budget` bytes over all the samples."""
        order = sorted(set(positions))
        units = [self.crossing(p) for p in order]
        names = sorted({n for u in units for n in u})
        sizes = activation_bytes(self.proto, names, self.feeds[0]) if names else {}
        sizes = {k: None if v is None else v * len(self.feeds) for k, v in sizes.items()}
        packed = plan_groups(units, sizes, budget) if units else []
        out, at = [], 0
        for g in packed:
            members = set(g)
            group = []
            while at < len(order) and set(units[at]) <= members:
                group.append(order[at])
                at += 1
            out.append(group)
        if at < len(order):
            out.append(order[at:])
        return [g for g in out if g]

    def fetch(self, positions: list[int]) -> None:
        """The dense values of the tensors crossing these cuts (the last group's dropped)."""
        names = sorted({n for p in positions for n in self.crossing(p)})
        self.values = {}
        if not names:
            return
        s = capture_session(self.proto, names, self.runtime, prune=True)
        for f in self.feeds:
            ins = {i.name for i in s.get_inputs()}
            for n, y in zip(names, s.run(names, {k: v for k, v in f.items() if k in ins})):
                self.values.setdefault(n, []).append(y)

    def run(self, model: onnx.ModelProto, p: int, weights: Iterable[str] = ()
            ) -> list[np.ndarray]:
        """The scored outputs of `model` (the dense one with `weights` changed, read from
        node `p` on) on every feed, flattened in order (float64), as sensitivity._run gives
        them: the piece from `p` on, fed the crossing tensors' dense values."""
        want = set(weights)
        nodes = list(model.graph.node)
        early = [n for n in nodes[:p] if want & set(n.output)]  # their Constant nodes
        cross = self.crossing(p, want if early else ())
        first = {**self.feeds[0], **{n: self.values[n][0] for n in cross}}
        nodes = early + nodes[p:]
        need = set().union(*(reads(n) for n in nodes))
        example = {k: v for k, v in first.items() if k in need}
        s = session(piece(model, nodes, example, self.outputs), self.runtime, optimize=True)
        out = []
        for i, f in enumerate(self.feeds):
            feed = {k: v for k, v in f.items() if k in example}
            feed.update({n: self.values[n][i] for n in cross})
            out += [np.asarray(on_tokens(y, f, self.token_mask), dtype=np.float64).ravel()
                    for y in s.run(self.outputs, feed) if isinstance(y, np.ndarray)]
        return out
