"""One layer's solve as an engine task (engine/): what crosses to a worker (the layer's
W, its Hessian mean, the means of two halves of its samples where it has them, and the
solver settings) and what comes back (the solution with host arrays, the effective rank of
H or None, the seconds). solve.py builds the jobs and assembles the results; `solve_job` is
the same code on every engine, so the results are too. With halves, H is first shrunk
toward its diagonal by the level they choose (solvers/shrink.py; the fast path scores the
levels); the solution's losses stay those under H itself."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from .backend import Backend, array_module
from .layers import Layer
from .quant import Grid, QuantSpec
from .solvers import shrink, solve_layer
from .solvers.blocked import solve_blocked
from .solvers.prepare import layer_loss
from .solvers.shrink import shrunk
from .solvers.structures import NM, Unstructured


@dataclass(frozen=True)
class LayerJob:
    """One layer's solve as an engine task (engine/): W [G, r, d] float32 and H [G, d, d]
    (the Hessian mean, undampened; host or the run's device) with the solver settings."""

    W: Any
    H: Any
    structure: Any
    quant: QuantSpec | None
    method: str
    damp: float
    budget_bytes: int
    act_order: bool
    blocked: bool = False  # H holds the diagonal column blocks only (solvers/blocked.py)
    rank: bool = True  # compute the effective rank of H (False: 8-bit quantization alone)
    folds: tuple[Any, Any] | None = None  # (H_a, H_b) [G, d, d]: two halves' Hessian means


def solve_job(job: LayerJob, backend: Backend) -> tuple[Any, int | None, float]:
    """Solve one layer on `backend` (an engine's worker): the solution with its arrays on
    the host, the effective rank of H, and the seconds it took."""
    t = time.perf_counter()
    backend = backend.for_width(job.W.shape[-1])
    W, H = backend.to_device(job.W), backend.to_device(job.H)
    level = _shrink_level(job, W, backend)
    Hs, pruned = shrunk(H, level), None
    settings = dict(method=job.method, damp=job.damp, budget_bytes=job.budget_bytes,
                    act_order=job.act_order)
    if level and job.method == "obc" and job.structure is not None and job.quant is not None:
        pruned = solve_layer(W, Hs, structure=job.structure, **settings)  # for prune_loss
    res = (solve_blocked(W, H, structure=job.structure, quant=job.quant, **settings)
           if job.blocked else solve_layer(W, Hs, structure=job.structure, quant=job.quant,
                                           pruned=pruned, **settings))
    if level:  # the losses under H itself, as every other layer's
        res = replace(res, loss=layer_loss(W, res.W, H), shrink=level,
                      baseline_loss=layer_loss(W, res.baseline, H),
                      prune_loss=None if pruned is None else layer_loss(W, pruned.W, H))
    host = {k: None if getattr(res, k) is None else backend.to_host(getattr(res, k))
            for k in ("W", "baseline", "codes", "baseline_codes")}
    grids = {k: None if getattr(res, k) is None else host_grid(getattr(res, k), backend)
             for k in ("grid", "baseline_grid")}
    backend.sync()
    # the full H is not held in blocks; at 8 bits alone its eigvalsh would outweigh the solve
    rank = effective_rank(H) if job.rank and not job.blocked else None
    del H
    backend.free()
    return replace(res, **host, **grids), rank, time.perf_counter() - t


def _shrink_level(job: LayerJob, W: Any, backend: Backend) -> float:
    """The shrinkage level the job's halves choose (0 without halves, or for a structure
    `searches` leaves out: blocks)."""
    if job.folds is None or not searches(job.structure, job.blocked):
        return 0.0
    Ha, Hb = (backend.to_device(h) for h in job.folds)

    def fast(W_: Any, H_: Any) -> Any:  # [G, r, d] under H_ by GPTQ / SparseGPT (N:M too)
        return solve_layer(W_, H_, structure=job.structure, quant=job.quant, method="gptq",
                           damp=job.damp, budget_bytes=job.budget_bytes,
                           act_order=job.act_order).W

    return shrink.choose(W, Ha, Hb, fast)[0]


def searches(structure: Any, blocked: bool) -> bool:
    """Whether a layer with halves searches a shrinkage level: on its full Hessian, with no
    structure, unstructured or N:M (the fast path scores the levels)."""
    return not blocked and type(structure) in (type(None), Unstructured, NM)


def solve_cost(L: Layer) -> float:
    """The predicted cost of solving L: rows * d^3 (ExactOBS's order)."""
    G, r, d = L.matrix_shape
    return float(G * r) * float(d) ** 3


def effective_rank(H: Any) -> int:
    """Smallest over groups of the number of eigenvalues of H [G, d, d] (undampened) above
    1e-6 of the largest: how many input directions the calibration data spans."""
    xp = array_module(H)
    ev = xp.linalg.eigvalsh(H.astype(xp.float64))  # [G, d] ascending
    top = xp.maximum(ev[:, -1:], 0.0)
    return int((ev > 1e-6 * top).sum(axis=1).min()) if top.size else 0


def host_grid(g: Grid, backend: Backend) -> Grid:
    return Grid(backend.to_host(g.scale), backend.to_host(g.zero), g.qmin, g.qmax, g.group_size)
