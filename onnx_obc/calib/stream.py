"""Calibration sources: what the stages read samples from, one batch at a time.

Every stage (capture, allocation scores, correction, verification) consumes a
`CalibrationSource` through `batches(batch_size)` and never materialises it. A source can be
read any number of times (one pass per capture group, correction level, evaluation...).

    DataSet (arrays.py)        arrays in memory or memory-mapped (an .npz, an .npy); the
                               held-out split is a seeded random choice of samples
    FileSource (files.py)      a directory of sample files (.npz/.npy/images), one file read
                               at a time; seeded random split over the files
    StreamSource               any re-iterable of feed dicts, a function returning a fresh
                               iterator, an onnxruntime CalibrationDataReader with rewind();
                               read one item at a time; held-out = the first samples, by count

Lazy sources are batched by shape (`group_batches`): every batch holds samples of one shape,
and at most one batch of samples waits for its shape to fill up.

A new kind of source implements the protocol below and is returned by `calib.load_data`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import CalibrationError
from .layout import Feed, Layout


@runtime_checkable
class CalibrationSource(Protocol):
    """`n` samples, each along its input's sample axis (`layout`)."""

    source: str  # what the samples came from, for the report
    synthetic: bool
    labels: np.ndarray | None  # [n] for evaluation sets held in memory, else None

    @property
    def n(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[tuple[int, Feed]]:
        """(samples in the batch, feed) for every batch of one pass, in a fixed order."""
        ...

    def head(self, k: int) -> CalibrationSource:
        """The first k samples."""
        ...

    def split(self, held: int, seed: int) -> tuple[CalibrationSource, CalibrationSource]:
        """(the samples for the Hessians, `held` samples kept out), 0 < held < n."""
        ...

    def shape_feed(self, batch_size: int) -> dict[str, Any]:
        """Objects with the `.shape` of the largest batch a pass may hold (for sizing)."""
        ...


@dataclass(frozen=True)
class Shape:
    """Stands for an array of this shape where only the shape is read."""

    shape: tuple[int, ...]


@dataclass
class Scan:
    """What one checking pass saw: samples, distinct shapes, the largest sample."""

    n: int = 0
    keys: set = field(default_factory=set)
    largest: Feed | None = None  # one sample of the largest shape
    size: int = -1

    def add(self, item: Feed, layout: Layout) -> None:
        self.n += layout.count(item)
        self.keys.add(layout.key(item))
        size = sum(v.size // max(1, layout.count(item)) if layout.axis[k] is not None else 0
                   for k, v in item.items())
        if size > self.size:
            self.size, self.largest = size, layout.cut(item, 0, 1)


def shape_feed(layout: Layout, largest: Feed, batch: int) -> dict[str, Shape]:
    return {k: Shape(s) for k, s in layout.batch_of(largest, batch).items()}


@dataclass(frozen=True)
class StreamSource:
    """Samples read from `open_pass()` (a fresh iterator of feed dicts per pass), each item
    checked by `check`, batched by shape; only samples [start, stop) are used."""

    open_pass: Callable[[], Iterator[Feed]]
    check: Callable[[Feed, int], Feed]  # (item, index of its first sample) -> checked item
    source: str
    layout: Layout
    largest: Feed  # one sample of the largest shape (from the checking pass)
    start: int = 0
    stop: int | None = None  # None: to the end
    shapes: int = 1  # distinct sample shapes seen by the checking pass
    read_as: str = "streamed, one item at a time"  # for the report
    synthetic: bool = False
    labels: None = None

    @property
    def n(self) -> int:
        end = (sum(self.layout.count(self.check(i, 0)) for i in self.open_pass())
               if self.stop is None else self.stop)
        return max(0, end - self.start)

    def batches(self, batch_size: int) -> Iterator[tuple[int, Feed]]:
        return group_batches(self._samples(), self.layout, batch_size)

    def _samples(self) -> Iterator[Feed]:
        """The checked items of one pass cut to [start, stop), in order; the source is not
        read past `stop`."""
        pos = 0
        for item in self.open_pass():
            item = self.check(item, pos)
            k = self.layout.count(item)
            lo, hi = max(self.start - pos, 0), k if self.stop is None else min(self.stop - pos, k)
            if lo < hi:
                yield item if (lo, hi) == (0, k) else self.layout.cut(item, lo, hi)
            pos += k
            if self.stop is not None and pos >= self.stop:
                return

    def head(self, k: int) -> StreamSource:
        stop = self.start + k if self.stop is None else min(self.stop, self.start + k)
        return replace(self, stop=stop)

    def split(self, held: int, seed: int) -> tuple[StreamSource, StreamSource]:
        return replace(self, start=self.start + held), self.head(held)

    def shape_feed(self, batch_size: int) -> dict[str, Shape]:
        return shape_feed(self.layout, self.largest, batch_size)


def group_batches(parts: Iterable[Feed], layout: Layout, batch: int
                  ) -> Iterator[tuple[int, Feed]]:
    """Batches of `batch` samples of one shape each, in a fixed order; a shape's remainder
    goes out at the end, or earlier when more than one batch of samples is waiting (many
    shapes interleaved), so memory stays bounded by about two batches."""
    pending: dict[tuple, list[Feed]] = {}
    have: dict[tuple, int] = {}
    waiting = 0
    for part in parts:
        k = layout.key(part)
        pending.setdefault(k, []).append(part)
        have[k] = have.get(k, 0) + layout.count(part)
        waiting += layout.count(part)
        while have[k] >= batch:
            out, pending[k] = _take(pending[k], batch, layout)
            have[k] -= batch
            waiting -= batch
            yield batch, out
        if not have[k]:
            del pending[k], have[k]
        while waiting > batch:
            fullest = max(have, key=have.__getitem__)
            waiting -= have[fullest]
            yield have.pop(fullest), layout.concat(pending.pop(fullest))
    for k, parts_k in pending.items():
        yield have[k], layout.concat(parts_k)


def _take(parts: list[Feed], k: int, layout: Layout) -> tuple[Feed, list[Feed]]:
    """The first k samples of `parts` as one feed, and what is left."""
    out: list[Feed] = []
    got = 0
    while got < k:
        part = parts.pop(0)
        need, c = k - got, layout.count(part)
        if c > need:
            parts.insert(0, layout.cut(part, need, c))
            part = layout.cut(part, 0, need)
        out.append(part)
        got += min(c, need)
    return layout.concat(out), parts


def reopenable(source: Any) -> Callable[[], Iterator[Feed]] | None:
    """A function starting a new pass over `source`, or None when it can be read only once:
    a reader with get_next() and rewind(), a re-iterable (a list, a Dataset object...), or a
    function returning a fresh iterator."""
    if hasattr(source, "get_next"):
        if not callable(getattr(source, "rewind", None)):
            return None

        def again() -> Iterator[Feed]:
            source.rewind()
            return iter(source.get_next, None)
        return again
    if isinstance(source, Iterable) and not isinstance(source, Iterator):
        return lambda: iter(source)
    if callable(source) and not isinstance(source, type):
        def fresh() -> Iterator[Feed]:
            it = source()
            if isinstance(it, dict) or not isinstance(it, Iterable):
                raise CalibrationError(f"the calibration function {_name(source)} returned a "
                                       f"{type(it).__name__}; it must return a fresh iterator "
                                       "of feed dicts (a generator) on every call")
            return iter(it)
        return fresh
    return None


def _name(f: Any) -> str:
    return getattr(f, "__qualname__", type(f).__name__)
