"""What crosses the solver seam: the layer task a registered solver receives, the stage a
pruner works on, and the solution `solve_layer` returns. Notation: W [G, r, d] (G Hessian
groups of r rows, d inputs), H [G, d, d]; rows flattened to R = G * r."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..quant import Grid, QuantSpec


@dataclass(frozen=True, kw_only=True)
class LayerSolution:
    W: Any  # [G, r, d] compressed weights (float64, exact zeros, values on the grid)
    baseline: Any  # [G, r, d] magnitude pruning and/or RTN at the same settings
    loss: float  # E = tr(dW H dW^T) with the undampened H
    baseline_loss: float
    obs_loss: float  # sum of the recorded greedy step losses (dampened H)
    zeros: int
    dead: int
    damp: float
    escalations: tuple[float, ...]
    steps_run: int = 0  # pruning greedy steps computed (rows * cols when nothing skipped)
    rerun_rows: int = 0
    prune_loss: float | None = None  # after the pruning stage (compound runs)
    grid: Grid | None = None  # over G * r rows
    codes: Any = None  # [G, r, d] integer codes of W on `grid`
    baseline_codes: Any = None
    baseline_grid: Grid | None = None  # the baseline's grid (RTN), for exporting it as QDQ
    stages: dict[str, float] = field(default_factory=dict)
    method_used: str = ""  # what produced W: "obq", "gptq", "gptq+act-order", "rtn", ...
    shrink: float = 0.0  # H shrunk toward its diagonal by this level first (shrink.py)


@dataclass(frozen=True, kw_only=True)
class Baseline:
    """Magnitude pruning at the structure and / or RTN at the spec: computed for every
    method, reported next to it (and returned by the methods "magnitude" / "rtn")."""

    W: Any  # [G, r, d] float64
    loss: float  # tr(dW H dW^T), undampened H
    grid: Grid | None  # RTN's grid over the G * r rows (None without quantization)
    codes: Any  # [G, r, d] int32 codes on `grid`, or None


@dataclass(frozen=True, kw_only=True)
class Task:
    """One layer to solve: what every registered solver receives."""

    W: Any  # [G, r, d] as given (float32 or float64)
    H: Any  # [G, d, d] float64, undampened
    structure: Any  # what the pruning stage removes (Unstructured(0) when nothing)
    count: int  # weights to remove: structure.removals(G, r, d)
    quant: QuantSpec | None
    damp: float
    budget_bytes: int
    act_order: bool
    pruned: LayerSolution | None  # a pruning-only solution that starts the quantization
    baseline: Baseline


@dataclass(frozen=True)
class Stage:
    """What a pruning stage (or a tracer) works on, from solvers.prepare."""

    rows: Any  # [R, d] float32, dead columns zeroed
    Hinv: Any  # [G, d, d] float64 inverse of the dampened H
    group: Any  # [R] the Hessian group of each row
    rows_per_batch: int  # rows whose d x d inverses fit in the memory budget at once


@dataclass(frozen=True, kw_only=True)
class Pruned:
    """A pruning stage's result."""

    rows: Any  # [R, d] rows on their masks (exact zeros), float64
    obs_loss: float  # sum of the selected step losses (dampened H)
    steps_run: int  # greedy steps computed (in the stage's unit: weights or blocks)
    rerun_rows: int = 0  # rows re-run after a sampled threshold stopped them too early


def count_zeros(W: Any) -> int:
    return int((W == 0).sum()) if math.prod(W.shape) else 0
