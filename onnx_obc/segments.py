"""Run a model piece by piece over a set of batches, each piece one onnxruntime session that
starts where the previous one stopped, with chosen tensors open to change between pieces.

What a sequential measurement needs (correct.py: each layer's output measured with every
upstream correction in place) without running the whole prefix again for every layer: the
tensors that cross each cut are kept, for every batch, and fed to the next piece. Memory is
the set of tensors alive across a cut times the number of samples (one copy of those that
read no graph input: dequantized weights, shapes; the batches fed are the caller's and not
counted). A piece whose outputs would take the kept tensors over `budget` bytes writes them,
one .npy file per batch, to a temporary folder (`spill`; by default the system's, TMPDIR),
read back by the pieces that need them (a visit's shift added then) and deleted once none
does, the folder at the end whatever happens: the kept tensors stay within the budget and
the run one pass. EfficientNet-Lite0's W8A8 correction on 1,024 samples (kept tensors of
several GB, one thread) took 980 s in the whole-prefix passes it fell back to before, 66-76 s
so. Without room on that disk (SPARE left free; a tmpfs is memory, never used) or with
`spill=False` the run stops with `TooLarge` before that piece runs past its first batch (the
caller falls back to whole-prefix passes).

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

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .capture import ARENA_MAX, ancestors, session, subgraph_reads


class TooLarge(RuntimeError):
    """The tensors kept across a cut would exceed the memory budget."""


def reads(node: onnx.NodeProto) -> set[str]:
    return {x for x in node.input if x} | subgraph_reads(node)


def piece(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray],
           outputs: list[str]) -> onnx.ModelProto:
    """A model of `nodes` reading `inputs` (name -> an example value, for the type) and the
    initializers they use, giving `outputs`."""
    need = set().union(*(reads(n) for n in nodes))
    inits = [t for t in model.graph.initializer if t.name in need and t.name not in inputs]
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), None)
           for k, v in inputs.items()]
    outs = [helper.make_empty_tensor_value_info(o) for o in outputs]
    graph = helper.make_graph(nodes, "piece", ins, outs, initializer=inits)
    piece = helper.make_model(graph, opset_imports=list(model.opset_import),
                              ir_version=model.ir_version)
    piece.functions.extend(model.functions)
    return piece


class OnDisk:
    """One batch's value of a kept tensor, in a .npy file, with the shift a visit added."""

    def __init__(self, path: Path, value: np.ndarray) -> None:
        np.save(path, value)
        self.path, self.nbytes, self.shift = path, value.nbytes, None

    def load(self) -> np.ndarray:
        v = np.load(self.path)
        if self.shift is not None:
            v += self.shift
        return v


class _Loaded(Sequence):
    """A kept tensor's values per batch, those on disk read on access."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: Any) -> Any:
        x = self.items[i]
        return x.load() if isinstance(x, OnDisk) else x


def run_in_segments(model: onnx.ModelProto, stops: list[str],
                    batches: Iterable[tuple[int, dict[str, np.ndarray]]], providers: Any,
                    visit: Callable[[str, Sequence[np.ndarray]], Any], budget: int,
                    spill: bool | str | os.PathLike = True) -> None:
    """Run `model` over `batches` up to each tensor of `stops` in topological order; at each,
    `visit(name, its value per batch)` returns a shift (an array broadcast to each batch's
    value) every later node reads it with, or None. Only the nodes the stops depend on run
    (graph.node must be topological). `spill`: where kept tensors over `budget` go (True:
    the system's temporary folder; False: nowhere, TooLarge)."""
    with ExitStack() as stack:
        _run(model, stops, batches, providers, visit, budget, SpillFolder(stack, spill))


class SpillFolder:
    """The spill folder (in `where`: True the system's temporary folder, False none), made
    when first needed, removed with `stack` (its files, whatever happens)."""

    def __init__(self, stack: ExitStack, where: bool | str | os.PathLike) -> None:
        self.stack, self.path, self.count = stack, None, 0
        self.where = None if where is True else where

    def room(self, nbytes: int) -> bool:
        """Whether `nbytes` more fit on the folder's disk, SPARE left."""
        if self.where is False:
            return False
        if self.path is None:
            self.path = Path(self.stack.enter_context(tempfile.TemporaryDirectory(
                prefix="onnx-obc-spill-", dir=self.where)))
        return not _in_memory(self.path) and (
            shutil.disk_usage(self.path).free >= nbytes + SPARE)

    def why(self, nbytes: int) -> str:
        """What TooLarge says about the folder ("" when spilling was not allowed)."""
        if self.path is None:
            return ""
        free = shutil.disk_usage(self.path).free
        where = "memory (tmpfs), not a disk" if _in_memory(self.path) else (
            f"{free / 2**30:.1f} GiB free")
        return (f"; {nbytes / 2**30:.1f} GiB would not fit in {self.path.parent} ({where}; "
                "TMPDIR chooses the folder)")

    def put(self, value: np.ndarray) -> OnDisk:
        self.count += 1
        return OnDisk(self.path / f"{self.count}.npy", value)


def _in_memory(path: Path, table: str = "/proc/mounts") -> bool:
    """Whether `path` lies on a tmpfs / ramfs (Linux's mount `table`): spilling there would
    take the memory it is meant to spare."""
    try:
        mounts = [line.split()[1:3] for line in Path(table).read_text().splitlines()]
    except OSError:
        return False
    p = str(path.resolve())
    inside = [(m, t) for m, t in mounts if p == m or p.startswith(m.rstrip("/") + "/")]
    return bool(inside) and max(inside, key=lambda mt: len(mt[0]))[1] in ("tmpfs", "ramfs")


SPARE = 1 << 30  # free bytes left on the spill disk


def resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm; elsewhere 0)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def kept_budget(total: int) -> int:
    """The bytes a run may keep in memory within a process budget of `total`: three quarters
    of what the process does not hold yet, the rest for the memory the C heap keeps after
    the pieces free it. EfficientNet-Lite0's W8A8 on 256 samples, peak RSS with all of what
    is not held 2.06-2.57 GB, with three quarters 1.73-1.99 GB (the 2 GB default budget;
    correction 12.9-14.3 -> 15.9 s, part of its tensors on disk); the same file."""
    return max(0, total - resident_bytes()) * 3 // 4


def _run(model: onnx.ModelProto, stops: list[str], batches: Iterable, providers: Any,
         visit: Callable, budget: int, folder: SpillFolder) -> None:
    nodes = list(model.graph.node)
    made = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    missing = [s for s in stops if s not in made]
    if missing:
        raise ValueError(f"no node makes {missing}")
    keep = ancestors(nodes, stops)
    at = {i: k for k, i in enumerate(keep)}  # node index -> position among the kept
    last: dict[str, int] = {}  # tensor -> last kept position reading it
    for k, i in enumerate(keep):
        for x in reads(nodes[i]):
            last[x] = k
    for s in stops:
        last[s] = max(last.get(s, -1), at[made[s]])
    inits = {t.name for t in model.graph.initializer}
    cache: dict[str, list[Any]] = {}  # per batch: an array, or OnDisk
    for _, feed in batches:
        for k, v in feed.items():
            cache.setdefault(k, []).append(v)
    fed = set(cache)  # the caller's arrays: not counted in what is kept
    nbatch = len(next(iter(cache.values()), []))
    varies = set(cache) - inits  # tensors that differ between batches (not weights, shapes)
    for i in keep:
        if reads(nodes[i]) & varies:
            varies.update(o for o in nodes[i].output if o)
    ends = sorted({at[made[s]] for s in stops})
    start = 0
    for end in ends:
        part = [nodes[i] for i in keep[start:end + 1]]
        made_here = {o for n in part for o in n.output if o}
        read = set().union(*(reads(n) for n in part)) - made_here
        ins = sorted(x for x in read if x in cache and x not in inits)
        outs = [o for o in sorted(made_here) if last.get(o, -1) > end or o in stops]
        kept = sum({id(v): v.nbytes for k, vs in cache.items() if k not in fed for v in vs
                    if not isinstance(v, OnDisk)}.values())
        wide = max((cache[k][0].nbytes for k in ins if k in varies), default=0) >= ARENA_MAX
        feed = {k: _Loaded(cache[k])[0] for k in ins}
        sess = session(piece(model, part, feed, outs), providers,
                       arena=not wide)  # see the module's docstring
        got = dict(zip(outs, ([v] for v in sess.run(outs, feed))))
        dyn = [o for o in outs if o in varies]
        disk = sum(v[0].nbytes * nbatch for o, v in got.items() if o in varies)
        if (size := kept + sum(v[0].nbytes * (nbatch if o in varies else 1)
                               for o, v in got.items())) > budget:  # from the first batch
            if not folder.room(disk):
                raise TooLarge(f"{size / 2**20:.0f} MiB of tensors kept across a cut "
                               f"(budget {budget / 2**20:.0f} MiB)" + folder.why(disk))
            got.update({o: [folder.put(got[o][0])] for o in dyn})
        spilled = size > budget
        for b in range(1, nbatch):
            for o, v in zip(dyn, sess.run(dyn, {k: _Loaded(cache[k])[b] for k in ins})
                            if dyn else []):
                got[o].append(folder.put(v) if spilled else v)
        for o in outs:  # one copy of what every batch shares (dequantized weights, shapes)
            got[o] = got[o] if o in varies else got[o] * nbatch
        cache.update(got)
        for s in (s for s in stops if at[made[s]] == end):
            _shift(cache[s], visit(s, _Loaded(cache[s])))
        for x in [x for x in cache if last.get(x, -1) <= end]:
            for v in cache.pop(x):
                if isinstance(v, OnDisk):
                    v.path.unlink(missing_ok=True)
        start = end + 1


def _shift(values: list[Any], d: Any) -> None:
    """Add `d` to every batch's value (each array once: a batch-free one is shared); on disk,
    when it is read."""
    if d is None:
        return
    for v in {id(v): v for v in values}.values():
        if isinstance(v, OnDisk):
            v.shift = d if v.shift is None else v.shift + d
        else:
            v += d  # in place: onnxruntime's outputs, ours alone
