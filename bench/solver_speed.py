"""Speed of the ExactOBS solvers on realistic layer shapes (prints figures; asserts nothing).

    python bench/solver_speed.py [--device cpu|cuda] [--sparsity 0.5] [--budget-s 20]

For each shape (rows x cols) with a correlated Hessian (low-rank plus a noise floor, as
real activations give): seconds of the plain eager solver (tests/solvers/oracles.py) and of
the fast solver (solvers/fast.py + global selection + rebuild, i.e. the whole layer solve),
measured in this run next to the machine's float32 matrix-product FLOP/s and memory copy
bandwidth. From those:
  - eager memory bound: the eager update streams d x d floats per step and row,
    8 * rows * cols^3 bytes / bandwidth (read + write, float32): no eager code beats it;
  - fast compute bound: 2 * cols^2 flops per greedy step actually run (its fold) / FLOP/s.
When a solve would exceed --budget-s, it runs on a random subset of rows and the time is
scaled by rows / subset (rows are independent; the row subset keeps the same sparsity);
those lines are marked with '~'. Agreement with the plain solver, on the rows it ran (float32
both): 'same to' is how far (fraction of the row's steps) the removal orders agree before
the first float32 near-tie flips a choice (100% = identical; in float64 they are identical,
see tests), and 'loss diff' the relative difference of the layer loss the two give at the
target sparsity on those rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx_obc.backend import cummax, get_backend  # noqa: E402
from onnx_obc.solvers import prepare, rows_per_batch  # noqa: E402
from onnx_obc.solvers.fast import greedy_traces  # noqa: E402
from onnx_obc.solvers.select import rebuild, select_counts  # noqa: E402
from tests.solvers.oracles import greedy_order  # noqa: E402  (the eager oracle)

SHAPES = [(60, 2880), (480, 480), (480, 240), (6625, 120), (512, 4608), (2048, 512)]


def machine(be):
    xp = be.xp
    n = 4096 if be.name == "cupy" else 2048
    A = xp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    times = []
    for _ in range(5):
        be.sync()
        t = time.perf_counter()
        A @ A
        be.sync()
        times.append(time.perf_counter() - t)
    flops = 2 * n**3 / statistics.median(times)
    src = xp.ones(64 << 20, dtype=xp.float32)  # 256 MB
    dst = xp.empty_like(src)
    times = []
    for _ in range(5):
        be.sync()
        t = time.perf_counter()
        dst[...] = src
        be.sync()
        times.append(time.perf_counter() - t)
    bw = 2 * src.nbytes / statistics.median(times)  # bytes read + written
    return flops, bw


def hessian(d, seed):
    """H = A A^T / r + 0.01 * mean diag * I with A [d, d/4]: correlated, full rank."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, max(8, d // 4)), dtype=np.float32).astype(np.float64)
    H = A @ A.T / A.shape[1]
    H += 0.01 * np.mean(np.diag(H)) * np.eye(d)
    return H[None]


def timed(be, fn):
    be.sync()
    t = time.perf_counter()
    out = fn()
    be.sync()
    return time.perf_counter() - t, out


def run_shape(be, rows, d, sparsity, budget_s, flops, bw, mem_budget):
    xp = be.xp
    rng = np.random.default_rng(rows + d)
    W = rng.standard_normal((1, rows, d), dtype=np.float32)
    prep = prepare(be.to_device(W), be.to_device(hessian(d, d)), 0.01)
    # fast: estimated 2 * rows * d^3 * sparsity flops; subset rows if over budget
    est_fast = 2 * rows * d**3 * min(1.0, sparsity + 0.15) / (0.5 * flops)
    sub = rows if est_fast <= budget_s else max(4, int(rows * budget_s / est_fast))
    pick = be.to_device(np.sort(rng.permutation(rows)[:sub]))
    Wr = prep.W[0][pick]
    group = xp.zeros(sub, dtype=xp.int64)
    rb = rows_per_batch(d, sub, mem_budget)
    count = round(sparsity * sub * d)
    if be.name == "numpy":
        tracemalloc.start()
    t_fast, tr = timed(be, lambda: greedy_traces(Wr, prep.Hinv, group, rb, count))
    t_sel, _ = timed(be, lambda: rebuild(Wr, prep.Hinv, group, tr.order,
                                         select_counts(tr.keys, count), rb))
    peak = tracemalloc.get_traced_memory()[1] if be.name == "numpy" else \
        xp.get_default_memory_pool().total_bytes()
    if be.name == "numpy":
        tracemalloc.stop()
    scale = rows / sub
    fast_s = (t_fast + t_sel) * scale
    work = tr.steps_run / (sub * d)
    # plain eager solver, on few rows (its cost per row is fixed: every step, d x d update)
    est_plain_row = 12 * d**3 / bw
    k = int(max(1, min(sub, budget_s / max(est_plain_row, 1e-9))))
    k = min(k, 64)
    t_plain, (l1, o1) = timed(be, lambda: greedy_order(Wr[:k], prep.Hinv, group[:k], k))
    plain_s = t_plain * rows / k
    full = greedy_traces(Wr[:k], prep.Hinv, group[:k], k, None)
    o1h, o2h = be.to_host(o1), be.to_host(full.order)
    diverge = [int(np.argmax(a != b)) if (a != b).any() else d for a, b in zip(o1h, o2h)]
    # the k-row sub-problem at the target sparsity: loss of each solver's selection
    ck = round(sparsity * k * d)
    H64 = prep.H[0]
    losses = []
    for keys, order in ((cummax(l1, axis=1), o1), (full.keys, full.order)):
        Wk = rebuild(Wr[:k], prep.Hinv, group[:k], order, select_counts(keys, ck), k)
        dW = Wk - Wr[:k].astype(xp.float64)
        losses.append(float(((dW @ H64) * dW).sum()))
    loss_diff = abs(losses[1] - losses[0]) / losses[0]
    mem_bound = 8 * rows * d**3 / bw
    compute_bound = 2 * d**2 * tr.steps_run * scale / flops
    return dict(shape=f"{rows}x{d}", rows_timed=sub, plain_rows=k, plain_s=plain_s,
                mem_bound_s=mem_bound, fast_s=fast_s, work=work, diverge=min(diverge) / d,
                loss_diff=loss_diff,
                compute_frac=compute_bound / fast_s, peak_mb=peak / 2**20,
                vs_plain=plain_s / fast_s, vs_mem_bound=mem_bound / fast_s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--budget-s", type=float, default=20.0)
    ap.add_argument("--memory-budget-mb", type=int, default=2048)
    ap.add_argument("--shapes", nargs="*", default=None, help="e.g. 480x480 60x2880")
    args = ap.parse_args()
    be = get_backend(args.device)
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes] if args.shapes else SHAPES
    flops, bw = machine(be)
    print(f"device: {be.device_label}; float32 matmul {flops / 1e9:.1f} GFLOP/s; "
          f"copy bandwidth {bw / 1e9:.1f} GB/s (read+write); sparsity {args.sparsity}")
    head = (f"{'shape':>10} {'plain s':>10} {'eager bound s':>13} {'fast s':>9} {'x plain':>8} "
            f"{'x bound':>8} {'work':>5} {'compute':>8} {'peak MB':>8} {'same to':>7} "
            f"{'loss diff':>9}")
    print(head)
    print("-" * len(head))
    for rows, d in shapes:
        r = run_shape(be, rows, d, args.sparsity, args.budget_s, flops, bw,
                      args.memory_budget_mb << 20)
        mark = "~" if r["rows_timed"] < rows else " "
        pmark = "~" if r["plain_rows"] < rows else " "
        print(f"{r['shape']:>10} {pmark}{r['plain_s']:>9.2f} {r['mem_bound_s']:>13.2f} "
              f"{mark}{r['fast_s']:>8.2f} {r['vs_plain']:>8.1f} {r['vs_mem_bound']:>8.1f} "
              f"{r['work']:>5.0%} {r['compute_frac']:>8.0%} {r['peak_mb']:>8.0f} "
              f"{r['diverge']:>7.0%} {r['loss_diff']:>9.1e}", flush=True)
    print("~ = timed on a random subset of rows and scaled to all rows (rows are independent)")


if __name__ == "__main__":
    main()
