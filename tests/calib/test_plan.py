"""calib.plan: the run's fit / held-out / eval sets (split by count), the batch size, the
warnings, with array sources and streamed ones alike."""

from __future__ import annotations

import numpy as np
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
