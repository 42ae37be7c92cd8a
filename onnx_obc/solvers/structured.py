"""Structured ExactOBS: N:M sparsity (OBC §2.4) and the column groupings, pure array math.

N:M and block pruning (blocks.py) group the columns of a row w [d] (d = Cin/g * prod(kernel)
for a Conv, C-major; K for a MatMul/Gemm) into sets of consecutive input channels at one
kernel position, the axis that TensorRT's 2:4 kernels and DeepSparse's 4-blocks read.
`conv_nm_groups` / `linear_nm_groups` build that grouping; the solvers take any grouping
`col_groups` [d] (group id per column).

N:M (n zeros in every group of m columns): per row, greedy OBS removal
    q = argmin_{j free, group(j) has < n removals} w_j^2 / [Hinv]_jj
for exactly k = n * d/m steps, with the OBS compensation and Lemma-1 update (rules.NMRule,
run by the deferred solver fast.py). Every row has the same count, so no selection is
needed; the final row is the exact optimum on its mask (select.rebuild), with exact zeros.

Losses are in the units of H (H = X X^T / N, no factor 2): summed over the removed steps they
equal tr(dW H dW^T) for the H whose inverse was given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import array_module
from .fast import greedy_traces
from .rules import NMRule
from .select import rebuild

__all__ = ["conv_nm_groups", "linear_nm_groups", "nm_prune", "nm_magnitude"]


# ----------------------------------------------------------------------------- groupings

def conv_nm_groups(cin_per_group: int, kernel: int, m: int) -> np.ndarray | None:
    """Group id [d] of every column of a Conv row (d = cin_per_group * kernel, C-major: column
    c*kernel + k is input channel c at kernel position k). Group (j, k) = channels
    j*m .. j*m+m-1 at kernel position k, id j*kernel + k. None if m does not divide
    cin_per_group (the layer cannot be N:M / block structured on its input channels)."""
    if m <= 0 or cin_per_group <= 0 or kernel <= 0 or cin_per_group % m:
        return None
    c = np.arange(cin_per_group)[:, None]  # [C, 1]
    k = np.arange(kernel)[None, :]  # [1, K]
    return ((c // m) * kernel + k).reshape(-1).astype(np.int64)  # [C*K]


def linear_nm_groups(d: int, m: int) -> np.ndarray | None:
    """Group id [d] for a MatMul/Gemm row (d = K, the reduction axis): m consecutive columns
    per group. None if m does not divide d."""
    if m <= 0 or d <= 0 or d % m:
        return None
    return (np.arange(d) // m).astype(np.int64)


def _check_groups(col_groups: Any, d: int, size: int, what: str) -> np.ndarray:
    g = np.asarray(col_groups.get() if hasattr(col_groups, "get") else col_groups)
    if g.shape != (d,) or g.dtype.kind not in "iu":
        raise ValueError(f"{what}: expected an integer array of shape ({d},), got {g.shape} "
                         f"{g.dtype}")
    sizes = np.bincount(g, minlength=1) if d else np.zeros(0, dtype=np.int64)
    if d and (g.min() < 0 or np.any(sizes != size)):
        raise ValueError(f"{what}: every group must have exactly {size} columns "
                         f"(ids 0 .. d/{size}-1)")
    return g.astype(np.int64)


# ----------------------------------------------------------------------------- N:M

def nm_prune(W: Any, Hinv: Any, group: Any, rows_per_batch: int, n: int, m: int,
             col_groups: Any, block: int | None = None) -> tuple[Any, Any, Any]:
    """N:M ExactOBS: n zeros in every group of m columns of every row.

    W [R, d] rows (float32 or float64, the solver's dtype); Hinv [G, d, d] inverse (dampened)
    Hessians; group [R] the Hessian of each row; col_groups [d] int the group of each column
    (d/m groups of exactly m columns, from conv_nm_groups / linear_nm_groups); `n` zeros per
    group (OBC's meaning: 2:4 prunes 2 of every 4). Returns
      W_hat  [R, d] float64: rows rebuilt exactly on their masks (exact zeros),
      losses [R, k] float64: OBS loss of each greedy step, k = n * d/m,
      order  [R, k] int64: column removed at each step.
    sum(losses) == tr(dW H dW^T) for H = inv(Hinv). Raises ValueError on a bad grouping.
    """
    xp = array_module(W, Hinv)
    R, d = W.shape
    if not 0 <= n <= m:
        raise ValueError(f"N:M needs 0 <= n <= m, got n={n}, m={m}")
    g = _check_groups(col_groups, d, m, "col_groups")
    k = n * (d // m)
    rule = NMRule(n, xp.asarray(g))
    tr = greedy_traces(W, Hinv, group, rows_per_batch, None, block, rule=rule, max_steps=k)
    losses, order = tr.losses[:, :k], tr.order[:, :k]
    counts = xp.full(R, k, dtype=xp.int64)
    W_hat = rebuild(W, Hinv, group, order, counts, rows_per_batch)
    return W_hat, losses, order


def nm_magnitude(W: Any, n: int, col_groups: Any) -> Any:
    """Magnitude N:M baseline: the n smallest |w| of every group of every row set to 0.
    W [R, d]; col_groups [d] (groups of equal size m). Returns a copy."""
    xp = array_module(W)
    R, d = W.shape
    g = np.asarray(col_groups.get() if hasattr(col_groups, "get") else col_groups)
    perm = np.argsort(g, kind="stable")  # columns grouped: group j = perm[j*m:(j+1)*m]
    ng = int(g.max()) + 1 if d else 0
    m = d // max(ng, 1)
    idx = xp.asarray(perm.reshape(ng, m))  # [ng, m]
    blocks = W[:, idx]  # [R, ng, m]
    drop = xp.argsort(xp.abs(blocks), axis=2, kind="stable")[:, :, :n]  # [R, ng, n]
    out = W.copy()
    cols = xp.take_along_axis(xp.broadcast_to(idx, (R, ng, m)), drop, axis=2)  # [R, ng, n]
    out[xp.arange(R)[:, None], cols.reshape(R, -1)] = 0
    return out
