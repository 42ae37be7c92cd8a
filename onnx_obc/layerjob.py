"""One layer's solve as an engine task (engine/): what crosses to a worker (the layer's
W, its Hessian mean and the solver settings) and what comes back (the solution with host
arrays, the effective rank of H or None, the seconds). solve.py builds the jobs and assembles
the results; `solve_job` is the same code on every engine, so the results are too."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from .backend import Backend, array_module
from .layers import Layer
from .quant import Grid, QuantSpec
from .solvers import solve_layer
from .solvers.blocked import solve_blocked


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


def solve_job(job: LayerJob, backend: Backend) -> tuple[Any, int | None, float]:
    """Solve one layer on `backend` (an engine's worker): the solution with its arrays on
    the host, the effective rank of H, and the seconds it took."""
    t = time.perf_counter()
    backend = backend.for_width(job.W.shape[-1])
    W, H = backend.to_device(job.W), backend.to_device(job.H)
    res = (solve_blocked if job.blocked else solve_layer)(
        W, H, structure=job.structure, quant=job.quant, method=job.method, damp=job.damp,
        budget_bytes=job.budget_bytes, act_order=job.act_order)
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
