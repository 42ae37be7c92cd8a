"""The L2-norm channel baseline beside the OBS cut (`channels-l2` in the report): the k
channels whose producer rows have the smallest norm, removed at the OBS cut's counts with no
update of the consumer, and the consumer loss that leaves."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layers import weight_matrix
from ..solvers.channels import norm_order


def norm_removed(site: Any, weights: dict, k: int) -> np.ndarray:
    """The baseline's k channels: smallest L2 norm of the producer's output rows (of a
    head's dh rows of the V projection together; of a fused QKV projection's V block; of
    a gated unit's two producers together)."""
    W = weight_matrix(weights, site.producer)  # [G, r, d]: a grouped producer's G groups
    rows = W.reshape(-1, W.shape[2])  # [blocks * C * unit, d]
    if site.rows:  # one part of a Split (splits.py): its rows
        rows = rows[site.first_row:site.first_row + site.channels * site.unit]
    fused = site.gate is not None and site.gate.offset  # its two halves: [C, 2 d]
    blocks = 2 if fused else site.split.blocks if site.split is not None else 1
    parts = rows.reshape(blocks, site.channels, -1)
    rows = np.hstack(list(parts)) if fused else parts[-1]
    if site.gate is not None and not fused:  # [C, d + d_gate]
        rows = np.hstack([rows, weight_matrix(weights, site.gate.producer)[0]])
    return np.sort(norm_order(rows, site.blocks)[:k])


def zeroed_loss(s: Any, removed: np.ndarray, backend: Any) -> float:
    """tr(dW H dW^T) with dW = -W on the removed channels' columns (no update)."""
    w = s.site.width
    cols = (s.site.columns(removed)[:, None] * w + np.arange(w)[None, :]).reshape(-1)
    dW = np.zeros_like(s.W, dtype=np.float64)
    dW[:, cols] = -s.W[:, cols]
    dWd = backend.to_device(dW)
    return float(((dWd @ s.H) * dWd).sum())
