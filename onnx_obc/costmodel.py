"""What solving a layer costs, predicted before capture: the bytes of its Hessian and of the
solver's working set, and the seconds of ExactOBS / OBQ and of the fast path (GPTQ /
SparseGPT), from the layer's shape and rates measured on this machine.

Work model (Gv Hessians of n columns, R rows in all, nb row batches; unblocked Gv = G,
n = d; blocked Gv = G * k, n = bs):
    factorisation    Gv * t_prep(n)          Cholesky, inverse (+ G * t_eig(d) for the rank),
                     measured at n = N_REF and 2 N_REF, grown by the measured exponent
    ExactOBS greedy  2 R n^3 w flops (the deferred folds, float32 batched GEMM)
                     + R n^2 (fold(n)/2 + 16) w row work (each step's column from the
                     pending updates, passes over the row) + n w nb steps (Python-level)
                     w: the fraction of greedy steps computed (rows stop early when pruning)
    rebuild          R (s n)^3 / 3 flops (each row's system on its removed set)
    GPTQ / SparseGPT Gv (t_chol(n) + n column steps) + R n min(n, 128) / 2 element updates
                     + 2 R n^2 flops (lazy block updates)
    grid search      R d element passes per clip candidate
Every rate is measured by `calibrate` (a ~1-2 s micro-benchmark of the same kernels the
solvers run, on small layers, cached per process and array module); nothing here is a guessed
constant but the shape of the model. bench/cost_model.py compares predictions with measured
layer times.
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
    prep: float  # Cholesky + inverse of one n x n Hessian, s at n = N_REF, ~ n^prep_exp
    eig: float  # eigvalsh of one n x n matrix, s at n = N_REF, ~ n^eig_exp
    chol: float  # Cholesky alone, s / n^3
    solve: float  # batched LU solves (the rebuild), s / flop
    prep_exp: float  # how the factorisations grow with n (measured from n / 2 to n)
    eig_exp: float
    spill: float  # an elementwise pass over arrays beyond the cache / within it (ratio)
    gemv_in: float  # a greedy step's column from the pending updates, s / multiply-add,
    gemv_out: float  # with the updates in cache / streamed from memory
    step: float  # one pruning greedy step of one row batch (fixed part), s
    elem: float  # one element of one pass over a pruning step's rows, s
    qstep: float  # the same for OBQ's steps (rounding to the grid)
    qelem: float
    col: float  # one GPTQ column step (fixed part), s
    grid: float  # one element of one clip-search candidate, s
    sort: float  # argsort (magnitude pruning, the selections), s / (element * log2 size)
    fixed: float  # per layer: the whole solve of a tiny layer, pruning / quantization, s
    qfixed: float

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


N_REF = 256
PASSES = 16  # passes over a row batch [B, n] per greedy step (scores, update, bookkeeping)
IN_CACHE = 8 << 20  # pending updates up to this size run at the in-cache gemv rate
ROWS_IN_CACHE = 1 << 20  # row batches [B, n] up to this size: passes at the in-cache rate
_CACHE: dict[str, Rates] = {}


def _best(fn: Any, sync: Any, repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def calibrate(xp: Any = np, sync: Any = lambda: None, exact: bool = True) -> Rates:
    """Measure the rates on this machine (best of 3 of each kernel), once per process; with
    exact=False (no ExactOBS / OBQ: 8 bits alone) the greedy's are 0, elem the in-cache one."""
    key = xp.__name__
    if key in _CACHE or (not exact and key + ":fast" in _CACHE):
        return _CACHE.get(key) or _CACHE[key + ":fast"]
    from .quant import QuantSpec, fit_grid
    from .solvers import Unstructured, solve_layer
    from .solvers.fast import fold_block, greedy_traces
    from .solvers.gptq import gptq
    from .solvers.prepare import prepare
    from .solvers.rules import QuantRule

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
    # the factorisations at n and 2 n: their growth (LAPACK gets faster with n)
    X2 = rng.standard_normal((2 * N_REF, 4 * N_REF))
    H2 = xp.asarray((X2 @ X2.T / X2.shape[1])[None])
    W2 = xp.asarray(rng.standard_normal((1, 2, 2 * N_REF)).astype(np.float32))
    prep, eig = (_best(f, sync) for f in (lambda: prepare(W, H, 0.01),
                                          lambda: xp.linalg.eigvalsh(H)))
    prep_exp, eig_exp = (min(3.0, max(2.0, math.log2(_best(f, sync, 2) / t))) for t, f in (
        (prep, lambda: prepare(W2, H2, 0.01)), (eig, lambda: xp.linalg.eigvalsh(H2))))
    S = xp.asarray(np.repeat(Hn[None, :96, :96], 16, axis=0))
    rhs = xp.asarray(rng.standard_normal((16, 96, 1)))
    solve = _best(lambda: xp.linalg.solve(S, rhs), sync) / (16 * 96 ** 3 / 3)
    chol = _best(lambda: xp.linalg.cholesky(H), sync) / N_REF ** 3
    a, c = (xp.asarray(rng.standard_normal(m).astype(np.float32)) for m in (1 << 16, 4 << 20))
    in_cache = _best(lambda: [a * a - a for _ in range(64)], sync) / (64 * a.size)
    spill = max(1.0, _best(lambda: c * c - c, sync) / c.size / in_cache)
    spec = QuantSpec(bits=4)
    gemv, step, elem, qstep, qelem = [0.0, 0.0], 0.0, in_cache, 0.0, 0.0
    if exact:
        # each greedy step's column from the pending updates: a stacked gemv per row, in cache
        gemv = []  # (small layers) or streaming from memory (large ones)
        for B, t, n in ((32, 24, 256), (128, 48, 512)):  # t of the 2 t pending ones, as mid-fold
            U = xp.asarray(rng.standard_normal((B, 2 * t, n)).astype(np.float32))
            ar, q = xp.arange(B), xp.asarray(rng.integers(0, n, B))
            gemv.append(_best(lambda: U[ar, :t, q][:, None, :] @ U[:, :t, :], sync) / (B * t * n))
        # the greedy with the solvers' rules, on a tiny and a mid-size layer: t = n step +
        fits = []  # R n (n fold/2 gemv + PASSES n elem) solved for step and elem
        for quant in (False, True):
            eqs = []
            for R, n in ((4, 48), (32, 192)):
                Hi = prepare(W[:, :, :n], H[:, :n, :n], 0.01).Hinv  # [1, n, n]
                Wr = xp.asarray(rng.standard_normal((R, n)).astype(np.float32))
                grp = xp.zeros(R, dtype=xp.int64)
                g = fit_grid(Wr, spec)
                sc, zc = g.columns()
                rule = QuantRule(sc.astype(xp.float32), zc.astype(xp.float32), g.qmin, g.qmax)
                t = _best(lambda: greedy_traces(Wr, Hi, grp, R, None, rule=rule if quant
                                                else None), sync, 2)
                t -= R * n * n * (2 * n * flop32 + fold_block(n) / 2 * gemv[0])
                eqs.append((n, R * n * n * PASSES, t))  # t = n step + R n^2 PASSES elem
            (a1, b1, t1), (a2, b2, t2) = eqs
            e = max((t2 - t1 * a2 / a1) / (b2 - b1 * a2 / a1), 1e-12)
            fits += [max((t1 - b1 * e) / a1, 1e-7), e]
        step, elem, qstep, qelem = fits
    n, r = N_REF, 64  # GPTQ: per column, beyond the Cholesky and the lazy block updates
    Hg = xp.asarray(np.linalg.inv(Hn[:n, :n] + 0.01 * np.eye(n)))
    Wr = xp.asarray(rng.standard_normal((r, n)))
    g = fit_grid(Wr, spec)
    sc, zc = g.columns()
    tg = _best(lambda: gptq(Wr, Hg, scale=sc, zero=zc, qmin=g.qmin, qmax=g.qmax,
                            sparsity=0.5), sync)
    col = max((tg - n ** 3 * chol - 2 * r * n * n * flop64) / n - r * 64 * elem, 1e-7)
    Wg = xp.asarray(rng.standard_normal((64, 256)))
    grid = _best(lambda: fit_grid(Wg, spec), sync) / (64 * 256 * spec.maxshrink * spec.grid)
    sort = _best(lambda: xp.argsort(Wg.reshape(-1), kind="stable"), sync) / (64 * 256 * 14)
    Wt = xp.asarray(rng.standard_normal((1, 2, 8)).astype(np.float32))
    Ht = xp.asarray(np.eye(8)[None])
    fixed = _best(lambda: solve_layer(Wt, Ht, structure=Unstructured(0.5)), sync)
    qfixed = _best(lambda: solve_layer(Wt, Ht, quant=spec), sync)
    rates = Rates(flop32, flop64, prep, eig, chol, solve, prep_exp, eig_exp, spill, gemv[0],
                  gemv[1], step, elem, qstep, qelem, col, grid, sort, fixed, qfixed)
    _CACHE[key if exact else key + ":fast"] = rates
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


def _greedy(s: Shape, rt: Rates, row_budget: int, work: float, quant: bool) -> float:
    """Folds (float32 GEMM), each step's column from the pending updates (a gemv of ~fold/2
    x n per row), PASSES passes over the rows and a fixed cost per step and batch."""
    from .solvers.fast import fold_block
    from .solvers.prepare import rows_per_batch

    R, n, f = s.rows * s.k, s.n, fold_block(s.n)
    step, elem = (rt.qstep, rt.qelem) if quant else (rt.step, rt.elem)
    pending = min(R, rows_per_batch(n, R, row_budget)) * f * n * FP32
    gemv = rt.gemv_in if pending <= IN_CACHE else rt.gemv_out
    B = min(R, rows_per_batch(n, R, row_budget))
    elem *= rt.spill if B * n * FP32 > ROWS_IN_CACHE else 1.0
    return (2 * R * n ** 3 * work * rt.flop32 + R * n * n * work * (f / 2 * gemv + PASSES * elem)
            + n * work * _batches(s, row_budget) * step)


def _gptq(s: Shape, rt: Rates, sparsity: float = 0.0) -> float:
    """Per Hessian: the Cholesky and n column steps; per row: the in-block updates, PASSES
    passes per column, the lazy block updates, SparseGPT's per-block selection."""
    R, n, Gv = s.rows * s.k, s.n, s.hessians
    b = min(n, 128)
    elem = rt.elem * (rt.spill if R // Gv * b * FP64 > ROWS_IN_CACHE else 1.0)
    t = (Gv * (n ** 3 * rt.chol + n * rt.col) + R * n * (b / 2 + PASSES) * elem
         + 2 * R * n * n * rt.flop64)
    return t + (Gv * -(-n // b) * _sort(R // Gv * b, rt) if sparsity else 0.0)


def _common(s: Shape, rt: Rates, quant: bool, sparsity: float) -> float:
    """Factorisation, the rank (unblocked), losses, the baseline's magnitude selection and
    the grid searches, and the per-layer overhead."""
    t = (s.hessians * rt.prep * (s.n / N_REF) ** rt.prep_exp + 6 * s.rows * s.d * s.n * rt.flop64
         + (rt.qfixed if quant else rt.fixed))
    if s.k == 1:
        t += s.G * rt.eig * (s.d / N_REF) ** rt.eig_exp
    if quant:
        t += 2 * s.rows * s.d * 80 * rt.grid
    if sparsity:
        t += _sort(s.rows * s.d, rt)
    return t


def _sort(m: int, rt: Rates) -> float:
    return m * math.log2(max(m, 2)) * rt.sort


def exact_seconds(s: Shape, rt: Rates, *, sparsity: float, quant: bool, candidates: int,
                  row_budget: int) -> float:
    """ExactOBS pruning at `sparsity` and / or OBQ, with `candidates` GPTQ solves beside OBQ
    (quantization only: the obc pipeline keeps the best of OBQ, GPTQ and RTN)."""
    t = _common(s, rt, quant, sparsity)
    if sparsity:
        t += _greedy(s, rt, row_budget, min(1.0, sparsity + PRUNE_WORK_MARGIN), False)
        p = sparsity * s.n
        t += s.rows * s.k * p ** 3 / 3 * rt.solve
    if quant:
        t += _greedy(s, rt, row_budget, 1.0, True) + candidates * _gptq(s, rt)
    return t


def fast_seconds(s: Shape, rt: Rates, *, sparsity: float, quant: bool) -> float:
    """GPTQ / SparseGPT: one pass per Hessian block, pruning and rounding jointly."""
    return _common(s, rt, quant, sparsity) + _gptq(s, rt, sparsity)


def fast_quant_seconds(s: Shape, rt: Rates, *, candidates: int) -> float:
    """Quantization alone at choose.FAST_BITS: the H-aware grid, RTN, `candidates` GPTQs."""
    return _common(s, rt, True, 0.0) + candidates * _gptq(s, rt)


def baseline_seconds(s: Shape, rt: Rates, *, quant: bool) -> float:
    """Magnitude pruning / RTN only (the losses still need the Hessian)."""
    return 6 * s.rows * s.d * s.n * rt.flop64 + rt.fixed + _sort(s.rows * s.d, rt) + (
        s.rows * s.d * 80 * rt.grid if quant else 0.0)
