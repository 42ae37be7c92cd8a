"""The rates the cost model (costmodel.py) multiplies its work counts by, measured on this
machine by running the solvers' own code on small layers (`calibrate`, ~1-2 s, once per
process and array module; best of a few runs of each).

The greedy (ExactOBS / OBQ) is timed whole, on one batch of R rows of n columns, less its
folds' flops: t(R, n) = n step + R n (row + n (f/2 + PASSES) elem), f = fold_block(n).
One row gives `step`; 128 rows at n = GN and 512 at GN / 4 give `row` and `elem` (each
step of each row: a fixed part, the scatters of its loss and choice, and element operations
over the row and its pending updates); a batch whose pending updates [B, f, n] are far
beyond IN_CACHE, over its first f steps, gives the `spill` ratio. GPTQ is timed on one
block at two row counts and on a tiny one (`gelem`, `col`, `gcall`), the rebuild on rows of
a known count (`gather`).

Every kernel is timed by costclock.Clock: with the BLAS threads the solve will use and with
one thread, the better kept (a contended multi-threaded BLAS measured over 100x slow), and
Rates records the threads, the worst ratio and the kernels that looked contended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .costclock import Clock, Timer

N_REF = 256  # the factorisations' reference size
PASSES = 16  # passes over a row per greedy / GPTQ step (scores, update, bookkeeping)
IN_CACHE = 8 << 20  # arrays a step streams up to this size: element operations in cache
GN = 128  # columns of the calibration's greedy and GPTQ layers
GREEDY = ((128, GN), (512, GN // 4))  # in-cache greedy batches (rows, n): pending updates
# 3.3 and 1.6 MB, the per-row work well above the per-step part
STREAM_ROWS = 1024  # and far beyond IN_CACHE (27 MB; inverses 67 MB)
GPTQ_ROWS = (16, 2048)  # GPTQ blocks [r, GN] of 16 KB and 2 MB
_CACHE: dict[str, "Rates"] = {}


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
    spill: float  # element operations streaming beyond IN_CACHE / in cache (ratio, >= 1)
    step: float  # one pruning greedy step of one row batch (fixed part), s
    row: float  # one step of one row (fixed part: indexing, the traces' scatters), s
    elem: float  # one element operation of a pruning step (in cache), s
    qstep: float  # the same for OBQ's steps (rounding to the grid)
    qrow: float
    qelem: float
    gelem: float  # one element operation of a GPTQ column step (in cache), s
    col: float  # one GPTQ column step (fixed part), s
    gcall: float  # one GPTQ call, on one Hessian (fixed part: its setup), s
    gather: float  # the rebuild: one element of a row's system, gathered and solved, s
    grid: float  # one element of one clip-search candidate, s
    sort: float  # argsort (magnitude pruning, the selections), s / (element * log2 size)
    fixed: float  # per layer: the whole solve of a tiny layer, pruning / quantization, s
    qfixed: float
    threads: float = 1.0  # BLAS threads the kernels were timed with (and with one: costclock)
    contention: float = 1.0  # the worst multi-threaded over one-thread time of a kernel
    one_thread: float = 0.0  # share of the kernels whose one-thread time was kept
    slow: tuple[str, ...] = ()  # kernels whose multi-threaded time was CONTENDED x slower

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "slow"}


_CLOCK = [Clock(threads=1, host=False)]  # the clock of the calibration under way


def _best(fn: Any, sync: Any, repeat: int = 3, label: str = "") -> float:
    return _CLOCK[0].best(fn, sync, repeat, label)


def _spd(rng: Any, n: int) -> Any:
    X = rng.standard_normal((n, 2 * n))
    return X @ X.T / X.shape[1]


def calibrate(xp: Any = np, sync: Any = lambda: None, exact: bool = True,
              timer: Timer | None = None, threads: int | None = None) -> Rates:
    """Measure the rates on this machine (best of 3 of each kernel, with the BLAS's threads
    and with one: costclock.py), once per process; with exact=False (no ExactOBS / OBQ: 8
    bits alone) the greedy's and the rebuild's rates and eigvalsh's (no rank there,
    solve.ranked) are not measured (0; spill 1, eig_exp 3), and GPTQ's are the best of fewer
    runs. `timer` (fn, sync, one_thread) -> seconds and `threads` replace the clock and the
    BLAS's thread count (tests); the result is then not cached."""
    key = xp.__name__
    if timer is None and (key in _CACHE or (not exact and key + ":fast" in _CACHE)):
        return _CACHE.get(key) or _CACHE[key + ":fast"]
    clock = Clock(timer, threads, host=xp is np)
    _CLOCK.insert(0, clock)
    try:
        rates = _measure(xp, sync, exact, clock)
    finally:
        _CLOCK.remove(clock)
    if timer is None:
        _CACHE[key if exact else key + ":fast"] = rates
    return rates


def _measure(xp: Any, sync: Any, exact: bool, clock: Clock) -> Rates:
    from .quant import QuantSpec, fit_grid
    from .solvers import Unstructured, solve_layer
    from .solvers.gptq import gptq
    from .solvers.prepare import prepare

    rng = np.random.default_rng(0)
    U = xp.asarray(rng.standard_normal((8, 64, 256)).astype(np.float32))  # a greedy fold
    flop32 = _best(lambda: xp.ascontiguousarray(xp.swapaxes(U, 1, 2)) @ U, sync, label="flop32") / (
        2 * 8 * 256 * 256 * 64)
    B = xp.asarray(rng.standard_normal((N_REF, N_REF)))
    flop64 = _best(lambda: B @ B, sync, label="flop64") / (2 * N_REF ** 3)
    Hn = _spd(rng, N_REF)
    H = xp.asarray(Hn[None])  # [1, n, n]
    W = xp.asarray(rng.standard_normal((1, 2, N_REF)).astype(np.float32))
    # the factorisations at n and 2 n: their growth (LAPACK gets faster with n)
    H2 = xp.asarray(_spd(rng, 2 * N_REF)[None])
    W2 = xp.asarray(rng.standard_normal((1, 2, 2 * N_REF)).astype(np.float32))
    prep = _best(lambda: prepare(W, H, 0.01), sync, label="prep")
    prep_exp = _grows(prep, lambda: prepare(W2, H2, 0.01), sync, "prep")
    eig, eig_exp = 0.0, 3.0  # not measured without a rank (8 bits alone)
    if exact:
        eig = _best(lambda: xp.linalg.eigvalsh(H), sync, label="eig")
        eig_exp = _grows(eig, lambda: xp.linalg.eigvalsh(H2), sync, "eig")
    S = xp.asarray(np.repeat(Hn[None, :96, :96], 16, axis=0))
    rhs = xp.asarray(rng.standard_normal((16, 96, 1)))
    solve = _best(lambda: xp.linalg.solve(S, rhs), sync, label="solve") / (16 * 96 ** 3 / 3)
    chol = _best(lambda: xp.linalg.cholesky(H), sync, label="chol") / N_REF ** 3
    spec = QuantSpec(bits=4)
    g = _greedy_rates(xp, sync, rng, Hn, spec, flop32) if exact else dict.fromkeys(
        ("step", "row", "elem", "qstep", "qrow", "qelem"), 0.0) | {"spill": 1.0}
    gelem, col, gcall = _gptq_rates(xp, sync, rng, Hn, spec, chol, 1 if exact else 3)
    gather = _gather_rate(xp, sync, rng, Hn, solve) if exact else 0.0
    Wg = xp.asarray(rng.standard_normal((64, 256)))
    grid = _best(lambda: fit_grid(Wg, spec), sync, label="grid") / (
        64 * 256 * spec.maxshrink * spec.grid)
    Ws = xp.asarray(rng.standard_normal(1 << 18))  # sorts of a few MB (the selections)
    sort = _best(lambda: xp.argsort(Ws, kind="stable"), sync, label="sort") / ((1 << 18) * 18)
    Wt = xp.asarray(rng.standard_normal((1, 2, 8)).astype(np.float32))
    Ht = xp.asarray(np.eye(8)[None])
    fixed = _best(lambda: solve_layer(Wt, Ht, structure=Unstructured(0.5)), sync,
                  label="fixed")
    qfixed = _best(lambda: solve_layer(Wt, Ht, quant=spec), sync, label="qfixed")
    return Rates(flop32, flop64, prep, eig, chol, solve, prep_exp, eig_exp, g["spill"],
                 g["step"], g["row"], g["elem"], g["qstep"], g["qrow"], g["qelem"], gelem, col,
                 gcall, gather, grid, sort, fixed, qfixed, **clock.summary(),
                 slow=tuple(clock.slow))


def _greedy_rates(xp: Any, sync: Any, rng: Any, Hn: Any, spec: Any,
                  flop32: float) -> dict[str, float]:
    """step, row, elem (and OBQ's) from the whole greedy on 1 row and on the GREEDY batches;
    spill from STREAM_ROWS rows at GN (see the module docstring)."""
    from .quant import fit_grid
    from .solvers.fast import fold_block, greedy_traces
    from .solvers.prepare import prepare
    from .solvers.rules import QuantRule

    def run(R: int, n: int, quant: bool, repeat: int = 3, steps: int | None = None) -> float:
        """t - folds = n step + R n row + R n^2 (f/2 + PASSES) elem (`steps` < n: one
        block of steps, no fold, the same average pending updates)."""
        Hi = prepare(xp.zeros((1, 1, n), dtype=xp.float32), xp.asarray(Hn[None, :n, :n]),
                     0.01).Hinv
        Wr = xp.asarray(rng.standard_normal((R, n)).astype(np.float32))
        g = fit_grid(Wr, spec)
        sc, zc = g.columns()
        rule = QuantRule(sc.astype(xp.float32), zc.astype(xp.float32), g.qmin, g.qmax)
        return _best(lambda: greedy_traces(Wr, Hi, xp.zeros(R, dtype=xp.int64), R, None,
                                           rule=rule if quant else None, max_steps=steps),
                     sync, repeat, f"{'obq' if quant else 'greedy'} {R}x{n}") - (
            0.0 if steps else 2 * R * n ** 3 * flop32)

    ops = lambda n: n * n * (fold_block(n) / 2 + PASSES)  # noqa: E731 element ops per row
    out: dict[str, float] = {}
    (_, n), (_, m) = GREEDY
    for q in ("", "q"):
        step = max(run(1, n, bool(q)) / n, 1e-7)  # one row: the per-row work is ~2%
        a, b = ((run(r, k, bool(q)) - k * step) / r for r, k in GREEDY)  # per row: k row + ops
        elem = max((a / n - b / m) / (ops(n) / n - ops(m) / m), 1e-12)
        out.update({q + "step": step, q + "elem": elem,
                    q + "row": max((a - ops(n) * elem) / n, 1e-9)})
    f = fold_block(n)  # a batch far beyond the cache, over its first f steps
    streamed = (run(STREAM_ROWS, n, False, 2, f) - f * out["step"]) / (STREAM_ROWS * f)
    out["spill"] = max(1.0, streamed / (out["row"] + ops(n) / n * out["elem"]))
    return out


def _grows(t: float, f: Any, sync: Any, label: str) -> float:
    """The exponent of a factorisation's growth from n (t seconds) to 2 n (`f`), in [2, 3]."""
    return min(3.0, max(2.0, math.log2(_best(f, sync, 2, label + "@2n") / t)))


def _gptq_rates(xp: Any, sync: Any, rng: Any, Hn: Any, spec: Any, chol: float,
                fewer: int = 1) -> tuple[float, float, float]:
    """GPTQ on one block of n = GN columns, few and many rows, and on one row of 8 and 16:
    t = n^3 chol + gcall + n col + r n (b/2 + PASSES) gelem -> (gelem, col, gcall)."""
    from .quant import fit_grid
    from .solvers.gptq import gptq

    def run(r: int, n: int) -> float:
        Hg = xp.asarray(np.linalg.inv(Hn[:n, :n] + 0.01 * np.eye(n)))
        Wr = xp.asarray(rng.standard_normal((r, n)))
        g = fit_grid(Wr, spec)
        sc, zc = g.columns()
        k = 1 if n == GN else 20 // fewer  # tiny calls: timed 20 (or fewer) at a time
        return _best(lambda: [gptq(Wr, Hg, scale=sc, zero=zc, qmin=g.qmin, qmax=g.qmax)
                              for _ in range(k)], sync, max(1, (5 if k > 1 else 3) // fewer),
                     f"gptq {r}x{n}") / k - n ** 3 * chol

    n, (r1, r2) = GN, GPTQ_ROWS
    t1, t2 = run(r1, n), run(r2, n)
    per_row = n * (min(n, 128) / 2 + PASSES)
    gelem = max((t2 - t1) / ((r2 - r1) * per_row), 1e-12)
    col = max((t1 - r1 * per_row * gelem) / n, 1e-7)
    return gelem, col, max(2 * run(1, 8) - run(1, 16), 1e-7)  # 8 columns fewer: the setup


def _gather_rate(xp: Any, sync: Any, rng: Any, Hn: Any, solve: float) -> float:
    """The rebuild of 256 rows of n = 64 after 32 removals each: per element of a row's
    system beyond the LU flops (t = R p^2 gather + R p^3 / 3 solve)."""
    from .solvers.select import rebuild

    R, n, p = 256, 64, 32
    Hi = xp.asarray(np.linalg.inv(Hn[:n, :n] + 0.01 * np.eye(n))[None])
    Wr = xp.asarray(rng.standard_normal((R, n)))
    order = xp.asarray(np.argsort(rng.random((R, n)), axis=1))
    counts = xp.full(R, p, dtype=xp.int64)
    t = _best(lambda: rebuild(Wr, Hi, xp.zeros(R, dtype=xp.int64), order, counts, R), sync,
              label="gather")
    return max((t - R * p ** 3 / 3 * solve) / (R * p * p), 1e-12)
