"""calib.plan: the run's fit / held-out / eval sets (split by count), the batch size, the
warnings, with array sources and streamed ones alike."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_obc.calib import DataSet, StreamSource, plan
from onnx_obc.config import RunOptions
from onnx_obc.errors import ObcError

from .. import builders as b


def _fixed_batch(n: int):
    model = b.mlp()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = n  # batch axis fixed at n
    return model


def test_array_source_split_by_count_and_seeded():
    model = b.mlp()
    feeds = b.feeds(model, 30, seed=1)
    p = plan(model, [feeds], None, RunOptions(holdout=0.2, batch_size=8))
    assert isinstance(p.fit, StreamSource)  # a list of feed dicts is streamed
    assert (p.fit.n, p.held.n, p.batch) == (24, 6, 8)
    assert p.info == {"source": "list", "synthetic": False, "total": 30, "samples": 24,
                      "holdout": 6, "read": "streamed, one item at a time", "shapes": 1,
                      "sample_axes": {"x": 0}}
    assert list(p.sets()) == ["held-out calibration"]


def test_npz_source_keeps_the_seeded_random_split(tmp_path):
    model = b.mlp()
    np.savez(tmp_path / "c.npz", **b.feeds(model, 20, seed=2))
    p = plan(model, tmp_path / "c.npz", None, RunOptions(holdout=0.25, seed=7))
    full = DataSet(dict(np.load(tmp_path / "c.npz")), "c")
    fit, held = full.split(5, 7)
    assert isinstance(p.fit, DataSet)
    np.testing.assert_array_equal(p.held.arrays["x"], held.arrays["x"])
    np.testing.assert_array_equal(p.fit.arrays["x"], fit.arrays["x"])


def test_no_holdout_and_synthetic_data_are_said():
    model = b.mlp()
    p = plan(model, None, None, RunOptions(holdout=0.0, calib_samples=10))
    assert p.held is None and list(p.sets()) == ["calibration (not held out)"]
    assert p.info["synthetic"] and any("NOT representative" in w for w in p.warnings)


def test_few_samples_warn_for_every_kind_of_source():
    model = b.mlp()
    p = plan(model, [b.feeds(model, 3)], None, RunOptions(holdout=0.0))
    assert any("only 3 calibration sample(s)" in w for w in p.warnings)


def test_a_fixed_batch_axis_takes_full_batches_and_refuses_too_few():
    model, free = _fixed_batch(4), b.mlp()
    p = plan(model, [b.feeds(free, 22)], [b.feeds(free, 3)], RunOptions(holdout=0.2))
    assert p.batch == 4 and p.fit.n == 16 and p.held.n == 4  # 18 -> 16, 4 held out
    assert p.eval is None and any("eval set has fewer samples" in w for w in p.warnings)
    assert any("last 2 calibration samples are not used" in w for w in p.warnings)
    with pytest.raises(ObcError, match="fixed at 4 but only 3"):
        plan(model, [b.feeds(free, 3)], None, RunOptions(holdout=0.0))


@pytest.mark.auto_holdout
def test_the_default_holds_out_a_fifth_only_from_1280_samples_on():
    """holdout None (the default): every sample calibrates below 1,280 (a held-out fifth
    cost a real recognizer's W8A8 file points of accuracy), 20% capped at 256 from there;
    a fraction given is used as it is."""
    from onnx_obc.calib.plan import held_out_count

    assert [held_out_count(n, None) for n in (96, 1279, 1280, 5000)] == [0, 0, 256, 256]
    assert held_out_count(96, 0.2) == 19 and held_out_count(96, 0.0) == 0
    model = b.mlp()
    feeds = b.feeds(model, 40, seed=1)
    p = plan(model, [feeds], None, RunOptions())
    assert p.held is None and p.fit.n == 40 and list(p.sets()) == ["calibration (not held out)"]
    p = plan(model, [feeds], None, RunOptions(holdout=0.2))
    assert (p.fit.n, p.held.n) == (32, 8)


@pytest.mark.parametrize("bad", [True, 1.0, -0.1, "0.2"])
def test_a_holdout_that_is_not_a_fraction_is_refused(bad):
    from onnx_obc.errors import ConfigError

    with pytest.raises(ConfigError, match="run.holdout must be a fraction"):
        RunOptions(holdout=bad)


@pytest.mark.auto_holdout
def test_none_held_out_measures_fidelity_on_at_most_64_calibration_samples():
    """Every sample calibrates; the fidelity (and the automatic correction's check) reads a
    seeded 64 of them, not all (each measured sample runs every compared model once)."""
    model = b.mlp()
    p = plan(model, [b.feeds(model, 100, seed=1)], None, RunOptions())
    ((name, check),) = p.sets().items()
    assert name == "calibration (not held out)" and (p.fit.n, check.n) == (100, 64)
    small = plan(model, [b.feeds(model, 40, seed=1)], None, RunOptions())
    assert next(iter(small.sets().values())) is small.fit


def test_the_correction_and_verification_run_8_samples_where_the_batch_is_free():
    """Calibration.run_batch: at most RUN_BATCH (8) where the batch is free, as
    the capture runs; a fixed batch (here 16) and a batch-free run (fixed at 1) keep theirs."""
    free = b.mlp()
    p = plan(free, [b.feeds(free, 40)], None, RunOptions(holdout=0.0))
    assert p.batch == 32 and p.run_batch == 8
    assert plan(free, [b.feeds(free, 40)], None, RunOptions(holdout=0.0, batch_size=4)
                ).run_batch == 4
    fixed = plan(_fixed_batch(16), [b.feeds(free, 40)], None, RunOptions(holdout=0.0))
    assert fixed.batch == 16 and fixed.run_batch == 16
    one = plan(_fixed_batch(1), [b.feeds(free, 40)], None, RunOptions(holdout=0.0))
    assert one.free_batch > 1 and one.run_batch == one.batch == 1


@pytest.mark.parametrize("source", ["arrays", "stream"])
def test_the_correction_measures_a_seeded_subset_holding_the_check(source, tmp_path):
    """--correct-samples N: the correction measures a seeded N of the calibration samples,
    the same for the same seed, the in-sample check's among them; all of them by default
    and where there are no more than N."""
    from onnx_obc.calib.plan import IN_SAMPLE_CHECK

    model = b.mlp()
    feeds = b.feeds(model, 300, seed=1)
    np.savez(tmp_path / "c.npz", **feeds)
    calib = tmp_path / "c.npz" if source == "arrays" else [feeds]
    p = plan(model, calib, None, RunOptions(holdout=0.0, seed=3, correct_samples=128))
    rows = lambda src: [r.tobytes() for _, f in src.batches(64) for r in f["x"]]  # noqa: E731
    fit, corr, check = rows(p.fit), rows(p.corrected), rows(p.check)
    assert len(fit) == 300 and len(corr) == 128 and len(check) == IN_SAMPLE_CHECK
    assert set(check) <= set(corr) <= set(fit)
    again = plan(model, calib, None, RunOptions(holdout=0.0, seed=3, correct_samples=128))
    assert rows(again.corrected) == corr
    if source == "arrays":  # a random subset, not the first samples
        assert corr != fit[:128]
        assert rows(plan(model, calib, None, RunOptions(holdout=0.0, seed=4, correct_samples=128)
                         ).corrected) != corr
    every = plan(model, calib, None, RunOptions(holdout=0.0))
    assert every.correct is None and every.corrected is every.fit
    small = plan(model, calib, None, RunOptions(holdout=0.0, correct_samples=300))
    assert small.correct is None and small.corrected is small.fit


def test_a_fixed_batch_corrects_on_full_batches():
    run = RunOptions(holdout=0.0, correct_samples=128)
    p = plan(_fixed_batch(48), [b.feeds(b.mlp(), 300)], None, run)
    assert p.batch == 48 and p.corrected.n == 96  # 128 cut to whole batches of 48
    big = plan(_fixed_batch(200), [b.feeds(b.mlp(), 300)], None, run)
    assert big.corrected is big.fit  # not one whole batch among 128: all samples


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "64"])
def test_correct_samples_must_be_a_positive_integer(bad):
    from onnx_obc.errors import ConfigError

    with pytest.raises(ConfigError, match="run.correct_samples must be an integer >= 1"):
        RunOptions(correct_samples=bad)


def _state_pins_the_batch() -> onnx.ModelProto:
    """x [N, 4] -> MatMul W [4, 6] -> [1, N, 6] -> GRU (3 hidden) with its initial state h0
    [1, 1, 3] a model input: fed whole, h0 lets the GRU run one sample at a time only."""
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="proj"),
             helper.make_node("Unsqueeze", ["m", "zero"], ["seq"], name="seq"),
             helper.make_node("GRU", ["seq", "Wg", "Rg", "", "", "h0"], ["", "y"],
                              name="gru", hidden_size=3)]
    inits = [b.weight("W", (4, 6), 0), b.weight("Wg", (1, 9, 6), 1),
             b.weight("Rg", (1, 9, 3), 2),
             onnx.numpy_helper.from_array(np.array([0], np.int64), "zero")]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4]), b.vi("h0", [1, 1, 3])],
                  [b.vi("y", [1, b.BATCH, 3])], inits)


def test_a_state_input_fed_whole_that_pins_the_batch_runs_one_sample_at_a_time(monkeypatch):
    """AECMOS (a GRU whose initial state h0 [4, 1, 96] is a model input): onnxruntime
    refused the capture's runs of 8 samples and the run stopped on its traceback. Now one
    dense run before any work finds it, the runs take one sample each, and the report says
    why; a model that runs no sample at all is a ModelError before any work."""
    from onnx_obc import convert
    from onnx_obc.errors import ModelError

    model = _state_pins_the_batch()
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((24, 4)).astype(np.float32),
            "h0": np.zeros((1, 1, 3), np.float32)}
    r = convert(model, None, calib=[feed], bits=8, holdout=0.0, progress=False,
                compare_baseline=False)
    (note,) = [w for w in r.report.calibration.get("warnings", r.report.warnings)
               if "refused a run of 8 samples" in w] or [None]
    assert note is not None and "GRU" in note and "--batch-size 1" in note
    assert r.report.layers[0].samples == 24
    import onnx_obc.capture as capture

    class Refuses:  # a model that runs on no batch at all
        def run(self, *args):
            raise RuntimeError("no kernel for this node")
    monkeypatch.setattr(capture, "session", lambda *a, **k: Refuses())
    with pytest.raises(ModelError, match="onnxruntime cannot run the model on the calibration "
                                         "data: no kernel for this node"):
        convert(model, None, calib=[feed], bits=8, progress=False, compare_baseline=False)


def test_runs_shrink_where_one_sample_s_largest_tensor_is_big_against_the_budget():
    """DNSMOS: a 71 MB map a sample, 8 samples a run, a W8A8 capture at 3.2 GB RSS against
    --memory-budget 2048 (0.93 GB at 2 a run, the same time). A run now holds at most
    budget / (8 x the largest tensor of one sample) samples: here a 2x2 conv to 64 channels
    over 70 x 70 (1.2 MB a sample) under a 16 MB budget runs one sample at a time; the
    default budget leaves it at 8."""
    from onnx_obc import convert

    model = b.conv(c_in=2, c_out=64, kernel=2, spatial=(70, 70))
    feed = b.feeds(model, 24, seed=1)
    small = convert(model, None, calib=[feed], bits=8, holdout=0.0, memory_budget_mb=16,
                    progress=False, compare_baseline=False)
    assert small.report.calibration["run_batch"] == 1
    assert small.report.layers[0].samples == 24
    full = convert(model, None, calib=[feed], bits=8, holdout=0.0, progress=False,
                   compare_baseline=False)
    assert "run_batch" not in full.report.calibration


def test_a_run_is_bounded_by_its_largest_tensor_and_big_runs_drop_the_arena(monkeypatch):
    """fit_runs: at most budget / (16 x one sample's largest tensor) samples a run (a
    64k-wide hidden layer: 256 KB a sample), the size kept; Calibration.arena: off where a
    run's largest tensor reaches ARENA_RUN (DNSMOS's verification: 2.25 -> 1.33 GB)."""
    import importlib

    plan_mod = importlib.import_module("onnx_obc.calib.plan")

    model = b.mlp((8, 1 << 16, 4))
    data = plan(model, [b.feeds(model, 32)], None, RunOptions(holdout=0.0))
    assert data.run_batch == 8 and data.arena
    fitted = plan_mod.fit_runs(data, model, 16 << 20)  # 16 MB: 4 samples a run
    assert fitted.run_batch == 4 and fitted.info["largest_tensor"] == 1 << 18
    assert fitted.arena  # 1 MB a run
    monkeypatch.setattr(plan_mod, "ARENA_RUN", 1 << 20)
    assert not fitted.arena
    roomy = plan_mod.fit_runs(data, model, 1 << 30)
    assert roomy.run_batch == 8 and roomy.info["largest_tensor"] == 1 << 18
