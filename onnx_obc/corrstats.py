"""The correction's per-channel statistics (correct.py measures the means): each site's
channel axis, and for the scale correction the paired moments of the dense model's y and
the compressed model's y_hat. Outputs laid out [batch, tokens, ..., channels] count the
token positions of the run's token mask only (calib/tokens.py), as the means do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .calib import DataSet
from .calib.tokens import on_tokens
from .capture import capture, capture_session
from .layers import node_label


def channel_axis(op: str) -> int:
    return 1 if op in ("Conv", "ConvTranspose") else -1  # [N, M, *spatial] or [..., M]


def node_ops(model: onnx.ModelProto) -> dict[str, str]:
    return {node_label(n, i): n.op_type for i, n in enumerate(model.graph.node)}


@dataclass(frozen=True)
class Moments:
    """Per-channel sums of y (dense) and z (compressed), shifted by their first batch's
    means (no cancellation for large means)."""

    ky: np.ndarray  # the shifts
    kz: np.ndarray
    n: int = 0
    sy: Any = 0.0  # sum (y - ky)
    sz: Any = 0.0
    szz: Any = 0.0  # sum (z - kz)^2
    syz: Any = 0.0  # sum (y - ky)(z - kz)

    def plus(self, y: np.ndarray, z: np.ndarray) -> Moments:
        y, z = y - self.ky, z - self.kz
        return Moments(self.ky, self.kz, self.n + len(y), self.sy + y.sum(0), self.sz + z.sum(0),
                       self.szz + (z * z).sum(0), self.syz + (y * z).sum(0))

    def stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(E[y], E[z], Cov(y, z) / Var(z)); 1 where Var(z) ~ 0."""
        my, mz = self.sy / self.n, self.sz / self.n
        var = self.szz / self.n - mz * mz
        cov = self.syz / self.n - my * mz
        tiny = var <= 1e-12 * (np.square(mz + self.kz) + 1e-30)
        a = np.where(tiny, 1.0, cov / np.where(tiny, 1.0, var))
        return my + self.ky, mz + self.kz, a


def paired_stats(dense: onnx.ModelProto, model: onnx.ModelProto, outputs: dict[str, str],
                 data: DataSet, batch: int, providers: list[str], token_mask: str | None = None
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per channel: (E[y], E[y_hat], Cov(y, y_hat) / Var(y_hat)); 1 where Var(y_hat) ~ 0."""
    names = list(dict.fromkeys(outputs.values()))
    ops = node_ops(model)
    runs = [capture(capture_session(m, names, providers, prune=True), names, data.batches(batch))
            for m in (dense, model)]
    acc: dict[str, Moments] = {}
    for (_, ya), (_, yb) in zip(*runs):
        for label, t in outputs.items():
            ax = channel_axis(ops[label])
            y, z = (np.moveaxis(on_tokens(v[t], ya, token_mask, ax), ax, -1) for v in (ya, yb))
            y = y.reshape(-1, y.shape[-1]).astype(np.float64)
            z = z.reshape(-1, z.shape[-1]).astype(np.float64)
            if label not in acc:
                acc[label] = Moments(y.mean(0), z.mean(0))
            acc[label] = acc[label].plus(y, z)
    return {label: m.stats() for label, m in acc.items()}
