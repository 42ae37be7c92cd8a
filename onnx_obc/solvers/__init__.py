"""Layer solvers: pure array math (NumPy or CuPy), no onnx, onnxruntime, I/O or printing.

`solve_layer` is the entry point: W [G, r, d] and H [G, d, d] in, a `LayerSolution` out.
It prunes (ExactOBS, global selection across rows), quantizes (OBQ on a grid fixed before the
loop), or both (pruning first, then OBQ on the surviving weights with the zeros kept).
Baselines at the same settings: magnitude pruning and round-to-nearest.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..backend import array_module
from ..errors import ConfigError
from ..quant import Grid, QuantSpec, codes, fit_grid, rtn
from .blocks import block_magnitude, block_prune
from .fast import greedy_traces
from .gptq import gptq
from .magnitude import magnitude_prune
from .prepare import Prepared, layer_loss, prepare
from .rules import QuantRule
from .select import rebuild, select_counts
from .structured import nm_magnitude, nm_prune

__all__ = ["LayerSolution", "Structure", "solve_layer", "prune_layer", "prepare", "layer_loss",
           "magnitude_prune", "rows_per_batch"]


@dataclass(frozen=True)
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


PruneResult = LayerSolution  # the name issue 2's callers know


def rows_per_batch(d: int, rows: int, budget_bytes: int, itemsize: int = 4) -> int:
    """Rows whose d x d inverse Hessians (plus temporaries) fit in the budget."""
    per_row = 3 * d * d * itemsize + 64 * d
    return max(1, min(rows, budget_bytes // per_row))


def solve_layer(
    W: Any, H: Any, *, sparsity: float | None = None, quant: QuantSpec | None = None,
    method: str = "obc", damp: float = 0.01, budget_bytes: int = 1 << 30,
    act_order: bool = False, structure: Structure | None = None,
    pruned: LayerSolution | None = None,
) -> LayerSolution:
    """Compress W [G, r, d] (G Hessian groups of r rows) given H [G, d, d].

    structure: N:M (n zeros per group of m columns; the sparsity is n/m) or blocks of b
    columns (`sparsity` of the blocks, selected globally), with the column grouping given.

    method "obc": ExactOBS / OBQ. "gptq": the fast path (GPTQ / SparseGPT, one pass).
    "magnitude" / "rtn": the baselines (magnitude pruning, round to nearest), which are also
    computed alongside the others for the report.

    pruned: the pruning-only solution of the same W, H, sparsity / structure and damp; its
    weights start the quantization stage, which is then the only stage run (the result is
    the same as running both; used to quantize one pruned layer at several bit widths).
    """
    xp = array_module(W, H)
    G, r, d = W.shape
    H64 = H.astype(xp.float64)
    W64 = W.astype(xp.float64)
    st = structure
    if st is not None and st.kind == "nm":
        sparsity = st.n / st.m
    count = int(round(sparsity * G * r * d)) if sparsity else 0
    if st is not None and st.kind == "block":
        count = st.size * int(round(sparsity * G * r * d / st.size)) if sparsity else 0
    base = _magnitude(W64, count, st) if count else W64
    base_grid = fit_grid(base.reshape(G * r, d), quant) if quant else None
    if quant:
        base = rtn(base.reshape(G * r, d), base_grid).reshape(G, r, d)  # zeros stay 0
    base_loss = layer_loss(W, base, H64)
    base_codes = codes(base.reshape(G * r, d), base_grid).reshape(G, r, d) if quant else None
    if method in ("magnitude", "rtn"):
        return LayerSolution(base, base, base_loss, base_loss, 0.0, _zeros(base), 0, 0.0, (),
                             grid=base_grid, codes=base_codes, baseline_codes=base_codes,
                             baseline_grid=base_grid)
    prep: Prepared = prepare(W, H64, damp)
    rows = prep.W.reshape(G * r, d)  # [R, d] float32
    if method == "gptq":
        if st is not None:
            raise ConfigError("--method gptq supports unstructured pruning only; use the "
                              "default method for N:M and blocks")
        return dataclasses.replace(
            _fast_path(W, H64, prep, rows, sparsity or 0.0, quant, act_order, base, base_loss,
                       base_codes), baseline_grid=base_grid)
    group = xp.repeat(xp.arange(G), r)  # [R]
    rb = rows_per_batch(d, G * r, budget_bytes)
    obs_loss, steps_run, reruns, prune_loss = 0.0, 0, 0, None
    if count and pruned is not None:
        if tuple(pruned.W.shape) != (G, r, d) or pruned.zeros < count:
            raise ConfigError("pruned: not a pruning-only solution of this layer at this "
                              "sparsity")
        rows = pruned.W.reshape(G * r, d).astype(xp.float32)
        obs_loss, steps_run, reruns = pruned.obs_loss, pruned.steps_run, pruned.rerun_rows
        prune_loss = pruned.loss
    elif count and st is not None:  # N:M or blocks
        rows, obs_loss = _structured(rows, prep.Hinv, group, rb, st, count)
        rows = rows.astype(xp.float32)
        steps_run = count // (st.size if st.kind == "block" else 1)
        prune_loss = layer_loss(W, rows.reshape(G, r, d), H64)
    elif count:
        tr = greedy_traces(rows, prep.Hinv, group, rb, count)
        counts = select_counts(tr.keys, count)
        rows = rebuild(rows, prep.Hinv, group, tr.order, counts, rb).astype(xp.float32)
        steps = xp.arange(d)[None, :] < counts[:, None]
        obs_loss = float(xp.where(steps, tr.losses, 0.0).sum())
        steps_run, reruns = tr.steps_run, tr.rerun_rows
        prune_loss = layer_loss(W, rows.reshape(G, r, d), H64)
    grid, out_codes = None, None
    if quant:
        grid = fit_grid(rows, quant)  # fixed before the loop, on the (pruned) weights
        s, z = grid.columns()
        pinned = (rows == 0) if count else None
        rule = QuantRule(s.astype(xp.float32), z.astype(xp.float32), grid.qmin, grid.qmax,
                         pinned)
        tq = greedy_traces(rows, prep.Hinv, group, rb, None, rule=rule)
        obs_loss += float(tq.losses.sum())
        rows = tq.final
        out_codes = codes(rows, grid).reshape(G, r, d)
        s64, z64 = grid.columns()
        rows = s64 * (out_codes.reshape(G * r, d) - z64)  # exactly on the grid
    W_hat = rows.astype(xp.float64).reshape(G, r, d)
    return LayerSolution(
        W_hat, base, layer_loss(W, W_hat, H64), base_loss, obs_loss, _zeros(W_hat), prep.dead,
        prep.damp, prep.escalations, steps_run, reruns, prune_loss, grid, out_codes, base_codes,
        baseline_grid=base_grid,
    )


@dataclass(frozen=True)
class Structure:
    """N:M (kind "nm": n zeros in every group of m) or blocks (kind "block" of `size`
    columns); col_groups [d] gives each column's group / block, along the axis the runtime
    reads (conv: consecutive input channels at one kernel position)."""

    kind: str
    col_groups: Any
    n: int = 0
    m: int = 0
    size: int = 0


def _magnitude(W64: Any, count: int, st: Structure | None) -> Any:
    if st is None:
        return magnitude_prune(W64, count)
    G, r, d = W64.shape
    rows = W64.reshape(G * r, d)
    if st.kind == "nm":
        return nm_magnitude(rows, st.n, st.col_groups).reshape(G, r, d)
    return block_magnitude(rows, st.col_groups, count // st.size).reshape(G, r, d)


def _structured(rows: Any, Hinv: Any, group: Any, rb: int, st: Structure, count: int
                ) -> tuple[Any, float]:
    xp = array_module(rows, Hinv)
    if st.kind == "nm":
        W_hat, losses, _ = nm_prune(rows, Hinv, group, rb, st.n, st.m, st.col_groups)
        return W_hat, float(losses.sum())
    W_hat, losses, _, counts = block_prune(rows, Hinv, group, rb, st.size, st.col_groups,
                                           count // st.size)
    steps = xp.arange(losses.shape[1])[None, :] < counts[:, None]
    return W_hat, float(xp.where(steps, losses, 0.0).sum())


def _fast_path(W: Any, H64: Any, prep: Prepared, rows: Any, sparsity: float,
               quant: QuantSpec | None, act_order: bool, base: Any, base_loss: float,
               base_codes: Any) -> LayerSolution:
    xp = array_module(W, H64)
    G, r, d = W.shape
    grid = fit_grid(rows, quant) if quant else None  # on the dense weights, fixed
    s, z = grid.columns() if grid else (None, None)
    out = xp.empty((G * r, d), dtype=xp.float64)
    obs_loss = 0.0
    for g in range(G):
        sl = slice(g * r, (g + 1) * r)
        out[sl], loss = gptq(
            rows[sl], prep.Hinv[g], scale=None if s is None else s[sl],
            zero=None if z is None else z[sl], qmin=grid.qmin if grid else 0,
            qmax=grid.qmax if grid else 0, sparsity=sparsity, act_order=act_order,
            diagH=xp.diagonal(prep.H[g]))
        obs_loss += loss
    out_codes = None
    if grid:
        out_codes = codes(out, grid).reshape(G, r, d)
        s64, z64 = grid.columns()
        out = s64 * (out_codes.reshape(G * r, d) - z64)
    W_hat = out.reshape(G, r, d)
    return LayerSolution(
        W_hat, base, layer_loss(W, W_hat, H64), base_loss, obs_loss, _zeros(W_hat), prep.dead,
        prep.damp, prep.escalations, grid=grid, codes=out_codes, baseline_codes=base_codes)


def prune_layer(W: Any, H: Any, *, sparsity: float, method: str = "obc", damp: float = 0.01,
                budget_bytes: int = 1 << 30) -> LayerSolution:
    """Pruning only (issue 2's entry point)."""
    return solve_layer(W, H, sparsity=sparsity, method=method, damp=damp,
                       budget_bytes=budget_bytes)


def _zeros(W: Any) -> int:
    return int((W == 0).sum()) if math.prod(W.shape) else 0
