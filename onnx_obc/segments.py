"""Run a model piece by piece over a set of batches, each piece one onnxruntime session that
starts where the previous one stopped, with chosen tensors open to change between pieces.

What a sequential measurement needs (correct.py: each layer's output measured with every
upstream correction in place) without running the whole prefix again for every layer: the
tensors that cross each cut are kept, for every batch, and fed to the next piece. Memory is
the set of tensors alive across a cut times the number of samples (one copy of those that
read no graph input: dequantized weights, shapes); over `budget` bytes the run stops with
`TooLarge` before any piece runs past its first batch (the caller falls back to
whole-prefix passes).

A piece whose kept input is ARENA_MAX bytes or more per run runs without onnxruntime's CPU
memory arena: its outputs outlive the run (kept for the next piece), so with the arena each
took a fresh arena chunk (grown by powers of two, held while any output in it lives) and a
page fault per 4 KiB of it. On EfficientNet-Lite0's W8A8 correction (49 pieces, 256 samples
in runs of 8, one thread) the arena-less pieces took the system time from 8.0 to 3.8 s
(user 9.0 -> 8.9 s) and the peak RSS from 2.30 to 1.86 GB, the same outputs. Small runs keep
it: without it every intermediate is a fresh allocation, and ddddocr's 96 one-sample runs
per piece (tensors under 1 MiB) took 1.2 s of system time instead of 0.15.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .capture import ARENA_MAX, ancestors, session, subgraph_reads


class TooLarge(RuntimeError):
    """The tensors kept across a cut would exceed the memory budget."""


def _reads(node: onnx.NodeProto) -> set[str]:
    return {x for x in node.input if x} | subgraph_reads(node)


def _piece(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray],
           outputs: list[str]) -> onnx.ModelProto:
    """A model of `nodes` reading `inputs` (name -> an example value, for the type) and the
    initializers they use, giving `outputs`."""
    need = set().union(*(_reads(n) for n in nodes))
    inits = [t for t in model.graph.initializer if t.name in need and t.name not in inputs]
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), None)
           for k, v in inputs.items()]
    outs = [helper.make_empty_tensor_value_info(o) for o in outputs]
    graph = helper.make_graph(nodes, "piece", ins, outs, initializer=inits)
    piece = helper.make_model(graph, opset_imports=list(model.opset_import),
                              ir_version=model.ir_version)
    piece.functions.extend(model.functions)
    return piece


def run_in_segments(model: onnx.ModelProto, stops: list[str],
                    batches: Iterable[tuple[int, dict[str, np.ndarray]]], providers: Any,
                    visit: Callable[[str, list[np.ndarray]], list[np.ndarray]],
                    budget: int) -> None:
    """Run `model` over `batches` up to each tensor of `stops` in topological order; at each,
    `visit(name, its value per batch)` returns the values every later node reads instead.
    Only the nodes the stops depend on run (graph.node must be topological)."""
    nodes = list(model.graph.node)
    made = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    missing = [s for s in stops if s not in made]
    if missing:
        raise ValueError(f"no node makes {missing}")
    keep = ancestors(nodes, stops)
    at = {i: k for k, i in enumerate(keep)}  # node index -> position among the kept
    last: dict[str, int] = {}  # tensor -> last kept position reading it
    for k, i in enumerate(keep):
        for x in _reads(nodes[i]):
            last[x] = k
    for s in stops:
        last[s] = max(last.get(s, -1), at[made[s]])
    inits = {t.name for t in model.graph.initializer}
    cache: dict[str, list[np.ndarray]] = {}
    for _, feed in batches:
        for k, v in feed.items():
            cache.setdefault(k, []).append(v)
    nbatch = len(next(iter(cache.values()), []))
    varies = set(cache) - inits  # tensors that differ between batches (not weights, shapes)
    for i in keep:
        if _reads(nodes[i]) & varies:
            varies.update(o for o in nodes[i].output if o)
    ends = sorted({at[made[s]] for s in stops})
    start = 0
    for end in ends:
        part = [nodes[i] for i in keep[start:end + 1]]
        made_here = {o for n in part for o in n.output if o}
        reads = set().union(*(_reads(n) for n in part)) - made_here
        ins = sorted(x for x in reads if x in cache and x not in inits)
        outs = [o for o in sorted(made_here) if last.get(o, -1) > end or o in stops]
        kept = sum({id(v): v.nbytes for vs in cache.values() for v in vs}.values())
        wide = max((cache[k][0].nbytes for k in ins if k in varies), default=0) >= ARENA_MAX
        sess = session(_piece(model, part, {k: cache[k][0] for k in ins}, outs), providers,
                       arena=not wide)  # see the module's docstring
        got = dict(zip(outs, ([v] for v in sess.run(outs, {k: cache[k][0] for k in ins}))))
        if (size := kept + sum(v[0].nbytes * (nbatch if o in varies else 1)
                               for o, v in got.items())) > budget:  # from the first batch
            raise TooLarge(f"{size / 2**20:.0f} MiB of tensors kept across a cut "
                           f"(budget {budget / 2**20:.0f} MiB)")
        dyn = [o for o in outs if o in varies]
        for b in range(1, nbatch):
            for o, v in zip(dyn, sess.run(dyn, {k: cache[k][b] for k in ins}) if dyn else []):
                got[o].append(v)
        for o in outs:  # one copy of what every batch shares (dequantized weights, shapes)
            got[o] = got[o] if o in varies else got[o] * nbatch
        cache.update(got)
        for s in (s for s in stops if at[made[s]] == end):
            cache[s] = visit(s, cache[s])
        for x in [x for x in cache if last.get(x, -1) <= end]:
            del cache[x]
        start = end + 1
