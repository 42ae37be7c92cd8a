"""What solving a layer costs, predicted before capture: the bytes of its Hessian and of the
solver's working set, and the seconds of ExactOBS / OBQ and of the fast path (GPTQ /
SparseGPT), from the layer's shape and rates measured on this machine.

Work model (Gv Hessians of n columns, R rows in all, nb row batches of B rows; unblocked
Gv = G, n = d; blocked Gv = G * k, n = bs):
    factorisation    Gv * t_prep(n)          Cholesky, inverse (+ G * t_eig(d) for the rank),
                     measured at n = N_REF and 2 N_REF, grown by the measured exponent
    ExactOBS greedy  2 R n^3 w flops (the deferred folds, float32 batched GEMM)
                     + R n w (row + n (f/2 + PASSES) elem): per row and step a fixed part
                     (indexing, the traces' scatters) and element operations (its column
                     from the f/2 pending updates on average, PASSES passes over the row)
                     + n w nb steps (Python-level)
                     w: the fraction of greedy steps computed (rows stop early when pruning)
    rebuild          R p^3 / 3 flops + R p^2 gathers (each row's system on its removed set,
                     padded to the batch's largest count p ~ w n) + the selection's sort
    GPTQ / SparseGPT Gv (t_chol(n) + call + n column steps) + R n (b/2 + PASSES) element ops
                     (b = min(n, 128): the in-block updates) + 2 R n^2 flops (lazy updates)
    grid search      R d element passes per clip candidate
Element operations run at the in-cache rate while the arrays they stream (the greedy's
pending updates [B, f, n], GPTQ's rows [R / Gv, n], the grid search's [R, d]) stay within
IN_CACHE bytes, and `spill` times slower beyond: with thousands of rows in a batch each step
streams its pending updates from memory (measured 2-3x slower per element).
Every rate is measured by `calibrate` (costrates.py: a ~1-2 s micro-benchmark of the
solvers' own code on small layers and on one batch beyond the cache); nothing here is a
guessed constant but the shape of the model. bench/cost_model.py compares predictions with
measured layer times on the bench models, bench/cost_sweep.py on synthetic rows x d layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .costrates import IN_CACHE, N_REF, PASSES, Rates, calibrate

__all__ = ["Rates", "Shape", "baseline_seconds", "calibrate", "exact_seconds", "fast_seconds",
           "fast_quant_seconds", "shrink_seconds",
           "hessian_bytes", "solver_bytes", "solver_fixed_bytes", "row_bytes", "IN_CACHE"]

# the fraction of greedy steps ExactOBS pruning computes: rows stop once their later steps
# cannot be selected (fast.py); measured on the bench models (bench/cost_model.py): about
# the sparsity plus a margin, all steps for quantization
PRUNE_WORK_MARGIN = 0.2
# full-cost sweeps of the code descent (solvers/refine.py) per candidate: 4-8 sweeps converge
# from OBQ, GPTQ and RTN starts on correlated layers (at most 8), but the later ones move few
# codes and skip most columns; 4 fits bench/cost_model.py's obc w4 runs (7 over-predicted
# them 1.39x at the median)
REFINE_SWEEPS = 4
FP64, FP32 = 8, 4


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


def _streamed(nbytes: float, rt: Rates) -> float:
    """How much slower element operations run over arrays of `nbytes` (1 in cache)."""
    return rt.spill if nbytes > IN_CACHE else 1.0


def _greedy(s: Shape, rt: Rates, row_budget: int, work: float, quant: bool) -> float:
    """Folds (float32 GEMM); per row and step its column from the f/2 pending updates on
    average and PASSES passes over the row, streamed when a batch's pending updates [B, f, n]
    outgrow the cache; a fixed cost per step and batch."""
    from .solvers.fast import fold_block
    from .solvers.prepare import rows_per_batch

    R, n, f = s.rows * s.k, s.n, fold_block(s.n)
    step, row, elem = (rt.qstep, rt.qrow, rt.qelem) if quant else (rt.step, rt.row, rt.elem)
    B = min(R, rows_per_batch(n, R, row_budget))
    per_step = (row + n * (f / 2 + PASSES) * elem) * _streamed(B * f * n * FP32, rt)
    return (2 * R * n ** 3 * work * rt.flop32 + R * n * work * per_step
            + n * work * _batches(s, row_budget) * step)


def _gptq(s: Shape, rt: Rates, sparsity: float = 0.0) -> float:
    """Per Hessian: the Cholesky, a call's setup and n column steps; per row: the in-block
    updates and PASSES passes per column (streamed when the rows [R / Gv, n] outgrow the
    cache: each column step reads and writes a column of them), the lazy block updates,
    SparseGPT's per-block selection."""
    R, n, Gv = s.rows * s.k, s.n, s.hessians
    b = min(n, 128)
    elem = rt.gelem * _streamed(R // Gv * n * FP64, rt)
    t = (Gv * (n ** 3 * rt.chol + n * rt.col + rt.gcall)
         + R * n * (b / 2 + PASSES) * elem + 2 * R * n * n * rt.flop64)
    return t + (Gv * -(-n // b) * _sort(R // Gv * b, rt) if sparsity else 0.0)


def _common(s: Shape, rt: Rates, quant: bool, sparsity: float) -> float:
    """Factorisation, the rank (unblocked), losses, the baseline's magnitude selection and
    the grid searches, and the per-layer overhead."""
    t = (s.hessians * rt.prep * (s.n / N_REF) ** rt.prep_exp + 6 * s.rows * s.d * s.n * rt.flop64
         + (rt.qfixed if quant else rt.fixed))
    if s.k == 1:
        t += s.G * rt.eig * (s.d / N_REF) ** rt.eig_exp
    if quant:
        t += 2 * _grid(s, rt)
    if sparsity:
        t += _sort(s.rows * s.d, rt)
    return t


def _grid(s: Shape, rt: Rates) -> float:
    """One clip search over the rows [R, d] (80 candidates), streamed beyond the cache."""
    return s.rows * s.d * 80 * rt.grid * _streamed(s.rows * s.d * FP64, rt)


def _rebuild(s: Shape, rt: Rates, work: float) -> float:
    """Each row's system on its removed set, padded to the largest count, about the steps
    computed (w n), gathered and solved; the selection sorts every computed step's key."""
    R, p = s.rows * s.k, work * s.n
    return R * (p ** 3 / 3 * rt.solve + p * p * rt.gather) + _sort(R * s.n, rt)


def _sort(m: int, rt: Rates) -> float:
    return m * math.log2(max(m, 2)) * rt.sort


def _refine(s: Shape, rt: Rates) -> float:
    """The code descent on one candidate: per sweep (e H) and the block updates as float64
    GEMMs (~4 R n^2 flops), each column's step over all rows with the in-block updates, a
    fixed cost per column step."""
    from .solvers.refine import BLOCK

    R, n = s.rows * s.k, s.n
    b = min(n, BLOCK)
    sweep = 4 * R * n * n * rt.flop64 + R * n * (b / 2 + PASSES) * rt.gelem + s.k * n * rt.col
    return REFINE_SWEEPS * sweep


def exact_seconds(s: Shape, rt: Rates, *, sparsity: float, quant: bool, candidates: int,
                  row_budget: int, refined: int = 0) -> float:
    """ExactOBS pruning at `sparsity` and / or OBQ, with `candidates` GPTQ solves beside OBQ
    (quantization only: the obc pipeline keeps the best of OBQ, GPTQ and RTN) and `refined`
    of them through the code descent."""
    t = _common(s, rt, quant, sparsity) + refined * _refine(s, rt)
    if sparsity:
        work = min(1.0, sparsity + PRUNE_WORK_MARGIN)
        t += _greedy(s, rt, row_budget, work, False)
        t += _rebuild(s, rt, work)
    if quant:
        t += _greedy(s, rt, row_budget, 1.0, True) + candidates * _gptq(s, rt)
    return t


def trace_seconds(s: Shape, rt: Rates, *, sparsity: float, row_budget: int) -> float:
    """ExactOBS's loss trace to `sparsity` (solvers/traces.py, the DP's level tables): the
    greedy pass without the rebuild (the weights at a level are rebuilt when asked)."""
    return _common(s, rt, False, sparsity) + _greedy(
        s, rt, row_budget, min(1.0, sparsity + PRUNE_WORK_MARGIN), False)


def fast_seconds(s: Shape, rt: Rates, *, sparsity: float, quant: bool) -> float:
    """GPTQ / SparseGPT: one pass per Hessian block, pruning and rounding jointly."""
    return _common(s, rt, quant, sparsity) + _gptq(s, rt, sparsity)


def fast_quant_seconds(s: Shape, rt: Rates, *, candidates: int) -> float:
    """Quantization alone at choose.FAST_BITS: the H-aware grid, RTN, `candidates` GPTQs."""
    return _common(s, rt, True, 0.0) + candidates * _gptq(s, rt)


def shrink_seconds(s: Shape, rt: Rates, *, sparsity: float, quant: bool, levels: int,
                   rows: int) -> float:
    """A data-limited layer's search (solvers/shrink.py): at each of `levels` levels the fast
    path on each half's Hessian (at most `rows` rows, no rank) and its loss under the other
    half's (2 R d^2 flops)."""
    sub = Shape(s.G, -(-s.r // -(-s.r // rows)), s.d)
    one = (fast_seconds(sub, rt, sparsity=sparsity, quant=quant)
           - s.G * rt.eig * (s.d / N_REF) ** rt.eig_exp)
    return 2 * levels * (one + 2 * sub.rows * s.d * s.d * rt.flop64)


def baseline_seconds(s: Shape, rt: Rates, *, quant: bool) -> float:
    """Magnitude pruning / RTN only (the losses still need the Hessian)."""
    return 6 * s.rows * s.d * s.n * rt.flop64 + rt.fixed + _sort(s.rows * s.d, rt) + (
        _grid(s, rt) if quant else 0.0)
