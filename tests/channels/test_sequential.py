"""Channel pruning with --sequential: the same counts as one-shot (from the dense model), each
group cut before the next group's Hessians are captured (consumers fitted to the dense
model's outputs); the shapes shrink and the error stays within a tolerance of one-shot."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc import convert
from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels import prune_channels, prune_channels_sequential
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import graphs


def _err(model, ref, feed):
    return np.linalg.norm(b.run(model, feed)[0] - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("seed", range(3))
def test_sequential_matches_one_shot_counts_and_error(seed):
    model = graphs.chain((8, 24, 20, 16, 4), seed=seed)
    layers = find_layers(model)[0]
    data = DataSet(b.feeds(model, 256, seed=1), "feeds")
    args = (model, layers, data, 64, get_backend("cpu"), 0.3, 0.01, 2048)
    one, seq = prune_channels(*args), prune_channels_sequential(*args, groups=None)
    assert [r.removed for r in seq.rows] == [r.removed for r in one.rows]
    assert seq.macs[1] == one.macs[1] <= 0.7 * seq.macs[0]
    w = b.weights_of(seq.model)
    assert [w[f"w{i}"].shape for i in range(4)] == [v.shape for v in
                                                    map(b.weights_of(one.model).get,
                                                        [f"w{i}" for i in range(4)])]
    feed = b.feeds(model, 256, seed=9)
    ref = b.run(model, feed)[0]
    e_seq, e_one, e_l2 = (_err(m, ref, feed) for m in (seq.model, one.model, seq.baseline))
    assert e_seq <= 1.05 * e_one, (e_seq, e_one)
    assert e_seq < 0.7 * e_l2, (e_seq, e_l2)
    fit = prune_channels_sequential(*args, fit_dense=True)  # the dense-output fit runs too
    assert fit.macs[1] == one.macs[1] and _err(fit.model, ref, feed) <= 1.1 * e_one


def test_sequential_with_groups_through_convert():
    model = graphs.chain((8, 24, 20, 16, 4))
    r = convert(model, None, calib=[b.feeds(model, 128, seed=1)], channels=0.3, sequential=True,
                sequential_groups=2, progress=False)
    ch = r.report.channels
    assert ch["macs_pruned"] <= 0.7 * ch["macs_dense"]
    assert sum(x["removed"] for x in ch["rows"]) > 0
