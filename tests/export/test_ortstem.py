"""The onnxruntime target's float stem (export/ortstem.py): with 8-bit activations the Convs
on the image input and a narrow depthwise Conv right after them are offered to stay float,
and stay float where the run measures a lower output error with them float (floatcheck.py)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_obc import convert, verify
from onnx_obc.channels import timing
from onnx_obc.export import onnxruntime as ort_target
from onnx_obc.export import tensorrt as trt_target
from onnx_obc.export.ortstem import stem_layers
from onnx_obc.layers import find_layers

from .. import builders as b
from ..fakes import fixed_errors
from .test_onnxruntime import optimized_ops

MODELS = Path(__file__).resolve().parents[2] / "models"


def mobile(c_in: int = 3, dw: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x [N, c_in, 16, 16] -> Pad -> stem 3x3 s2 -> HardSwish -> depthwise 3x3 (dw channels)
    -> Relu -> 1x1 (32) -> depthwise 3x3 (32) -> Relu -> 1x1 with 3 outputs -> 3x3 on those
    3 channels -> GlobalAveragePool, Flatten -> fc [N, 5]. The last 3x3 reads 3 channels but
    not the model input: not a stem."""
    conv = helper.make_node
    nodes = [conv("Pad", ["x", "pads"], ["xp"], name="pad"),
             conv("Conv", ["xp", "Ws", "Bs"], ["s"], name="stem", strides=[2, 2]),
             conv("HardSwish", ["s"], ["sh"], name="hs"),
             conv("Conv", ["sh", "Wd", "Bd"], ["d"], name="dw", pads=[1] * 4, group=dw),
             conv("Relu", ["d"], ["dr"], name="r1"),
             conv("Conv", ["dr", "Wp", "Bp"], ["p"], name="pw"),
             conv("Conv", ["p", "Wd2", "Bd2"], ["d2"], name="dw2", pads=[1] * 4, group=32),
             conv("Relu", ["d2"], ["d2r"], name="r2"),
             conv("Conv", ["d2r", "W3", "B3"], ["t"], name="to3"),
             conv("Conv", ["t", "Wn", "Bn"], ["n"], name="narrow", pads=[1] * 4),
             conv("GlobalAveragePool", ["n"], ["g"], name="gap"),
             conv("Flatten", ["g"], ["f"], name="flatten", axis=1),
             conv("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [onnx.numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             b.weight("Ws", (dw, c_in, 3, 3), seed), b.weight("Bs", (dw,), seed + 1),
             b.weight("Wd", (dw, 1, 3, 3), seed + 2), b.weight("Bd", (dw,), seed + 3),
             b.weight("Wp", (32, dw, 1, 1), seed + 4), b.weight("Bp", (32,), seed + 5),
             b.weight("Wd2", (32, 1, 3, 3), seed + 6), b.weight("Bd2", (32,), seed + 7),
             b.weight("W3", (3, 32, 1, 1), seed + 8), b.weight("B3", (3,), seed + 9),
             b.weight("Wn", (8, 3, 3, 3), seed + 10), b.weight("Bn", (8,), seed + 11),
             b.weight("Wf", (5, 8), seed + 12), b.weight("bf", (5,), seed + 13)]
    return b.make(nodes, [b.vi("x", [b.BATCH, c_in, 16, 16])], [b.vi("y", [b.BATCH, 5])], inits)


def kept(model: onnx.ModelProto) -> set[str]:
    return set(stem_layers(model, find_layers(model)[0]))


def test_the_stem_and_the_depthwise_after_it_are_kept_float() -> None:
    reasons = stem_layers(m := mobile(), find_layers(m)[0])
    assert set(reasons) == {"Ws", "Wd"}  # not pw, dw2 (after pw), narrow (not on the input)
    assert "stem conv on the model input (3 input channels)" in reasons["Ws"]
    assert "depthwise conv on 16 channels after the float stem" in reasons["Wd"]
    assert all("--int8-stem" in r for r in reasons.values())


@pytest.mark.parametrize("c_in, dw, expected", [
    (1, 16, {"Ws", "Wd"}),  # a grey image
    (4, 32, {"Ws", "Wd"}),  # the limits
    (8, 16, set()),  # 8 input channels: not an image stem, nor the depthwise after it
    (3, 64, {"Ws"}),  # a wide depthwise conv runs as fast on integers
])
def test_the_limits(c_in: int, dw: int, expected: set[str]) -> None:
    assert kept(mobile(c_in=c_in, dw=dw)) == expected


def test_a_depthwise_conv_reading_the_stem_and_another_layer_is_quantized() -> None:
    m = mobile()
    g = m.graph
    g.node.insert(3, helper.make_node("Conv", ["x", "Wo", "Bo"], ["o"], name="other",
                                      strides=[2, 2], pads=[0, 0, 1, 1]))
    g.node.insert(4, helper.make_node("Add", ["sh", "o"], ["sho"], name="add"))
    g.initializer.extend([b.weight("Wo", (16, 3, 3, 3), 20), b.weight("Bo", (16,), 21)])
    next(n for n in g.node if n.name == "dw").input[0] = "sho"
    onnx.checker.check_model(m)
    assert kept(m) == {"Ws", "Wo", "Wd"}  # both stems; dw reads only stems
    g.initializer.remove(next(t for t in g.initializer if t.name == "Wo"))
    g.initializer.append(b.weight("Wo", (16, 8, 3, 3), 20))  # no longer a stem
    m.graph.input.append(b.vi("x8", [b.BATCH, 8, 16, 16]))
    next(n for n in g.node if n.name == "other").input[0] = "x8"
    assert kept(m) == {"Ws"}


def octaves(seed: int = 0) -> onnx.ModelProto:
    """Basic Pitch's CQT in small: audio x [N, 1, 1, 64]; one lowpass weight Wl (1 channel,
    stride 2) on every octave, x -> l1 -> l2; one filter bank Wc (8 filters of 1 channel)
    on x, l1 and l2; the three concatenated -> a conv on their 8 channels -> pool -> [N, 6]."""
    conv = helper.make_node
    nodes = [conv("Conv", ["x", "Wl"], ["l1"], name="low1", strides=[1, 2], pads=[0, 1, 0, 2]),
             conv("Conv", ["l1", "Wl"], ["l2"], name="low2", strides=[1, 2], pads=[0, 1, 0, 2]),
             *[conv("Conv", [a, "Wc"], [f"c{i}"], name=f"bank{i}", strides=[1, 4])
               for i, a in enumerate(["x", "l1", "l2"])],
             conv("Concat", ["c0", "c1", "c2"], ["cc"], name="cat", axis=3),
             conv("Conv", ["cc", "Wk", "Bk"], ["k"], name="mix", pads=[0, 1, 0, 1]),
             conv("GlobalAveragePool", ["k"], ["g"], name="gap"),
             conv("Flatten", ["g"], ["y"], name="flatten", axis=1)]
    inits = [b.weight("Wl", (1, 1, 1, 4), seed), b.weight("Wc", (8, 1, 1, 4), seed + 1),
             b.weight("Wk", (6, 8, 1, 3), seed + 2), b.weight("Bk", (6,), seed + 3)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 1, 1, 64])], [b.vi("y", [b.BATCH, 6])], inits)


def test_a_weight_on_every_octave_and_the_bank_after_it_are_stems() -> None:
    """A stem may read itself (Wl's second use reads its first) and other stems (Wc on the
    lowpassed octaves); Basic Pitch's W8A8 for onnxruntime had its CQT on integer kernels,
    output error 0.27 (0.016 with it float) and 1.02x fp32. The 8-channel mix is not one."""
    reasons = stem_layers(m := octaves(), find_layers(m)[0])
    assert set(reasons) == {"Wl", "Wc"}
    assert all("stem conv on the model input (1 input channel)" in r for r in reasons.values())
    g = m.graph  # a bank that also reads a non-stem layer's output (8 channels) is quantized
    g.node.insert(4, helper.make_node("Conv", ["c0", "Wo"], ["o"], name="other"))
    g.initializer.append(b.weight("Wo", (1, 8, 1, 1), 9))
    next(n for n in g.node if n.name == "bank2").input[0] = "o"
    onnx.checker.check_model(m, full_check=True)
    assert set(stem_layers(m, find_layers(m)[0])) == {"Wl"}


def framed(rank: int = 2) -> onnx.ModelProto:
    """DNSMOS's STFT in small: a waveform x [N, 64] reshaped into 8 frames of 8 samples, the
    frames' samples as 8 input channels of a 1x1 Conv (16 filters), then a 3x3 conv on
    those and a pool. rank 4: the same graph on an image-like input [N, 8, 1, 8]."""
    conv = helper.make_node
    shape = onnx.numpy_helper.from_array(np.array([-1, 8, 1, 8], np.int64), "shape")
    first = ([conv("Reshape", ["x", "shape"], ["frames"], name="frame")] if rank == 2 else
             [conv("Identity", ["x"], ["frames"], name="frame")])
    nodes = [*first, conv("Conv", ["frames", "Wf"], ["f"], name="stft"),
             conv("Conv", ["f", "Wk"], ["k"], name="mix", pads=[1] * 4),
             conv("GlobalAveragePool", ["k"], ["g"], name="gap"),
             conv("Flatten", ["g"], ["y"], name="flatten", axis=1)]
    inits = [b.weight("Wf", (16, 8, 1, 1), 0), b.weight("Wk", (4, 16, 3, 3), 1)] + (
        [shape] if rank == 2 else [])
    x = b.vi("x", [b.BATCH, 64] if rank == 2 else [b.BATCH, 8, 1, 8])
    return b.make(nodes, [x], [b.vi("y", [b.BATCH, 4])], inits)


def test_a_conv_on_a_signal_is_a_stem_whatever_its_channels() -> None:
    """DNSMOS frames its 9 s waveform into 320-sample frames, the STFT a Conv on 320 input
    channels: its W8A8 for onnxruntime had the waveform on an 8-bit grid, output error 0.21
    (0.047 with the STFT float, at the same latency). A Conv reading a float model input of
    rank <= 3 (a signal) is a stem candidate with any number of channels; on an image-like
    input (rank 4) the channel limit stays."""
    reasons = stem_layers(m := framed(), find_layers(m)[0])
    assert set(reasons) == {"Wf"} and "reads a signal" in reasons["Wf"]
    assert kept(framed(rank=4)) == set()


def test_only_the_onnxruntime_target_with_8_bit_activations_offers_it() -> None:
    m = mobile()
    layers = find_layers(m)[0]

    def offered(act_bits, **kw):
        return {g.kind: set(g.reasons) for g in ort_target.float_candidates(
            m, layers, act_bits, lambda names: {}, **kw)}  # no shapes: no high-res group
    assert offered(8) == {"stem": {"Ws", "Wd"}}
    assert offered(None) == {} and offered(8, float_stem=False) == {}
    assert not hasattr(trt_target, "float_candidates")


def _errors(monkeypatch, float_err: float, quant_err: float, **more: float) -> None:
    """floatcheck's verification with fixed errors for its candidate models: the stem float,
    all quantized, and `more` (variant -> error); and every timing level (a loaded machine
    timed the float stem past its limit, so it was not verified and the note differed)."""
    fixed = {"stem": float_err, "quantized": quant_err, **more}
    monkeypatch.setattr(verify, "measure", fixed_errors(verify.measure, fixed))
    monkeypatch.setattr(timing, "ort_timer", lambda *a, **k: lambda models, feed: [
        0.001] * len(models))


@pytest.mark.parametrize("float_err, quant_err, kept", [
    (0.01, 0.02, True), (0.0203, 0.02, True), (0.0205, 0.02, False), (0.03, 0.02, False)])
def test_convert_keeps_the_stem_float_where_it_measures_better(
        tmp_path, monkeypatch, float_err: float, quant_err: float, kept: bool) -> None:
    _errors(monkeypatch, float_err, quant_err)
    m = mobile()
    r = convert(m, tmp_path / "out.onnx", calib=[b.feeds(m, 24, seed=2)], bits=8, act_bits=8,
                runtime="onnxruntime", float_highres=False, progress=False)
    onnx.checker.check_model(r.model, full_check=True)
    why = {s.node: s.reason for s in r.report.skipped}
    ops = optimized_ops(r.model)
    (note,) = r.report.notes
    assert note.startswith("float candidates for onnxruntime, stem (stem, dw): ")
    assert note in r.report.table() and r.report.to_dict()["notes"] == [note]
    if not kept:
        assert why == {} and ops["QLinearConv"] == 6 and r.report.fusion["layers"] == 7
        assert "quantized, output error on" in note and "only at most 1.02x" in note
        assert "--int8-stem quantizes them without measuring" in note
        return
    assert "kept float, output error on" in note
    assert set(why) == {"stem", "dw"} and "kept float for onnxruntime" in why["stem"]
    assert f"{float_err:.4g} with them float, 0.02 without" in why["dw"]
    assert {row.name for row in r.report.layers} == {"pw", "dw2", "to3", "narrow", "fc"}
    assert ops["QLinearConv"] == 4 and r.report.fusion["layers"] == 5
    # the stem's weights stay as they were; nothing quantizes the model input
    stem_w = next(t for t in r.model.graph.initializer if t.name == "Ws")
    assert stem_w.data_type == onnx.TensorProto.FLOAT
    assert Counter(n.op_type for n in r.model.graph.node if "x" in n.input) == {"Pad": 1}


def test_int8_stem_and_other_targets_measure_nothing(monkeypatch) -> None:
    def fail(*a, **k):
        raise AssertionError("no float candidates to measure")
    monkeypatch.setattr(verify, "measure", fail)
    m = mobile()
    calib = [b.feeds(m, 24, seed=2)]
    for kw in (dict(runtime="onnxruntime", float_stem=False, float_highres=False),
               dict(runtime="tensorrt"),
               dict(runtime="onnxruntime", act_bits=None)):
        r = convert(m, None, calib=calib, bits=8, progress=False, **{"act_bits": 8, **kw})
        assert len(r.report.layers) == 7 and r.report.skipped == []
    # an allocation (here the BOPs DP) has budgeted every layer: the candidates stay as chosen
    r = convert(m, None, calib=calib, act_bits=8, runtime="onnxruntime", allocate="dp",
                budget="bops", target=8, progress=False)
    assert "stem" in {row.name for row in r.report.layers} and r.report.notes == []
    assert not any("kept float" in x.reason for x in r.report.skipped)


def test_the_real_measurement_on_digits_vit() -> None:
    """digits_vit's patch embedding (1 channel): float measures better (uncorrected error
    0.0108 float against 0.0224 quantized on its calibration samples)."""
    r = convert(MODELS / "digits_vit.onnx", None, bits=8, act_bits=8, runtime="onnxruntime",
                calib=MODELS / "digits_vit.calib.npz", progress=False, device="cpu")
    (s,) = [s for s in r.report.skipped if "kept float" in s.reason]
    assert "stem conv on the model input (1 input channel)" in s.reason
    errors = [float(x) for x in re.findall(r"(\d\.\d+) (?:with them float|without)", s.reason)]
    assert len(errors) == 2 and errors[0] < errors[1]


def test_the_channel_stage_still_prunes_the_stem(monkeypatch) -> None:
    """--channels with W8A8 on onnxruntime: the stem producer loses channels (the channel
    stage works on every selected layer), then stays float (measured better here); its
    consumer is quantized."""
    from tests.channels import graphs

    _errors(monkeypatch, 0.01, 0.02)
    model = graphs.conv_bn_relu_conv(mid=16)
    r = convert(model, None, calib=[b.feeds(model, 128, seed=1)], channels=0.3, bits=8,
                act_bits=8, runtime="onnxruntime", progress=False)
    (row,) = r.report.channels["rows"]
    assert row["removed"] > 0
    kept_ = 16 - row["removed"]
    shapes = [tuple(t.dims) for t in r.model.graph.initializer]
    assert (kept_, 3, 3, 3) in shapes  # the stem's float weight, shrunk
    assert [s.node for s in r.report.skipped if "stem" in s.reason] == ["prod"]
    assert [row.name for row in r.report.layers] == ["cons"]


def test_a_layer_left_out_of_the_selection_still_ends_the_stem() -> None:
    """--exclude on the stem: the depthwise conv after it does not read the input "through
    no other layer" (the excluded Conv is still one), so it is no stem itself."""
    m = mobile()
    layers = [L for L in find_layers(m)[0] if L.weight != "Ws"]
    assert stem_layers(m, layers) == {}


def test_unnamed_nodes_are_followed_by_their_labels() -> None:
    """Layer uses name unnamed nodes "<Op #i>": the walk back must know them as layers."""
    m = mobile()
    for n in m.graph.node:
        n.name = ""
    assert kept(m) == {"Ws", "Wd"}


def test_the_chosen_variant_is_built_and_measured_once(monkeypatch) -> None:
    """floatcheck's chosen uncorrected model is the one the correction measures and the
    verification reports: the final verification runs only the dense and corrected models."""
    import onnx_obc.pipeline as pipeline

    seen: list[list[str]] = []
    real = pipeline.measure

    def recorded(models, *args, **kw):
        seen.append(sorted(models))
        return real(models, *args, **kw)

    monkeypatch.setattr(pipeline, "measure", recorded)
    r = convert(MODELS / "digits_vit.onnx", None, bits=8, act_bits=8, runtime="onnxruntime",
                calib=MODELS / "digits_vit.calib.npz", progress=False, device="cpu")
    assert seen == [["compressed", "dense"]]
    fid = next(iter(r.report.fidelity.values()))
    assert list(fid)[0] == "dense" and len(fid) == 3  # compressed and the uncorrected one
    assert all(max(f.rel_error.values()) > 0 for k, f in fid.items() if k != "dense")


@pytest.mark.parametrize("ms, kept", [(0.95, True), (1.04, True), (1.10, False)])
def test_a_float_stem_must_not_cost_speed(monkeypatch, ms: float, kept: bool) -> None:
    """The stem is timed too: more accurate float, it stays float only at no more than
    ortstem.SLOWER times the latency (PP-OCRv6's detector: its float stem left the MaxPool
    after it on uint8 in NCHW, 1.18x slower), and a slower one is not verified at all."""
    from .test_orthires import _fixed, pyramid

    m = pyramid(c_in=3)
    _fixed(monkeypatch, {"quantized": 0.02, "stem": 0.015, "high-resolution convs": 0.02,
                         "convs at stride 8": 0.02}, {0: 1.0, 1: ms, 2: 1.0})
    r = convert(m, None, calib=[b.feeds(m, 24, seed=2)], bits=8, act_bits=8,
                runtime="onnxruntime", progress=False)
    stem = r.report.notes[0]
    assert stem.startswith("float candidates for onnxruntime, stem (c1): "
                           + ("kept float" if kept else "quantized"))
    assert f"latency {ms:.3f}x with them float" in stem
    assert ("output error not measured" in stem) != kept  # a slower stem is not verified


@pytest.mark.parametrize("allocate", ["auto", "uniform"])
def test_a_pruned_stem_kept_float_keeps_its_zeros(monkeypatch, allocate: str) -> None:
    """Pruning with W8A8 on onnxruntime (the default DP allocation, or uniform levels): the
    stem is measured as in a quantize-only run and, kept float, keeps the zeros it was solved
    with (an allocation's budget holds), written float; its row stays, without bits."""
    from .test_orthires import _fixed

    _fixed(monkeypatch, {"quantized": 0.02, "stem": 0.01}, {0: 1.0, 2: 0.9})
    m = mobile()
    r = convert(m, None, calib=[b.feeds(m, 64, seed=2)], sparsity=0.5, bits=8, act_bits=8,
                runtime="onnxruntime", allocate=allocate, progress=False)
    note = next(n for n in r.report.notes if n.startswith("float candidates"))
    assert note.startswith("float candidates for onnxruntime, stem (stem, dw): kept float")
    assert r.report.skipped == []
    rows = {row.name: row for row in r.report.layers}
    assert set(rows) == {"stem", "dw", "pw", "dw2", "to3", "narrow", "fc"}
    assert rows["stem"].bits is None and rows["dw"].bits is None and rows["pw"].bits == 8
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in r.model.graph.initializer}
    for w, name in (("Ws", "stem"), ("Wd", "dw")):
        assert inits[w].dtype == np.float32
        assert np.isclose((inits[w] == 0).mean(), rows[name].sparsity)
    assert rows["stem"].sparsity > 0 or rows["dw"].sparsity > 0
    assert r.report.fusion["layers"] == 5 and optimized_ops(r.model)["QLinearConv"] == 4
    assert "--exclude" not in (r.report.to_dict().get("pinned") or {}).get("flags", "")
