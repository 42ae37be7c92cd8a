"""The plan (costplan.py, costmodel.py): its byte figures are the arrays' sizes, the solve
stays within its predicted working set, layers too wide for the memory budget are solved in
column blocks (and refused before any work when even blocks do not fit), and a time budget
picks ExactOBS or the fast path per layer."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from onnx_obc import convert, costplan
from onnx_obc.backend import get_backend
from onnx_obc.collect import collect
from onnx_obc.calib import DataSet
from onnx_obc.config import CompressConfig
from onnx_obc.costmodel import Rates, Shape, hessian_bytes, solver_bytes
from onnx_obc.costmem import needed
from onnx_obc.costplan import make_plan, without_auto
from onnx_obc.errors import ConfigError
from onnx_obc.hessian import BlockHessianAccumulator
from onnx_obc.layers import find_layers
from onnx_obc.solve import effective_rank
from onnx_obc.solvers import Unstructured, solve_layer
from onnx_obc.solvers.blocked import solve_blocked
from onnx_obc.specs import MB

from . import builders as b
from .solvers.data import correlated_H, weights


@pytest.fixture(autouse=True)
def timed_plans(monkeypatch):
    """These tests read the predictions on layers far below costplan.SMALL_WORK."""
    monkeypatch.setattr(costplan, "SMALL_WORK", 0.0)

RATES = Rates(flop32=1e-10, flop64=1e-10, prep=0.2, eig=0.2, chol=1e-9, solve=1e-10,
              prep_exp=3, eig_exp=3, spill=2, step=1e-5, row=1e-7, elem=1e-9, qstep=1e-5,
              qrow=1e-7, qelem=1e-9, gelem=1e-9, col=1e-5, gcall=1e-4, gather=1e-8, grid=1e-9,
              sort=1e-9, fixed=1e-3, qfixed=2e-3)  # fixed, for the chooser


def _cfg(**kw):
    return CompressConfig.from_options(**{"sparsity": 0.5, "allocate": "uniform", **kw})


def test_hessian_bytes_are_the_accumulators_sizes():
    model = b.matmul(d_in=2048, d_out=16)
    layers, _ = find_layers(model)
    plan = make_plan(layers, _cfg(memory_budget_mb=64), rates=RATES)
    p = plan.layers[0]
    assert p.blocks > 1 and p.label == f"obc-blocked({p.blocks} blocks)"
    feed = b.feeds(model, 40)
    accs, _ = collect(model, layers, DataSet(feed, "feeds"), 16, get_backend("cpu"),
                      plan.activation_bytes // MB, False, blocks={p.weight: p.blocks})
    acc = accs[p.weight]
    assert isinstance(acc, BlockHessianAccumulator)
    assert acc.total.nbytes == p.hessian_bytes == 2048 * (2048 // p.blocks) * 8
    unblocked = make_plan(layers, _cfg(), rates=RATES).layers[0]
    assert unblocked.blocks == 1 and unblocked.hessian_bytes == 2048 * 2048 * 8
    assert plan.hessian_total + plan.activation_bytes <= 64 * MB


@pytest.mark.parametrize("k", [1, 4])
def test_the_solve_stays_within_its_predicted_working_set(k):
    G, r, d = 1, 32, 256
    W = weights(r, d, 0).astype(np.float32)
    H = correlated_H(d, 0)[None]
    row_budget = 2 * MB
    if k > 1:
        bs = d // k
        H = np.stack([H[:, j * bs:(j + 1) * bs, j * bs:(j + 1) * bs] for j in range(k)], 1)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    if k > 1:
        solve_blocked(W, H, structure=Unstructured(0.5), budget_bytes=row_budget)
    else:
        solve_layer(W, H, structure=Unstructured(0.5), budget_bytes=row_budget)
        effective_rank(H)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    s = Shape(G, r, d, k)
    assert H.nbytes == hessian_bytes(s)
    predicted = solver_bytes(s, row_budget)
    assert 0.4 * predicted <= peak <= predicted, (peak / MB, predicted / MB)


def test_too_wide_even_in_blocks_is_refused_before_any_work():
    model = b.matmul(d_in=32768, d_out=4)
    with pytest.raises(ConfigError, match="memory_budget_mb.*at least"):
        convert(model, None, calib=None, sparsity=0.5, memory_budget_mb=16, progress=False)
    # N:M cannot be solved in blocks: refused too, saying why
    layers, _ = find_layers(b.matmul(d_in=4096, d_out=8))
    with pytest.raises(ConfigError, match="column blocks"):
        make_plan(layers, CompressConfig.from_options(nm=(2, 4), memory_budget_mb=64),
                  rates=RATES)


def test_a_wide_layer_is_solved_in_blocks_within_the_budget():
    model = b.matmul(d_in=1024, d_out=8)  # H 8 MiB, 48 MiB to solve: blocks of 256 fit
    res = convert(model, None, calib=[b.feeds(model, 48)], sparsity=0.5, bits=4,
                  memory_budget_mb=16, progress=False)
    (row,) = res.report.layers
    assert row.method.startswith("obc-blocked(") and row.predicted_seconds > 0
    assert row.sparsity >= 0.5 and row.loss < row.magnitude_loss
    assert res.report.plan["layers"][0]["blocks"] == 4


def test_the_time_budget_buys_exact_solves_cheapest_first():
    layers, _ = find_layers(b.mlp((64, 512, 8)))  # fc1 512x64, fc2 8x512
    fast = make_plan(layers, _cfg(time_budget_s=1e-9), rates=RATES)
    assert {p.method for p in fast.layers} == {"gptq"} and fast.warnings
    free = make_plan(layers, _cfg(time_budget_s=1e6), rates=RATES)
    assert {p.method for p in free.layers} == {"obc"}
    asked = make_plan(layers, _cfg(), rates=RATES)  # no budget: as asked
    assert [p.seconds for p in asked.layers] == [p.exact_seconds for p in free.layers]
    # room for the exact solve of fc1 (cheaper per weight) but not of fc2's (d^3 per row)
    fc1, fc2 = free.layers
    assert fc1.exact_seconds / (fc1.r * fc1.d) < fc2.exact_seconds / (fc2.r * fc2.d)
    budget = fc1.exact_seconds + fc2.fast_seconds * 1.01
    mid = make_plan(layers, _cfg(time_budget_s=budget), rates=RATES)
    assert [p.method for p in mid.layers] == ["obc", "gptq"]
    assert mid.seconds <= budget


def test_time_budget_option():
    assert _cfg(time_budget_s=30).run.time_budget_s == 30
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ConfigError, match="time_budget_s"):
            _cfg(time_budget_s=bad)


def test_the_report_carries_the_plan_and_the_chosen_methods():
    model = b.mlp((16, 64, 8))
    res = convert(model, None, calib=[b.feeds(model, 64)], sparsity=0.5, progress=False,
                  time_budget_s=1e-6)
    assert {x.method for x in res.report.layers} == {"gptq"}
    assert res.report.plan["time_budget_s"] == 1e-6
    assert all(x.predicted_seconds is not None for x in res.report.layers)
    assert "plan: solve predicted" in res.report.table()


@pytest.mark.slow
def test_a_128_by_65536_conv_compresses_within_the_memory_budget():
    """Cin 1024, kernel 64x1: d = 65,536 columns, a 32 GiB Hessian unblocked. Within 6 GB
    it is held in column blocks; the time budget picks what it can afford. (Peak RSS and
    times: bench/cost_model.py --wide.)"""
    model = b.conv(c_in=1024, c_out=128, kernel=(64, 1), spatial=(64, 1), bias=False)
    layers, _ = find_layers(model)
    assert layers[0].matrix_shape == (1, 128, 65536)
    budget = 6000
    res = convert(model, None, calib=[b.feeds(model, 48)], sparsity=0.5, bits=4,
                  memory_budget_mb=budget, time_budget_s=60, progress=False,
                  compare_baseline=False)
    (row,) = res.report.layers
    plan = res.report.plan
    assert "-blocked(" in row.method and row.sparsity >= 0.5
    assert plan["hessian_bytes"] + plan["layers"][0]["solver_bytes"] <= budget * MB
    assert row.loss < row.magnitude_loss


def test_the_default_dp_falls_back_to_uniform_when_hessians_need_blocks(saved, tmp_path):
    """--sparsity alone allocates by the DP, which needs every full Hessian: when they do not
    fit the memory budget the run takes uniform sparsity in column blocks, and says so."""
    model = b.matmul(d_in=2048, d_out=16)
    layers, _ = find_layers(model)
    cfg = CompressConfig.from_options(sparsity=0.5, memory_budget_mb=64)
    assert cfg.alloc.mode == "dp"
    fell, [note] = without_auto(layers, cfg)
    assert fell.alloc.mode == "uniform" and "memory-budget 64 MB" in note
    same, none = without_auto(layers, CompressConfig.from_options(sparsity=0.5))
    assert same.alloc.mode == "dp" and none == []  # fits: the DP stays
    asked = CompressConfig.from_options(sparsity=0.5, allocate="dp", memory_budget_mb=64)
    assert without_auto(layers, asked) == (asked, [])  # asked for: refused later
    path, data = saved(model, n=40)
    res = convert(path, None, calib=data, progress=False, sparsity=0.5, memory_budget_mb=64)
    assert any("instead of the default DP" in w for w in res.report.warnings)
    assert res.report.layers[0].method.startswith("obc-blocked")


def test_the_default_sequential_falls_back_to_one_shot_when_hessians_need_blocks(saved):
    """W4 alone is sequential by default, which keeps the full Hessians and cross moments:
    where they do not fit the budget the run is one-shot in column blocks, and says so; a
    sequential run holds one group's Hessians at a time, not every layer's."""
    model = b.matmul(d_in=2048, d_out=16)
    layers, _ = find_layers(model)
    cfg = CompressConfig.from_options(bits=4, memory_budget_mb=64)
    assert cfg.run.sequential
    fell, [note] = without_auto(layers, cfg)
    assert fell.run.sequential is False and "one-shot instead" in note and "64 MB" in note
    asked = CompressConfig.from_options(bits=4, sequential=True, memory_budget_mb=64)
    assert without_auto(layers, asked) == (asked, [])  # asked for: the plan refuses it
    with pytest.raises(ConfigError, match="run.sequential"):
        make_plan(layers, asked, rates=RATES)
    path, data = saved(model, n=40)
    res = convert(path, None, calib=data, progress=False, bits=4, memory_budget_mb=64)
    assert any("one-shot instead of the default sequential" in w for w in res.report.warnings)
    assert res.report.layers[0].method.endswith("blocks)")
    assert res.report.config["run"]["sequential"] is False
    three, _ = find_layers(b.mlp3((1024, 1024, 1024, 8)))  # each H 8 MB, 16 with C
    seq = CompressConfig.from_options(bits=4, memory_budget_mb=145)  # the solver's ~124 MB
    one = CompressConfig.from_options(bits=4, sequential=False, memory_budget_mb=145)
    assert without_auto(three, seq) == (seq, [])  # one layer's 16 MB at a time, not 48
    assert needed(three, seq) < 145 * MB < needed(three, one)
    p_seq, p_one = (make_plan(three, c.replace(memory_budget_mb=200), rates=RATES)
                    for c in (seq, one))
    assert (p_seq.activation_bytes, p_one.activation_bytes) == (184 * MB, 176 * MB)


@pytest.mark.parametrize("opts,refined", [
    (dict(bits=4), True),                      # obc: the code descent on by default
    (dict(bits=4, refine=False), False),
    (dict(bits=8), False),                     # 8 bits: RTN / GPTQ only, no descent
    (dict(bits=4, sparsity=0.5, allocate="uniform"), True),
])
def test_the_plan_prices_the_code_descent_where_the_solve_runs_it(opts, refined):
    layers, _ = find_layers(b.mlp())
    plan = make_plan(layers, CompressConfig.from_options(**opts), rates=RATES).layers
    off = make_plan(layers, CompressConfig.from_options(**{**opts, "refine": False}),
                    rates=RATES).layers
    for p, o in zip(plan, off):
        assert ((p.exact_seconds or 0) > (o.exact_seconds or 0)) == refined


def test_an_8_bit_only_plan_skips_the_greedys_micro_benchmark(monkeypatch):
    """No layer can take ExactOBS / OBQ with 8-bit quantization alone (choose.FAST_BITS):
    the plan measures no greedy rates (their kernels are never run), predicts the fast
    candidates' time and shows no exact time; at 4 bits the greedy is measured."""
    import onnx_obc.costrates as cm
    import onnx_obc.solvers.fast as fast

    calls = []
    real = fast.greedy_traces
    monkeypatch.setattr(fast, "greedy_traces", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(cm, "_CACHE", {})
    layers, _ = find_layers(b.matmul(d_in=64, d_out=16))
    plan = make_plan(layers, CompressConfig.from_options(bits=8, act_bits=8, time_budget_s=60))
    assert not calls
    assert plan.rates["step"] == 0.0 and plan.rates["col"] > 0
    p = plan.layers[0]
    assert p.exact_seconds is None and p.method == "obc" and p.fast_seconds > 0
    assert p.seconds == pytest.approx(p.fast_seconds)  # one GPTQ (act-order), as --method gptq
    make_plan(layers, CompressConfig.from_options(bits=4))
    assert calls
    assert make_plan(layers, CompressConfig.from_options(bits=4)).layers[0].exact_seconds


def test_an_8_bit_only_plan_without_a_time_budget_measures_nothing(monkeypatch):
    """8-bit quantization alone without --time-budget: no micro-benchmark runs at all
    (costrates.calibrate is never called) and no time is predicted; the memory plan (bytes,
    blocks) is the same as with measured rates, and --bits 4 still measures."""
    import onnx_obc.costplan as cp

    calls = []
    real = cp.calibrate
    monkeypatch.setattr(cp, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    layers, _ = find_layers(b.matmul(d_in=64, d_out=16))
    cfg = CompressConfig.from_options(bits=8, act_bits=8)
    plan = make_plan(layers, cfg)
    assert not calls and plan.rates == {} and plan.seconds is None
    p = plan.layers[0]
    assert p.seconds is None and p.exact_seconds is None and p.fast_seconds is None
    timed = make_plan(layers, cfg, rates=RATES).layers[0]
    assert (p.hessian_bytes, p.solver_bytes, p.blocks) == (
        timed.hessian_bytes, timed.solver_bytes, timed.blocks) and timed.seconds > 0
    assert "not predicted" in plan.summary() and "-" in plan.table()
    make_plan(layers, CompressConfig.from_options(bits=4))
    assert calls


def test_the_plan_predicts_the_dp_s_stage_too():
    """allocation_seconds: one ExactOBS trace to the maximum sparsity per layer, plus the
    uniform solve where the default's check runs (allocation/guard.py); none where the
    allocation is not modelled (mixed levels, the output score) or uniform."""
    from onnx_obc.costmodel import exact_seconds, trace_seconds

    layers, _ = find_layers(b.mlp((64, 96, 32)))
    default = CompressConfig.from_options(sparsity=0.5)  # --allocate auto: the DP, checked
    plan = make_plan(layers, default, rates=RATES)
    shapes = [Shape(p.G, p.r, p.d) for p in plan.layers]
    traces = sum(trace_seconds(s, RATES, sparsity=0.95, row_budget=plan.row_bytes)
                 for s in shapes)
    uniform = sum(exact_seconds(s, RATES, sparsity=0.5, quant=False, candidates=0,
                                row_budget=plan.row_bytes) for s in shapes)
    assert 0 < traces and plan.allocate_seconds == pytest.approx(traces + uniform)
    asked = make_plan(layers, CompressConfig.from_options(sparsity=0.5, allocate="dp"),
                      rates=RATES)  # asked for: not checked against uniform
    assert asked.allocate_seconds == pytest.approx(traces)
    assert "allocation predicted" in plan.summary() and plan.to_dict()["allocate_seconds"]
    for kw in (dict(allocate="uniform"), dict(allocate="dp", score="output")):
        assert make_plan(layers, _cfg(**kw), rates=RATES).allocate_seconds is None
    bops = CompressConfig.from_options(allocate="dp", budget="bops", target=8)
    assert make_plan(layers, bops, rates=RATES).allocate_seconds is None


def test_the_report_says_the_allocation_s_predicted_and_measured_seconds():
    model = b.mlp((16, 64, 8))
    r = convert(model, None, calib=[b.feeds(model, 64)], sparsity=0.5, progress=False)
    line = next(x for x in r.report.table().splitlines() if x.startswith("plan: "))
    a = r.report.plan["allocate_seconds"]
    assert a > 0 and f"allocation predicted {a:.1f}s, measured " \
        f"{r.report.seconds['allocate']:.1f}s" in line


def test_a_time_budget_too_small_for_the_dp_s_tables_takes_uniform_sparsity():
    """--time-budget bounds the solves (costfit.py); the default DP's level tables and
    check come on top, so where those with the fitted solves are predicted over it the
    default takes uniform sparsity and says so; an asked-for DP stays."""
    model = b.mlp((16, 64, 8))
    calib = [b.feeds(model, 64)]
    tight = convert(model, None, calib=calib, sparsity=0.5, progress=False, time_budget_s=1e-6)
    assert tight.report.config["alloc"]["mode"] == "uniform" and not tight.report.profile
    (note,) = [w for w in tight.report.warnings if "instead of the default DP" in w]
    assert "over --time-budget 1e-06 s; --allocate dp keeps the DP" in note
    assert tight.report.plan["allocate_seconds"] is None  # uniform: no allocation stage
    roomy = convert(model, None, calib=calib, sparsity=0.5, progress=False, time_budget_s=1e6)
    assert roomy.report.config["alloc"]["mode"] == "dp" and roomy.report.profile
    asked = convert(model, None, calib=calib, sparsity=0.5, allocate="dp", progress=False,
                    time_budget_s=1e-6)
    assert asked.report.config["alloc"]["mode"] == "dp"
    assert not [w for w in asked.report.warnings if "instead of the default DP" in w]


def test_a_small_run_measures_no_rates_and_says_why(monkeypatch):
    """Exact work (sum of G r d^3) at most SMALL_WORK and no --time-budget: the rates are not
    measured (their micro-benchmark was most of such a run) and no time is predicted; the
    report's plan line says why. Above it, or with a time budget, they are."""
    from onnx_obc import costrates
    monkeypatch.setattr(costplan, "SMALL_WORK", 2e9)
    calls = []
    monkeypatch.setattr(costplan, "calibrate", lambda *a, **k: calls.append(1) or (
        costrates.calibrate(*a, **k)))
    layers = find_layers(b.mlp((16, 64, 8)))[0]
    plan = make_plan(layers, CompressConfig.from_options(sparsity=0.5))
    assert not calls and plan.seconds is None and plan.untimed == "a small run"
    assert plan.allocate_seconds is None and all(p.hessian_bytes for p in plan.layers)
    assert "not predicted (a small run)" in costplan.plan_line(plan.to_dict(), [(None, 0.1)],
                                                               None)
    assert make_plan(layers, CompressConfig.from_options(sparsity=0.5, time_budget_s=60)
                     ).seconds is not None and calls
    monkeypatch.setattr(costplan, "SMALL_WORK", 0.0)
    assert make_plan(layers, CompressConfig.from_options(sparsity=0.5)).untimed == ""
