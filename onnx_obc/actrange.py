"""Streaming activation ranges for static per-tensor symmetric quantization.

Each batch updates a running max|x| and a histogram of |x| (2048 bins). The histogram's
range starts at the first batch's max and doubles, merging bins pairwise, whenever a batch
exceeds it, so no activation is ever stored. Scales: max|x| / 127 ("minmax"), or the
p-th percentile of |x| / 127 ("percentile", p = 99.99 by default).
"""

from __future__ import annotations

import numpy as np

BINS = 2048


class RangeObserver:
    def __init__(self) -> None:
        self.amax = 0.0
        self.top = 0.0  # histogram covers [0, top)
        self.hist = np.zeros(BINS, dtype=np.int64)

    def add(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, dtype=np.float32)).ravel()
        if a.size == 0:
            return
        m = float(a.max())
        self.amax = max(self.amax, m)
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
