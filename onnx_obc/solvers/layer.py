"""`solve_layer`: W [G, r, d] and H [G, d, d] in, a `LayerSolution` out, dispatched through
the registry on (type of the structure, method); and the staged "obc" pipeline: the
structure's pruning stage (ExactOBS, global selection across rows), then OBQ on a grid fixed
before the loop, on the surviving weights with the zeros kept (quantization alone: the best of
OBQ, GPTQ and RTN per layer, and at 8 bits only GPTQ / RTN; choose.py). Below 8 bits the
quantized weights then go through the H-aware code descent (refine.py; QuantSpec.refine=False
switches it off), which can only lower the loss and keeps pruned weights at 0."""

from __future__ import annotations

from typing import Any

from ..backend import array_module
from ..errors import ConfigError
from ..quant import QuantSpec, codes, fit_grid
from .baselines import baseline
from .choose import Candidate, best_quantized, exact_pays, fast_quantized, refined
from .fast import greedy_traces
from .gptq import BLOCK
from .prepare import layer_loss, prepare, stage_of
from .refine import wanted
from .registry import register_pipeline, solver_for
from .rules import QuantRule
from .solution import LayerSolution, Task, count_zeros
from .structures import Unstructured

__all__ = ["solve_layer"]


def solve_layer(
    W: Any, H: Any, *, structure: Any = None, quant: QuantSpec | None = None,
    method: str = "obc", damp: float = 0.01, budget_bytes: int = 1 << 30,
    act_order: bool = False, pruned: LayerSolution | None = None,
) -> LayerSolution:
    """Compress W [G, r, d] (G Hessian groups of r rows) given H [G, d, d].

    structure: what the pruning stage removes (structures.py: Unstructured(sparsity),
    NM(n, m) or Blocks(size, sparsity) bound to the layer's column grouping; None: nothing);
    quant: the weight grid (None: no quantization).

    method "obc": ExactOBS / OBQ. "gptq": the fast path (GPTQ / SparseGPT, one pass).
    "magnitude" / "rtn": the baselines (magnitude pruning, round to nearest), which are also
    computed alongside the others for the report. Other (structure type, method) pairs come
    from the registry (registry.py); unknown ones raise ConfigError.

    pruned: the pruning-only solution of the same W, H, structure and damp; its weights start
    the quantization stage, which is then the only stage run (the result is the same as
    running both; used to quantize one pruned layer at several bit widths).
    """
    xp = array_module(W, H)
    G, r, d = W.shape
    st = Unstructured(0.0) if structure is None else structure
    solve = solver_for(st, method)
    H64 = H.astype(xp.float64)
    count = st.removals(G, r, d)
    return solve(Task(W=W, H=H64, structure=st, count=count, quant=quant, damp=damp,
                      budget_bytes=budget_bytes, act_order=act_order, pruned=pruned,
                      baseline=baseline(W, H64, st, count, quant)))


@register_pipeline("obc")
def obs_pipeline(task: Task, prune: Any) -> LayerSolution:
    """ExactOBS pruning (`prune`, registered for the structure's type), then OBQ."""
    W, H64, count, quant, pruned = task.W, task.H, task.count, task.quant, task.pruned
    xp = array_module(W, H64)
    G, r, d = W.shape
    fast = bool(quant) and not count and not exact_pays(quant.bits)  # 8 bits: GPTQ or RTN
    if fast and H64.ndim == 2:  # diag(H) alone (tier.diagonal_hessians): GPTQ is RTN
        return _diagonal(task)
    # (GPTQ factors H itself there, gptq.inverse_factor; H^-1 only for the depthwise groups)
    inverse = not fast or (G > 1 and d <= BLOCK)
    prep = prepare(W, H64, task.damp, inverse=inverse, factor=not inverse)
    stage = stage_of(prep, task.budget_bytes)
    rows = stage.rows  # [R, d] float32
    obs_loss, steps_run, reruns, prune_loss = 0.0, 0, 0, None
    if count and pruned is not None:
        if tuple(pruned.W.shape) != (G, r, d) or pruned.zeros < count:
            raise ConfigError("pruned: not a pruning-only solution of this layer at this "
                              "sparsity")
        rows = pruned.W.reshape(G * r, d).astype(xp.float32)
        obs_loss, steps_run, reruns = pruned.obs_loss, pruned.steps_run, pruned.rerun_rows
        prune_loss = pruned.loss
    elif count:
        p = prune(stage, task.structure, count)
        rows = p.rows.astype(xp.float32)
        obs_loss, steps_run, reruns = p.obs_loss, p.steps_run, p.rerun_rows
        prune_loss = layer_loss(W, rows.reshape(G, r, d), H64)
    grid, out_codes, method_used = None, None, ("obs" if count else "")
    b, loss = task.baseline, None  # loss: the kept candidate's, when it is the final one
    if fast:
        obq = fast_quantized(W, H64, prep, b)
        grid, out_codes, method_used, obs_loss = obq.grid, obq.codes, obq.name, obq.obs_loss
        rows, loss = obq.W.reshape(G * r, d), obq.loss  # float64: the same tr(dW H dW^T)
    elif quant:
        grid = fit_grid(rows, quant)  # fixed before the loop, on the (pruned) weights
        s, z = grid.columns()
        pinned = (rows == 0) if count else None
        rule = QuantRule(s.astype(xp.float32), z.astype(xp.float32), grid.qmin, grid.qmax,
                         pinned)
        tq = greedy_traces(rows, prep.Hinv, stage.group, stage.rows_per_batch, None, rule=rule)
        out_codes = codes(tq.final, grid).reshape(G, r, d)
        W_hat = (s * (out_codes.reshape(G * r, d) - z)).reshape(G, r, d)  # exactly on the grid
        obq = Candidate("obs+obq" if count else "obq", W_hat, grid, out_codes,
                        float(tq.losses.sum()), layer_loss(W, W_hat, H64))
        refine = wanted(quant, exact=True)  # on unless switched off
        if not count:  # quantization only: keep the least loss of OBQ, GPTQ, RTN
            obq = best_quantized(W, H64, prep, obq, b, refine)
        elif refine:  # the pruned weights stay at exactly 0
            obq = refined(obq, W, H64, pinned.reshape(G, r, d))
        grid, out_codes, method_used = obq.grid, obq.codes, obq.name
        obs_loss += obq.obs_loss
        rows = obq.W.reshape(G * r, d)
    W_hat = rows.astype(xp.float64).reshape(G, r, d)
    return LayerSolution(
        W=W_hat, baseline=b.W, loss=layer_loss(W, W_hat, H64) if loss is None else loss,
        baseline_loss=b.loss,
        obs_loss=obs_loss, zeros=count_zeros(W_hat), dead=prep.dead, damp=prep.damp,
        escalations=prep.escalations, steps_run=steps_run, rerun_rows=reruns,
        prune_loss=prune_loss, grid=grid, codes=out_codes, baseline_codes=b.codes,
        baseline_grid=b.grid, method_used=method_used)


def _diagonal(task: Task) -> LayerSolution:
    """8 bits, H [G, d] its diagonal: the baseline (RTN on the grid searched under diag(H),
    never worse than min-max under it) is the solution; GPTQ under a diagonal H compensates
    nothing, so it would be the same weights. Losses are under diag(H)."""
    b = task.baseline
    dead = int((task.H <= 0).sum())
    return LayerSolution(W=b.W, baseline=b.W, loss=b.loss, baseline_loss=b.loss, obs_loss=0.0,
                         zeros=count_zeros(b.W), dead=dead, damp=0.0, escalations=(),
                         grid=b.grid, codes=b.codes, baseline_codes=b.codes,
                         baseline_grid=b.grid, method_used="rtn/diag-H")
