"""The dense model's outputs kept for the verification (verify.py): from one measure to the
next (References), and from the capture's runs (Captured)."""

from __future__ import annotations

from typing import Any

import numpy as np

REFERENCE_BYTES = 256 << 20  # the dense outputs kept between measures (References)


def sum_sq(y: np.ndarray, y0: np.ndarray | None = None) -> float:
    """sum((y - y0)^2) (y0 None: sum(y^2)), summed in float64. float32 outputs: the
    difference and its square in float32 (relative rounding 1e-7 of each term), only the
    sum in float64, without the two float64 copies of the output (most of verification's
    own arithmetic on a model with wide logits, e.g. a 6,625-class CTC head)."""
    if y.dtype == np.float32 and (y0 is None or y0.dtype == np.float32):
        d = np.square(y) if y0 is None else np.subtract(y, y0)
        if y0 is not None:
            np.square(d, out=d)
        return float(d.sum(dtype=np.float64))
    d = y.astype(np.float64) if y0 is None else y.astype(np.float64) - y0
    return float(np.square(d).sum())


class Captured:
    """The dense model's outputs on the in-sample check's samples, kept one sample at a
    time from the capture's runs (`add`, from collect.py: a one-shot capture reads every
    calibration sample anyway), so that the verification need not run the dense model on
    them again. `rows`: which of the capture's samples the check measures, in order; kept
    where every output has an axis of the run's samples, up to `budget` bytes. The capture
    runs the folded model (float-exact up to rounding), so the first batch of each use is
    run and compared (`matches`) before the rest is trusted. The default W8A8 of PP-OCRv6's
    recognizer: 1.0 s of its 9.9 s ("W8A8 conversion time")."""

    def __init__(self, rows: Any, names: list[str], budget: int = REFERENCE_BYTES) -> None:
        self.rows, self.names, self.budget = np.asarray(rows), list(names), budget
        self.per: dict[int, list[np.ndarray]] = {}  # position in the check set -> outputs
        self.axes: list[int] | None = None  # each output's sample axis (the first of the
        # run's size: [T, N, C] CTC logits have theirs on axis 1)
        self.used, self.dropped = 0, False

    def add(self, acts: dict[str, np.ndarray], start: int, samples: int) -> None:
        """The outputs in `acts` of the capture's samples [start, start + samples)."""
        if self.dropped or any(n not in acts for n in self.names):
            return
        lo, hi = (int(k) for k in np.searchsorted(self.rows, [start, start + samples]))
        ys = [acts[n] for n in self.names]
        axes = [next((a for a in range(y.ndim) if y.shape[a] == samples), None) for y in ys]
        if hi > lo and (None in axes or self.axes not in (None, axes)):
            self.dropped = True  # no sample axis to cut: the verification runs the model
        self.axes = axes if hi > lo else self.axes
        for pos in range(lo, hi) if not self.dropped else ():
            i = int(self.rows[pos]) - start
            self.per[pos] = [np.array(y[(slice(None),) * a + (slice(i, i + 1),)])
                             for y, a in zip(ys, axes)]
            self.used += sum(y.nbytes for y in self.per[pos])
            self.dropped = self.used > self.budget
        if self.dropped:
            self.per.clear()

    def batch(self, start: int, n: int) -> list[np.ndarray] | None:
        """The outputs of the check's samples [start, start + n) as one run's, or None."""
        if self.dropped or any(p not in self.per for p in range(start, start + n)):
            return None
        return [np.concatenate([self.per[p][k] for p in range(start, start + n)], axis=a)
                for k, a in enumerate(self.axes or [])]

    @staticmethod
    def matches(kept: list[np.ndarray], ran: list[np.ndarray], tol: float = 1e-3) -> bool:
        """Same shapes, each within `tol` relative (L2) of what the run gave."""
        return all(a.shape == b.shape and np.sqrt(sum_sq(a, b)) <= tol * max(
            np.sqrt(sum_sq(b)), 1e-30) for a, b in zip(kept, ran))


class References:
    """The reference (dense) model's outputs per data set, kept from one measure() to the
    next on the same sets in the same batches (floatcheck.py's and the final verification:
    one pass of the input model fewer, e.g. 5 of PP-PicoDet's 30 verification seconds), up
    to `budget` bytes in all (beyond it a set is run again)."""

    def __init__(self, budget: int = REFERENCE_BYTES) -> None:
        self.budget, self.used = budget, 0
        self.names: list[str] = []
        self.sets: dict[tuple[str, int], list[list[np.ndarray]]] = {}

    def get(self, name: str, batch: int) -> list[list[np.ndarray]] | None:
        return self.sets.get((name, batch))

    def put(self, name: str, batch: int, names: list[str], outs: list[list[np.ndarray]]
            ) -> None:
        size = sum(y.nbytes for ys in outs for y in ys)
        if self.used + size <= self.budget and (not self.names or names == self.names):
            self.sets[name, batch], self.names = outs, names
            self.used += size
