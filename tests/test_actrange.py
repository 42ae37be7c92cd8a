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


def _grid_error(x: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of x through the uint8 grid of [lo, hi] (as the exporter codes it)."""
    s = (hi - lo) / 255
    z = np.clip(np.rint(-lo / s), 0, 255)
    return float(np.mean((x - (np.clip(np.rint(x / s) + z, 0, 255) - z) * s) ** 2))


def test_signed_histogram_folds_into_the_histogram_of_abs_x():
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal(4000) * s + m for s, m in ((0.5, 1.0), (3.0, -2.0))]
    obs = RangeObserver()
    for bt in batches:
        obs.add(bt)
    x = np.concatenate(batches).astype(np.float32)
    assert obs.signed[:2048].sum() == (x < 0).sum() and obs.signed.sum() == x.size
    expect = np.bincount(np.minimum((np.abs(x) / obs.top * 2048).astype(np.int64), 2047),
                         minlength=2048)
    assert np.abs(obs.hist - expect).sum() <= 2e-3 * x.size  # float32 rounding at bin edges
    assert obs.hist.sum() == x.size


def test_mse_range_beats_minmax_and_percentile_on_a_heavy_tail():
    """A heavy-tailed activation (Student t, 3 degrees of freedom, shifted): the mse range
    clips the rare extremes and has the lower quantization error on the data itself."""
    x = (np.random.default_rng(3).standard_t(3, 200_000) + 0.5).astype(np.float32)
    obs = RangeObserver()
    for part in np.array_split(x, 5):
        obs.add(part)
    err = {m: _grid_error(x, *obs.bounds(m)) for m in ("minmax", "percentile", "mse")}
    assert err["mse"] < 0.8 * err["minmax"] and err["mse"] < err["percentile"]
    lo, hi = obs.bounds("mse")
    assert x.min() < lo < 0 < hi < x.max()
    assert 0 < obs.scale("mse") < obs.scale("minmax")


def test_mse_range_keeps_a_tail_free_range():
    """Uniform data has no tail to clip: the mse range stays within 5% of min-max."""
    x = np.random.default_rng(4).uniform(-1.0, 3.0, 100_000).astype(np.float32)
    obs = RangeObserver()
    obs.add(x)
    lo, hi = obs.bounds("mse")
    assert lo <= 0.95 * x.min() and hi >= 0.95 * x.max()
    assert _grid_error(x, lo, hi) <= _grid_error(x, *obs.bounds("minmax")) * 1.0001


def test_without_a_histogram_mse_falls_back_to_minmax():
    x = np.random.default_rng(5).laplace(0.0, 1.0, 1000)
    lean = RangeObserver(histogram=False)
    lean.add(x)
    assert lean.bounds("mse") == lean.bounds("minmax")
    assert lean.scale("mse") == lean.scale("minmax")


def test_histogram_bins_are_those_of_the_integer_cap():
    """The in-place binning (index 2 BINS folded into the last bin after counting) puts
    every value in the bin of the earlier formula (cast to int32, then capped), extremes at
    +-max|x| included."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(200_000) * 3).astype(np.float32)
    x[:2] = [np.abs(x).max(), -np.abs(x).max()]
    obs = RangeObserver()
    obs.add(x)
    k = (x * np.float32(2048 / obs.top) + np.float32(2048)).astype(np.int32)
    np.minimum(k, 2 * 2048 - 1, out=k)
    np.testing.assert_array_equal(obs.signed, np.bincount(k, minlength=2 * 2048))


def test_values_just_below_top_land_in_the_last_bin():
    """|v| < top, but v * BINS / top can round up to BINS: index 2 BINS, folded into the last
    bin (2 BINS - 1), as the cap put it; the most negative value lands in bin 0."""
    from onnx_obc import actrange

    top, B = 8.0, actrange.BINS
    below = np.nextafter(np.float32(top), np.float32(0))
    x = np.array([below] * 3 + [-below, 0.0, np.float32(top / 2)], np.float32)
    assert x[0] * np.float32(B / top) + np.float32(B) == np.float32(2 * B)  # the edge case
    got = actrange.bins(x, top)
    assert got.shape == (2 * B,) and got.sum() == x.size
    assert got[2 * B - 1] == 3 and got[0] == 1 and got[B] == 1 and got[B + B // 2] == 1


def test_chunked_binning_counts_what_one_pass_counts():
    """The histogram is binned CHUNK values at a time through reused buffers: the counts of
    a batch spanning 3.3 chunks equal those of one multiply-add-cast pass over all of it."""
    from onnx_obc import actrange

    x = np.random.default_rng(9).standard_t(3, int(3.3 * actrange.CHUNK)).astype(np.float32)
    top = float(np.abs(x).max()) * 1.0001
    k = x * np.float32(actrange.BINS / top) + np.float32(actrange.BINS)
    k = np.minimum(k, np.float32(2 * actrange.BINS - 1)).astype(np.intp)
    want = np.bincount(k, minlength=2 * actrange.BINS)
    np.testing.assert_array_equal(actrange.bins(x, top), want)
    obs = RangeObserver()
    obs.add(x)
    np.testing.assert_array_equal(obs.signed, actrange.bins(x, obs.top))


def test_the_histogram_does_not_depend_on_how_the_samples_are_batched():
    """The range ends at the least power of two above max |x| whatever the first batch's
    max, so runs of 8 or 32 samples (or a first batch of zeros) give the same bins and the
    same ranges; before, the first batch's max set the grid and the mse ranges moved."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 40)) * np.linspace(0.1, 3.0, 64)[:, None]).astype(np.float32)
    x[5, 7] = 17.5  # a late outlier: the small batches' range doubles to reach it
    splits = {}
    for size, zeros in ((1, False), (8, False), (32, False), (64, False), (8, True)):
        obs = RangeObserver()
        if zeros:
            obs.add(np.zeros((3, 40), np.float32))  # counted in bin 0, sets no range
        for i in range(0, 64, size):
            obs.add(x[::-1][i:i + size])  # the outlier near the end
        splits[size, zeros] = obs
    ref = splits[64, False]
    assert ref.top == 32.0  # the least power of two above 17.5
    for (size, zeros), obs in splits.items():
        np.testing.assert_array_equal(obs.signed[:2048], ref.signed[:2048])
        np.testing.assert_array_equal(obs.signed[2049:], ref.signed[2049:])
        assert obs.signed[2048] == ref.signed[2048] + (3 * 40 if zeros else 0)
        if not zeros:
            assert obs.bounds("mse") == ref.bounds("mse")
            assert obs.scale("mse") == ref.scale("mse")
            assert obs.scale("percentile") == ref.scale("percentile")
