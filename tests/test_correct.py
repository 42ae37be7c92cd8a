"""Bias correction after compression: it lowers the output error, folds into existing biases
(initializers or Constant nodes) or adds a bias input, and reports the layers it cannot
correct. How the exporter folds the factors: tests/export/test_values.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnx_obc import calib as calib_mod
from onnx_obc import convert, export
from onnx_obc.actrange import RangeObserver
from onnx_obc.capture import capture, capture_session
from onnx_obc.correct import correct_outputs
from onnx_obc.export import act_tensors, act_values, bias_targets
from onnx_obc.fold import fold
from onnx_obc.layers import find_layers

from . import builders as b
from onnx_obc.solve import HostSolution

from .export.helpers import _host, mixed, paddle_convs, solutions, tensors
from .cpu import NEEDS_VNNI

MODELS = Path(__file__).resolve().parents[1] / "models"


def _err(res, name="compressed"):
    return max(res.report.fidelity["eval"][name].rel_error.values())


def test_correction_lowers_the_output_error_on_held_out_data():
    res = convert(MODELS / "digits_vit.onnx", None, sparsity=0.7, allocate="uniform",
                  correct=True,
                  calib=MODELS / "digits_vit.calib.npz", eval_data=MODELS / "digits_vit.eval.npz",
                  progress=False, device="cpu")
    assert _err(res, "compressed") < 0.9 * _err(res, "uncorrected")
    shifts = res.report.correction["mean_abs_shift_per_level"]
    assert len(shifts) >= 2 and all(s >= 0 for s in shifts)


def test_conv_without_bias_gets_one_and_matmul_uses_its_add():
    cnn = onnx.load(MODELS / "digits_cnn.onnx")  # the stem Conv has no bias input
    layers, _ = find_layers(cnn)
    targets, skipped = bias_targets(cnn, layers)
    assert set(targets) == {L.name for L in layers} and not skipped
    vit = onnx.load(MODELS / "digits_vit.onnx")
    layers, _ = find_layers(vit)
    targets, _ = bias_targets(vit, layers)
    assert targets["attn.q"].via_add  # MatMul -> Add(bias)
    res = convert(cnn, None, sparsity=0.5, correct=True, progress=False, device="cpu",
                  calib=MODELS / "digits_cnn.calib.npz")
    stem = next(n for n in res.model.graph.node if n.name == "stem")
    assert len(stem.input) == 3  # a bias input was added
    names = [n.op_type for n in res.model.graph.node]
    folded = fold(cnn)[0]  # the run's graph: its BatchNormalization folded into a Conv
    assert names == [n.op_type for n in folded.graph.node]  # no node added or removed


def test_matmul_without_bias_is_reported():
    model = b.mlp((8, 16, 4))
    feed = b.feeds(model, 40)
    res = convert(model, None, sparsity=0.5, correct=True, calib=[feed], progress=False,
                  device="cpu")
    assert any("no bias to fold" in w for w in res.report.warnings)


def test_scale_correction_lowers_the_error_beyond_the_mean_correction():
    kw = dict(sparsity=0.7, calib=MODELS / "digits_cnn.calib.npz", progress=False,
              device="cpu", eval_data=MODELS / "digits_cnn.eval.npz")
    mean = convert(MODELS / "digits_cnn.onnx", None, correct=True, **kw)
    scaled = convert(MODELS / "digits_cnn.onnx", None, correct_scale=True, **kw)
    assert _err(scaled) < 0.8 * _err(mean) < _err(scaled, "uncorrected")
    s = scaled.report.correction["scale"]
    assert s["layers"] == 6 and 0 < s["mean_abs_deviation"] < s["max_abs_deviation"]


def test_scale_correction_folds_into_the_qdq_scales_and_keeps_the_codes():
    kw = dict(bits=4, nm=(2, 4), calib=MODELS / "digits_vit.calib.npz", progress=False,
              device="cpu", eval_data=MODELS / "digits_vit.eval.npz")
    mean = convert(MODELS / "digits_vit.onnx", None, correct=True, **kw)
    scaled = convert(MODELS / "digits_vit.onnx", None, correct_scale=True, **kw)
    a = {t.name: numpy_helper.to_array(t) for t in mean.model.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in scaled.model.graph.initializer}
    for L in scaled.report.layers:
        np.testing.assert_array_equal(a[f"{L.weight}_quantized"], b[f"{L.weight}_quantized"])
        ratio = b[f"{L.weight}_scale"] / a[f"{L.weight}_scale"]
        assert ratio.shape == (L.rows,) and not np.allclose(ratio, 1.0)
    assert _err(scaled) < _err(mean) < _err(mean, "uncorrected")


def test_shared_weight_gets_the_mean_but_no_scale():
    model = b.shared_weight()
    res = convert(model, None, sparsity=0.5, correct_scale=True, calib=[b.feeds(model, 40)],
                  progress=False, device="cpu")
    assert any("no scale correction (its weight is read by 2 nodes)" in w
               for w in res.report.warnings)


def test_paddle_constant_biases_take_the_correction_in_place():
    """paddle2onnx: every Conv has x, w, b with weights and biases as Constant nodes. The
    correction used to become a 4th Conv input, which onnxruntime refuses."""
    model = paddle_convs()
    res = convert(model, None, sparsity=0.5, correct=True, calib=[b.feeds(model, 40)],
                  progress=False, device="cpu")
    assert [list(n.input) for n in res.model.graph.node] == [
        list(n.input) for n in model.graph.node]
    assert len(res.model.graph.initializer) == 0
    before, after = tensors(model), tensors(res.model)
    for bias in ("b1", "b2"):
        assert not np.allclose(after[bias], before[bias])
    sess = ort.InferenceSession(res.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    sess.run(None, b.feeds(model, 2))
    assert not any("correction skipped" in w for w in res.report.warnings)


def test_conv_without_bias_gets_a_bias_input():
    model = b.conv(bias=False)
    res = convert(model, None, sparsity=0.5, correct=True, calib=[b.feeds(model, 40)],
                  progress=False, device="cpu")
    (conv,) = res.model.graph.node
    assert list(conv.input) == ["x", "W", "conv_bias_correction"]
    assert tensors(res.model)["conv_bias_correction"].shape == (6,)
    ort.InferenceSession(res.model.SerializeToString(),
                         providers=["CPUExecutionProvider"]).run(None, b.feeds(model, 2))


def test_correct_outputs_returns_per_node_factors_that_the_exporter_folds():
    model = mixed()
    layers, _ = find_layers(model)
    sols = solutions(model, layers)
    data = calib_mod.DataSet(b.feeds(model, 64), "feeds")
    corr = correct_outputs(model, layers, sols, data, 32, ["CPUExecutionProvider"])
    assert list(corr.fixes) == ["conv1", "conv2", "gemm", "mm"]  # topological levels
    assert [f.shift.shape for f in corr.fixes.values()] == [(3,), (4,), (6,), (5,)]
    assert all(f.scale is None for f in corr.fixes.values()) and not corr.skipped
    assert len(corr.shifts) == 4 and corr.summary() == {
        "mean_abs_shift_per_level": list(corr.shifts), "measured": "one pass in pieces",
        "samples": 64}
    with pytest.raises(dataclasses.FrozenInstanceError):
        corr.fixes = {}
    scaled = correct_outputs(model, layers, sols, data, 32, ["CPUExecutionProvider"],
                             scale=True)
    assert all(f.scale.shape == f.shift.shape for f in scaled.fixes.values())
    assert scaled.summary()["scale"]["layers"] == 4

    def output(m):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": data.arrays["x"]})[0]

    ref = output(model)
    err = {k: float(np.abs((output(m) - ref).mean(0)).mean()) for k, m in (
        ("plain", export.build(model, layers, sols)),
        ("fixed", export.build(model, layers, sols, corrections=corr.fixes)))}
    assert err["fixed"] < 1e-4 < err["plain"]  # the output means match the dense model's


def _gemm_relu_gemm(seed: int = 0) -> onnx.ModelProto:
    """x [N, 8] --fc1(W1 [16, 8], b1)--> Relu --fc2(W2 [4, 16], b2)--> y [N, 4]."""
    nodes = [onnx.helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
             onnx.helper.make_node("Relu", ["h"], ["r"], name="relu"),
             onnx.helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], name="fc2", transB=1)]
    inits = [b.weight("W1", (16, 8), seed), b.weight("b1", (16,), seed + 1),
             b.weight("W2", (4, 16), seed + 2), b.weight("b2", (4,), seed + 3)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 8])], [b.vi("y", [b.BATCH, 4])], inits)


@NEEDS_VNNI
def test_correction_with_activation_quantization_in_the_loop_removes_its_mean_shift():
    """The input's 8-bit range clips its long tail (lognormal, range cut at its 90th
    percentile): a known shift of every layer output's mean that only the deployed
    (activation Q/DQ) model shows. Measured with the Q/DQ in the loop the correction removes
    it, in the int32 biases of the onnxruntime graph (same nodes, integer kernels); measured
    on the float model it cannot."""
    model = _gemm_relu_gemm()
    layers, _ = find_layers(model)
    w = tensors(model)
    sols = {L.weight: HostSolution(*[_host(L, L.to_matrix(w[L.weight]).astype(np.float64), 8)]
                                   * 2) for L in layers}  # RTN int8 weights, nothing pruned
    rng = np.random.default_rng(0)
    x = {k: rng.lognormal(0.0, 1.0, (4096, 8)).astype(np.float32) for k in ("fit", "test")}
    data = calib_mod.DataSet({"x": x["fit"]}, "feeds")
    names = act_tensors(model, layers, "onnxruntime")
    obs = {n: RangeObserver() for n in names}
    for _, acts in capture(capture_session(model, names, ["CPUExecutionProvider"]), names,
                           data.batches(64)):
        for n, o in obs.items():
            o.add(acts[n])
    values = act_values(obs, "onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values["x"] = (0.0, float(np.quantile(x["fit"], 0.9)))  # clip the input's tail

    def built(fixes=None):
        return export.build(model, layers, sols, corrections=fixes, act_scales=values,
                            target="onnxruntime")

    def shift(m):
        y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]
                                 ).run(None, {"x": x["test"]})[0]
        return float(np.abs((y - sess.run(None, {"x": x["test"]})[0]).mean(0)).mean())

    run = ["CPUExecutionProvider"]
    loop = correct_outputs(model, layers, sols, data, 512, run, act_values=values,
                           target="onnxruntime")
    flt = correct_outputs(model, layers, sols, data, 512, run)
    before, after, floated = shift(built()), shift(built(loop.fixes)), shift(built(flt.fixes))
    assert after < 0.1 * before and floated > 0.5 * before
    fixed = built(loop.fixes)
    assert [n.op_type for n in fixed.graph.node] == [n.op_type for n in built().graph.node]
    biases = [t for t in fixed.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    assert biases  # the correction went into the int32 bias codes


def test_w8a8_runs_correct_on_the_deployed_model(monkeypatch):
    """convert(correct=True, act_bits=8) hands the run's activation ranges and target to the
    correction (the deployed model in the loop); every layer still runs on integer kernels."""
    import sys

    import onnx_obc.pipeline as pipeline
    import onnx_obc.segments as S

    seen = {}

    def spy(*args, **kw):
        seen.update(kw)
        return correct_outputs(*args, **kw)

    monkeypatch.setattr(pipeline, "correct_outputs", spy)
    model = _gemm_relu_gemm()
    feed = {"x": np.random.default_rng(1).lognormal(0.0, 1.0, (128, 8)).astype(np.float32)}
    assert S.resident_bytes() > 100 << 20 or not sys.platform.startswith("linux")  # /proc
    monkeypatch.setattr(S, "resident_bytes", lambda: 300 << 20)
    res = convert(model, None, bits=8, act_bits=8, runtime="onnxruntime", correct=True,
                  calib=[feed], progress=False, device="cpu", compare_baseline=True)
    assert seen["target"] == "onnxruntime" and set(seen["act_values"]) >= {"x"}
    # run.memory_budget_mb less what the process holds bounds the kept tensors (3/4 of it)
    assert seen["budget"] == ((2048 - 300) << 20) * 3 // 4
    assert res.report.correction["measured"] == "one pass in pieces"
    assert res.report.fusion["integer"] == res.report.fusion["layers"] == 2
    assert "uncorrected" in next(iter(res.report.fidelity.values()))


def test_output_means_on_the_pruned_graph_equal_the_whole_graph_s(monkeypatch):
    """Each level's means come from a session of only the nodes its outputs depend on (the
    correction's passes were most of a W8A8 `--correct` run); the same tensors as running
    the whole model."""
    import onnx_obc.correct as C

    model = onnx.load(MODELS / "digits_cnn.onnx")
    layers = find_layers(model)[0]
    sites, _ = bias_targets(model, layers)
    outputs = {k: s.output for k, s in list(sites.items())[:2]}  # the two first layers
    data = calib_mod.DataSet({"input": np.load(MODELS / "digits_cnn.calib.npz")["input"][:64]},
                           "calib")
    pruned = C._output_means(model, outputs, data, 16, ["CPUExecutionProvider"])
    full = capture_session

    def unpruned(m, names, providers, prune=False):
        return full(m, names, providers)

    monkeypatch.setattr(C, "capture_session", unpruned)
    whole = C._output_means(model, outputs, data, 16, ["CPUExecutionProvider"])
    assert pruned.keys() == whole.keys() == outputs.keys()
    for k in outputs:
        np.testing.assert_allclose(pruned[k], whole[k], rtol=1e-6, atol=1e-7)


def _observed(model, layers, data, target="onnxruntime"):
    names = act_tensors(model, layers, target)
    obs = {n: RangeObserver() for n in names}
    for _, acts in capture(capture_session(model, names, ["CPUExecutionProvider"]), names,
                           data.batches(64)):
        for n, o in obs.items():
            o.add(acts[n])
    return act_values(obs, target)


@pytest.mark.parametrize("loop", ["float", "onnxruntime W8A8"])
def test_one_pass_in_pieces_gives_the_level_by_level_corrections(loop, monkeypatch, tmp_path):
    """The mean correction runs the model once, piece by piece, adding each shift to the kept
    output instead of rebuilding the model with the corrected bias and running it again from
    the inputs per level: the same corrections (up to the int32 coding of the biases the
    level passes read, with the activation Q/DQ in the loop). Over the memory budget the
    kept tensors go to the temporary folder (the same corrections, bit for bit, and no file
    left); with no room there either, the level passes, and the summary says which."""
    import tempfile

    import onnx_obc.segments as S

    model = mixed()
    layers, _ = find_layers(model)
    data = calib_mod.DataSet(b.feeds(model, 96), "feeds")
    act = loop != "float"
    sols = solutions(model, layers, bits=8 if act else None)
    kw = dict(act_values=_observed(model, layers, data), target="onnxruntime") if act else {}
    run = ["CPUExecutionProvider"]
    fast = correct_outputs(model, layers, sols, data, 32, run, **kw)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(S, "_in_memory", lambda path: False)  # a tmpfs /tmp counts as disk
    disk = correct_outputs(model, layers, sols, data, 32, run, budget=0, **kw)
    assert disk.how == "one pass in pieces" and list(tmp_path.iterdir()) == []
    for k, f in fast.fixes.items():
        np.testing.assert_array_equal(f.shift, disk.fixes[k].shift)
    monkeypatch.setattr(S, "SPARE", 1 << 62)  # no room on any disk
    slow = correct_outputs(model, layers, sols, data, 32, run, budget=0, **kw)
    assert fast.how == "one pass in pieces" and slow.how.startswith("level by level (")
    assert "would not fit in" in slow.how and list(tmp_path.iterdir()) == []
    assert list(fast.fixes) == list(slow.fixes) == ["conv1", "conv2", "gemm", "mm"]
    for k, f in fast.fixes.items():
        ref = slow.fixes[k].shift
        assert np.abs(f.shift).max() > 1e-3  # a real shift, not a vacuous match
        np.testing.assert_allclose(f.shift, ref, rtol=0, atol=(2e-3 if act else 1e-5)
                                   * np.abs(ref).max())
    np.testing.assert_allclose(fast.shifts, slow.shifts, rtol=2e-3 if act else 1e-5)


def _lognormal_w8a8(**kw):
    model = _gemm_relu_gemm()
    feed = {"x": np.random.default_rng(1).lognormal(0.0, 1.0, (512, 8)).astype(np.float32)}
    return convert(model, None, bits=8, act_bits=8, calib=[feed], progress=False,
                   device="cpu", **kw)


@NEEDS_VNNI
def test_w8a8_on_onnxruntime_corrects_by_default_and_keeps_what_lowers_the_error():
    """Default (correct.mean None): W8A8 on the onnxruntime target is corrected, the
    uncorrected model is verified beside it and the correction kept (digits_vit: the
    held-out error falls by a third with its patch embedding quantized: --int8-stem
    --int8-highres; with it float by default there is less for it to correct), said so in
    the report;
    --no-correct and the tensorrt target run none."""
    res = convert(MODELS / "digits_vit.onnx", None, bits=8, act_bits=8, runtime="onnxruntime",
                  calib=MODELS / "digits_vit.calib.npz", progress=False, device="cpu",
                  float_stem=False, float_highres=False)
    line = res.report.correction["decision"]
    assert line.startswith("bias correction (automatic") and ": kept," in line
    assert line in res.report.table()
    held = next(iter(res.report.fidelity.values()))
    err = {k: np.mean(list(held[k].rel_error.values())) for k in ("compressed", "uncorrected")}
    assert err["compressed"] <= 0.98 * err["uncorrected"]
    for kw in (dict(runtime="onnxruntime", correct=False), dict(runtime="tensorrt")):
        off = _lognormal_w8a8(**kw)
        assert off.report.correction == {} and "uncorrected" not in next(iter(
            off.report.fidelity.values()))


def test_an_automatic_correction_that_does_not_lower_the_error_is_not_written(monkeypatch):
    """Shifts of zero (a correction that changes nothing): not 2% lower, so the written model
    is the uncorrected one, the measures are named for what they are, and the report says so;
    asked for with --correct, the same correction is written."""
    import onnx_obc.pipeline as pipeline

    def zero(*args, **kw):
        res = correct_outputs(*args, **kw)
        return dataclasses.replace(res, fixes={k: dataclasses.replace(f, shift=0 * f.shift)
                                               for k, f in res.fixes.items()})

    monkeypatch.setattr(pipeline, "correct_outputs", zero)
    res = _lognormal_w8a8(runtime="onnxruntime")
    assert ": not kept," in res.report.correction["decision"]
    held = next(iter(res.report.fidelity.values()))
    assert {"compressed", "corrected (not kept)"} <= set(held) and "uncorrected" not in held
    forced = _lognormal_w8a8(runtime="onnxruntime", correct=True)
    assert "decision" not in forced.report.correction
    assert "uncorrected" not in next(iter(forced.report.fidelity.values()))  # not compared


def test_the_dense_means_come_from_the_capture_without_a_pass_of_their_own(monkeypatch):
    """A one-shot W8A8 run takes the dense outputs' means in its capture: the correction runs
    no reference pass (`_output_means` not called) and finds the same shifts as with it."""
    import onnx_obc.correct as C
    import onnx_obc.pipeline as pipeline

    calls = []
    real = C._output_means

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(C, "_output_means", counted)
    run = dict(bits=8, act_bits=8, runtime="onnxruntime", calib=MODELS / "digits_vit.calib.npz",
               progress=False, device="cpu")
    taken = convert(MODELS / "digits_vit.onnx", None, **run)
    assert calls == [] and taken.report.correction["measured"] == "one pass in pieces"
    assert taken.report.correction["samples"] == 205  # 256, 51 held out (tests' holdout)
    monkeypatch.setattr(pipeline, "reference_means", lambda *a: None)
    passed = convert(MODELS / "digits_vit.onnx", None, **run)
    assert calls == [1]
    a, b_ = (r.report.correction["mean_abs_shift_per_level"] for r in (taken, passed))
    assert min(a) > 1e-4  # real shifts
    np.testing.assert_allclose(a, b_, rtol=1e-4)


def test_a_subset_correction_pairs_its_dense_means_with_its_own_samples(monkeypatch):
    """--correct-samples N: the correction measures the seeded N (calib.plan), its dense
    means from one pass over those samples (not the capture's over all of them), the same
    shifts as correct_outputs given that subset alone."""
    import onnx_obc.correct as C
    import onnx_obc.pipeline as pipeline

    seen, calls, real = [], [], C._output_means
    monkeypatch.setattr(C, "_output_means", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    monkeypatch.setattr(pipeline, "correct_outputs",
                        lambda *a, **k: seen.append((a, k)) or correct_outputs(*a, **k))
    res = convert(MODELS / "digits_vit.onnx", None, bits=8, act_bits=8, runtime="onnxruntime",
                  calib=MODELS / "digits_vit.calib.npz", progress=False, device="cpu",
                  correct_samples=128)
    assert res.report.correction["samples"] == 128
    ((args, kw),) = seen
    assert kw["means"] is None and args[3].n == 128 and calls == [args[3]]  # its own pass
    again = correct_outputs(*args, **{**kw, "means": None})
    np.testing.assert_allclose(res.report.correction["mean_abs_shift_per_level"],
                               again.shifts, rtol=1e-6)


def test_the_decision_on_several_outputs_is_the_mean_and_says_so():
    """The automatic decision weighs each model output alike (the mean of their errors)
    while the fidelity table shows the largest: the line says which it used. A correction
    that lowers one output's error a lot and raises the other's is kept or dropped by the
    mean, not by either alone."""
    from onnx_obc.correct import CorrectionResult, auto_decision
    from onnx_obc.fidelity import Fidelity

    fixes = CorrectionResult({}, (), (), "one pass", samples=8)
    two = {"calibration": {"uncorrected": Fidelity(8, {"a": 0.10, "b": 0.50}),
                           "compressed": Fidelity(8, {"a": 0.02, "b": 0.52})}}
    keep, res = auto_decision(fixes, two, "calibration")
    assert keep and "(mean of 2 outputs) 0.3 without, 0.27 with it" in res.decision
    two["calibration"]["compressed"] = Fidelity(8, {"a": 0.09, "b": 0.60})
    keep, res = auto_decision(fixes, two, "calibration")
    assert not keep and "not kept" in res.decision
    one = {"calibration": {"uncorrected": Fidelity(8, {"y": 0.10}),
                           "compressed": Fidelity(8, {"y": 0.05})}}
    keep, res = auto_decision(fixes, one, "calibration")
    assert keep and "output error on calibration 0.1 without, 0.05 with it" in res.decision


def test_skipped_nodes_are_one_warning_line_per_reason():
    """ALBERT's 12 bias-less MatMuls were 12 warning lines; one per reason now."""
    from onnx_obc.correct import CorrectionResult

    r = CorrectionResult({}, skipped=("a: no bias", "b: no bias", "c: no bias", "d: no bias",
                                      "e: 3-D weight"))
    assert r.skipped_lines() == ["correction skipped for a, b, c and 1 more: no bias",
                                 "correction skipped for e: 3-D weight"]
