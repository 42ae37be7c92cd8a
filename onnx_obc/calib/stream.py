"""Calibration sources: what the stages read samples from, one batch at a time.

Every stage (capture, allocation scores, correction, verification) consumes a
`CalibrationSource` through `batches(batch_size)` and never materialises it. A source can be
read any number of times (one pass per capture group, correction level, evaluation...).

    ArraySource (calib.DataSet)   arrays in memory (an .npz, a directory of samples); the
                                  held-out split is a seeded random choice of samples
    StreamSource                  any re-iterable of feed dicts, or an onnxruntime
                                  CalibrationDataReader with rewind(); read one item at a
                                  time, re-batched; the held-out split is the first samples,
                                  taken by count

A new kind of source implements the protocol below and is returned by `calib.load_data`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

Feed = dict[str, np.ndarray]


@runtime_checkable
class CalibrationSource(Protocol):
    """Samples along axis 0 of every feed array; `n` samples in all."""

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


@dataclass(frozen=True)
class StreamSource:
    """Samples read from `open_pass()` (a fresh iterator of feed dicts per pass), each item
    checked by `check` and re-batched; only samples [start, stop) are used."""

    open_pass: Callable[[], Iterator[Feed]]
    check: Callable[[Feed, int], Feed]  # (item, index of its first sample) -> checked item
    source: str
    start: int = 0
    stop: int | None = None  # None: to the end
    synthetic: bool = False
    labels: None = None

    @property
    def n(self) -> int:
        end = sum(_count(item) for item in self.open_pass()) if self.stop is None else self.stop
        return max(0, end - self.start)

    def batches(self, batch_size: int) -> Iterator[tuple[int, Feed]]:
        pending: list[Feed] = []
        have = 0
        for part in self._samples():
            pending.append(part)
            have += _count(part)
            while have >= batch_size:
                batch, pending = _take(pending, batch_size)
                have -= batch_size
                yield batch_size, batch
        if have:
            batch, _ = _take(pending, have)
            yield have, batch

    def _samples(self) -> Iterator[Feed]:
        """The items of one pass cut to [start, stop), in order."""
        pos = 0
        for item in self.open_pass():
            item = self.check(item, pos)
            k = _count(item)
            lo, hi = max(self.start - pos, 0), k if self.stop is None else min(self.stop - pos, k)
            if lo < hi:
                yield item if (lo, hi) == (0, k) else {n: a[lo:hi] for n, a in item.items()}
            pos += k
            if self.stop is not None and pos >= self.stop:
                return

    def head(self, k: int) -> StreamSource:
        stop = self.start + k if self.stop is None else min(self.stop, self.start + k)
        return _replace(self, stop=stop)

    def split(self, held: int, seed: int) -> tuple[StreamSource, StreamSource]:
        return _replace(self, start=self.start + held), self.head(held)


def _replace(s: StreamSource, **kw: Any) -> StreamSource:
    return StreamSource(**{**s.__dict__, **kw})


def _count(item: Feed) -> int:
    return int(next(iter(item.values())).shape[0])


def _take(parts: list[Feed], k: int) -> tuple[Feed, list[Feed]]:
    """The first k samples of `parts` as one feed, and what is left."""
    out: list[Feed] = []
    got = 0
    while got < k:
        part = parts.pop(0)
        need = k - got
        if _count(part) > need:
            parts.insert(0, {n: a[need:] for n, a in part.items()})
            part = {n: a[:need] for n, a in part.items()}
        out.append(part)
        got += _count(part)
    if len(out) == 1:
        return out[0], parts
    return {n: np.concatenate([p[n] for p in out], axis=0) for n in out[0]}, parts


def reopenable(source: Any) -> Callable[[], Iterator[Feed]] | None:
    """A function starting a new pass over `source`, or None when it can be read only once:
    a reader with get_next() and rewind(), or a re-iterable (a list, a Dataset object...)."""
    if hasattr(source, "get_next"):
        if not callable(getattr(source, "rewind", None)):
            return None

        def again() -> Iterator[Feed]:
            source.rewind()
            return iter(source.get_next, None)
        return again
    if isinstance(source, Iterable) and not isinstance(source, Iterator):
        return lambda: iter(source)
    return None
