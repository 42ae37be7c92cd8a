"""What solving a layer costs, predicted before capture: the bytes of its Hessian and of the
solver's working set, and the seconds of ExactOBS / OBQ and of the fast path (GPTQ /
SparseGPT), from the layer's shape and rates measured on this machine.

Work model (Gv Hessians of n columns, R rows in all, nb row batches; unblocked Gv = G,
n = d; blocked Gv = G * k, n = bs):
    factorisation    Gv * t_prep(n)          Cholesky, inverse (+ G * t_eig(d) for the rank)
    ExactOBS greedy  2 R n^3 w flops (the deferred folds, float32 batched GEMM)
                     + R n^2 w element passes + n nb steps (Python-level, per batch)
                     w: the fraction of greedy steps computed (rows stop early when pruning)
    rebuild          R (s n)^3 / 3 flops (each row's system on its removed set)
    GPTQ / SparseGPT Gv (t_chol(n) + n column steps) + R n min(n, 128) element updates
                     + 2 R n^2 flops (lazy block updates)
    grid search      R d element passes per clip candidate
Every rate is measured by `calibrate` (a ~0.1-0.3 s micro-benchmark of the same kernels the
solvers run, cached per process and array module); nothing here is a guessed constant but
the shape of the model. bench/cost_model.py compares predictions with measured layer times.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

# the fraction of greedy steps ExactOBS pruning computes: rows stop once their later steps
# cannot be selected (fast.py); measured on the bench models (bench/cost_model.py): about
# the sparsity plus a margin, all steps for quantization
PRUNE_WORK_MARGIN = 0.2
FP64, FP32 = 8, 4


@dataclass(frozen=True)
class Rates:
    """Measured on this machine (seconds per unit)."""

    flop32: float  # batched float32 GEMM (the greedy's folds), s / flop
    flop64: float  # float64 GEMM, s / flop
    prep: float  # Cholesky + inverse of one n x n Hessian, s / n^3 (at n = N_REF)
    eig: float  # eigvalsh of one n x n matrix, s / n^3
    solve: float  # batched LU solves (the rebuild), s / flop
    step: float  # one greedy step of one row batch (fixed part), s
    elem: float  # one element of a greedy step's passes over [B, n], s
    col: float  # one GPTQ column step (fixed part), s
    gelem: float  # one element of a GPTQ column update, s
    grid: float  # one element of one clip-search candidate, s
    fixed: float  # per layer (conversions, bookkeeping), s

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


N_REF = 256
_CACHE: dict[str, Rates] = {}


def _best(fn: Any, sync: Any, repeat: int = 2) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def calibrate(xp: Any = np, sync: Any = lambda: None) -> Rates:
    """Measure the rates on this machine (best of 2 of each kernel), once per process."""
    key = xp.__name__
    if key in _CACHE:
        return _CACHE[key]
    from .quant import QuantSpec, fit_grid
    from .solvers.fast import greedy_traces
    from .solvers.gptq import gptq
    from .solvers.prepare import prepare

    rng = np.random.default_rng(0)
    U = xp.asarray(rng.standard_normal((8, 64, 256)).astype(np.float32))  # a greedy fold
    flop32 = _best(lambda: xp.ascontiguousarray(xp.swapaxes(U, 1, 2)) @ U, sync) / (
        2 * 8 * 256 * 256 * 64)
    B = xp.asarray(rng.standard_normal((N_REF, N_REF)))
    flop64 = _best(lambda: B @ B, sync) / (2 * N_REF ** 3)
    X = rng.standard_normal((N_REF, 2 * N_REF))
    Hn = X @ X.T / X.shape[1]
    H = xp.asarray(Hn[None])  # [1, n, n]
    W = xp.asarray(rng.standard_normal((1, 2, N_REF)).astype(np.float32))
    prep = _best(lambda: prepare(W, H, 0.01), sync) / N_REF ** 3
    eig = _best(lambda: xp.linalg.eigvalsh(H), sync) / N_REF ** 3
    S = xp.asarray(np.repeat(Hn[None, :96, :96], 16, axis=0))
    rhs = xp.asarray(rng.standard_normal((16, 96, 1)))
    solve = _best(lambda: xp.linalg.solve(S, rhs), sync) / (16 * 96 ** 3 / 3)
    # greedy steps: a few rows (fixed part per step) and many rows (per element), n = 64
    Hi = prepare(W[:, :, :64], H[:, :64, :64], 0.01).Hinv
    n = 64
    times = []
    for R in (4, 256):
        Wr = xp.asarray(rng.standard_normal((R, n)).astype(np.float32))
        grp = xp.zeros(R, dtype=xp.int64)
        t = _best(lambda: greedy_traces(Wr, Hi, grp, R), sync)
        times.append(t - 2 * R * n ** 3 * flop32)
    elem = max((times[1] - times[0]) / ((256 - 4) * n * n), 1e-12)
    step = max((times[0] - elem * 4 * n * n) / n, 1e-7)
    gtimes = []
    Hi0 = Hi[0].astype(xp.float64)
    for r in (4, 256):
        Wr = xp.asarray(rng.standard_normal((r, n)))
        gtimes.append(_best(lambda: gptq(Wr, Hi0, sparsity=0.5), sync)
                      - (n ** 3 / 3 + 2 * r * n * n) * flop64)
    gelem = max((gtimes[1] - gtimes[0]) / ((256 - 4) * n * n), 1e-12)
    col = max((gtimes[0] - gelem * 4 * n * n) / n, 1e-7)
    Wg = xp.asarray(rng.standard_normal((64, 256)))
    spec = QuantSpec(bits=4)
    grid = _best(lambda: fit_grid(Wg, spec), sync) / (64 * 256 * spec.maxshrink * spec.grid)
    Wt = xp.asarray(rng.standard_normal((1, 2, 4)).astype(np.float32))
    Ht = xp.asarray(np.eye(4)[None])
    fixed = _best(lambda: prepare(Wt, Ht, 0.01), sync) * 20  # ~20 small array calls a layer
    rates = Rates(flop32, flop64, prep, eig, solve, step, elem, col, gelem, grid, fixed)
    _CACHE[key] = rates
    return rates


@dataclass(frozen=True)
class Shape:
    """A layer as the solver sees it: G Hessian groups of r rows and d columns, solved in k
    column blocks (1: the full Hessian)."""

    G: int
    r: int
    d: int
    k: int = 1

    @property
    def n(self) -> int:  # columns per Hessian block
        return self.d // self.k

    @property
    def rows(self) -> int:
        return self.G * self.r

    @property
    def hessians(self) -> int:  # Hessian blocks held
        return self.G * self.k


def hessian_bytes(s: Shape) -> int:
    """The accumulated Hessian (float64): G d^2 * 8, or G d bs * 8 in blocks."""
    return s.hessians * s.n * s.n * FP64


def solver_bytes(s: Shape, row_budget: int) -> int:
    """The solve's peak working set beyond the accumulated Hessian: solver_fixed_bytes plus
    the greedy's row batches (at most `row_budget`, at least one row)."""
    from .solvers.prepare import rows_per_batch

    R = s.rows * s.k  # rows of the (virtual) layer
    return solver_fixed_bytes(s) + rows_per_batch(s.n, R, row_budget) * row_bytes(s)


def solver_fixed_bytes(s: Shape) -> int:
    """The Hessian's mean, the float64 copy and prepare's dampened copy, factor, inverse
    (about 6 Hessian-sized arrays; 5 in blocks, which reuse the mean) and the traces and
    weight copies (~64 bytes per weight)."""
    return (5 if s.k > 1 else 6) * hessian_bytes(s) + 64 * s.rows * s.d


def row_bytes(s: Shape) -> int:
    """One row of a greedy batch (solvers.prepare.rows_per_batch: 3 n^2 float32 + 64 n)."""
    return 3 * s.n * s.n * FP32 + 64 * s.n


def _batches(s: Shape, row_budget: int) -> int:
    from .solvers.prepare import rows_per_batch

    R = s.rows * s.k
    return -(-R // rows_per_batch(s.n, R, row_budget))


def _greedy(s: Shape, rt: Rates, row_budget: int, work: float) -> float:
    R, n = s.rows * s.k, s.n
    return (2 * R * n ** 3 * work * rt.flop32 + R * n * n * work * rt.elem
            + n * work * _batches(s, row_budget) * rt.step)


def _gptq(s: Shape, rt: Rates) -> float:
    R, n, Gv = s.rows * s.k, s.n, s.hessians
    return (Gv * (n ** 3 / 3 * rt.flop64 + n * rt.col) + R * n * min(n, 128) * rt.gelem
            + 2 * R * n * n * rt.flop64)


def _common(s: Shape, rt: Rates, quant: bool) -> float:
    """Factorisation, the rank (unblocked), losses and the grid searches of the baseline."""
    t = s.hessians * s.n ** 3 * rt.prep + 6 * s.rows * s.d * s.n * rt.flop64 + rt.fixed
    if s.k == 1:
        t += s.G * s.d ** 3 * rt.eig
    if quant:
        t += 2 * s.rows * s.d * 80 * rt.grid
    return t


def exact_seconds(s: Shape, rt: Rates, *, sparsity: float, quant: bool, candidates: int,
                  row_budget: int) -> float:
    """ExactOBS pruning at `sparsity` and / or OBQ, with `candidates` GPTQ solves beside OBQ
    (quantization only: the obc pipeline keeps the best of OBQ, GPTQ and RTN)."""
    t = _common(s, rt, quant)
    if sparsity:
        t += _greedy(s, rt, row_budget, min(1.0, sparsity + PRUNE_WORK_MARGIN))
        p = sparsity * s.n
        t += s.rows * s.k * p ** 3 / 3 * rt.solve
    if quant:
        t += _greedy(s, rt, row_budget, 1.0) + candidates * _gptq(s, rt)
    return t


def fast_seconds(s: Shape, rt: Rates, *, sparsity: float, quant: bool) -> float:
    """GPTQ / SparseGPT: one pass per Hessian block, pruning and rounding jointly."""
    return _common(s, rt, quant) + _gptq(s, rt)


def baseline_seconds(s: Shape, rt: Rates, *, quant: bool) -> float:
    """Magnitude pruning / RTN only (the losses still need the Hessian)."""
    return 6 * s.rows * s.d * s.n * rt.flop64 + rt.fixed + (
        s.rows * s.d * 80 * rt.grid if quant else 0.0)
