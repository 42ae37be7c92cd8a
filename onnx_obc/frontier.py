"""Sequential capture without the prefix again for every group: each model's tensors at the
last cut are kept per batch, and the next group's capture runs only the nodes between.

A sequential run (schedule.py) captures, for each layer group, the partly compressed model
and the dense one up to the group's inputs. Run from the graph inputs each time, that is
one forward pass per group and model: on ppocr_cls (54 layers) per-layer groups took the
capture from 2.8 to 22.3 s of a 31 s run. Here a `Frontier` remembers, for each model (a
key: "model", "dense"), which nodes have run and, for every batch, the tensors they made
that a node not yet run reads (a residual branch's skip input, the graph inputs' later
readers aside: those come from the batch again). The next group runs a piece model of the
nodes its inputs need that have not run, fed those tensors (segments.piece), and the kept
set moves to the new cut. The nodes between are the same as in the full prefix, with the
weights the model has now: the earlier groups' compressed weights apply from the piece
after their solve on, as they would in a full pass (the layers' own nodes run after their
inputs' cut), and the tensors are the same ones bit for bit (the same kernels on the same
inputs; `test_the_frontier_capture_equals_the_full_prefix`).

Kept per batch: a CNN's cut holds one or two activations. Where the new cut's tensors of all
batches (with the old cut's, alive while they are made) would pass `budget` bytes, those
beyond it go to disk (a spill folder in TMPDIR, as segments.py's; each file removed once no
cut holds it, the folder when the run ends): PP-PicoDet's 64 pages at 800 x 608 keep
0.95 GB at their stride-4 cuts, over the default half of 2 GB, so without the disk each of
its 102 groups ran again from its first cut (the capture 1,711 of a 1,798 s W4 run). Where
the disk has no room either (or TMPDIR is in memory), the cut does not move (`over`): the
next group runs from the last cut that fitted (the graph inputs if none did), which is
still right, since no node run before it reads a weight solved after it (the groups are in
topological order)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .capture import Runtime, session
from .segments import OnDisk, SpillFolder, piece, reads


@dataclass
class _State:
    ran: set[str]  # outputs of the nodes run so far
    batch: int  # the samples per batch the values were made with
    values: list[dict[str, np.ndarray]]  # per batch: kept tensors


@dataclass
class Frontier:
    """Per model key, what the last captures left (see the module docstring)."""

    budget: int  # bytes the kept tensors of all keys and batches may take in memory
    over: bool = False  # this group's new cuts do not fit: the old ones stay
    states: dict[str, _State] = field(default_factory=dict)
    pending: dict[str, _State] = field(default_factory=dict)
    used: int = 0  # bytes kept in memory: the committed states' and the pending ones' so far
    spill: bool | str = True  # where tensors beyond `budget` go (segments.SpillFolder)
    stack: ExitStack = field(default_factory=ExitStack)  # the spill folder's lifetime
    folder: SpillFolder | None = None  # made when first needed

    def __enter__(self) -> Frontier:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.drop()
        self.stack.close()

    def runs(self, key: str, model: onnx.ModelProto, names: list[str],
             batches: Iterable[tuple[int, dict[str, np.ndarray]]], batch: int, rt: Runtime,
             arena: bool = True, changing: Iterable[str] = ()
             ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Like capture.capture of a session fetching `names`: (samples, {name: activation},
        graph inputs included) per batch, running only the nodes not yet run for `key`.
        `changing`: tensors (weights) the caller changes before the next group: the nodes
        that read them, or read what those make, count as not run (run again next time,
        from kept inputs). The new cut counts from commit() on."""
        nodes = list(model.graph.node)
        old = self.states.get(key)
        if old is not None and old.batch != batch:
            old = None
        ran = old.ran if old is not None else set()
        kept = set(old.values[0]) if old is not None and old.values else set()
        inits = {t.name for t in model.graph.initializer}
        part = _needed(nodes, names, kept | inits | {i.name for i in model.graph.input})
        made = {o for n in part for o in n.output if o}
        top = {i.name for i in model.graph.input} | {o for n in nodes for o in n.output}
        ins = sorted((set().union(*(reads(n) for n in part)) - made  # not a subgraph's own
                      - inits) & top)
        stale = set(changing)  # after the solve: what reads a changing tensor, run now or
        for n in nodes:  # before (a weight shared by nodes before and after the cut), topological
            outs = {o for o in n.output if o}
            if outs & (ran | made) and stale & (reads(n) | outs):
                stale.update(outs)
        done = (ran | made) - stale
        later = set().union(*(reads(n) for n in nodes if not any(o in done for o in n.output)))
        keep = sorted(x for x in (made | kept) - stale if x in later)  # read after the cut
        outs = list(dict.fromkeys([n for n in names if n in made] + [x for x in keep
                                                                      if x in made]))
        state = _State(done, batch, [])
        self.pending[key] = state
        sess = None
        folder = self._folder()
        for b, (samples, feed) in enumerate(batches):
            kept_b = old.values[b] if old is not None else {}
            have = {**feed, **{k: v.load() if isinstance(v, OnDisk) else v
                               for k, v in kept_b.items()}}
            if sess is None and outs:
                sess = session(piece(model, part, {k: have[k] for k in ins}, outs), rt,
                               arena=arena)
            if outs:
                have.update(zip(outs, sess.run(outs, {k: have[k] for k in ins})))
            if not self.over:
                vals = {x: kept_b.get(x, have[x]) for x in keep if x not in feed}
                size = sum(v.nbytes for v in vals.values() if not isinstance(v, OnDisk))
                if self.used + size > self.budget and folder.room(size):
                    vals = {x: v if isinstance(v, OnDisk) else folder.put(v)
                            for x, v in vals.items()}
                    size = 0
                state.values.append(vals)
                self._size(size)
            yield samples, {**feed, **{n: have[n] for n in names}}

    def pair(self, model: onnx.ModelProto, dense: onnx.ModelProto | None, names: list[str],
             layers: list[Any], batches: Callable[[int], Iterable], batch: int, rt: Runtime,
             arena: bool, given: tuple[Any, Any], applies: bool) -> tuple[Any, Any]:
        """collect.py's (runs, ref_runs) of `model` (its `layers`' weights changed after
        the solve) and `dense`: from the cuts where `applies` (one capture pass) and nothing
        else runs them (`given`: the fixed-batch runs of batching.py), else `given` and the
        next group starts from the graph inputs."""
        if dense is None or not applies or given != (None, None):
            self.drop()
            return given
        return (self.runs("model", model, names, batches(batch), batch, rt, arena,
                          changing=[L.weight for L in layers]),
                self.runs("dense", dense, names, batches(batch), batch, rt, arena))

    def _size(self, add: int) -> None:
        self.used += add
        if self.used > self.budget:
            self.over = True

    def commit(self) -> None:
        """The captures of this group ran to their end: their cuts are the current ones."""
        before = self._files()
        if not self.over:
            self.states.update(self.pending)
        self.pending.clear()
        self.over = False
        self.used = sum(v.nbytes for s in self.states.values() for vs in s.values
                        for v in vs.values() if not isinstance(v, OnDisk))
        self._remove(before)

    def drop(self) -> None:
        """A capture that did not run through here: start from the graph inputs again."""
        before = self._files()
        self.states.clear()
        self.pending.clear()
        self.used = 0
        self._remove(before)

    def _folder(self) -> SpillFolder:
        if self.folder is None:
            self.folder = SpillFolder(self.stack, self.spill)
        return self.folder

    def _files(self) -> dict[int, OnDisk]:
        return {id(v): v for st in (*self.states.values(), *self.pending.values())
                for vs in st.values for v in vs.values() if isinstance(v, OnDisk)}

    def _remove(self, before: dict[int, OnDisk]) -> None:
        """Delete the spilled files no cut holds any more."""
        held = self._files()
        for k, v in before.items():
            if k not in held:
                v.path.unlink(missing_ok=True)


def _needed(nodes: list[onnx.NodeProto], names: Iterable[str], have: set[str]
            ) -> list[onnx.NodeProto]:
    """The `nodes` (topological; in order) that make `names` from the tensors in `have`: each
    node whose output is wanted and not in `have`, also one that ran for an earlier cut
    whose output was not kept (Basic Pitch's CQT: one lowpass weight on every octave, its
    first Conv run for the octave convs' group, its input wanted by its own group after)."""
    need, idx = set(names) - have, []
    for i in range(len(nodes) - 1, -1, -1):
        if any(o in need for o in nodes[i].output if o):
            idx.append(i)
            need.update(x for x in reads(nodes[i]) if x not in have)
    return [nodes[i] for i in reversed(idx)]


__all__ = ["Frontier"]
