"""calib/tokens.py: a padded sequence model's token mask found (or refused with a reason),
and the Hessians, activation ranges and smoothing statistics taken from the token
positions only, while the outputs the verification compares keep every position."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_obc import convert
from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet, plan
from onnx_obc.calib.tokens import select
from onnx_obc.collect import collect
from onnx_obc.config import RunOptions
from onnx_obc.errors import ConfigError
from onnx_obc.layers import find_layers
from onnx_obc.smooth import _halves

from .. import builders as b

T, C, H, O = 12, 16, 24, 8


def padded_model(seed: int = 0, mask: str = "attention_mask") -> onnx.ModelProto:
    """x [N, T, C] + b0 -> MatMul -> Relu -> MatMul, times the mask (no output reads the
    padding: a per-token head scored on the tokens)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("b0", 0.1 * rng.standard_normal(C)), ("W1", rng.standard_normal((C, H)) / 4),
        ("W2", rng.standard_normal((H, O)) / 5))]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis2"))
    nodes = [helper.make_node("Add", ["x", "b0"], ["h0"]),
             helper.make_node("MatMul", ["h0", "W1"], ["h1"], name="fc1"),
             helper.make_node("Relu", ["h1"], ["a"]),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="fc2"),
             helper.make_node("Cast", [mask], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
             helper.make_node("Mul", ["y", "m3"], ["out"])]
    return b.make(nodes, [b.vi("x", ["N", T, C]), b.vi(mask, ["N", T], TensorProto.INT64)],
                  [b.vi("out", ["N", T, O])], inits)


def padded_data(n: int, seed: int, pad_scale: float = 8.0, mask: str = "attention_mask"):
    """Correlated token vectors (rank 4 plus noise) on the first 3..T positions; the rest
    near copies of one large padding vector (a BERT's [PAD] states)."""
    rng = np.random.default_rng(seed)
    A = np.random.default_rng(99).standard_normal((4, C))
    pad = pad_scale * np.random.default_rng(98).standard_normal(C)
    x = rng.standard_normal((n, T, 4)) @ A + 0.1 * rng.standard_normal((n, T, C))
    lengths = rng.integers(3, T + 1, size=n)
    keep = np.arange(T)[None, :] < lengths[:, None]
    x[~keep] = pad + 0.01 * rng.standard_normal((int((~keep).sum()), C))
    return {"x": x.astype(np.float32), mask: keep.astype(np.int64)}


def test_auto_finds_the_mask_and_states_its_padding():
    data = padded_data(64, 0)
    p = plan(padded_model(), [data], None, RunOptions())
    info = p.info["token_mask"]
    assert p.token_mask == info["input"] == "attention_mask"
    first = next(iter(p.fit.batches(32)))[1]["attention_mask"]  # the fitted samples'
    assert info["padding"] == pytest.approx(1 - first.mean(), abs=1e-4) and first.mean() < 0.8
    assert "padding" in info["summary"] and "--token-mask none" in info["summary"]
    assert plan(padded_model(), [data], None, RunOptions(token_mask="none")).token_mask is None
    assert plan(b.mlp(), [b.feeds(b.mlp(), 16)], None, RunOptions()).token_mask is None


def test_a_named_input_that_is_no_mask_is_refused_before_any_work():
    data = padded_data(16, 0)
    with pytest.raises(ConfigError, match="no input of that name.*attention_mask"):
        plan(padded_model(), [data], None, RunOptions(token_mask="mask"))
    with pytest.raises(ConfigError, match="rank 3"):
        plan(padded_model(), [data], None, RunOptions(token_mask="x"))
    bad = dict(data, attention_mask=data["attention_mask"] * 2)  # not 0/1
    with pytest.raises(ConfigError, match="not all 0 or 1"):
        plan(padded_model(), [bad], None, RunOptions(token_mask="attention_mask"))
    assert plan(padded_model(), [bad], None, RunOptions()).token_mask is None  # auto: not one
    with pytest.raises(ConfigError, match="token_mask"):
        RunOptions(token_mask="")


def test_select_cuts_sequence_tensors_to_the_tokens():
    keep = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    y = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    flat = y.reshape(8, 3)
    other = np.ones((2, 5, 3), np.float32)
    out = select({"m": keep, "y": y, "f": flat, "o": other}, "m", ["y", "f", "o"], ["f"])
    np.testing.assert_array_equal(out["y"], y[keep.astype(bool)][None])
    np.testing.assert_array_equal(out["f"], flat[keep.reshape(-1).astype(bool)])
    assert out["o"] is other and out["y"].shape == (1, 3, 3)
    first = {"m": keep, "t": y.transpose(1, 0, 2)}  # [tokens, batch, C]: sequence-first
    np.testing.assert_array_equal(select(first, "m", ["t"])["t"][0],
                                  y.transpose(1, 0, 2)[keep.T.astype(bool)])
    ones = {"m": np.ones((2, 4)), "y": y}
    assert select(ones, "m", ["y"]) is ones  # nothing to leave out
    zeros = {"m": np.zeros((2, 4)), "y": y}
    assert select(zeros, "m", ["y"]) is zeros  # padding only: left whole
    assert select({"y": y}, None, ["y"])["y"] is y


def test_hessians_and_ranges_come_from_the_token_positions_only():
    """Exact: the first layer's Hessian sum is that of the token rows of h0 = x + b0, its
    range their extremes; without the mask, of every row."""
    model = padded_model()
    data = padded_data(24, 1)
    layers, _ = find_layers(model)
    fit = DataSet(data, "calib")
    b0 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b0"))
    h0 = data["x"] + b0
    keep = data["attention_mask"].astype(bool)
    for mask, rows in ((None, h0.reshape(-1, C)), ("attention_mask", h0[keep])):
        accs, obs = collect(model, layers, fit, 8, get_backend("cpu"), 256, False,
                            observe=["h0"], token_mask=mask)
        np.testing.assert_allclose(accs["W1"].total[0], rows.T.astype(np.float64) @ rows,
                                   rtol=1e-5, atol=1e-4)
        assert accs["W1"].columns == len(rows)
        assert obs["h0"].hi == pytest.approx(max(0.0, float(rows.max())), rel=1e-6)
        assert obs["h0"].lo == pytest.approx(min(0.0, float(rows.min())), rel=1e-6)


def test_smoothing_statistics_count_the_tokens_only():
    y = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    keep = np.array([[True, True, False, False], [True, False, False, False]])
    parts = dict(_halves(y, 2, 0, keep))
    np.testing.assert_array_equal(parts[0], y[0, :2])
    np.testing.assert_array_equal(parts[1], y[1, :1])
    assert dict(_halves(y, 2, 0))[0].shape == (4, 3)  # no mask: every position


def _held_out_error(path, data) -> float:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    d = ort.InferenceSession(padded_model().SerializeToString(),
                             providers=["CPUExecutionProvider"])
    y, y0 = s.run(["out"], data)[0], d.run(["out"], data)[0]
    return float(np.linalg.norm(y - y0) / np.linalg.norm(y0))


def test_w4_with_the_mask_beats_the_padded_hessians_on_held_out_sequences(tmp_path):
    """Padding that no output reads (about 40% of the positions, 20x the tokens' scale)
    takes the unmasked Hessians' energy and their relative dampening; with the mask the
    layers fit the tokens (0.64-0.71x the error over four seeds)."""
    calib, held = padded_data(96, 2, pad_scale=20.0), padded_data(64, 3, pad_scale=20.0)
    errs = {}
    for mask in ("auto", "none"):
        out = tmp_path / f"{mask}.onnx"
        convert(padded_model(), out, calib=[calib], bits=4, method="gptq", token_mask=mask,
                progress=False, compare_baseline=False)
        errs[mask] = _held_out_error(out, held)
    assert errs["auto"] < 0.8 * errs["none"], errs


def test_w8a8_activation_grid_spans_the_tokens_not_the_padding(tmp_path):
    """min-max ranges (the default mse search may clip such padding too): the int8 grid of
    the first layer's input from the tokens' extremes, not the padding's (20x)."""
    calib = padded_data(64, 4, pad_scale=20.0)
    scales = {}
    for mask in ("auto", "none"):
        res = convert(padded_model(), tmp_path / f"{mask}.onnx", calib=[calib], bits=8,
                      act_bits=8, token_mask=mask, act_calibration="minmax", progress=False)
        m = res.model
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        q = next(n for n in m.graph.node
                 if n.op_type == "QuantizeLinear" and n.input[0] == "h0")
        scales[mask] = float(inits[q.input[1]])
        if mask == "auto":
            assert any("token mask" in line for line in res.report.decisions())
    assert scales["auto"] < 0.5 * scales["none"], scales


def test_channel_pruning_takes_its_consumer_hessians_from_the_tokens():
    """fc1 -> Relu -> fc2 is a channel site; fc2's Hessian (its input a, [N, T, H]) from the
    token positions only, as the capture's."""
    from onnx_obc.channels.stage import plan_channels

    model = padded_model()
    data = padded_data(16, 5)
    fit = DataSet(data, "calib")
    layers, _ = find_layers(model)
    cols = {}
    for mask in (None, "attention_mask"):
        p = plan_channels(model, layers, fit, 8, get_backend("cpu"), 0.01, 256,
                          fraction=0.3, token_mask=mask)
        assert p.sites, "fc1 -> Relu -> fc2 should be a channel site"
        cols[mask] = p.hessians["W2"].columns
    assert cols[None] == 16 * T
    assert cols["attention_mask"] == int(data["attention_mask"].sum())


def test_the_verification_scores_per_token_outputs_on_the_tokens(tmp_path):
    """A model that outputs every position ([N, T, O], as a BERT's last_hidden_state): its
    fidelity is the relative error over the token positions, which the calibration fitted
    (exact against onnxruntime on the written file); with --token-mask none over all."""
    model = padded_model()
    out = next(n for n in model.graph.node if n.output[0] == "out")
    out.input[:] = ["y", "y"]  # y + y: the padding's outputs are output too
    out.op_type = "Add"
    onnx.checker.check_model(model)
    ev = padded_data(32, 6)
    np.savez(tmp_path / "eval.npz", **ev)
    keep = ev["attention_mask"].astype(bool)
    for mask in ("auto", "none"):
        res = convert(model, tmp_path / f"{mask}.onnx", calib=[padded_data(64, 7)], bits=4,
                      method="gptq", token_mask=mask, eval_data=tmp_path / "eval.npz",
                      progress=False, compare_baseline=False)
        run = {k: ort.InferenceSession(m.SerializeToString(), providers=[
            "CPUExecutionProvider"]).run(["out"], ev)[0] for k, m in (
            ("dense", model), ("compressed", res.model))}
        sel = keep if mask == "auto" else np.ones_like(keep)
        want = np.linalg.norm(run["compressed"][sel] - run["dense"][sel]) / np.linalg.norm(
            run["dense"][sel])
        got = res.report.fidelity["eval"]["compressed"].rel_error["out"]
        assert got == pytest.approx(float(want), rel=1e-4)


def test_the_correction_measures_channels_last_outputs_on_the_tokens():
    """Exact: the mean correction's per-channel means (and the scale correction's moments)
    of a MatMul output are those of its token rows; the capture's reference means alike."""
    from onnx_obc import correct as C
    from onnx_obc.collect import ChannelMean
    from onnx_obc.corrstats import paired_stats

    model = padded_model()
    data = padded_data(24, 8)
    fit = DataSet(data, "calib")
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h1 = (data["x"] + w["b0"]) @ w["W1"]
    keep = data["attention_mask"].astype(bool)
    cpu = ["CPUExecutionProvider"]
    for mask, rows in ((None, h1.reshape(-1, H)), ("attention_mask", h1[keep])):
        got = C._output_means(model, {"fc1": "h1"}, fit, 8, cpu, mask)["fc1"]
        np.testing.assert_allclose(got, rows.mean(0), rtol=1e-5, atol=1e-6)
        ey, ez, _ = paired_stats(model, model, {"fc1": "h1"}, fit, 8, cpu, mask)["fc1"]
        np.testing.assert_allclose(ey, rows.mean(0), rtol=1e-5, atol=1e-6)
        means = {"h1": ChannelMean(-1)}
        collect(model, find_layers(model)[0], fit, 8, get_backend("cpu"), 256, False,
                means=means, token_mask=mask)
        np.testing.assert_allclose(means["h1"].mean(), rows.mean(0), rtol=1e-5, atol=1e-6)


def test_a_subsampled_capture_keeps_its_column_floor_on_the_tokens(monkeypatch):
    """The 8-bit tier's subgrid step (hessian.position_step) from one sample's positions and
    the samples' token share (the first batch's; here every sample holds 6 tokens of 12):
    at least 4 columns per input remain, 72 (a step from the cut tensor, a batch's tokens
    taken as one sample's, kept 36)."""
    import onnx_obc.hessian as hs

    monkeypatch.setattr(hs, "SUBSAMPLE_MIN", 0)
    model = padded_model()
    data = padded_data(24, 9)
    data["attention_mask"] = np.repeat((np.arange(T) < 6)[None], 24, 0).astype(np.int64)
    accs, _ = collect(model, find_layers(model)[0], DataSet(data, "calib"), 8,
                      get_backend("cpu"), 256, False, subsample=4, token_mask="attention_mask")
    tokens = int(data["attention_mask"].sum())
    assert 4 * C <= accs["W1"].columns < tokens  # subsampled, above the floor


def test_the_dps_output_score_reads_the_token_positions():
    """--score output: a per-token output's error over the token positions only (exact
    against numpy on onnxruntime's outputs); without the mask over every position."""
    from onnx_obc.allocation.score import OutputScore

    model = padded_model()
    out = next(n for n in model.graph.node if n.output[0] == "out")
    out.input[:], out.op_type = ["y", "y"], "Add"  # the padding's outputs are output too
    data = padded_data(16, 10)
    fit = DataSet(data, "calib")
    L = next(x for x in find_layers(model)[0] if x.weight == "W2")
    W = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W2"))
    cand = L.to_matrix(W) * 1.1  # a candidate: every weight 10% larger
    cpu = ["CPUExecutionProvider"]
    keep = data["attention_mask"].astype(bool)
    for mask, sel in ((None, np.ones_like(keep)), ("attention_mask", keep)):
        s = OutputScore.measure(model, fit, 8, cpu, token_mask=mask)
        moved = s.candidate(L, cand)
        dense, y = (ort.InferenceSession(m.SerializeToString(), providers=cpu).run(
            ["out"], data)[0] for m in (model, moved))
        want = np.square(y[sel] - dense[sel]).sum() / np.square(dense[sel]).sum()
        assert s.error(moved) == pytest.approx(float(want), rel=1e-4)


def test_the_channel_stages_output_probes_read_the_token_positions():
    """--channel-objective output: the probes' outputs (channels/sensitivity._run) on the
    token positions only; the plan carries the mask from the run."""
    from onnx_obc.channels import sensitivity
    from onnx_obc.channels.stage import plan_channels

    model = padded_model()
    out = next(n for n in model.graph.node if n.output[0] == "out")
    out.input[:], out.op_type = ["y", "y"], "Add"  # the padding's outputs are output too
    data = padded_data(8, 11)
    keep = data["attention_mask"].astype(bool)
    full = ort.InferenceSession(model.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(["out"], data)[0]
    [got] = sensitivity._run(model, [data], None, "attention_mask")
    np.testing.assert_allclose(got, full[keep].ravel(), rtol=1e-6)
    [every] = sensitivity._run(model, [data])
    assert every.size == full.size
    p = plan_channels(model, find_layers(model)[0], DataSet(data, "calib"), 8,
                      get_backend("cpu"), 0.01, 256, token_mask="attention_mask")
    assert p.token_mask == "attention_mask"
