"""--time-budget's choice (costfit.py) on a real wide layer: CREPE-full's second conv
(Cin 1024, kernel 64x1: 128 x 65,536) at a 24 GB machine's --memory-budget 20000 gets
blocks of 4,096 columns from the memory plan, where even the fast path is predicted over a
600 s budget (it was: "every layer takes the fast path", 4,038 s planned). Smaller blocks
make the fast path fit, so the plan must use them, and the run must solve in them."""

from __future__ import annotations

import pytest

from onnx_obc import convert
from onnx_obc.config import CompressConfig
from onnx_obc.costplan import make_plan
from onnx_obc.layers import find_layers
from onnx_obc.specs import MB

from . import builders as b
from .test_costplan import RATES


def _layers():
    model = b.conv(c_in=1024, c_out=128, kernel=(64, 1), spatial=(64, 1), bias=False)
    layers, _ = find_layers(model)
    assert layers[0].matrix_shape == (1, 128, 65536)
    return layers


@pytest.mark.parametrize("opts", [dict(bits=4, sequential=False),  # as without_auto gives
                                  dict(sparsity=0.5, allocate="uniform")])
def test_the_fast_path_takes_smaller_blocks_when_its_memory_sized_ones_miss_the_budget(opts):
    layers = _layers()
    cfg = dict(memory_budget_mb=20000, **opts)
    (mem,) = make_plan(layers, CompressConfig.from_options(**cfg), rates=RATES).layers
    assert mem.blocks > 1
    T = mem.fast_seconds / 4  # the memory-sized blocks' fast path is over it
    plan = make_plan(layers, CompressConfig.from_options(time_budget_s=T, **cfg), rates=RATES)
    (p,) = plan.layers
    assert not plan.warnings and plan.seconds <= T
    assert p.blocks > mem.blocks and p.fast_seconds < T and 65536 % p.blocks == 0
    assert p.hessian_bytes < mem.hessian_bytes and plan.hessian_total <= 20000 * MB
    assert p.label.endswith(f"-blocked({p.blocks} blocks)")
    # the largest blocks that fit: halving them once more is not needed
    assert p.blocks < 65536 // 64
    # a budget not even the smallest blocks meet: every layer fast, and a warning
    tiny = make_plan(layers, CompressConfig.from_options(time_budget_s=1e-9, **cfg),
                     rates=RATES)
    assert tiny.warnings and {q.method for q in tiny.layers} == {"gptq"}


@pytest.mark.parametrize("opts", [dict(bits=4, sequential=False),  # as without_auto gives
                                  dict(sparsity=0.5, allocate="uniform")])
def test_an_unreachable_budget_keeps_the_memory_plans_blocks(opts):
    """When even blocks of MIN_BLOCK columns miss the budget, halving would only coarsen H
    (CREPE-full under contention was cut into 1,024 blocks of 64 columns for nothing): the
    layer keeps the memory plan's blocks on the fast path, and the warning says so."""
    from onnx_obc.costplan import MIN_BLOCK

    layers = _layers()
    cfg = dict(memory_budget_mb=20000, **opts)
    (mem,) = make_plan(layers, CompressConfig.from_options(**cfg), rates=RATES).layers
    smallest = make_plan(layers, CompressConfig.from_options(time_budget_s=1e-9, **cfg),
                         rates=RATES)
    (p,) = smallest.layers
    assert p.method == "gptq" and p.blocks == mem.blocks > 1
    assert p.fast_seconds == mem.fast_seconds and p.seconds == mem.fast_seconds
    assert p.hessian_bytes == mem.hessian_bytes
    (w,) = smallest.warnings
    assert f"blocks of {MIN_BLOCK} columns" in w and "memory plan's column blocks" in w
    # just under / over the fast path in blocks of MIN_BLOCK: kept / cut to MIN_BLOCK
    from onnx_obc.costmodel import Shape, fast_seconds
    from onnx_obc.costmem import blocked

    s = blocked(Shape(1, 128, 65536), MIN_BLOCK, 1)
    t = fast_seconds(s, RATES, sparsity=opts.get("sparsity", 0.0), quant="bits" in opts)
    under, over = (make_plan(layers, CompressConfig.from_options(time_budget_s=T, **cfg),
                             rates=RATES).layers[0] for T in (t * 0.99, t * 1.01))
    assert under.blocks == mem.blocks and over.blocks == s.k == 65536 // MIN_BLOCK


def test_a_run_solves_in_the_blocks_the_time_budget_chose(monkeypatch):
    """End to end: a 1024-input layer held in 4 blocks by a 16 MB budget; a time budget
    under those blocks' fast path makes it solve in smaller ones, still beating magnitude."""
    import onnx_obc.costplan as cp

    monkeypatch.setattr(cp, "calibrate", lambda *a, **k: RATES)
    model = b.matmul(d_in=1024, d_out=8)
    layers, _ = find_layers(model)
    base = dict(sparsity=0.5, allocate="uniform", memory_budget_mb=16)
    (mem,) = make_plan(layers, CompressConfig.from_options(**base), rates=RATES).layers
    assert mem.blocks == 4
    T = mem.fast_seconds * 0.6
    res = convert(model, None, calib=[b.feeds(model, 48)], progress=False, time_budget_s=T,
                  **base)
    (row,) = res.report.layers
    (planned,) = res.report.plan["layers"]
    assert planned["blocks"] > 4 and row.method == planned["label"]
    assert row.method.endswith(f"-blocked({planned['blocks']} blocks)")
    assert res.report.plan["predicted_seconds"] <= T
    assert row.sparsity >= 0.5 and row.loss < row.magnitude_loss
