"""Layer data for the solver tests: weights and realistic (correlated) or i.i.d. Hessians."""

from __future__ import annotations

import numpy as np


def correlated_H(d: int, seed: int, rank: int = 8, noise: float = 0.1, n: int = 512) -> np.ndarray:
    """H = X X^T / n for low-rank-plus-noise activations X [d, n] (realistic correlation)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d, rank)) @ rng.standard_normal((rank, n))
    X += noise * rng.standard_normal((d, n))
    return X @ X.T / n


def iid_H(d: int, seed: int, n: int = 512) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((d, n))
    return X @ X.T / n


def weights(r: int, d: int, seed: int) -> np.ndarray:
    """W [1, r, d]."""
    return np.random.default_rng(seed + 1000).standard_normal((1, r, d))
