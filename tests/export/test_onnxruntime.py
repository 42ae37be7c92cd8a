"""The onnxruntime target: Q/DQ placed so that onnxruntime's CPU optimizer fuses the
quantized layers (and the Add / pooling between them) into integer kernels; the result runs
like its own QDQ graph executed in float (ORT_DISABLE_ALL); the fusion check counts the
layers on integer kernels and says why the others are not."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_obc.channels.timing as timing
from onnx_obc import convert, cpu, verify
from onnx_obc.actrange import RangeObserver
from onnx_obc.capture import capture, capture_session
from onnx_obc.config import CompressConfig
from onnx_obc.errors import ConfigError
from onnx_obc.export import act_tensors, act_values, build, fusion
from onnx_obc.export import onnxruntime as ort_target
from onnx_obc.export import ortstem
from onnx_obc.export.onnxruntime import plan, qparams
from onnx_obc.export.orthires import SLOWER
from onnx_obc.export.ortplan import layer_nodes
from onnx_obc.flags import flags_in
from onnx_obc.layers import find_layers

from .. import builders as b
from ..fakes import fixed_errors
from ..cpu import NEEDS_VNNI
from . import helpers as h

ROOT = Path(__file__).resolve().parents[2]
INTEGER = {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "QLinearAdd",
           "QLinearGlobalAveragePool", "QLinearConcat", "QLinearMul", "QLinearSigmoid"}


def residual_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv, a residual Add, Relu, GlobalAveragePool, Flatten, Gemm:

        x [N, 4, 6, 6] --c1(W1, B1)--> Relu r1 --c2(W2, B2)--> c2 --Add(r1)--> Relu r2
          --GlobalAveragePool--> Flatten --fc(Wf [5, 8], bf)--> y [N, 5]
    """
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="c2", pads=[1] * 4),
             helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [b.weight("W1", (8, 4, 3, 3), seed), b.weight("B1", (8,), seed + 1),
             b.weight("W2", (8, 8, 3, 3), seed + 2), b.weight("B2", (8,), seed + 3),
             b.weight("Wf", (5, 8), seed + 4), b.weight("bf", (5,), seed + 5)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 6, 6])], [b.vi("y", [b.BATCH, 5])], inits)


def deep_mlp(seed: int = 0) -> onnx.ModelProto:
    """MatMul -> Relu -> MatMul -> Relu -> MatMul (no biases): x [N, 8] -> y [N, 4]."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h1"], name="fc1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "W2"], ["h2"], name="fc2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "W3"], ["y"], name="fc3")]
    inits = [b.weight("W1", (8, 16), seed), b.weight("W2", (16, 16), seed + 1),
             b.weight("W3", (16, 4), seed + 2)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 8])], [b.vi("y", [b.BATCH, 4])], inits)


def ranges(model: onnx.ModelProto, feed: dict[str, np.ndarray], names: list[str]
           ) -> dict[str, RangeObserver]:
    """Observers of `names` over one batch, as collect() fills them."""
    obs = {n: RangeObserver() for n in names}
    sess = capture_session(model, names, ["CPUExecutionProvider"])
    for _, acts in capture(sess, names, iter([(len(next(iter(feed.values()))), feed)])):
        for n, o in obs.items():
            o.add(acts[n])
    return obs


def compressed(model: onnx.ModelProto, runtime: str = "onnxruntime", act_type: str = "u8",
               bits: int = 8, seed: int = 1, feed: dict | None = None
               ) -> tuple[onnx.ModelProto, dict, list]:
    """`model` with 8-bit (or `bits`) RTN solutions and activation ranges from `feed` (32
    seeded samples when None), built for `runtime`; the feed and the layers."""
    layers = find_layers(model)[0]
    sols = h.solutions(model, layers, bits=bits)
    feed = b.feeds(model, 32, seed=seed) if feed is None else feed
    obs = ranges(model, feed, act_tensors(model, layers, runtime))
    out = build(model, layers, sols, act_scales=act_values(obs, runtime), target=runtime,
                target_options={"act_type": act_type} if runtime == "onnxruntime" else None)
    return out, feed, layers


def optimized_ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in fusion.optimized_graph(model).graph.node)


def run(model: onnx.ModelProto, feed: dict, level: ort.GraphOptimizationLevel) -> np.ndarray:
    o = ort.SessionOptions()
    o.graph_optimization_level = level
    o.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


@NEEDS_VNNI
@pytest.mark.parametrize("builder, expected", [
    (residual_cnn, {"QLinearConv": 2, "QLinearAdd": 1, "QLinearGlobalAveragePool": 1,
                    "QGemm": 1}),
    (deep_mlp, {"QLinearMatMul": 2, "MatMulIntegerToFloat": 1}),
    (b.gemm, {"QGemm": 1}),
    (b.mlp, {"QLinearMatMul": 1, "MatMulIntegerToFloat": 1}),
])
def test_fuses_into_integer_kernels_and_matches_fake_quant(builder, expected) -> None:
    model = builder()
    out, feed, layers = compressed(model)
    onnx.checker.check_model(out, full_check=True)
    ops = optimized_ops(out)
    assert {k: ops[k] for k in expected} == expected, ops
    assert ops["Conv"] + ops["FusedConv"] + ops["MatMul"] + ops["Gemm"] == 0, ops
    fused = run(out, feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    fake = run(out, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # QDQ in float
    assert rel(fused, fake) <= 0.02
    trt, _, _ = compressed(model, runtime="tensorrt")
    weights_only = build(model, layers, h.solutions(model, layers, bits=8))
    ref = run(weights_only, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert rel(fused, ref) <= 0.05  # the error of 8-bit activations alone
    assert rel(fused, run(trt, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)) <= 0.05
    result = fusion.check(out, layers)
    assert (result.layers, result.integer, result.unfused) == (
        sum(len(L.uses) for L in layers), sum(len(L.uses) for L in layers), [])


@pytest.mark.parametrize("builder, expected", [
    (residual_cnn, {"QLinearConv": 2, "QGemm": 1}),
    (deep_mlp, {"QLinearMatMul": 2, "MatMulIntegerToFloat": 1}),
])
def test_seven_bit_weights_run_on_the_integer_kernels_and_match_fake_quant_anywhere(
        builder, expected) -> None:
    """--bits 7 --act-bits 8: codes in [-64, 63] on the same int8 kernels, whose int16 pair
    sums (x86 without VNNI, tests/cpu.py) cannot saturate (2 x 255 x 64 < 2^15): the fused
    model equals fake quantization on every CPU, with no skip."""
    model = builder()
    out, feed, layers = compressed(model, bits=7)
    ops = optimized_ops(out)
    assert {k: ops[k] for k in expected} == expected, ops
    codes = [onnx.numpy_helper.to_array(t) for t in out.graph.initializer if t.data_type == 3]
    assert codes and max(int(np.abs(c.astype(np.int16)).max()) for c in codes) <= 64
    fused = run(out, feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    fake = run(out, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert rel(fused, fake) <= 0.02


@pytest.mark.parametrize("builder, expected", [
    (residual_cnn, {"QLinearConv": 2, "QGemm": 1}),
    (deep_mlp, {"QLinearMatMul": 2, "MatMulIntegerToFloat": 1}),
])
def test_the_reduced_range_matches_fake_quant_anywhere(builder, expected) -> None:
    """--reduce-range on (the default where the CPU lacks VNNI): the whole W8A8 run's file,
    every layer integer, its codes in [-63, 63], equals fake quantization on every CPU (the
    full 8-bit codes need VNNI for that: NEEDS_VNNI above)."""
    model = builder()
    feed = b.feeds(model, 32, seed=1)
    r = convert(model, None, calib=[feed], bits=8, act_bits=8, runtime="onnxruntime",
                reduce_range="on", float_stem=False, float_highres=False,
                float_heads=False, progress=False, compare_baseline=False)
    ops = optimized_ops(r.model)
    assert {k: ops[k] for k in expected} == expected, ops
    codes = [onnx.numpy_helper.to_array(t) for t in r.model.graph.initializer
             if t.data_type == TensorProto.INT8]
    assert codes and max(int(np.abs(c.astype(np.int16)).max()) for c in codes) == 63
    fused = run(r.model, feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    fake = run(r.model, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert rel(fused, fake) <= 0.02


def test_the_fusion_check_names_codes_that_can_saturate_on_this_cpu(monkeypatch) -> None:
    """On a CPU that saturates (cpu.saturating_cpu) the check says how many integer layers
    have 8-bit codes beyond [-64, 63] and that --reduce-range avoids it, and the report says so;
    nothing at 7 bits or on another CPU."""
    from onnx_obc.report import _fusion_lines
    model = deep_mlp()
    out8, _, layers = compressed(model)
    out7, _, _ = compressed(model, bits=7)
    monkeypatch.setattr(cpu, "saturating_cpu", lambda: True)
    f8 = fusion.check(out8, layers)
    assert f8.integer == 3 and "on 3 of these layers" in f8.saturation_line
    assert "--reduce-range on" in f8.saturation_line
    assert fusion.check(out7, layers).saturation_line == ""
    r = SimpleNamespace(fusion=f8.to_dict(), config={"export": {"runtime": "onnxruntime"}})
    assert any("can saturate" in line for line in _fusion_lines(r))
    monkeypatch.setattr(cpu, "saturating_cpu", lambda: False)
    assert fusion.check(out8, layers).saturation_line == ""


def test_int32_bias_and_output_quantization() -> None:
    out, _, _ = compressed(residual_cnn())
    nodes = {n.name: n for n in out.graph.node}
    producer = {o: n for n in out.graph.node for o in n.output}
    inits = {t.name: t for t in out.graph.initializer}
    for conv in ("c1", "c2"):
        bias_dq = producer[nodes[conv].input[2]]
        assert bias_dq.op_type == "DequantizeLinear"
        assert inits[bias_dq.input[0]].data_type == TensorProto.INT32
        assert producer[nodes[conv].input[0]].op_type == "DequantizeLinear"
    # c1's Relu output carries the quantization (zero point 0 = the lowest uint8 code)
    readers = [n for n in out.graph.node if "r1" in n.input]
    assert [n.op_type for n in readers] == ["QuantizeLinear"]
    assert inits[readers[0].input[2]].data_type == TensorProto.UINT8
    assert onnx.numpy_helper.to_array(inits[readers[0].input[2]]) == 0
    assert [o.name for o in out.graph.output] == ["y"]


def test_s8_activations_symmetric_and_relu_at_lowest_code() -> None:
    out, feed, layers = compressed(residual_cnn(), act_type="s8")
    inits = {t.name: t for t in out.graph.initializer}
    zps = {n.input[0]: int(onnx.numpy_helper.to_array(inits[n.input[2]]))
           for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert all(inits[n.input[2]].data_type == TensorProto.INT8
               for n in out.graph.node if n.op_type == "QuantizeLinear")
    assert zps["r1"] == -128 and zps["x"] == 0  # Relu taken into c1; the input symmetric
    fake = run(out, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    weights_only = build(residual_cnn(), layers, h.solutions(residual_cnn(), layers, bits=8))
    assert rel(fake, run(weights_only, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)) <= 0.05


def test_fusion_check_names_the_layers_that_cannot_fuse(monkeypatch) -> None:
    trt, _, layers = compressed(residual_cnn(), runtime="tensorrt")
    built = []
    real_maps = fusion.graph_maps
    monkeypatch.setattr(fusion, "graph_maps", lambda m: (built.append(1), real_maps(m))[1])
    result = fusion.check(trt, layers)
    assert len(built) == 1  # the graph's maps once, for every unfused layer's reasons
    monkeypatch.undo()
    assert result.layers == 3 and result.integer < 3
    why = dict(result.unfused)
    assert "c2" in why and "output not quantized (read in float by Add 'add')" in why["c2"]
    assert why["c2"].startswith("Conv c2: float ")
    assert "c1" in why and "bias is float" in why["c1"]
    assert f"{result.integer} of 3 quantized layers run on integer kernels" in result.line()
    # a Conv whose output is a graph output cannot fuse; the plan keeps it float and says so
    model = b.conv(dims=2)
    out, _, layers = compressed(model)
    result = fusion.check(out, layers)
    assert (result.layers, result.integer) == (1, 0)
    assert "graph output" in result.unfused[0][1]


def test_four_bit_layers_stay_float_and_are_reported() -> None:
    out, _, layers = compressed(b.mlp(), bits=4)
    result = fusion.check(out, layers)
    assert result.integer < result.layers
    assert all("4-bit" in w or "not quantized" in w for _, w in result.unfused)


def test_plan_observes_the_integer_region() -> None:
    model = residual_cnn()
    layers = find_layers(model)[0]
    names = act_tensors(model, layers, "onnxruntime")
    # layer inputs, the Relu outputs taken into their producers, the Add and pool outputs;
    # not the conv outputs a Relu takes over, not the graph output
    assert {"x", "r1", "c2", "r2", "p", "f"} <= set(names)
    assert "c1" not in names and "y" not in names
    p = plan(model, {0, 2, 7})
    assert p.tensors["f"] == "p"  # Flatten keeps the pool's scale and zero point
    assert p.float_out == {7: "its output is a graph output (kept float)"}


def test_qparams_and_bounds() -> None:
    q = qparams(-1.0, 3.0, "u8")
    assert q.dtype == np.uint8 and q.scale == pytest.approx(4 / 255) and q.zero_point == 64
    assert qparams(0.0, 2.0, "u8").zero_point == 0
    s = qparams(-1.0, 3.0, "s8")
    assert s.dtype == np.int8 and s.zero_point == 0 and s.scale == pytest.approx(3 / 127)
    assert qparams(0.0, 2.0, "s8", from_zero=True).zero_point == -128
    o = RangeObserver()
    o.add(np.array([-0.5, 0.25, 2.0], dtype=np.float32))
    o.add(np.array([1.0, -1.5], dtype=np.float32))
    assert o.bounds() == (-1.5, 2.0) and o.scale() == pytest.approx(2.0 / 127)


def test_config_and_flags() -> None:
    cfg = CompressConfig.from_options(bits=8, act_bits=8, runtime="onnxruntime",
                                      act_type="s8")
    assert (cfg.export.runtime, cfg.export.act_type) == ("onnxruntime", "s8")
    assert cfg.export.target_options()["act_type"] == "s8"
    assert CompressConfig.from_dict(cfg.to_dict()) == cfg
    assert CompressConfig.from_options(bits=8).export.runtime == "tensorrt"  # as today
    with pytest.raises(ConfigError, match="export.runtime"):
        CompressConfig.from_options(bits=8, runtime="tvm")
    with pytest.raises(ConfigError, match="export.act_type"):
        CompressConfig.from_options(bits=8, act_type="u4")
    with pytest.raises(ConfigError, match="export.float_stem must be true or false"):
        CompressConfig.from_options(bits=8, float_stem="no")
    assert not CompressConfig.from_options(bits=8, float_stem=False).export.float_stem
    with pytest.raises(ConfigError, match="export.float_highres must be true or false"):
        CompressConfig.from_options(bits=8, float_highres=1)
    assert CompressConfig.from_options(bits=8).export.float_options() == {
        "float_stem": True, "float_highres": True, "float_heads": True}
    assert not CompressConfig.from_options(bits=8, float_heads=False).export.float_heads
    assert flags_in("export.runtime and export.act_type") == "--runtime and --act-type"


@NEEDS_VNNI
def test_convert_reports_the_fusion(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    r = convert(str(ROOT / "models/digits_cnn.onnx"), out, bits=8, act_bits=8,
                runtime="onnxruntime", calib=str(ROOT / "models/digits_cnn.calib.npz"),
                calib_samples=64, progress=False, compare_baseline=False, method="rtn")
    f = r.report.fusion  # the 1-channel stem conv stays float (ortstem.py)
    assert f["layers"] == 5 and f["integer"] == 5 and f["unfused"] == []
    assert f["kernels"] == {"QLinearConv": 4, "QGemm": 1}
    assert "5 of 5 quantized layers run on integer kernels" in r.report.table()
    assert [s.reason.split(" (")[0] for s in r.report.skipped] == ["stem conv on the model input"]
    assert "--runtime onnxruntime" not in r.report.table()
    assert r.report.to_dict()["fusion"]["integer"] == 5
    assert {k: r.report.to_dict()["config"]["export"][k] for k in ("runtime", "act_type")} \
        == {"runtime": "onnxruntime", "act_type": "u8"}
    err = r.report.fidelity["held-out calibration"]["compressed"]
    assert max(err.rel_error.values()) < 0.05
    # the same run for TensorRT: today's placement, and the check says why nothing fuses
    r = convert(str(ROOT / "models/digits_cnn.onnx"), None, bits=8, act_bits=8,
                calib=str(ROOT / "models/digits_cnn.calib.npz"), calib_samples=64,
                progress=False, compare_baseline=False, method="rtn")
    assert r.report.fusion["integer"] == 0 and len(r.report.fusion["unfused"]) == 6
    assert "0 of 6 quantized layers" in r.report.table()
    assert "use --runtime onnxruntime" in r.report.table()
    assert r.report.fusion["latency"] == {} and "latency" not in r.report.table()


def test_the_onnxruntime_target_times_the_written_model_against_the_input():
    """Every --runtime onnxruntime run with quantized layers times the written model
    against the input one (1 thread, alternating; the figures are the machine's: only
    their consistency is asserted here) and says so in the report, SLOWER where it is."""
    from onnx_obc.export import fusion

    r = convert(str(ROOT / "models/digits_cnn.onnx"), None, bits=8, act_bits=8,
                runtime="onnxruntime", calib=str(ROOT / "models/digits_cnn.calib.npz"),
                calib_samples=32, progress=False, compare_baseline=False, method="rtn")
    t = r.report.fusion["latency"]
    assert t["input_ms"] > 0 and t["ms"] > 0 and t["batch"] == 1
    assert t["ratio"] == pytest.approx(t["ms"] / t["input_ms"])
    assert fusion.latency_line(t) in r.report.table()
    assert r.report.to_dict()["fusion"]["latency"]["runs"] == fusion.LATENCY_ROUNDS
    slow = fusion.latency_line({"input_ms": 3.0, "ms": 4.0, "ratio": 4 / 3, "batch": 1,
                                "runs": 9})
    assert "1.333x the input model's (4 vs 3 ms)" in slow and "SLOWER" in slow
    assert "SLOWER" not in fusion.latency_line({**t, "ratio": 0.5})
    level = fusion.latency_line({**t, "ratio": 1.0 + fusion.LEVEL / 2})
    assert "SLOWER" not in level and "level with the input model" in level
    # what cannot be timed is said, and the check itself still runs
    model = onnx.load(str(ROOT / "models/digits_cnn.onnx"))
    empty = {"none": type("Empty", (), {"batches": lambda self, n: iter(())})()}
    assert fusion.latency(model, model, empty)["error"].startswith("StopIteration")
    assert fusion.latency_line({"error": "X: y"}) == "latency not measured: X: y"


def test_fusion_temp_dir_is_removed(monkeypatch) -> None:
    made = []
    real = tempfile.TemporaryDirectory

    def spy(*a, **k):
        d = real(*a, **k)
        made.append(d.name)
        return d

    monkeypatch.setattr(fusion.tempfile, "TemporaryDirectory", spy)
    out, _, layers = compressed(b.gemm())
    assert fusion.check(out, layers).integer == 1
    assert made and not any(Path(d).exists() for d in made)


def test_a_2d_matmul_with_its_bias_add_is_reported_as_onnxruntime_s_float_gemm() -> None:
    """x [N, 8] --fc1--> Relu --fc2 (MatMul)--> + b --> y: onnxruntime turns fc2 and its bias
    Add into one float Gemm before its QDQ rules (ppocr_cls's and PP-LCNet's heads); the
    report says so instead of "no rule matched"."""
    base = b.mlp()
    g = base.graph
    g.node[2].output[0] = "z"
    g.node.append(helper.make_node("Add", ["z", "b2"], ["y"], name="bias"))
    g.initializer.append(b.weight("b2", (4,), 9))
    out, _, layers = compressed(base)
    f = fusion.check(out, layers)
    why = dict(f.unfused)
    assert "fc2" in why and "into a float Gemm" in why["fc2"]
    assert f.float_ops.get("Gemm") == 1


def head_cnn(seed: int = 0) -> onnx.ModelProto:
    """A detector's head in small: a box Conv read only by the output Concat (the tail),
    a score Conv behind a Sigmoid, the Concat reshaped to the graph output:

        x [N, 4, 8, 8] --c1--> Relu r --box(Wb [4, 8, 1, 1])--> bx --------+
                                      --score(Ws [2, 8, 1, 1])--> Sigmoid --+--Concat-->
          Reshape --> y [N, 6, 64]
    """
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "Wb", "Bb"], ["bx"], name="box"),
             helper.make_node("Conv", ["r", "Ws", "Bs"], ["sc"], name="score"),
             helper.make_node("Sigmoid", ["sc"], ["sg"], name="sigmoid"),
             helper.make_node("Concat", ["bx", "sg"], ["cat"], name="cat", axis=1),
             helper.make_node("Reshape", ["cat", "shape"], ["y"], name="reshape")]
    inits = [b.weight("W1", (8, 4, 3, 3), seed), b.weight("B1", (8,), seed + 1),
             b.weight("Wb", (4, 8, 1, 1), seed + 2), b.weight("Bb", (4,), seed + 3),
             b.weight("Ws", (2, 8, 1, 1), seed + 4), b.weight("Bs", (2,), seed + 5),
             onnx.numpy_helper.from_array(np.array([0, 6, -1], np.int64), "shape")]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 8, 8])], [b.vi("y", [b.BATCH, 6, 64])], inits)


def test_a_conv_read_only_by_the_tail_gets_an_integer_output() -> None:
    """The box Conv's output only reaches the graph output through Concat / Reshape (the
    tail, float): it gets a quantized output of its own and runs on QLinearConv (float, it
    read its input through a DequantizeLinear and a layout Transpose: ddddocr's detector
    paid 0.28 ms of 24 for that); the Sigmoid there keeps its float output."""
    model = head_cnn()
    layers = find_layers(model)[0]
    p = plan(model, layer_nodes(model, layers))
    idx = {n.name: i for i, n in enumerate(model.graph.node)}
    assert p.heads == [idx["box"]] and "bx" in p.tensors and idx["box"] not in p.float_out
    assert p.float_out[idx["sigmoid"]] == "its output only feeds graph outputs (kept float)"
    assert ort_target.head_convs(model, layers) == {"Wb": "its output only feeds graph outputs"}
    out, feed, _ = compressed(model)
    onnx.checker.check_model(out, full_check=True)
    ops = optimized_ops(out)
    assert ops["QLinearConv"] == 3 and ops["Conv"] == 0 and ops["Sigmoid"] == 1
    ref = run(out, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert rel(run(out, feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL), ref) < 0.02


def test_output_convs_are_a_float_candidate() -> None:
    model = head_cnn()
    layers = find_layers(model)[0]
    probe = lambda names: {}  # noqa: E731  (no shapes: no high-resolution group)
    stem, g = ort_target.float_candidates(model, layers, 8, probe)  # c1: the image stem
    assert (stem.kind, set(stem.reasons)) == ("stem", {"W1"})
    assert (g.kind, set(g.reasons), g.flag) == ("output convs", {"Wb"}, "--int8-heads")
    assert g.at_most == 1 - ortstem.MARGIN == 0.98 and g.slower == SLOWER
    assert ort_target.float_candidates(model, layers, 8, probe, float_heads=False) == [stem]
    assert ort_target.float_candidates(model, layers, None, probe) == []


@pytest.mark.parametrize("err, ms, kept", [
    (0.0100, 1.00, False),  # no lower error with the box conv float: quantized
    (0.0099, 1.00, False),  # 1% lower: within the measurement's noise (2%)
    (0.0090, 1.00, True),  # a tenth lower at the same speed: float
    (0.0090, 1.20, False),  # ... but not at 1.2x the latency (not verified)
])
def test_output_convs_float_only_where_the_run_measures_a_lower_error(
        monkeypatch, err: float, ms: float, kept: bool) -> None:
    def timer(*a, **k):  # the variant with Wb stored float takes `ms`
        return lambda models, feed: [
            (ms if any(t.name == "Wb" and t.data_type == TensorProto.FLOAT
                       for t in m.graph.initializer) else 1.0) / 1e3 for m in models]
    monkeypatch.setattr(verify, "measure", fixed_errors(
        verify.measure, {"quantized": 0.0100, "output convs": err}))
    monkeypatch.setattr(timing, "ort_timer", timer)
    m = head_cnn()
    kw = dict(calib=[b.feeds(m, 24, seed=2)], bits=8, act_bits=8, runtime="onnxruntime",
              progress=False, float_stem=False, float_highres=False)  # the one group
    r = convert(m, None, **kw)
    [note] = r.report.notes
    assert note.startswith("float candidates for onnxruntime, output convs (box): ")
    why = {s.node: s.reason for s in r.report.skipped}
    ops = optimized_ops(r.model)
    if kept:
        assert "kept float" in note and why["box"].startswith(
            "its output only feeds graph outputs; output error on")
        assert ops["QLinearConv"] == 2 and ops["Conv"] == 1
        return
    assert why == {} and ops["QLinearConv"] == 3 and ops["Conv"] == 0
    assert note.endswith("(or --int8-heads quantizes them without measuring)")
    assert ("latency" in note) == (err <= 0.98 * 0.0100)  # verified first, timed only then
    if ms > SLOWER:
        assert note.endswith(f"latency {ms:.3f}x with them float (1 thread, batch 1: {ms:g} vs "
                             "1 ms) (at 0.90x the error kept float only at most 1.050x the "
                             "latency) (or --int8-heads quantizes them without measuring)")
    assert convert(m, None, **kw, float_heads=False).report.notes == []
