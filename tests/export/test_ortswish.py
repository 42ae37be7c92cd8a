"""HardSwish on the codes (export/ortswish.py): QLinearAdd + QLinearMul, or a Clip on the
codes + QLinearMul where x's grid holds -3 and 3, instead of a float DequantizeLinear ->
HardSwish -> QuantizeLinear island."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_obc.export import ortswish
from onnx_obc.export.graph import constant
from onnx_obc.layers import find_layers

from .. import builders as b
from .test_onnxruntime import compressed, optimized_ops, rel, run

FULL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def swish_cnn(seed: int = 0, shift: bool = False) -> onnx.ModelProto:
    """x [N, 4, 8, 8] --c1--> HardSwish --c2--> GlobalAveragePool, Flatten --fc--> y [N, 5].
    shift: HardSwish(c1) + 2.5 into c2 (PP-OCRv4's affine bias; ortshift.py takes it into the
    zero point, so the HardSwish output's QuantizeLinear reads it first)."""
    hs = "hs0" if shift else "hs"
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("HardSwish", ["c1"], [hs], name="hardswish"),
             *([helper.make_node("Add", ["hs0", "c"], ["hs"], name="shift")] if shift else []),
             helper.make_node("Conv", ["hs", "W2", "B2"], ["c2"], name="c2", pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [b.weight("W1", (8, 4, 3, 3), seed), b.weight("B1", (8,), seed + 1),
             b.weight("W2", (8, 8, 3, 3), seed + 2), b.weight("B2", (8,), seed + 3),
             b.weight("Wf", (5, 8), seed + 4), b.weight("bf", (5,), seed + 5)]
    if shift:
        inits.append(numpy_helper.from_array(np.array(2.5, np.float32), "c"))
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 8, 8])], [b.vi("y", [b.BATCH, 5])], inits)


def export(model: onnx.ModelProto, on: bool, monkeypatch, act_type: str = "u8"
           ) -> tuple[onnx.ModelProto, dict]:
    monkeypatch.setattr(ortswish, "HARDSWISH_ON_CODES", on)
    feed = {k: v * 3.0 for k, v in b.feeds(model, 32, seed=3).items()}  # c1 spans both
    out, feed, _ = compressed(model, act_type=act_type, feed=feed)  # ends of the gate
    onnx.checker.check_model(out, full_check=True)
    return out, feed


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("clip", [False, True])
def test_hardswish_runs_on_integer_kernels(monkeypatch, shift, clip) -> None:
    monkeypatch.setattr(ortswish, "GATE_BY_CLIP", clip)
    model = swish_cnn(shift=shift)
    on, feed = export(model, True, monkeypatch)
    off, _ = export(model, False, monkeypatch)
    assert not any(n.op_type == "HardSwish" for n in on.graph.node)
    ops_on, ops_off = optimized_ops(on), optimized_ops(off)
    assert ops_on["QLinearConv"] == ops_off["QLinearConv"] == 2
    assert ops_on["QLinearMul"] == 1
    assert (ops_on["QLinearAdd"], ops_on["Clip"]) == ((0, 1) if clip else (1, 0))
    assert ops_on["HardSwish"] == ops_on["HardSigmoid"] == 0
    assert ops_off["HardSwish"] + ops_off["HardSigmoid"] == 1  # the float island before
    dense = run(model, feed, FULL)
    got_on, got_off = run(on, feed, FULL), run(off, feed, FULL)
    assert rel(got_on, got_off) < 0.02
    assert rel(got_on, dense) <= 1.1 * rel(got_off, dense) + 1e-3


def _island(scale: float, zero: int, out_scale: float, out_zero: int,
            y_is_output: bool = False) -> gs.Graph:
    """codes (uint8, all 256) -> DequantizeLinear -> HardSwish -> QuantizeLinear -> codes."""
    q = gs.Variable("q", dtype=np.uint8, shape=[256])
    x, y = gs.Variable("x", np.float32, [256]), gs.Variable("y", np.float32, [256])
    out = gs.Variable("out", np.uint8, [256])
    nodes = [gs.Node("DequantizeLinear", "dq", inputs=[
                 q, constant("s", np.array(scale, np.float32)),
                 constant("z", np.array(zero, np.uint8))], outputs=[x]),
             gs.Node("HardSwish", "hardswish", inputs=[x], outputs=[y]),
             gs.Node("QuantizeLinear", "quant", inputs=[
                 y, constant("so", np.array(out_scale, np.float32)),
                 constant("zo", np.array(out_zero, np.uint8))], outputs=[out])]
    return gs.Graph(nodes=nodes, inputs=[q], outputs=[out, y] if y_is_output else [out],
                    opset=14)


def _codes(graph: gs.Graph) -> np.ndarray:
    model = gs.export_onnx(graph.cleanup().toposort())
    model.ir_version = 8
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(["out"], {"q": np.arange(256, dtype=np.uint8)})[0].astype(np.int64)


def test_every_code_within_one_step_and_exact_where_the_gate_saturates() -> None:
    """All 256 input codes, for grids with the gate's ends inside and outside the range: the
    codes equal the float path's or differ by one, and are equal where x <= -3 or x >= 3
    (the gate is 0 or 1 exactly)."""
    for scale, zero, out_scale, out_zero in [(7.3 / 255, 101, 6.2 / 255, 9),
                                             (0.1129, 27, 0.1025, 8),
                                             (5.5 / 255, 60, 4.3 / 255, 21)]:
        ref = _codes(_island(scale, zero, out_scale, out_zero))
        graph = _island(scale, zero, out_scale, out_zero)
        names = iter(range(100))
        assert ortswish.hardswish_on_codes(graph, lambda base: f"{base}_{next(names)}") == 1
        assert not any(n.op == "HardSwish" for n in graph.cleanup().nodes)
        got = _codes(graph)
        x = (np.arange(256) - zero) * np.float32(scale)
        assert np.abs(got - ref).max() <= 1
        flat = (x <= -3) | (x >= 3)
        assert flat.sum() > 0
        np.testing.assert_array_equal(got[flat], ref[flat])
        assert (got != ref).mean() < 0.2


@pytest.mark.parametrize("k, zero, out_scale, out_zero", [
    (40, 101, 6.2 / 255, 9),  # both ends of the gate on codes: a Clip
    (26, 27, 0.1025, 8),  # a coarse grid
    (128, 128, 3 / 255, 0),  # the grid [-3, 3]: the codes are the gate, no Clip
    (90, 90, 0.05, 30),  # -3 is the lowest code, 3 inside: a Clip at the top only
])
def test_the_clipped_gate_is_exact(k: int, zero: int, out_scale: float, out_zero: int) -> None:
    """x's grid holding -3 and 3 (scale 3 / k, zero point >= k): every one of the 256 codes
    as the float path's (within one step where float32 rounds a tie the other way), equal
    where the gate saturates, and no QLinearAdd's rounding of the gate."""
    scale = 3.0 / k
    ref = _codes(_island(scale, zero, out_scale, out_zero))
    graph = _island(scale, zero, out_scale, out_zero)
    names = iter(range(100))
    assert ortswish.hardswish_on_codes(graph, lambda base: f"{base}_{next(names)}") == 1
    ops = [n.op for n in graph.cleanup().nodes]
    assert "Add" not in ops and ops.count("Clip") == int(zero > k or zero + k < 255)
    got = _codes(graph)
    x = (np.arange(256) - zero) * np.float32(scale)
    assert np.abs(got - ref).max() <= 1 and (got != ref).mean() < 0.02
    flat = (x <= -3) | (x >= 3)
    np.testing.assert_array_equal(got[flat], ref[flat])


def test_snapped_grids_hold_minus_and_plus_three() -> None:
    for scale, zero in [(0.0286, 110), (0.1129, 27), (0.05, 60), (3 / 128, 128)]:
        s, z = ortswish.snapped(scale, zero)
        k = 3 / s
        assert abs(k - round(k)) < 1e-9 and scale <= s <= scale * (1 + 1 / round(k))
        assert z >= round(k) and abs(z * s - zero * scale) <= s / 2  # -3 on codes, lo kept
    assert ortswish.snapped(0.05, 40) is None  # lo = -2: -3 below the grid
    assert ortswish.snapped(3.5, 10) is None  # a step over 3


def test_the_placement_snaps_the_hardswish_input(monkeypatch) -> None:
    """The conv before the HardSwish writes codes on a snapped grid (3 / scale an integer);
    its own output error no worse than the QLinearAdd gate's on the unsnapped grid."""
    model = swish_cnn()
    errs = {}
    for clip in (False, True):
        monkeypatch.setattr(ortswish, "GATE_BY_CLIP", clip)
        out, feed = export(model, True, monkeypatch)
        q = next(n for n in out.graph.node if n.op_type == "QuantizeLinear"
                 and n.input[0] == "c1")
        s = float(numpy_helper.to_array(
            next(t for t in out.graph.initializer if t.name == q.input[1])))
        assert (abs(3 / s - round(3 / s)) < 1e-4) is clip
        errs[clip] = rel(run(out, feed, FULL), run(model, feed, FULL))
    assert errs[True] <= errs[False] * 1.1


def test_left_where_the_output_is_read_in_float_or_the_codes_are_int8(monkeypatch) -> None:
    graph = _island(0.03, 128, 0.025, 20, y_is_output=True)
    assert ortswish.hardswish_on_codes(graph, lambda base: base + "_new") == 0
    model = swish_cnn()
    s8, _ = export(model, True, monkeypatch, "s8")  # x86 fuses no int8 Add / Mul
    assert sum(n.op_type == "HardSwish" for n in s8.graph.node) == 1


def test_the_constants_are_shared() -> None:
    """Two rewrites, one copy of each fixed constant (the gate's grid, the 1/2)."""
    graph = _island(0.031, 128, 0.025, 20)  # 3 / 0.031 not an integer: the QLinearAdd gate
    q2, x2, y2, out2 = (gs.Variable("q2", np.uint8, [256]), gs.Variable("x2", np.float32),
                        gs.Variable("y2", np.float32), gs.Variable("out2", np.uint8))
    s, z = graph.nodes[0].inputs[1], graph.nodes[0].inputs[2]
    graph.nodes += [gs.Node("DequantizeLinear", inputs=[q2, s, z], outputs=[x2]),
                    gs.Node("HardSwish", inputs=[x2], outputs=[y2]),
                    gs.Node("QuantizeLinear", inputs=[y2, s, z], outputs=[out2])]
    graph.inputs.append(q2)
    graph.outputs.append(out2)
    names = iter(range(100))
    assert ortswish.hardswish_on_codes(graph, lambda base: f"{base}_{next(names)}") == 2
    model = gs.export_onnx(graph.cleanup().toposort())
    fixed = [t.name for t in model.graph.initializer if t.name.startswith("hardswish_")]
    assert len(fixed) == 4  # gate scale and zero point, the 1/2's code and scale
    assert {numpy_helper.to_array(t).item() for t in model.graph.initializer
            if t.name.startswith("hardswish_half_scale")} == {0.5}


def test_the_fusion_check_names_the_float_ops_left(monkeypatch) -> None:
    """The report's float line: the float island before, nothing after."""
    from onnx_obc.export import fusion

    model = swish_cnn()
    layers = find_layers(model)[0]
    for on in (False, True):
        out, _ = export(model, on, monkeypatch)
        f = fusion.check(out, layers)
        assert f.integer == f.layers == 3
        line = f.to_dict()["float_line"]
        if on:
            assert f.float_ops == {} and line == ""
        else:
            assert set(f.float_ops) & {"HardSwish", "HardSigmoid"}
            assert line.startswith("float ops on dequantized activations") and "Hard" in line
