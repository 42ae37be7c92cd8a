"""calib.layout: the sample axis of each input read from the model's symbolic dimensions,
inputs fed whole (LSTM states), overrides, and shape errors naming input, sample and shape."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.calib import DataSet, Layout, input_specs, load_data, plan, synthesize
from onnx_obc.calib.layout import InputSpec, parse_axes
from onnx_obc.config import RunOptions
from onnx_obc.errors import CalibrationError, ConfigError

from . import models
from .. import builders as b

F = np.dtype(np.float32)


def axes(*shapes, overrides=None) -> list[int | None]:
    specs = [InputSpec(f"i{k}", F, tuple(s)) for k, s in enumerate(shapes)]
    lay = Layout.of(specs, overrides)
    return [lay.axis[s.name] for s in specs]


def test_sample_axis_from_symbolic_dimensions():
    assert axes(["N", 3, "H", "W"]) == [0]
    assert axes([1, 3, "H", "W"]) == [0]  # a fixed batch of one, sizes vary
    assert axes([6, "N"]) == [1]  # samples along axis 1 ([d_in, N])
    assert axes(["T", "batch", 80]) == [1]  # a batch-named axis wins (time-major)
    assert axes([4, 8]) == [0]  # no symbolic dims at all: a fixed batch axis 0
    assert axes(["sequence_length", 576], [1, 1, 128], [1, 1, 128], []) == [0, None, None, None]


def test_overrides_and_their_errors():
    assert axes(["T", 80], [1, 1, 8], overrides={"i0": 1, "i1": 0}) == [1, 0]
    assert parse_axes("x=1, h=none") == {"x": 1, "h": None}
    with pytest.raises(ValueError, match="INPUT=AXIS"):
        parse_axes("x")
    with pytest.raises(CalibrationError, match="not inputs of the model"):
        axes(["N", 4], overrides={"nope": 0})
    with pytest.raises(CalibrationError, match="axis 3 does not exist"):
        axes(["N", 4], overrides={"i0": 3})
    with pytest.raises(ConfigError, match="run.calib_sample_axes"):
        RunOptions(calib_sample_axes="x=one")


def test_the_issue_example_512_frames_plus_one_state_is_accepted(tmp_path):
    """Refused before with 'inputs have different sample counts (512 vs 1 for 'h')'."""
    model, feeds = models.vad(), models.vad_feeds(512)
    np.savez(tmp_path / "vad.npz", **feeds)
    ds = load_data(tmp_path / "vad.npz", model)
    assert ds.n == 512 and ds.axes == {"input": 0, "h": None, "c": None}
    got = list(ds.batches(100))
    assert [k for k, _ in got] == [100] * 5 + [12]
    for _, feed in got:  # the state goes whole into every run
        np.testing.assert_array_equal(feed["h"], feeds["h"])
    np.testing.assert_array_equal(np.concatenate([f["input"] for _, f in got]), feeds["input"])
    p = plan(model, tmp_path / "vad.npz", None, RunOptions(holdout=0.2))
    assert (p.fit.n, p.held.n, p.batch) == (410, 102, 32)  # the batch is not fixed at 1
    assert any("'h', 'c' have no sample axis" in w and "fed whole to every run" in w
               for w in p.warnings)
    assert p.info["sample_axes"] == {"input": 0, "h": None, "c": None}


def test_a_state_of_the_wrong_shape_names_the_input_and_the_expected_shape():
    feeds = models.vad_feeds(8)
    feeds["h"] = feeds["h"][0]  # [1, 128]
    with pytest.raises(CalibrationError, match=r"input 'h' has shape \(1, 128\).*rank 3"):
        load_data([feeds], models.vad())
    feeds["h"] = np.zeros((1, 1, 64), np.float32)
    with pytest.raises(CalibrationError) as exc:
        load_data([feeds], models.vad())
    msg = str(exc.value)
    assert "input 'h' has shape (1, 1, 64)" in msg and "[1, 1, 128]" in msg
    assert "fed whole to every run" in msg


def test_a_sample_with_a_wrong_fixed_dim_names_input_sample_and_expected_shape():
    cnn = models.dynamic_cnn()
    good = [{"x": np.zeros((1, 3, 8, 8), np.float32)}] * 3
    bad = good + [{"x": np.zeros((2, 4, 8, 8), np.float32)}]
    with pytest.raises(CalibrationError) as exc:
        load_data(bad, cnn)
    msg = str(exc.value)
    assert "item starting at sample 3" in msg and "input 'x' has shape (2, 4, 8, 8)" in msg
    assert "[N, 3, H, W] (axis 1 must be 3)" in msg


def test_synthesize_feeds_states_whole_and_samples_on_their_axis():
    ds = synthesize(models.vad(), 10, seed=0)
    assert ds.arrays["input"].shape == (10, 576) and ds.arrays["h"].shape == (1, 1, 128)
    assert ds.n == 10
    s = synthesize(b.weight_first_matmul(), 7, seed=0)
    assert s.arrays["x"].shape == (6, 7) and s.n == 7


def test_axis_one_samples_are_batched_along_axis_one():
    model = b.weight_first_matmul()  # x [6, N]
    x = b.feeds(model, 10)["x"]
    ds = load_data([{"x": x[:, :4]}, {"x": x[:, 4:]}], model)
    got = list(ds.batches(3))
    assert [k for k, _ in got] == [3, 3, 3, 1] and got[0][1]["x"].shape == (6, 3)
    np.testing.assert_array_equal(np.concatenate([f["x"] for _, f in got], axis=1), x)
    held = DataSet({"x": x}, "t", axes={"x": 1}).split(4, seed=0)[1]
    assert held.n == 4 and held.arrays["x"].shape == (6, 4)


def test_input_specs_unchanged_for_the_layout():
    assert [s.name for s in input_specs(models.vad())] == ["input", "h", "c"]


def test_the_issue_example_compresses_end_to_end_and_the_report_says_so(tmp_path):
    from onnx_obc import convert

    np.savez(tmp_path / "vad.npz", **models.vad_feeds(160))
    res = convert(models.vad(), tmp_path / "out.onnx", calib=tmp_path / "vad.npz",
                  sparsity=0.5, method="gptq", progress=False, compare_baseline=False)
    rep = res.report
    assert rep.calibration["sample_axes"] == {"input": 0, "h": None, "c": None}
    assert any("fed whole to every run" in w for w in rep.warnings)
    assert "fed whole to every run" in rep.table()
    assert {x.name for x in rep.layers} == {"proj", "head"}
