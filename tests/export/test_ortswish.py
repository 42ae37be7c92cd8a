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
            y_is_output: bool = False, alpha: float | None = None) -> gs.Graph:
    """codes (uint8, all 256) -> DequantizeLinear -> HardSwish (with `alpha`: HardSigmoid(
    alpha, 1/2)) -> QuantizeLinear -> codes."""
    q = gs.Variable("q", dtype=np.uint8, shape=[256])
    x, y = gs.Variable("x", np.float32, [256]), gs.Variable("y", np.float32, [256])
    out = gs.Variable("out", np.uint8, [256])
    nodes = [gs.Node("DequantizeLinear", "dq", inputs=[
                 q, constant("s", np.array(scale, np.float32)),
                 constant("z", np.array(zero, np.uint8))], outputs=[x]),
             gs.Node("HardSwish", "hardswish", inputs=[x], outputs=[y]) if alpha is None else
             gs.Node("HardSigmoid", "gate", attrs={"alpha": alpha, "beta": 0.5}, inputs=[x],
                     outputs=[y]),
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


@pytest.mark.parametrize("alpha", [0.2, 1 / 6])
@pytest.mark.parametrize("k, zero", [(20, 101), (7, 7), (128, 128), (60, 200)])
def test_a_squeeze_excite_gate_on_the_codes_is_exact(alpha: float, k: int, zero: int) -> None:
    """HardSigmoid(x) = clip(alpha x + 1/2, 0, 1) on x's codes where -h and h (h = 1 / (2
    alpha): 2.5 for PP-OCR's gates, 3 for PP-LCNet's) are on the grid and the output's grid
    is (alpha s, z - k), as the placement sets it: every one of the 256 codes the float
    path's, by a Clip (none where the grid is [-h, h])."""
    scale = 0.5 / alpha / k
    args = (scale, zero, np.float32(alpha * scale), zero - k)
    ref = _codes(_island(*args, alpha=alpha))
    graph = _island(*args, alpha=alpha)
    names = iter(range(100))
    assert ortswish.hardsigmoid_on_codes(graph, lambda base: f"{base}_{next(names)}") == 1
    ops = [n.op for n in graph.cleanup().nodes]
    assert "HardSigmoid" not in ops and "QuantizeLinear" not in ops
    assert ops.count("Clip") == int(zero > k or zero + k < 255)
    np.testing.assert_array_equal(_codes(graph), ref)


def test_a_gate_on_another_grid_is_left() -> None:
    """The output's grid not the one the codes give (an observed range, say): left as is."""
    for out_scale, out_zero in [(1 / 255, 0), (0.025, 0)]:
        graph = _island(0.125, 40, out_scale, out_zero, alpha=0.2)  # k = 20, z - k = 20
        assert ortswish.hardsigmoid_on_codes(graph, lambda base: base + "_new") == 0
    graph = _island(0.13, 40, np.float32(0.2 * 0.13), 21, alpha=0.2)  # 2.5 / s not whole
    assert ortswish.hardsigmoid_on_codes(graph, lambda base: base + "_new") == 0


def se_cnn(seed: int = 0, identity: bool = False) -> onnx.ModelProto:
    """A squeeze-excite block as PP-OCR's: x [N, 4, 8, 8] --c1--> Relu r --GlobalAveragePool
    --se(Wse, 1 x 1)--> HardSigmoid(alpha 0.2) g; r * g --c2--> pool, Flatten --fc--> y.
    identity: an Identity between the se conv and the gate (PP-OCRv6's export)."""
    gate_in = "e1" if identity else "e"
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p1"], name="squeeze"),
             helper.make_node("Conv", ["p1", "Wse", "Bse"], ["e"], name="se"),
             *([helper.make_node("Identity", ["e"], ["e1"], name="id")] if identity else []),
             helper.make_node("HardSigmoid", [gate_in], ["g"], name="gate", alpha=0.2,
                              beta=0.5),
             helper.make_node("Mul", ["r", "g"], ["m"], name="excite"),
             helper.make_node("Conv", ["m", "W2", "B2"], ["c2"], name="c2", pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [b.weight("W1", (8, 4, 3, 3), seed), b.weight("B1", (8,), seed + 1),
             b.weight("Wse", (8, 8, 1, 1), seed + 2), b.weight("Bse", (8,), seed + 3),
             b.weight("W2", (8, 8, 3, 3), seed + 4), b.weight("B2", (8,), seed + 5),
             b.weight("Wf", (5, 8), seed + 6), b.weight("bf", (5,), seed + 7)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 8, 8])], [b.vi("y", [b.BATCH, 5])], inits)


@pytest.mark.parametrize("identity", [False, True])
def test_a_squeeze_excite_gate_runs_on_the_codes(monkeypatch, identity: bool) -> None:
    """The placement snaps the gate's input grid (2.5 / scale an integer) and gives the gate
    the grid its codes make, and the export writes the gate as a Clip on the codes: no float
    HardSigmoid left after onnxruntime's optimizer, the product on QLinearMul, the outputs
    those of the same grids through the float HardSigmoid; without it (SE_GATES off) the
    gate runs float between a DequantizeLinear and a QuantizeLinear."""
    from onnx_obc.export import ortplace

    model = se_cnn(identity=identity)  # the Identity's output on the se conv's grid, both
    feed = {k: v * 4.0 for k, v in b.feeds(model, 32, seed=3).items()}  # snapped; e: +-2.5
    on, feed, _ = compressed(model, feed=feed)
    onnx.checker.check_model(on, full_check=True)
    monkeypatch.setattr(ortplace, "hardsigmoid_on_codes", lambda graph, unique: 0)
    snapped_only, _, _ = compressed(model, feed=feed)  # the same grids, the gate in float
    monkeypatch.setattr(ortswish, "SE_GATES", False)
    off, _, _ = compressed(model, feed=feed)
    ops_on, ops_off = optimized_ops(on), optimized_ops(off)
    assert "HardSigmoid" not in [n.op_type for n in on.graph.node]
    assert ops_on["HardSigmoid"] == 0 and ops_off["HardSigmoid"] == 1
    assert ops_on["QLinearMul"] == ops_off["QLinearMul"] == 1
    assert ops_on["QLinearConv"] == ops_off["QLinearConv"] == 3
    assert ops_on["QuantizeLinear"] < ops_off["QuantizeLinear"]
    for t in ("e", "e1") if identity else ("e",):
        q = next(n for n in on.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == t)
        s = float(numpy_helper.to_array(next(i for i in on.graph.initializer
                                             if i.name == q.input[1])))
        assert abs(2.5 / s - round(2.5 / s)) < 1e-4
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_allclose(run(on, feed, level), run(snapped_only, feed, level),
                               rtol=1e-5, atol=1e-5)
    dense = run(model, feed, FULL)
    assert rel(run(on, feed, FULL), dense) <= 1.1 * rel(run(off, feed, FULL), dense) + 1e-3
