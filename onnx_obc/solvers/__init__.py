"""Layer solvers: pure array math (NumPy or CuPy), no onnx, onnxruntime, I/O or printing.

`prune_layer` is the entry point: W [G, r, d] and H [G, d, d] in, a `PruneResult` out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..backend import array_module
from .fast import greedy_traces
from .magnitude import magnitude_prune
from .prepare import Prepared, layer_loss, prepare
from .select import rebuild, select_counts

__all__ = ["PruneResult", "prune_layer", "prepare", "layer_loss", "magnitude_prune"]


@dataclass(frozen=True)
class PruneResult:
    W: Any  # [G, r, d] pruned weights, float64, exact zeros, on the input's device
    baseline: Any  # [G, r, d] magnitude-pruned weights at the same count
    loss: float  # E = tr(dW H dW^T) with the undampened H
    baseline_loss: float  # magnitude pruning at the same count, same H
    obs_loss: float  # sum of the recorded greedy step losses (dampened H); 0 for magnitude
    zeros: int
    dead: int
    damp: float
    escalations: tuple[float, ...]
    steps_run: int = 0  # greedy steps computed (rows * cols when nothing was skipped)
    rerun_rows: int = 0


def rows_per_batch(d: int, rows: int, budget_bytes: int, itemsize: int = 4) -> int:
    """Rows whose d x d inverse Hessians (plus temporaries) fit in the budget."""
    per_row = 3 * d * d * itemsize + 64 * d
    return max(1, min(rows, budget_bytes // per_row))


def prune_layer(
    W: Any, H: Any, *, sparsity: float, method: str = "obc", damp: float = 0.01,
    budget_bytes: int = 1 << 30,
) -> PruneResult:
    """Prune W [G, r, d] (G Hessian groups of r rows) to `sparsity` given H [G, d, d].

    method "obc": ExactOBS greedy per row + global selection across all rows and groups.
    method "magnitude": smallest |w| of the layer.
    """
    xp = array_module(W, H)
    G, r, d = W.shape
    count = int(round(sparsity * G * r * d))
    H64 = H.astype(xp.float64)
    baseline = magnitude_prune(W.astype(xp.float64), count)
    base_loss = layer_loss(W, baseline, H64)
    if method == "magnitude":
        return PruneResult(
            baseline, baseline, base_loss, base_loss, 0.0, _zeros(baseline), 0, 0.0, ()
        )
    prep: Prepared = prepare(W, H64, damp)
    rows = prep.W.reshape(G * r, d)  # [R, d]
    group = xp.repeat(xp.arange(G), r)  # [R]
    rb = rows_per_batch(d, G * r, budget_bytes)
    tr = greedy_traces(rows, prep.Hinv, group, rb, count)
    counts = select_counts(tr.keys, count)
    W_hat = rebuild(rows, prep.Hinv, group, tr.order, counts, rb).reshape(G, r, d)
    steps = xp.arange(d)[None, :] < counts[:, None]
    obs_loss = float(xp.where(steps, tr.losses, 0.0).sum())
    loss = layer_loss(W, W_hat, H64)
    return PruneResult(
        W_hat, baseline, loss, base_loss, obs_loss, _zeros(W_hat), prep.dead, prep.damp,
        prep.escalations, tr.steps_run, tr.rerun_rows,
    )


def _zeros(W: Any) -> int:
    xp = array_module(W)
    return int((W == 0).sum()) if math.prod(W.shape) else 0
