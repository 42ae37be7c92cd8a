"""Blocked OBS for layers whose full Hessian (or exact solve) does not fit: H is taken as
block-diagonal over k contiguous column blocks of bs = d / k columns (groups of input
channels, every kernel position of each: W's (Cin, *kernel) column order), and the layer is
solved exactly within each block. Only the diagonal blocks are ever held: H [G, k, bs, bs]
(hessian.BlockHessianAccumulator), G * d * bs * 8 bytes instead of G * d^2 * 8.

Each (Hessian group g, block j) pair is a virtual Hessian group of the same rows, so the
layer becomes W_v [G * k, r, bs] with H_v [G * k, bs, bs] and the unblocked machinery runs on
it unchanged: ExactOBS with the global selection across all rows AND blocks (losses under a
block-diagonal H add up over blocks, so the selection is still exact for that H), then OBQ;
or the fast path (GPTQ / SparseGPT) per block. The quantization grid is fitted on the full
rows (per output channel, or per column group with group_size dividing bs), so the exported
grid is the same kind as unblocked. With k = 1 the solution equals solve_layer's (pruning,
GPTQ, prune + OBQ, each with the code descent of refine.py where solve_layer runs it)
exactly. Losses are under the block-diagonal H (the only one held), for the
solution and the baseline alike; the baseline's grid is the weight-space clip search.
"""

from __future__ import annotations

from typing import Any

from ..backend import array_module
from ..errors import ConfigError
from ..quant import Grid, QuantSpec, codes, fit_grid, rtn
from .baselines import magnitude_prune
from .fast import greedy_traces
from .gptq import BLOCK, gptq_rows
from .prepare import layer_loss, prepare, rows_per_batch
from .choose import exact_pays
from .refine import descend, wanted
from .rules import QuantRule
from .solution import LayerSolution, Stage, count_zeros
from .structures import Unstructured
from .unstructured import obs_prune

__all__ = ["solve_blocked", "to_blocks", "from_blocks"]


def to_blocks(A: Any, k: int) -> Any:
    """[G, r, d] -> [G * k, r, bs]: block j of group g is virtual group g * k + j."""
    G, r, d = A.shape
    return A.reshape(G, r, k, d // k).transpose(0, 2, 1, 3).reshape(G * k, r, d // k)


def from_blocks(A: Any, G: int) -> Any:
    """[G * k, r, bs] -> [G, r, k * bs], the inverse of to_blocks."""
    Gk, r, bs = A.shape
    k = Gk // G
    return A.reshape(G, k, r, bs).transpose(0, 2, 1, 3).reshape(G, r, k * bs)


def _block_grid(grid: Grid, G: int, r: int, k: int) -> Grid:
    """The full rows' grid [G * r rows, d columns] seen on the virtual rows [G * k * r, bs]."""
    s, z = grid.columns()  # [R, d]
    d = s.shape[1]
    gv = min(grid.group_size, d // k)
    sv = to_blocks(s.reshape(G, r, d), k).reshape(G * k * r, d // k)[:, ::gv]
    zv = to_blocks(z.reshape(G, r, d), k).reshape(G * k * r, d // k)[:, ::gv]
    return Grid(sv, zv, grid.qmin, grid.qmax, gv)


def solve_blocked(W: Any, H: Any, *, structure: Any = None, quant: QuantSpec | None = None,
                  method: str = "obc", damp: float = 0.01, budget_bytes: int = 1 << 30,
                  act_order: bool = False) -> LayerSolution:
    """Compress W [G, r, d] given the diagonal blocks H [G, k, bs, bs] (k * bs = d) of its
    Hessians. structure: None or Unstructured(sparsity) (other kinds raise ConfigError);
    method: "obc" (ExactOBS / OBQ within each block), "gptq" (the fast path per block),
    "magnitude" / "rtn" (the baseline)."""
    xp = array_module(W, H)
    G, r, d = W.shape
    k, bs = H.shape[1], H.shape[2]
    if k * bs != d or H.shape[0] != G:
        raise ValueError(f"H {tuple(H.shape)} is not the diagonal blocks of a layer {G}x{r}x{d}")
    st = Unstructured(0.0) if structure is None else structure
    if type(st) is not Unstructured:
        raise ConfigError(f"a layer whose Hessian is solved in blocks takes unstructured "
                          f"sparsity and/or quantization, not {type(st).__name__}; raise "
                          "run.memory_budget_mb or exclude the layer")
    g = quant.group_size if quant else None
    if g and bs % g and g % bs:
        raise ConfigError(f"the quantization group size {g} and the Hessian block of {bs} "
                          "columns must divide one another")
    count = st.removals(G, r, d)
    Wv = to_blocks(W, k)  # [G*k, r, bs]
    Hv = H.reshape(G * k, bs, bs).astype(xp.float64, copy=False)  # [G*k, bs, bs]
    R = G * k * r
    base, base_grid, base_codes = _baseline(W, count, quant)
    base_loss = layer_loss(Wv, to_blocks(base, k), Hv)
    common = dict(baseline=base, baseline_loss=base_loss, baseline_codes=base_codes,
                  baseline_grid=base_grid)
    if method in ("magnitude", "rtn"):
        return LayerSolution(W=base, loss=base_loss, obs_loss=0.0, zeros=count_zeros(base),
                             dead=0, damp=0.0, escalations=(), grid=base_grid,
                             codes=base_codes, method_used="rtn" if quant else "magnitude",
                             **common)
    if method not in ("obc", "gptq"):
        raise ConfigError(f"solver.method {method!r} cannot solve a blocked layer (obc, gptq, "
                          "magnitude or rtn)")
    inverse = method != "gptq" or (G * k > 1 and bs <= BLOCK)  # as gptq_solver
    prep = prepare(Wv, Hv, damp, inverse=inverse, factor=not inverse)
    rows = prep.W.reshape(R, bs)  # [R, bs] float32
    group = xp.repeat(xp.arange(G * k), r)  # [R] virtual group of each row
    rpb = rows_per_batch(bs, R, budget_bytes)
    obs_loss, steps, reruns, prune_loss, grid, out_codes = 0.0, 0, 0, None, None, None
    used = ""
    full = lambda rv: from_blocks(rv.reshape(G * k, r, bs), G).reshape(G * r, d)  # noqa: E731
    if method == "gptq":
        grid = fit_grid(full(rows), quant) if quant else None  # on the dense weights
        out, cv, obs_loss = gptq_rows(rows, prep, _block_grid(grid, G, r, k) if grid else None,
                                      st.sparsity or 0.0, act_order)
        rows, used = out, "gptq+act-order" if act_order else "gptq"
        refine = wanted(quant, exact=False)  # reference GPTQ unless asked
        pinned = (rows == 0) if quant and st.sparsity else None  # pruned (and 0-coded)
    else:  # as solve_layer: not for 8-bit quantization alone (its fast path)
        refine = wanted(quant, exact=True) and bool(count or exact_pays(quant.bits))
        if count:
            p = obs_prune(Stage(rows, prep.Hinv, group, rpb), st, count)
            rows = p.rows.astype(xp.float32)
            obs_loss, steps, reruns = p.obs_loss, p.steps_run, p.rerun_rows
            prune_loss = layer_loss(Wv, rows.reshape(G * k, r, bs), Hv)
            used = "obs"
        pinned = (rows == 0) if count else None  # the pruned weights
        if quant:
            grid = fit_grid(full(rows), quant)  # fixed before the loop, on the pruned rows
            gv = _block_grid(grid, G, r, k)
            s, z = gv.columns()  # [R, bs]
            rule = QuantRule(s.astype(xp.float32), z.astype(xp.float32), gv.qmin, gv.qmax,
                             (rows == 0) if count else None)
            tq = greedy_traces(rows, prep.Hinv, group, rpb, None, rule=rule)
            cv = codes(tq.final, gv)
            rows = s * (cv - z)  # exactly on the grid
            obs_loss += float(tq.losses.sum())
            used = "obs+obq" if count else "obq"
    Wv_hat = rows.astype(xp.float64).reshape(G * k, r, bs)
    if refine:  # the H-aware code descent within each block; pruned weights stay 0
        Wv_hat, cv, used, obs_loss, _ = descend(
            Wv, Hv, _block_grid(grid, G, r, k), cv.reshape(G * k, r, bs), Wv_hat, used, obs_loss,
            None if pinned is None else pinned.reshape(Wv.shape))
    if grid is not None:
        out_codes = from_blocks(cv.reshape(G * k, r, bs), G)
    W_hat = from_blocks(Wv_hat, G)
    return LayerSolution(
        W=W_hat, loss=layer_loss(Wv, Wv_hat, Hv), obs_loss=obs_loss, zeros=count_zeros(W_hat),
        dead=prep.dead, damp=prep.damp, escalations=prep.escalations, steps_run=steps,
        rerun_rows=reruns, prune_loss=prune_loss, grid=grid, codes=out_codes,
        method_used=used, **common)


def _baseline(W: Any, count: int, quant: QuantSpec | None) -> tuple[Any, Any, Any]:
    """Magnitude pruning over the whole layer, then RTN on a grid fitted to the result (the
    weight-space clip search: the full H is not held): W [G, r, d] -> (base, grid, codes)."""
    xp = array_module(W)
    G, r, d = W.shape
    base = W.astype(xp.float64)
    base = magnitude_prune(base, count) if count else base
    if not quant:
        return base, None, None
    grid = fit_grid(base.reshape(G * r, d), quant)
    base = rtn(base.reshape(G * r, d), grid)  # zeros stay 0
    return base.reshape(G, r, d), grid, codes(base, grid).reshape(G, r, d)
