"""Streaming sources: batches of one shape each with bounded waiting samples, functions
returning fresh iterators, --calib-samples not reading past N, and Hessians from
shape-grouped batches equal to the per-shape sums computed independently."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet, Layout, StreamSource, input_specs, load_data, plan
from onnx_obc.calib.stream import group_batches
from onnx_obc.collect import collect
from onnx_obc.config import RunOptions
from onnx_obc.errors import CalibrationError
from onnx_obc.layers import find_layers

from . import models

SIZES = [(12, 12), (16, 20), (9, 15)]


class Counting:
    """A function returning a fresh generator of one-sample feeds; counts items pulled."""

    def __init__(self, samples: list[np.ndarray]):
        self.samples, self.pulled, self.passes = samples, 0, 0

    def __call__(self):
        self.passes += 1
        for s in self.samples:
            self.pulled += 1
            yield {"x": s[None]}


def test_batches_hold_one_shape_and_few_samples_wait():
    lay = Layout.of(input_specs(models.dynamic_cnn()))
    imgs = models.images(SIZES, per_size=7)  # interleaved: 3 shapes in turn
    pulled = []

    def parts():
        for i, im in enumerate(imgs):
            pulled.append(i)
            yield {"x": im[None]}

    got = []
    for k, feed in group_batches(parts(), lay, 4):
        assert feed["x"].shape[0] == k <= 4  # one array: one shape per batch
        got.append(feed["x"])
        assert len(pulled) - sum(g.shape[0] for g in got) <= 4  # at most one batch waits
    assert sum(g.shape[0] for g in got) == len(imgs)
    by_shape = {}
    for g in got:
        by_shape.setdefault(g.shape[2:], []).append(g)
    for (h, w), gs in by_shape.items():  # every sample once, in order within its shape
        want = [im for im in imgs if im.shape[1:] == (h, w)]
        np.testing.assert_array_equal(np.concatenate(gs), np.stack(want))


def test_one_shape_batches_are_the_plain_batches():
    lay = Layout.of(input_specs(models.dynamic_cnn()))
    imgs = models.images([(8, 8)], per_size=10)
    got = list(group_batches(({"x": im[None]} for im in imgs), lay, 4))
    assert [k for k, _ in got] == [4, 4, 2]


def test_a_function_returning_a_generator_is_streamed_every_pass():
    src = Counting(models.images(SIZES, per_size=4))
    ds = load_data(src, models.dynamic_cnn())
    assert isinstance(ds, StreamSource) and ds.n == 12 and ds.shapes == 3
    assert ds.read_as.startswith("streamed")
    list(ds.batches(5))
    assert src.passes == 2  # the checking pass, then one pass per read


def test_calib_samples_stops_reading_early():
    src = Counting(models.images(SIZES, per_size=10))
    ds = load_data(src, models.dynamic_cnn(), limit=7)
    assert ds.n == 7 and src.pulled == 7  # the checking pass stopped at 7
    src.pulled = 0
    assert sum(k for k, _ in ds.batches(3)) == 7 and src.pulled == 7


def test_a_one_shot_generator_is_held_and_said_so():
    ds = load_data(({"x": im[None]} for im in models.images(SIZES, 2)), models.dynamic_cnn())
    assert ds.n == 6 and "one-shot" in ds.read_as
    assert sum(k for k, _ in ds.batches(4)) == 6 and sum(k for k, _ in ds.batches(4)) == 6


def test_a_function_returning_something_else_is_refused():
    with pytest.raises(CalibrationError, match="must return a fresh iterator"):
        load_data(lambda: {"x": np.zeros((1, 3, 8, 8), np.float32)}, models.dynamic_cnn())


def test_hessians_from_shape_grouped_batches_equal_the_per_shape_sums():
    """Hessians are sums over positions: batching samples of one shape together is exact.
    Reference: each shape's samples concatenated into one array, collected on its own."""
    model = models.dynamic_cnn()
    imgs = models.images(SIZES, per_size=5)
    layers, _ = find_layers(model)
    be = get_backend("cpu")
    streamed, _ = collect(model, layers, load_data(Counting(imgs), model), 4, be, 64, False)
    ref = None
    for size in SIZES:
        stack = np.stack([im for im in imgs if im.shape[1:] == size])
        part, _ = collect(model, layers, DataSet({"x": stack}, "t"), len(stack), be, 64, False)
        if ref is None:
            ref = part
        else:
            for k in ref:
                ref[k].merge(part[k])
    for k, acc in streamed.items():
        assert acc.samples == ref[k].samples == len(imgs)
        np.testing.assert_allclose(acc.mean(), ref[k].mean(), rtol=1e-5, atol=1e-9)


def test_plan_on_images_of_three_sizes():
    src = Counting(models.images(SIZES, per_size=8))
    p = plan(models.dynamic_cnn(), src, None, RunOptions(holdout=0.25, batch_size=4))
    assert (p.fit.n, p.held.n, p.info["shapes"]) == (18, 6, 3)
    assert p.info["read"].startswith("streamed")
    sizes = p.fit.shape_feed(4)["x"].shape
    assert sizes == (4, 3, 16, 20)  # the largest sample shape sizes the capture groups
