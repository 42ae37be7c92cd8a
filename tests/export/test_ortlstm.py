"""export/ortlstm.py: LSTMs as com.microsoft.DynamicQuantizeLSTM for the onnxruntime target
(int8 weights per gate row, transposed; activations quantized by onnxruntime at run time)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnx_obc import convert
from onnx_obc.config import CompressConfig
from onnx_obc.export import fusion, ortlstm
from onnx_obc.layers import find_layers

from .. import builders as b
from ..cpu import NEEDS_VNNI

T, IN, HID = 6, 12, 10


def lstm_model(direction: str = "bidirectional", layout: int = 0, constant_node: bool = False,
               head: bool = False, seed: int = 0) -> onnx.ModelProto:
    """X [T, N, IN] -> LSTM (hidden HID, W/R/B) -> Y_h [dirs, N, HID] [-> MatMul [HID, 4]]."""
    rng = np.random.default_rng(seed)
    d = 2 if direction == "bidirectional" else 1
    w = numpy_helper.from_array((rng.standard_normal((d, 4 * HID, IN)) * 0.3).astype(np.float32),
                                "W")
    r = numpy_helper.from_array((rng.standard_normal((d, 4 * HID, HID)) * 0.3).astype(np.float32),
                                "R")
    bias = numpy_helper.from_array((rng.standard_normal((d, 8 * HID)) * 0.1).astype(np.float32),
                                   "B")
    inits, nodes = [r, bias], []
    if constant_node:
        nodes.append(helper.make_node("Constant", [], ["W"], value=w, name="w_const"))
    else:
        inits.append(w)
    x_shape = ["N", T, IN] if layout else [T, "N", IN]
    h_shape = ["N", d, HID] if layout else [d, "N", HID]
    nodes.append(helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h"], name="lstm",
                                  hidden_size=HID, direction=direction, layout=layout))
    out = "Y_h"
    if head:
        inits.append(b.weight("head.w", (HID, 4), seed + 1))
        nodes.append(helper.make_node("MatMul", ["Y_h", "head.w"], ["out"], name="head"))
        out, h_shape = "out", [*h_shape[:-1], 4]
    return b.make(nodes, [b.vi("X", x_shape)], [b.vi(out, h_shape)], inits)


def feed(n: int = 16, seed: int = 1, layout: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((T, n, IN)).astype(np.float32)
    return {"X": x.transpose(1, 0, 2).copy() if layout else x}


def run(model: onnx.ModelProto, x: dict) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, x)[0]


def rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def test_int8_rows_round_to_nearest_per_row():
    w = np.random.default_rng(0).standard_normal((2, 8, 5))
    w[1, 3] = 0.0  # an all-zero row keeps scale 1 and codes 0
    codes, scale = ortlstm.int8_rows(w)
    assert codes.shape == (2, 5, 8) and codes.dtype == np.int8 and scale.shape == (2, 8)
    expect = np.abs(w).max(axis=2) / 127
    expect[1, 3] = 1.0
    np.testing.assert_allclose(scale, expect, rtol=1e-6)
    back = codes.transpose(0, 2, 1) * scale[:, :, None]
    assert np.abs(back - w).max() <= scale.max() / 2 + 1e-7  # RTN: at most half a step
    assert np.abs(codes).max() == 127 and not codes[1, :, 3].any()


@NEEDS_VNNI
def test_the_rewrite_runs_the_lstm_on_int8_weights():
    for direction in ("forward", "bidirectional"):
        model = lstm_model(direction)
        out, notes = ortlstm.rewrite(model)
        n = Counter(x.op_type for x in out.graph.node)
        assert n[ortlstm.OP] == 1 and not n["LSTM"] and not notes
        node = next(x for x in out.graph.node if x.op_type == ortlstm.OP)
        consts = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
        assert consts[node.input[1]].dtype == np.int8 and consts[node.input[1]].shape[1:] == \
            (IN, 4 * HID)
        assert "W" not in consts  # the float weights are gone: the file shrinks
        x = feed()
        dense = run(model, x)
        # the float LSTM on the dequantized weights: what the int8 kernel approximates
        deq = onnx.ModelProto()
        deq.CopyFrom(model)
        for init in deq.graph.initializer:
            if init.name in ("W", "R"):
                c, s = ortlstm.int8_rows(numpy_helper.to_array(init))
                init.CopyFrom(numpy_helper.from_array(
                    (c.transpose(0, 2, 1) * s[:, :, None]).astype(np.float32), init.name))
        got, ref = run(out, x), run(deq, x)
        assert got.shape == dense.shape
        assert rel(got, ref) < 0.02  # only the run-time activation quantization left
        assert rel(got, dense) < 0.03
        # a wrong layout (W not transposed) would be far off: the check can fail
        assert rel(run(deq, x), dense) < 0.01


def test_constant_node_weights_are_rewritten_and_batch_first_stays_float():
    out, notes = ortlstm.rewrite(lstm_model(constant_node=True))
    assert any(x.op_type == ortlstm.OP for x in out.graph.node) and not notes
    model = lstm_model(layout=1)
    same, notes = ortlstm.rewrite(model)
    assert same is model
    assert len(notes) == 1 and "lstm stays float" in notes[0] and "layout = 1" in notes[0]


@NEEDS_VNNI
def test_w8a8_onnxruntime_target_quantizes_the_lstm_and_reports_it(tmp_path):
    model = lstm_model(head=True)
    layers = find_layers(model)[0]
    assert [L.weight for L in layers] == ["head.w"]
    calib = feed(64, seed=3)
    kw = dict(calib=[calib], bits=8, act_bits=8, runtime="onnxruntime", progress=False,
              compare_baseline=False)
    r = convert(model, tmp_path / "q.onnx", **kw)
    written = onnx.load(tmp_path / "q.onnx")
    assert Counter(x.op_type for x in written.graph.node)[ortlstm.OP] == 1
    assert r.report.fusion["kernels"].get(ortlstm.OP) == 1
    assert r.report.fusion["integer"] == r.report.fusion["layers"] == 2
    x = feed(8, seed=4)
    assert rel(run(written, x), run(model, x)) < 0.05
    r2 = convert(model, tmp_path / "f.onnx", dynamic_lstm=False, **kw)
    kept = onnx.load(tmp_path / "f.onnx")
    assert Counter(x.op_type for x in kept.graph.node)["LSTM"] == 1
    assert ortlstm.OP not in r2.report.fusion["kernels"]
    # weights alone, or the TensorRT target: the LSTM is left as it is
    r3 = convert(model, tmp_path / "w.onnx", calib=[calib], bits=8, runtime="onnxruntime",
                 progress=False, compare_baseline=False)
    assert not any(x.op_type == ortlstm.OP for x in onnx.load(tmp_path / "w.onnx").graph.node)
    assert ortlstm.OP not in r3.report.fusion.get("kernels", {})


def test_the_reduced_range_reaches_the_lstm_weights(tmp_path):
    """--reduce-range on: the LSTM's int8 weights in [-63, 63] as the layers' codes (its
    uint8 x int8 products cannot saturate either), at most twice int8_rows' 127 step."""
    model = lstm_model(head=True)
    kw = dict(calib=[feed(64, seed=3)], bits=8, act_bits=8, runtime="onnxruntime",
              progress=False, compare_baseline=False)
    codes = {}
    for rr in ("on", "off"):
        r = convert(model, None, reduce_range=rr, **kw)
        lstm = next(n for n in r.model.graph.node if n.op_type == ortlstm.OP)
        inits = {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}
        codes[rr] = np.concatenate([inits[lstm.input[k]].ravel() for k in (1, 2)])
        x = feed(8, seed=4)
        assert rel(run(r.model, x), run(model, x)) < 0.05
    assert np.abs(codes["on"]).max() == 63 and np.abs(codes["off"]).max() == 127
    assert codes["on"].dtype == np.int8


def test_the_option_is_frozen_and_only_reaches_the_onnxruntime_target():
    cfg = CompressConfig.from_options(bits=8, act_bits=8, runtime="onnxruntime",
                                      dynamic_lstm=False)
    assert cfg.export.target_options()["dynamic_lstm"] is False
    assert CompressConfig.from_options(bits=8, act_bits=8).export.target_options() == {}
    assert fusion.INTEGER_KERNELS.count(ortlstm.OP) == 1
