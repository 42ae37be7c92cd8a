"""N:M ExactOBS (OBC §2.4), pure array math; registered as the "obc" pruning stage of NM.

The columns of a row are grouped along the axis the runtime reads (structures.py:
conv_nm_groups / linear_nm_groups give `col_groups` [d], the group id per column).
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

from ..backend import array_module
from .fast import greedy_traces
from .registry import register_pruner
from .rules import NMRule
from .select import rebuild
from .solution import Pruned, Stage
from .structures import NM, check_groups

__all__ = ["nm_prune"]


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
    sum(losses) == tr(dW H dW^T) for H = inv(Hinv). Raises ConfigError (a ValueError) on a
    bad grouping.
    """
    xp = array_module(W, Hinv)
    R, d = W.shape
    if not 0 <= n <= m:
        raise ValueError(f"N:M needs 0 <= n <= m, got n={n}, m={m}")
    g = check_groups(col_groups, d, m, "col_groups")
    k = n * (d // m)
    rule = NMRule(n, xp.asarray(g))
    tr = greedy_traces(W, Hinv, group, rows_per_batch, None, block, rule=rule, max_steps=k)
    losses, order = tr.losses[:, :k], tr.order[:, :k]
    counts = xp.full(R, k, dtype=xp.int64)
    W_hat = rebuild(W, Hinv, group, order, counts, rows_per_batch)
    return W_hat, losses, order


@register_pruner(NM, "obc")
def obs_prune(stage: Stage, st: NM, count: int) -> Pruned:
    """Exactly n zeros in every group of every row (`count` = the layer's n/m share)."""
    d = stage.rows.shape[1]
    W_hat, losses, _ = nm_prune(stage.rows, stage.Hinv, stage.group, stage.rows_per_batch,
                                st.n, st.m, st.groups(d))
    return Pruned(rows=W_hat, obs_loss=float(losses.sum()), steps_run=count)
