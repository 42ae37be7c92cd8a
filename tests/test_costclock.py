"""The micro-benchmark's clock (costclock.py): a multi-threaded BLAS kernel slowed by
contention (another process on the cores: OpenBLAS's 2-thread small kernels measured over
100x slower than one thread, and a 96 s solve was planned at 49,877 s) is bounded by its
one-thread time, the contention is recorded and the plan says so. Deterministic: the
timings are injected, nothing is timed."""

from __future__ import annotations

import pytest

from onnx_obc import costplan
from onnx_obc.config import CompressConfig
from onnx_obc.costclock import CONTENDED, GIVE_UP, Clock
from onnx_obc.costplan import make_plan
from onnx_obc.costrates import calibrate
from onnx_obc.layers import find_layers

from . import builders as b


class Fake:
    """One-thread runs take base(k) s (k: the one-thread call's index, growing); a run with
    the process's threads takes `factor` x the last one-thread run's time."""

    def __init__(self, factor: float) -> None:
        self.factor, self.k, self.last, self.multi = factor, 0, 1e-3, 0

    def __call__(self, fn, sync, one: bool) -> float:
        if one:
            self.k += 1
            self.last = 1e-3 * (1 + 0.01 * self.k)
            return self.last
        self.multi += 1
        return self.factor * self.last


def test_a_contended_kernel_is_bounded_by_its_one_thread_time():
    fake = Fake(100.0)
    clock = Clock(fake, threads=2)
    t = clock.best(lambda: None, lambda: None, 3, "flop32")
    assert t == pytest.approx(1.01e-3)  # the one-thread best, not 100x it
    assert fake.multi == 1  # the multi-threaded series stopped at its first slow run
    assert set(clock.slow) == {"flop32"} and clock.slow["flop32"] == pytest.approx(100)
    s = clock.summary()
    assert s["threads"] == 2 and s["contention"] == pytest.approx(100) and s["one_thread"] == 1


def test_threads_that_help_are_kept_and_one_thread_is_timed_alone():
    fast = Clock(Fake(0.5), threads=2)
    assert fast.best(lambda: None, lambda: None, 3, "gemm") == pytest.approx(0.5e-3 * 1.01)
    assert not fast.slow and fast.summary()["one_thread"] == 0
    fake = Fake(100.0)
    single = Clock(fake, threads=1)  # one BLAS thread: timed as it runs, no second series
    assert single.best(lambda: None, lambda: None, 3, "gemm") == pytest.approx(0.1)
    assert fake.k == 0 and fake.multi == 3 and single.summary()["contention"] == 1


def test_after_a_few_contended_kernels_the_rest_are_timed_with_one_thread():
    fake = Fake(100.0)
    clock = Clock(fake, threads=2)
    for i in range(GIVE_UP + 2):
        clock.best(lambda: None, lambda: None, 3, f"k{i}")
    assert fake.multi == GIVE_UP and len(clock.slow) == GIVE_UP
    assert clock.summary()["one_thread"] == 1


def _fields(rt):
    return {k: v for k, v in rt.to_dict().items()
            if k not in ("threads", "contention", "one_thread")}


def test_contended_rates_equal_the_uncontended_ones_and_the_plan_says_so():
    """calibrate on the same one-thread timings: contended 2-thread kernels (100x) give the
    rates a machine whose threads do not help gives, so the same plan; without the bound
    (the kernels timed as they ran) the plan would be ~100x over."""
    contended = calibrate(timer=Fake(100.0), threads=2)
    clean = calibrate(timer=Fake(1.0), threads=2)
    unbounded = calibrate(timer=Fake(100.0), threads=1)  # what the old clock measured
    assert _fields(contended) == _fields(clean)
    assert contended.contention == pytest.approx(100) and contended.slow
    assert contended.one_thread == 1 and clean.contention == 1 and not clean.slow
    assert unbounded.flop32 > 50 * contended.flop32  # 100x base(0) against base(1)
    layers, _ = find_layers(b.mlp((64, 512, 8)))
    cfg = CompressConfig.from_options(sparsity=0.5, allocate="uniform")
    plans = [make_plan(layers, cfg, rates=r) for r in (contended, clean, unbounded)]
    assert plans[0].seconds == plans[1].seconds
    assert plans[2].seconds > 10 * plans[0].seconds
    assert not plans[1].warnings and "looked contended" in plans[0].warnings[0]
    assert "rates contended" in plans[0].summary()
    assert plans[0].rates["contention"] > CONTENDED
    # with a time budget the choice is the uncontended one: exact solves where they fit
    T = plans[1].seconds * 0.75
    fit = [make_plan(layers, CompressConfig.from_options(sparsity=0.5, allocate="uniform",
                                                         time_budget_s=T), rates=r)
           for r in (contended, clean)]
    assert [(p.method, p.blocks) for p in fit[0].layers] == [
        (p.method, p.blocks) for p in fit[1].layers]
    assert "obc" in {p.method for p in fit[0].layers} and fit[0].seconds <= T


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def test_a_contended_plan_solves_on_one_blas_thread(monkeypatch):
    monkeypatch.setattr(costplan, "SMALL_WORK", 0.0)  # its predictions on a small model
    """The rates are then the one-thread ones, and the solve runs as predicted: on one
    thread (the contended threads slow the solve's small kernels as the benchmark's)."""
    threadpool_limits = pytest.importorskip("threadpoolctl").threadpool_limits

    import onnx_obc.costplan as cp
    import onnx_obc.pipeline as pipeline
    from onnx_obc import convert
    from onnx_obc.costclock import solve_threads

    contended = calibrate(timer=Fake(100.0), threads=2)
    clean = calibrate(timer=Fake(1.0), threads=2)
    with threadpool_limits(limits=2, user_api="blas"):
        with solve_threads(contended.to_dict()):
            assert _blas_threads() == 1
        with solve_threads(clean.to_dict()), solve_threads({}):
            assert _blas_threads() == 2
        seen = []
        real = pipeline.compress_layers
        monkeypatch.setattr(pipeline, "compress_layers",
                            lambda *a, **k: seen.append(_blas_threads()) or real(*a, **k))
        model = b.matmul(d_in=16, d_out=4)
        for rates in (contended, clean):
            monkeypatch.setattr(cp, "calibrate", lambda *a, **k: rates)
            r = convert(model, None, calib=[b.feeds(model, 32)], sparsity=0.5, progress=False)
            assert any("solves run on one BLAS thread" in w
                       for w in r.report.warnings) == (rates is contended)
        assert seen == [1, 2] and _blas_threads() == 2
