"""Streaming activation ranges: equal to the whole-data figures, batch by batch."""

import numpy as np
import pytest

from onnx_obc.actrange import RangeObserver


def test_minmax_and_percentile_match_the_whole_data():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(5000) * s for s in (0.5, 1.0, 4.0, 2.0)]  # range grows
    obs = RangeObserver()
    for b in batches:
        obs.add(b)
    a = np.abs(np.concatenate(batches))
    assert obs.scale("minmax") == pytest.approx(a.max() / 127)
    p = np.percentile(a, 99.0)
    got = obs.scale("percentile", 99.0) * 127
    assert abs(got - p) <= 2 * obs.top / 2048  # within two histogram bins
    assert obs.scale("percentile", 99.0) < obs.scale("minmax")


def test_all_zero_activations_give_a_positive_scale():
    obs = RangeObserver()
    obs.add(np.zeros(10))
    assert obs.scale() > 0


def test_without_the_histogram_the_minmax_figures_are_the_same():
    """RangeObserver(histogram=False) (minmax runs: collect's histogram flag) keeps the
    same extremes, scale and bounds, and no histogram."""
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal(3000) * s - m for s, m in ((0.5, 2.0), (3.0, 0.0), (1.0, -5))]
    full, lean = RangeObserver(), RangeObserver(histogram=False)
    for b in batches:
        full.add(b)
        lean.add(b)
    x = np.concatenate(batches).astype(np.float32)
    assert lean.amax == full.amax == float(np.abs(x).max())
    assert lean.scale("minmax") == full.scale("minmax")
    assert lean.bounds("minmax") == full.bounds("minmax") == (float(x.min()), float(x.max()))
    assert lean.hist.sum() == 0 < full.hist.sum()
