"""The onnxruntime target's high-resolution float candidates (export/orthires.py) and their
measured rule in floatcheck.py: kept float only where the output error falls to at most
0.8x at no more than 1.05x the latency."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_obc.channels.timing as timing
from onnx_obc import convert, floatcheck, verify
from onnx_obc.capture import Runtime
from onnx_obc.export import onnxruntime as ort_target
from onnx_obc.export.floatcand import Candidates
from onnx_obc.export.orthires import (GAIN, SLOWER, SLOWER_CAP, conv_strides, hires_layers,
                                      upstream_strides)
from onnx_obc.layers import find_layers

from .. import builders as b
from ..fakes import fixed_errors
from .test_onnxruntime import optimized_ops


def pyramid(dims: int = 2, size: int = 32, c_in: int = 8, seed: int = 0,
            padded: bool = False) -> onnx.ModelProto:
    """x [N, c_in, size^dims] -> c1 3x3 s2 -> Relu -> c2 3x3 s2 -> Relu -> c3 3x3 s2 ->
    Relu -> c4 1x1 -> GlobalAveragePool -> Flatten -> fc [N, 5]: outputs at stride 2, 4,
    8, 8. c_in 8: no stem (ortstem.py). `padded`: a Pad of one at the end of each axis in
    front of c1, which then pads nothing (TF "same" as PyTorch ports write it): c1 reads
    33 x 33 and c2's output is 8 x 8, 17x fewer positions."""
    k, p = [3] * dims, [1] * (2 * dims)
    node = helper.make_node
    pads = [0] * (dims + 2) + [0, 0] + [1] * dims
    nodes = [node("Pad", ["x", "pads"], ["xp"], name="pad")] if padded else []
    nodes += [node("Conv", ["xp" if padded else "x", "W1", "B1"], ["a"], name="c1",
                   kernel_shape=k, pads=[0] * (2 * dims) if padded else p, strides=[2] * dims),
             node("Relu", ["a"], ["ar"], name="r1"),
             node("Conv", ["ar", "W2", "B2"], ["c"], name="c2", kernel_shape=k, pads=p,
                  strides=[2] * dims),
             node("Relu", ["c"], ["cr"], name="r2"),
             node("Conv", ["cr", "W3", "B3"], ["d"], name="c3", kernel_shape=k, pads=p,
                  strides=[2] * dims),
             node("Relu", ["d"], ["dr"], name="r3"),
             node("Conv", ["dr", "W4", "B4"], ["e"], name="c4"),
             node("GlobalAveragePool", ["e"], ["g"], name="gap"),
             node("Flatten", ["g"], ["f"], name="flatten", axis=1),
             node("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [b.weight("W1", (16, c_in, *k), seed), b.weight("B1", (16,), seed + 1),
             b.weight("W2", (16, 16, *k), seed + 2), b.weight("B2", (16,), seed + 3),
             b.weight("W3", (32, 16, *k), seed + 4), b.weight("B3", (32,), seed + 5),
             b.weight("W4", (32, 32, *[1] * dims), seed + 6), b.weight("B4", (32,), seed + 7),
             b.weight("Wf", (5, 32), seed + 8), b.weight("bf", (5,), seed + 9)]
    if padded:
        inits.append(onnx.numpy_helper.from_array(np.array(pads, np.int64), "pads"))
    return b.make(nodes, [b.vi("x", [b.BATCH, c_in, *[size] * dims])], [b.vi("y", [b.BATCH, 5])],
                  inits)


def probe_of(m: onnx.ModelProto):
    feed = b.feeds(m, 1, seed=3)
    return lambda names: floatcheck._shapes(m, names, feed, Runtime())


@pytest.mark.parametrize("dims, expected", [
    (2, {"W1", "W2"}),  # 16x16 and 8x8 of 32x32: stride 2 and 4; 4x4 is stride 8
    (1, {"W1", "W2"}),  # the same per axis on a 1-D signal (positions x 4 >= the input's)
])
def test_the_convs_at_stride_4_or_less(dims: int, expected: set[str]) -> None:
    m = pyramid(dims)
    reasons = hires_layers(m, find_layers(m)[0], probe_of(m))
    assert set(reasons) == expected
    assert "every conv upstream at stride 2 or less of the largest conv input" in reasons["W1"]
    assert "every conv upstream at stride 4 or less of the largest conv input" in reasons["W2"]
    assert all("--int8-highres" in r for r in reasons.values())


def gated_decoder(seed: int = 0) -> onnx.ModelProto:
    """x [N, 8, 32, 32] -> c1 3x3 s2 -> Relu -> a squeeze-excite gate (GlobalAveragePool ->
    se 1x1 on the pooled 1 x 1 map -> Sigmoid -> Mul) -> c2 3x3 s2 -> c3 3x3 s2 -> Resize x2
    -> c4 1x1 (stride 4, but reading stride-8 features) -> GlobalAveragePool -> fc [N, 5]."""
    node = helper.make_node
    k, p = [3, 3], [1, 1, 1, 1]
    nodes = [node("Conv", ["x", "W1", "B1"], ["a"], name="c1", kernel_shape=k, pads=p,
                  strides=[2, 2]),
             node("Relu", ["a"], ["ar"], name="r1"),
             node("GlobalAveragePool", ["ar"], ["p"], name="pool"),
             node("Conv", ["p", "Wse", "Bse"], ["s"], name="se"),
             node("Sigmoid", ["s"], ["sg"], name="sig"),
             node("Mul", ["ar", "sg"], ["gated"], name="gate"),
             node("Conv", ["gated", "W2", "B2"], ["c"], name="c2", kernel_shape=k, pads=p,
                  strides=[2, 2]),
             node("Conv", ["c", "W3", "B3"], ["d"], name="c3", kernel_shape=k, pads=p,
                  strides=[2, 2]),
             node("Resize", ["d", "", "scales"], ["u"], name="up", mode="nearest"),
             node("Conv", ["u", "W4", "B4"], ["e"], name="c4"),
             node("GlobalAveragePool", ["e"], ["g"], name="gap"),
             node("Flatten", ["g"], ["f"], name="flatten", axis=1),
             node("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [b.weight("W1", (16, 8, 3, 3), seed), b.weight("B1", (16,), seed + 1),
             b.weight("Wse", (16, 16, 1, 1), seed + 2), b.weight("Bse", (16,), seed + 3),
             b.weight("W2", (16, 16, 3, 3), seed + 4), b.weight("B2", (16,), seed + 5),
             b.weight("W3", (32, 16, 3, 3), seed + 6), b.weight("B3", (32,), seed + 7),
             b.weight("W4", (32, 32, 1, 1), seed + 8), b.weight("B4", (32,), seed + 9),
             b.weight("Wf", (5, 32), seed + 10), b.weight("bf", (5,), seed + 11),
             onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    return b.make(nodes, [b.vi("x", [b.BATCH, 8, 32, 32])], [b.vi("y", [b.BATCH, 5])], inits)


def test_the_early_backbone_not_a_decoder_nor_a_gate() -> None:
    """c4 is at stride 4 but reads c3's stride-8 features: a decoder's conv, in the stride-8
    group, not the first; the gate's conv on the pooled 1 x 1 map has no resolution of its
    own (stride 0): not a deeper conv upstream of c2, and float with the block it gates."""
    m = gated_decoder()
    layers = find_layers(m)[0]
    probe = probe_of(m)
    assert conv_strides(layers, probe) == {"W1": 2, "Wse": 0, "W2": 4, "W3": 8, "W4": 4}
    assert upstream_strides(m, layers, conv_strides(layers, probe)) == {
        "W1": 2, "Wse": 2, "W2": 4, "W3": 8, "W4": 8}
    g, nxt = ort_target.float_candidates(m, layers, 8, probe)
    assert set(g.reasons) == {"W1", "Wse", "W2"} and set(nxt.reasons) == {"W3", "W4"}


def test_a_padded_input_rounds_to_the_stride() -> None:
    """EfficientNet-Lite0's PyTorch port pads the image to 225 x 225 in front of its stem:
    its 56 x 56 maps are at stride 4.02 by positions, 4 as the convs stride."""
    m = pyramid(padded=True)
    reasons = hires_layers(m, find_layers(m)[0], probe_of(m))
    assert set(reasons) == {"W1", "W2"}
    assert "every conv upstream at stride 4 or less" in reasons["W2"]


def test_no_shapes_no_candidates_and_the_switches() -> None:
    m = pyramid()
    layers = find_layers(m)[0]
    assert hires_layers(m, layers, lambda names: {}) == {}  # nothing measured: nothing offered
    g, nxt = ort_target.float_candidates(m, layers, 8, probe_of(m))  # 8 channels: no stem
    assert (g.kind, set(g.reasons), g.after_kept) == ("high-resolution convs", {"W1", "W2"},
                                                      False)
    assert (nxt.kind, set(nxt.reasons), nxt.after_kept) == ("convs at stride 8", {"W3", "W4"},
                                                            True)
    assert "conv (its output and every conv upstream at stride 8 or less" in nxt.reasons["W3"]
    for x in (g, nxt):
        assert (x.at_most, x.slower, x.flag) == (GAIN, SLOWER, "--int8-highres") == (
            0.8, 1.05, "--int8-highres")
    assert ort_target.float_candidates(m, layers, 8, probe_of(m), float_highres=False) == []
    assert ort_target.float_candidates(m, layers, None, probe_of(m)) == []


def _fixed(monkeypatch, errors: dict[str, float], ms: dict[int, float]) -> list:
    """floatcheck's verification with fixed errors per variant, and its timer with fixed
    latencies per model (keyed by the number of Conv weights stored as float)."""
    fake = fixed_errors(verify.measure, errors)
    timed: list = []  # floatcheck's timings (the run's latency line times the input model too:
    # 4 float convs, left out)

    def timer(*a, **k):
        def run(models, feed):
            floats = [sum(t.data_type == onnx.TensorProto.FLOAT and t.name.startswith("W")
                          and len(t.dims) == 4 for t in m.graph.initializer) for m in models]
            if floats[0] != 4:
                timed.append(floats)
            return [ms.get(f, 1.0) / 1e3 for f in floats]
        return run
    monkeypatch.setattr(verify, "measure", fake)
    monkeypatch.setattr(timing, "ort_timer", timer)
    return timed


@pytest.mark.parametrize("base, err, ms, kept, timings", [
    (0.02, 0.010, 1.00, True, 1),  # half the error, the same speed
    (0.02, 0.016, 1.05, True, 2),  # the corner: 0.8x the error, 1.05x the latency (twice)
    (0.02, 0.0161, 1.00, False, 1),  # not enough gain
    (0.02, 0.010, 1.06, False, 2),  # a small error: the speed decides (near 1.05: twice)
    (0.02, 0.010, 1.09, False, 1),  # ... not verified beyond it
    (0.2, 0.16, 1.09, False, 1),  # a large error: too slow for 0.8x of it
    (0.2, 0.10, 1.06, True, 1),  # half a large error buys up to 1.125x
    (0.2, 0.10, 1.13, False, 2),  # ... not more (near that limit: timed twice)
    (0.2, 0.04, 1.14, True, 2),  # a fifth of it: up to the cap, 1.15x (near it: twice)
    (0.2, 0.01, 1.20, False, 1),  # over the cap: not verified
])
def test_kept_float_where_it_buys_accuracy_at_little_speed(
        monkeypatch, base: float, err: float, ms: float, kept: bool, timings: int) -> None:
    m = pyramid()
    timed = _fixed(monkeypatch, {"quantized": base, "high-resolution convs": err,
                                 "high-resolution convs but c2": base,
                                 "convs at stride 8": err}, {0: 1.0, 1: 1.0, 2: ms})
    r = convert(m, None, calib=[b.feeds(m, 24, seed=2)], bits=8, act_bits=8,
                runtime="onnxruntime", progress=False)
    onnx.checker.check_model(r.model, full_check=True)
    note, *more = r.report.notes
    assert note.startswith("float candidates for onnxruntime, high-resolution convs (c1, c2): ")
    why = {s.node: s.reason for s in r.report.skipped}
    ops = optimized_ops(r.model)
    # the two variants, timed before the error is measured; a kept group's last conv (c2)
    # tried back on an integer kernel (here it is the whole gain: the same rule, the same
    # decision); the stride-8 group (c3, c4) on top only where the first stays float,
    # refused here (no lower error)
    near = timings == 2  # timed twice near the margin
    assert timed == [[0, 2]] * timings + ([[1, 2]] * timings + [[2, 4]] if kept else [])
    if kept:
        trim, *more = more
        assert trim.startswith("float candidates for onnxruntime, high-resolution convs, its "
                               f"last c2: kept float, output error on held-out calibration "
                               f"{err:.4g} with them float, {base:g} without, latency "
                               f"{ms:.3f}x with them float")
    assert more == ([f"float candidates for onnxruntime, convs at stride 8 (c3, c4): quantized, "
                     f"output error on held-out calibration {err:.4g} with them float, "
                     f"{err:.4g} without, latency {1 / ms:.3f}x with them float (1 thread, "
                     f"batch 1: 1 vs {ms:.3g} ms) (kept float only at most 0.8x) (or "
                     "--int8-highres quantizes them without measuring)"] if kept else [])
    assert f"latency {ms:.3f}x with them float (1 thread, batch 1: " in note
    assert ("the mean of 2 timings" in note) == near
    if ms > (1.15 if base >= 0.1 else 1.05):
        assert (f"(kept float only at most {1.15 if base >= 0.1 else 1.05:g}x; output error "
                "not measured)") in note
        assert "output error on" not in note
    elif not kept and err <= GAIN * base:
        limit = Candidates("", {}, GAIN, SLOWER, slower_cap=1.15).allowed(err / base, base)
        assert note.endswith(f"(at {err / base:.2f}x the error kept float only at most "
                             f"{limit:.3f}x the latency) (or --int8-highres quantizes them "
                             "without measuring)")
    if not kept:
        assert why == {} and ops["QLinearConv"] == 4 and "quantized, " in note
        assert "--int8-highres quantizes them without measuring" in note
        return
    assert set(why) == {"c1", "c2"} and "kept float, output error on" in note
    assert f"{err:.4g} with them float, {base:g} without" in why["c2"]
    assert {row.name for row in r.report.layers} == {"c3", "c4", "fc"}
    assert ops["QLinearConv"] == 2 and r.report.fusion["layers"] == 3
    floats = {t.name for t in r.model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert {"W1", "W2"} <= floats and "W3" not in floats


def test_near_the_margin_the_decision_is_on_two_timings(monkeypatch) -> None:
    """A ratio within 0.03 of the limit its error allows (0.8x the error: 1.05x) is timed
    again and the decision taken on the mean of both: 1.06 then 1.03 keeps the group
    (1.045), 1.06 then 1.08 does not."""
    for second, kept in ((1.03, True), (1.08, False)):
        ratios = iter([1.06, second])
        _fixed(monkeypatch, {"quantized": 0.02, "high-resolution convs": 0.016,
                             "high-resolution convs but c2": 0.02,
                             "convs at stride 8": 0.016}, {})
        timed: list = []

        def timer(*a, **k):
            def run(models, feed):
                timed.append(1)
                return [1e-3, next(ratios, 1.0) * 1e-3]
            return run
        monkeypatch.setattr(timing, "ort_timer", timer)
        m = pyramid()
        r = convert(m, None, calib=[b.feeds(m, 24, seed=2)], bits=8, act_bits=8,
                    runtime="onnxruntime", progress=False)
        note = r.report.notes[0]
        assert f"latency {(1.06 + second) / 2:.3f}x with them float" in note
        assert "the mean of 2 timings)" in note and (": kept float, " in note) == kept


def test_each_group_on_top_of_the_groups_kept(monkeypatch) -> None:
    """A stem (3 input channels) and the high-resolution convs: the second group is built
    float on top of the groups kept before it and weighed against that choice; a stem
    measured worse alone is still float when the high-resolution group (it is at stride 2)
    is kept."""
    m = pyramid(c_in=3)
    calib = [b.feeds(m, 24, seed=2)]
    _fixed(monkeypatch, {"quantized": 0.02, "stem": 0.03, "high-resolution convs": 0.01,
                         "high-resolution convs but c2": 0.02, "convs at stride 8": 0.0081},
           {0: 1.0, 1: 1.0, 2: 1.0})
    r = convert(m, None, calib=calib, bits=8, act_bits=8, runtime="onnxruntime",
                progress=False)
    stem, hires, trim, nxt = r.report.notes
    assert trim.startswith("float candidates for onnxruntime, high-resolution convs, its last "
                           "c2: kept float, output error on held-out calibration 0.01 with "
                           "them float, 0.02 without")
    assert nxt.startswith("float candidates for onnxruntime, convs at stride 8 (c3, c4): "
                          "quantized, output error on held-out calibration 0.0081 with them "
                          "float, 0.01 without")  # against the choice so far, not kept
    assert stem.startswith("float candidates for onnxruntime, stem (c1): quantized")
    assert hires.startswith("float candidates for onnxruntime, high-resolution convs (c1, c2)"
                            ": kept float, output error on held-out calibration 0.01 with "
                            "them float, 0.02 without")  # against the all-quantized variant
    why = {s.node: s.reason for s in r.report.skipped}
    assert set(why) == {"c1", "c2"}
    assert why["c1"].startswith("high-resolution conv (its output and every conv upstream at "
                                "stride 2")
    # the stem kept, the group above it measured against the stem variant and refused: the
    # stride-8 group is not tried
    _fixed(monkeypatch, {"quantized": 0.02, "stem": 0.015, "high-resolution convs": 0.013,
                         "convs at stride 8": 0.001}, {0: 1.0, 1: 1.0, 2: 1.0})
    r = convert(m, None, calib=calib, bits=8, act_bits=8, runtime="onnxruntime",
                progress=False)
    stem, hires = r.report.notes
    assert stem.startswith("float candidates for onnxruntime, stem (c1): kept float")
    assert hires.startswith("float candidates for onnxruntime, high-resolution convs (c2): "
                            "quantized, output error on held-out calibration 0.013 with them "
                            "float, 0.015 without, latency 1.000x")
    assert hires.endswith("(kept float only at most 0.8x) (or --int8-highres quantizes them "
                          "without measuring)")
    assert {s.node for s in r.report.skipped} == {"c1"}


@pytest.mark.parametrize("timed", ["measured", "even"])
def test_the_real_measurement_on_a_pyramid(timed, monkeypatch) -> None:
    """No fixed figures: the decision is the rule applied to what the run measured ("even":
    both variants timed alike, so the output errors always decide)."""
    if timed == "even":
        monkeypatch.setattr(timing, "ort_timer",
                            lambda *a, **k: lambda models, feed: [1e-3] * len(models))
    m = pyramid()
    r = convert(m, None, calib=[b.feeds(m, 24, seed=2)], bits=8, act_bits=8,
                runtime="onnxruntime", progress=False, reduce_range="off")  # any CPU alike
    note = r.report.notes[0]  # the stride-8 group follows only where this one is kept
    kept = "): kept float, " in note
    ratio = float(note.split("latency ")[1].split("x")[0])
    if "output error not measured" in note:  # over the most any gain buys from its error
        assert not kept and ratio > SLOWER
        return
    found = re.search(r"output error on [^0-9]*([0-9.e+-]+) with them float, ([0-9.e+-]+) "
                      r"without", note)  # the set's name: held out or not, by sample count
    err, base = float(found[1]), float(found[2])
    limit = Candidates("", {}, GAIN, SLOWER, slower_cap=SLOWER_CAP).allowed(err / base, base)
    assert base > 0 and np.isfinite(err)
    edge = abs(ratio - limit) <= 6e-4 or abs(err / base - GAIN) <= 1e-3  # the note rounds
    assert kept == (err <= GAIN * base and ratio <= limit) or edge  # them: either way there
    floated = {s.node for s in r.report.skipped}
    if not kept:
        assert floated == set() and len(r.report.notes) == 1
        return
    trim = r.report.notes[1]  # the group's last conv tried back on an integer kernel
    assert trim.startswith("float candidates for onnxruntime, high-resolution convs, its last "
                           "c2: ")
    back = ": quantized again, " in trim
    assert floated == ({"c1"} if back else {"c1", "c2"}) and (back or ": kept float, " in trim)


def test_a_kept_groups_last_conv_goes_back_to_integer_where_it_does_not_pay(
        monkeypatch) -> None:
    """The group (c1, c2) float is faster and more accurate than all-integer, so it is kept;
    but c2 alone float costs 1.095x the latency with c2 quantized for 0.74x its error,
    which the rule (0.8x the error at 1.05x, below an error of 0.1) does not buy: c2 goes
    back to its integer kernel, c1 stays float, and the stride-8 group is not tried (the
    boundary is found)."""
    m = pyramid()
    timed = _fixed(monkeypatch, {"quantized": 0.02, "high-resolution convs": 0.010,
                                 "high-resolution convs but c2": 0.0135,
                                 "convs at stride 8": 0.001}, {0: 1.10, 1: 0.95, 2: 1.04})
    r = convert(m, None, calib=[b.feeds(m, 24, seed=2)], bits=8, act_bits=8,
                runtime="onnxruntime", progress=False)
    onnx.checker.check_model(r.model, full_check=True)
    hires, trim = r.report.notes
    assert hires.startswith("float candidates for onnxruntime, high-resolution convs (c1, c2): "
                            "kept float")
    assert trim == ("float candidates for onnxruntime, high-resolution convs, its last c2: "
                    "quantized again, output error on held-out calibration 0.01 with them "
                    "float, 0.0135 without, latency 1.095x with them float (1 thread, batch 1: "
                    "1.04 vs 0.95 ms) (at 0.74x the error kept float only at most 1.050x the "
                    "latency)")
    assert timed == [[0, 2], [1, 2]]  # once each: neither near its limit
    assert {s.node for s in r.report.skipped} == {"c1"}
    assert optimized_ops(r.model)["QLinearConv"] == 3
    assert {row.name for row in r.report.layers} == {"c2", "c3", "c4", "fc"}


def test_a_kept_groups_last_conv_stays_float_where_integer_is_no_faster(monkeypatch) -> None:
    """c2 float buys little accuracy (0.9x the error) but costs nothing measurable (1.01x):
    quantizing it again would only lose accuracy, so it stays float and the trim ends."""
    m = pyramid()
    timed = _fixed(monkeypatch, {"quantized": 0.02, "high-resolution convs": 0.010,
                                 "high-resolution convs but c2": 0.0111,
                                 "convs at stride 8": 0.0101}, {0: 1.10, 1: 1.03, 2: 1.04})
    r = convert(m, None, calib=[b.feeds(m, 24, seed=2)], bits=8, act_bits=8,
                runtime="onnxruntime", progress=False)
    hires, trim, nxt = r.report.notes
    assert trim.startswith("float candidates for onnxruntime, high-resolution convs, its last "
                           "c2: kept float, output error on held-out calibration 0.01 with "
                           "them float, 0.0111 without, latency 1.010x with them float")
    assert trim.endswith("(kept float only at most 0.8x) (quantized again only where the "
                         "float one is over 1.02x slower)")
    assert timed[:2] == [[0, 2], [1, 2]] and nxt.startswith(
        "float candidates for onnxruntime, convs at stride 8 (c3, c4): quantized")
    assert {s.node for s in r.report.skipped} == {"c1", "c2"}


def test_a_model_that_will_not_run_on_one_sample_offers_nothing(monkeypatch) -> None:
    """The shape probe and the timing run one sample: where that fails (a batch fixed above
    1, say), no shapes (so no high-resolution candidates) and no latency (so not kept)."""
    m = pyramid()
    bad = {"x": np.zeros((1, 3, 32, 32), np.float32)}  # 3 channels where the conv wants 8
    assert floatcheck._shapes(m, ["a"], bad, Runtime()) == {}

    def broken(*a, **k):
        def run(models, feed):
            raise RuntimeError("fixed batch of 4")
        return run
    monkeypatch.setattr(timing, "ort_timer", broken)
    r = convert(m, None, calib=[b.feeds(m, 24, seed=2)], bits=8, act_bits=8,
                runtime="onnxruntime", progress=False)
    (note,) = r.report.notes
    assert ": quantized, latency not measured (RuntimeError: fixed batch of 4)" in note
    assert r.report.skipped == [] and len(r.report.layers) == 5
