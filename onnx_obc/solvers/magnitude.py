"""Magnitude pruning, the baseline: zero the `count` smallest |w| of the layer."""

from __future__ import annotations

from typing import Any

from ..backend import array_module


def magnitude_prune(W: Any, count: int) -> Any:
    """W [..] -> copy with the `count` smallest-magnitude entries (layer-wide) set to 0."""
    xp = array_module(W)
    flat = W.reshape(-1).copy()
    if count > 0:
        idx = xp.argsort(xp.abs(flat), kind="stable")[:count]
        flat[idx] = 0
    return flat.reshape(W.shape)
