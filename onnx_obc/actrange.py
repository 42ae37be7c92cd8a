"""Streaming activation ranges for static per-tensor symmetric quantization.

Each batch updates a running max|x| and a histogram of |x| (2048 bins). The histogram's
range starts at the first batch's max and doubles, merging bins pairwise, whenever a batch
exceeds it, so no activation is ever stored. Scales: max|x| / 127 ("minmax"), or the
p-th percentile of |x| / 127 ("percentile", p = 99.99 by default). The signed extremes
(min, max) are kept too, for asymmetric (uint8, zero point) ranges: `bounds`.
"""

from __future__ import annotations

import numpy as np

BINS = 2048


class RangeObserver:
    def __init__(self, histogram: bool = True) -> None:
        """histogram=False: only the extremes (the "minmax" scale and bounds), one pass
        fewer per batch; the percentile scale is then the minmax one."""
        self.amax = 0.0
        self.top = 0.0  # histogram covers [0, top)
        self.histogram = histogram
        self.hist = np.zeros(BINS, dtype=np.int64)
        self.lo = 0.0  # running min(x) and max(x), each widened to include 0
        self.hi = 0.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)
        m = max(-lo, hi)  # max |x|, exactly
        self.amax = max(self.amax, m)
        if not self.histogram:
            return
        a = np.abs(x).ravel()
        if self.top == 0.0:
            self.top = m * 1.0001 if m > 0 else 1.0
        while m >= self.top:
            self.hist = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.concatenate([self.hist, np.zeros(BINS // 2, dtype=np.int64)])
            self.top *= 2.0
        self.hist += np.bincount(np.minimum((a / self.top * BINS).astype(np.int64), BINS - 1),
                                 minlength=BINS)

    def scale(self, method: str = "minmax", percentile: float = 99.99, qmax: int = 127
              ) -> float:
        if method == "minmax" or self.hist.sum() == 0:
            value = self.amax
        else:
            cdf = np.cumsum(self.hist) / self.hist.sum()
            i = int(np.searchsorted(cdf, percentile / 100.0))
            value = min(self.amax, (i + 1) * self.top / BINS)
        return max(value, 1e-12) / qmax

    def bounds(self, method: str = "minmax", percentile: float = 99.99) -> tuple[float, float]:
        """(lo, hi) with lo <= 0 <= hi: the observed min and max ("minmax"), or each clipped
        to the p-th percentile of |x| ("percentile"); for asymmetric (zero point) grids."""
        cut = self.scale(method, percentile, qmax=1)
        return max(self.lo, -cut), min(self.hi, cut)
