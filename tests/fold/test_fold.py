"""The fold stage: float-exact rewrites (affine ops into the layers before and after them,
hardswish as one HardSwish op), what it refuses, and what it changes in a run."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_obc import convert
from onnx_obc.errors import ConfigError
from onnx_obc.fold import fold
from onnx_obc.specs import Selection

from .. import builders as b


def _c(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _same(a: onnx.ModelProto, f: onnx.ModelProto, shape, seed: int = 1) -> None:
    x = np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32)
    for u, v in zip(_run(a, x), _run(f, x)):
        assert np.linalg.norm(u - v) <= 1e-5 * np.linalg.norm(u)


def ppocr_block(seed: int = 0) -> onnx.ModelProto:
    """PP-OCRv4's backbone in small: Conv -> BatchNormalization -> Mul(s) -> Add(t) ->
    hardswish written out (x * Clip(x + 3, 0, 6) / 6) -> Mul(s') -> Add(t') read by a 1x1 Conv
    (pads nothing) and a padding depthwise 3x3 Conv -> Add -> output."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"],
                              name="bn", epsilon=1e-5),
             helper.make_node("Mul", ["bn", "s"], ["m"], name="lab_mul"),
             helper.make_node("Add", ["m", "t"], ["a"], name="lab_add"),
             helper.make_node("Add", ["a", "three"], ["a3"], name="plus3"),
             helper.make_node("Clip", ["a3", "zero", "six"], ["cl"], name="relu6"),
             helper.make_node("Mul", ["a", "cl"], ["hm"], name="hsmul"),
             helper.make_node("Div", ["hm", "six"], ["hs"], name="div6"),
             helper.make_node("Mul", ["hs", "s2"], ["m2"], name="lab2_mul"),
             helper.make_node("Add", ["m2", "t2"], ["a2"], name="lab2_add"),
             helper.make_node("Conv", ["a2", "W2", "B2"], ["pw"], name="pointwise"),
             helper.make_node("Conv", ["a2", "W3"], ["dw"], name="depthwise", pads=[1] * 4,
                              group=8),
             helper.make_node("Add", ["pw", "dw"], ["y"], name="sum")]
    inits = [b.weight("W1", (8, 4, 3, 3), seed), b.weight("B1", (8,), seed + 1),
             _c("g", rng.uniform(0.5, 2, 8)), _c("be", rng.normal(0, 1, 8)),
             _c("mu", rng.normal(0, 1, 8)), _c("var", rng.uniform(0.2, 3, 8)),
             _c("s", [1.7]), _c("t", [0.3]), _c("three", 3.0), _c("zero", 0.0), _c("six", 6.0),
             _c("s2", rng.uniform(0.5, 2, (8, 1, 1))), _c("t2", rng.normal(0, 1, (8, 1, 1))),
             b.weight("W2", (8, 8, 1, 1), seed + 2), b.weight("B2", (8,), seed + 3),
             b.weight("W3", (8, 1, 3, 3), seed + 4)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 6, 6])], [b.vi("y", [b.BATCH, 8, 6, 6])],
                  inits)


def test_ppocr_block_folds_float_exact() -> None:
    model = ppocr_block()
    out, done = fold(model)
    _same(model, out, (3, 4, 6, 6))
    ops = _ops(out)
    # BN, the affine after c1, the hardswish's Clip / Div are gone; one HardSwish (opset 17)
    assert ops["BatchNormalization"] == ops["Clip"] == ops["Div"] == 0
    assert ops["HardSwish"] == 1 and ops["HardSigmoid"] == ops["Mul"] == 0
    # the affine before the Convs: its scale went into both, its shift into the 1x1 Conv's
    # bias, and (the depthwise pads) stays once as an Add of t / s before them
    assert ops["Add"] == 2  # the kept shift and the final sum
    assert dict(done.after) == {"BatchNormalization": 1, "Mul": 1, "Add": 1}
    assert dict(done.before) == {"Mul": 1, "Add": 1} and done.kept_adds == 1
    assert (done.hardswish, done.hardsigmoid, done.hardswish_ops) == (1, 0, 1)
    assert "hardswish" in done.summary() and done.opset == ""  # 17 already
    onnx.checker.check_model(out, full_check=True)


def _at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The same graph declared at `opset` (the builders' ops mean the same there)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    next(o for o in m.opset_import if o.domain in ("", "ai.onnx")).version = opset
    return m


@pytest.mark.parametrize("opset", [11, 13])
def test_hardswish_raises_an_older_model_to_opset_14(opset) -> None:
    """paddle2onnx writes opset 11-13 (PP-OCR 11 / 12, PP-PicoDet 13): the model goes to
    opset 14 (onnx's converter) for the one HardSwish node, float-exact, and says so."""
    model = _at_opset(ppocr_block(), opset)
    model.ir_version = 7
    out, done = fold(model)
    _same(model, out, (3, 4, 6, 6))
    assert _ops(out)["HardSwish"] == 1 and _ops(out)["HardSigmoid"] == 0
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) == 14
    assert done.opset == f"{opset} -> 14" and f"(opset {opset} -> 14)" in done.summary()
    onnx.checker.check_model(out, full_check=True)


def test_hardswish_stays_a_pair_where_the_opset_cannot_be_raised(monkeypatch) -> None:
    import onnx_obc.fold as fold_mod
    from onnx_obc.errors import ModelError

    def refuse(*a, **k):
        raise ModelError("converter says no")

    monkeypatch.setattr(fold_mod, "ensure_opset", refuse)
    model = _at_opset(ppocr_block(), 12)
    out, done = fold(model)
    _same(model, out, (3, 4, 6, 6))
    assert _ops(out)["HardSigmoid"] == 1 and _ops(out)["Mul"] == 1 and not _ops(out)["HardSwish"]
    assert done.hardswish_ops == 0 and "converter says no" in done.summary()


def test_an_exported_hardsigmoid_pair_becomes_hardswish_but_not_a_shared_gate() -> None:
    """PyTorch below opset 14 exports nn.Hardswish as x * HardSigmoid(x): one HardSwish. A
    gate read by another node too (or of another tensor, a squeeze-excite gate) stays."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="c"),
             helper.make_node("HardSigmoid", ["c"], ["h"], name="hs", alpha=1 / 6),
             helper.make_node("Mul", ["h", "c"], ["y"], name="prod")]
    inits = [b.weight("W", (6, 4, 1, 1), 0)]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 4, 5, 5])], [b.vi("y", [b.BATCH, 6, 5, 5])],
                   inits)
    out, done = fold(model)
    _same(model, out, (2, 4, 5, 5))
    assert _ops(out) == Counter({"Conv": 1, "HardSwish": 1}) and done.hardswish_ops == 1
    shared = b.make(nodes, [b.vi("x", [b.BATCH, 4, 5, 5])],
                    [b.vi("y", [b.BATCH, 6, 5, 5]), b.vi("h", [b.BATCH, 6, 5, 5])], inits)
    assert fold(shared)[0] is shared
    se = b.make([nodes[0], helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
                 helper.make_node("HardSigmoid", ["p"], ["h"], name="hs", alpha=1 / 6),
                 helper.make_node("Mul", ["c", "h"], ["y"], name="gate")],
                [b.vi("x", [b.BATCH, 4, 5, 5])], [b.vi("y", [b.BATCH, 6, 5, 5])], inits)
    assert fold(se)[0] is se  # a squeeze-excite gate: c * HardSigmoid(pool(c))


def test_shift_into_a_conv_that_pads_nothing_needs_no_add() -> None:
    model = ppocr_block()
    g = model.graph
    dw = next(n for n in g.node if n.name == "depthwise")
    g.node.remove(dw)
    sum_node = next(n for n in g.node if n.name == "sum")
    sum_node.input[1] = "a2"  # the 1x1 Conv is the only Conv reading a2... and the Add too
    out, done = fold(model)
    _same(model, out, (2, 4, 6, 6))
    assert not done.before  # a2 is also read by an Add: nothing folds before
    sum_node.input[1] = "pw"
    out, done = fold(model)
    _same(model, out, (2, 4, 6, 6))
    assert dict(done.before) == {"Mul": 1, "Add": 1} and done.kept_adds == 0
    assert _ops(out)["Add"] == 1  # the sum alone


def test_gemm_and_matmul_scales() -> None:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["g"], name="fc", transB=1, beta=0.5),
             helper.make_node("Mul", ["g", "s"], ["gm"], name="gm"),
             helper.make_node("Sub", ["gm", "t"], ["gs"], name="gs"),
             helper.make_node("MatMul", ["gs", "V"], ["mm"], name="mm"),
             helper.make_node("Div", ["mm", "d"], ["md"], name="md"),
             helper.make_node("Add", ["md", "u"], ["y"], name="bias")]
    inits = [b.weight("W", (5, 6), 1), b.weight("B", (5,), 2), _c("s", rng.uniform(.5, 2, 5)),
             _c("t", rng.normal(0, 1, (1, 5))), b.weight("V", (5, 4), 3),
             _c("d", rng.uniform(.5, 2, 4)), _c("u", rng.normal(0, 1, 4))]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 6])], [b.vi("y", [b.BATCH, 4])], inits)
    out, done = fold(model)
    _same(model, out, (7, 6))
    # Gemm takes scale and shift; MatMul (no bias) only the scale, its bias Add stays
    assert dict(done.after) == {"Mul": 1, "Sub": 1, "Div": 1}
    assert _ops(out) == Counter({"Gemm": 1, "MatMul": 1, "Add": 1})


def _conv_then(op: str, const_shape, fan: bool = False, output: bool = False
               ) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="c"),
             helper.make_node(op, ["c", "k"], ["y"], name="affine")]
    outs = [b.vi("y", None)]
    if fan:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
        outs.append(b.vi("r", None))
    if output:
        outs.append(b.vi("c", None))
    inits = [b.weight("W", (6, 4, 1, 1), 0),
             _c("k", np.random.default_rng(1).uniform(0.5, 2, const_shape))]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 5, 5])], outs, inits, check=False)


@pytest.mark.parametrize("case", ["spatial", "grows", "fan", "output", "div_by_zero"])
def test_refused_chains_leave_the_model_as_it_is(case) -> None:
    model = {"spatial": lambda: _conv_then("Mul", (1, 1, 5, 1)),  # acts along H
             "grows": lambda: _conv_then("Mul", (2, 1, 6, 1, 1)),  # broadcasts to rank 5
             "fan": lambda: _conv_then("Mul", (6, 1, 1), fan=True),  # c read twice
             "output": lambda: _conv_then("Mul", (6, 1, 1), output=True),  # c is an output
             "div_by_zero": lambda: _conv_then("Div", (6, 1, 1))}[case]()
    if case == "div_by_zero":
        model.graph.initializer[1].CopyFrom(_c("k", np.zeros((6, 1, 1))))
    out, done = fold(model)
    assert out is model and not done.changed and done.summary() == ""


def test_a_shared_weight_is_copied_not_changed_for_the_other_reader() -> None:
    nodes = [helper.make_node("Conv", ["x", "W"], ["c1"], name="c1"),
             helper.make_node("Mul", ["c1", "k"], ["y1"], name="scale"),
             helper.make_node("Conv", ["x", "W"], ["y2"], name="c2")]
    inits = [b.weight("W", (6, 4, 1, 1), 0), _c("k", np.arange(1, 7).reshape(6, 1, 1))]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 4, 5, 5])], [b.vi("y1", [b.BATCH, 6, 5, 5]),
                                                           b.vi("y2", [b.BATCH, 6, 5, 5])], inits)
    out, done = fold(model)
    _same(model, out, (2, 4, 5, 5))
    assert dict(done.after) == {"Mul": 1}
    weights = {n.name: n.input[1] for n in out.graph.node}
    assert weights["c2"] == "W" and weights["c1"] != "W"


def test_written_out_hardsigmoid_alone() -> None:
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="c"),
             helper.make_node("Add", ["three", "c"], ["a"], name="plus3"),
             helper.make_node("Clip", ["a", "zero", "six"], ["cl"], name="relu6"),
             helper.make_node("Mul", ["cl", "sixth"], ["y"], name="over6")]
    inits = [b.weight("W", (6, 4, 1, 1), 0), _c("three", 3.0), _c("zero", 0.0),
             _c("six", 6.0), _c("sixth", 1 / 6)]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 4, 5, 5])], [b.vi("y", [b.BATCH, 6, 5, 5])],
                   inits)
    out, done = fold(model)
    _same(model, out, (2, 4, 5, 5))
    assert (done.hardswish, done.hardsigmoid) == (0, 1)
    assert _ops(out) == Counter({"Conv": 1, "HardSigmoid": 1})


def test_nothing_to_fold_returns_the_model_itself() -> None:
    model = b.cnn()
    out, done = fold(model)
    assert out is model and not done.changed


def test_convert_folds_by_default_and_no_fold_keeps_the_graph(tmp_path) -> None:
    model = ppocr_block()
    calib = np.random.default_rng(0).normal(0, 1, (24, 4, 6, 6)).astype(np.float32)
    kw = dict(calib=[{"x": calib[i:i + 8]} for i in range(0, 24, 8)], bits=8, progress=False)
    res = convert(model, tmp_path / "f.onnx", report_path=tmp_path / "f.json", **kw)
    assert res.report.folded["hardswish"] == 1
    assert "folded" in res.report.table()
    assert _ops(res.model)["BatchNormalization"] == 0
    kept = convert(model, fold=False, **kw)
    assert kept.report.folded == {} and _ops(kept.model)["BatchNormalization"] == 1
    for r in (res, kept):  # measured against the input model either way: small error
        assert r.report.fidelity and all(
            f.rel_error and max(f.rel_error.values()) < 0.05
            for s in r.report.fidelity.values() for m, f in s.items() if m == "compressed")


def test_fold_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="select.fold"):
        Selection(fold="yes")


def test_a_matmul_keeps_its_bias_add_even_of_zeros() -> None:
    """MatMul -> Add(b): the Add is what keeps the MatMul's output float on onnxruntime
    (MatMulIntegerToFloat + float bias); folding an all-zero b moved ocr_like's MatMuls to
    QLinearMatMul with a quantized output (W8A8 error 0.0125 -> 0.0187). 3-D, as there (a
    2-D one becomes a Gemm with that bias: tests/fold/test_gemm.py)."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "z"], ["y"], name="bias")]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 5, 6])], [b.vi("y", [b.BATCH, 5, 4])],
                   [b.weight("W", (6, 4), 0), _c("z", np.zeros(4))])
    out, done = fold(model)
    assert out is model and not done.changed


def gelu_conv() -> onnx.ModelProto:
    """Conv -> GELU written out as paddle2onnx writes it -> Conv (tests/builders.gelu)."""
    gelu, consts = b.gelu("a", "g")
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="c1", pads=[1] * 4),
             *gelu,
             helper.make_node("Conv", ["g", "W2", "B2"], ["y"], name="c2", pads=[1] * 4)]
    inits = [b.weight("W1", (6, 3, 3, 3), 0), b.weight("B1", (6,), 1),
             b.weight("W2", (4, 6, 3, 3), 2), b.weight("B2", (4,), 3), *consts]
    return b.make(nodes, [b.vi("x", [b.BATCH, 3, 6, 6])], [b.vi("y", [b.BATCH, 4, 6, 6])],
                  inits)


def test_a_gelu_keeps_its_half_so_onnxruntime_fuses_it() -> None:
    """The 0.5 that ends a written-out GELU is not folded into the Conv after it:
    onnxruntime fuses the five nodes into one Gelu kernel only with it there."""
    model = gelu_conv()
    out, done = fold(model)
    _same(model, out, (2, 3, 6, 6))
    assert "Mul" not in dict(done.before)
    from onnx_obc.export import fusion

    assert Counter(n.op_type for n in fusion.optimized_graph(out).graph.node)["Gelu"] == 1


@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_and_scale_after_a_convtranspose_fold_into_its_axis_1(bias) -> None:
    """ConvTranspose W [C, M, k, k] -> BatchNormalization -> Mul: one ConvTranspose, the
    scale on W's output-channel axis 1, float-exact; a grouped one is left as it is."""
    rng = np.random.default_rng(0)
    ins = ["x", "W", "B"] if bias else ["x", "W"]
    nodes = [helper.make_node("ConvTranspose", ins, ["u"], name="up", kernel_shape=[4, 4],
                              strides=[2, 2], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["u", "g", "be", "m", "v"], ["n"],
                              name="bn"),
             helper.make_node("Mul", ["n", "s"], ["y"], name="scale")]
    inits = [b.weight("W", (4, 6, 4, 4), 1), _c("g", rng.uniform(.5, 2, 6)),
             _c("be", rng.normal(0, 1, 6)), _c("m", rng.normal(0, 1, 6)),
             _c("v", rng.uniform(.5, 2, 6)), _c("s", rng.uniform(.5, 2, (6, 1, 1)))]
    inits += [b.weight("B", (6,), 2)] if bias else []
    model = b.make(nodes, [b.vi("x", [b.BATCH, 4, 5, 5])], [b.vi("y", [b.BATCH, 6, 10, 10])],
                   inits)
    out, done = fold(model)
    _same(model, out, (3, 4, 5, 5))
    assert dict(done.after) == {"BatchNormalization": 1, "Mul": 1}
    assert _ops(out) == Counter({"ConvTranspose": 1})
    grouped = onnx.ModelProto()
    grouped.CopyFrom(model)
    grouped.graph.node[0].attribute.append(helper.make_attribute("group", 2))
    grouped.graph.initializer[0].CopyFrom(b.weight("W", (4, 3, 4, 4), 1))
    assert fold(grouped)[0] is grouped


def _paddle_bias(weight_reshaped: bool = False) -> onnx.ModelProto:
    """A Conv whose bias is an Add of its [C] vector Reshaped to [1, C, 1, 1], as
    paddle2onnx writes a squeeze-excite conv's; `weight_reshaped`: the weight too comes from
    a Reshape (never rewritten in place)."""
    nodes = [helper.make_node("Reshape", ["bvec", "bshape"], ["b4"], name="bias.reshape"),
             helper.make_node("Conv", ["x", "W4" if weight_reshaped else "W"], ["c"],
                              name="conv"),
             helper.make_node("Add", ["c", "b4"], ["y"], name="bias.add")]
    inits = [b.weight("W", (6, 4, 1, 1), 0), _c("bvec", np.linspace(-1, 1, 6)),
             numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), "bshape")]
    if weight_reshaped:
        inits += [_c("Wflat", numpy_helper.to_array(inits[0]).reshape(6, 4)),
                  numpy_helper.from_array(np.array([6, 4, 1, 1], np.int64), "wshape")]
        nodes.insert(0, helper.make_node("Reshape", ["Wflat", "wshape"], ["W4"], name="w.r"))
        inits.pop(0)
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 5, 5])], [b.vi("y", [b.BATCH, 6, 5, 5])],
                  inits)


def test_a_bias_add_of_a_reshaped_constant_folds_into_the_conv() -> None:
    """paddle2onnx's Conv + Add(Reshape(b, [1, -1, 1, 1])): the Add becomes the Conv's bias
    (before, it ran as its own node, and a squeeze-excite block behind it was no channel
    site); a Conv whose weight is behind a Reshape is left as it is (a weight is rewritten in
    place, so only constants are)."""
    model = _paddle_bias()
    out, done = fold(model)
    _same(model, out, (2, 4, 5, 5))
    assert dict(done.after) == {"Add": 1} and _ops(out) == Counter({"Conv": 1})
    model = _paddle_bias(weight_reshaped=True)
    out, done = fold(model)
    _same(model, out, (2, 4, 5, 5))
    assert not done.after and _ops(out)["Add"] == 1
