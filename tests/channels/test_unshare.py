"""channels/unshare.py: a per-channel vector an exporter shared between layers (identical
zero biases of an untrained export) is copied per reader before the channel stage, so each
site can cut its own; float-exact; weights and vectors read otherwise are left shared."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels import find_sites, prune_channels
from onnx_obc.channels.unshare import unshare
from onnx_obc.layers import find_layers
from tests import builders as b


def _two_mlps(ln_reads_bias: bool = False, softmax_reads_bias: bool = False):
    """x -> Gemm(w1, b) -> Relu -> Gemm(w2) -> Gemm(w3, b) -> Relu -> Gemm(w4): two sites
    whose producers share the bias `b` [12] (zeros), as torch's exporter deduplicates;
    `ln_reads_bias`: a LayerNormalization also reads it (as HF SegFormer's: copied too);
    `softmax_reads_bias`: a Softmax reads it as its data (then it stays shared)."""
    n = helper.make_node
    inits = [b.weight("w1", (12, 8), 0), b.weight("w2", (8, 12), 1), b.weight("w3", (12, 8), 2),
             b.weight("w4", (8, 12), 3), numpy_helper.from_array(np.zeros(12, np.float32), "b")]
    nodes = [n("Gemm", ["x", "w1", "b"], ["h1"], name="p1", transB=1),
             n("Relu", ["h1"], ["r1"], name="a1"),
             n("Gemm", ["r1", "w2"], ["y1"], name="c1", transB=1),
             n("Gemm", ["y1", "w3", "b"], ["h2"], name="p2", transB=1),
             n("Relu", ["h2"], ["r2"], name="a2"),
             n("Gemm", ["r2", "w4"], ["y"], name="c2", transB=1)]
    outs = [b.vi("y", ["N", 8])]
    if ln_reads_bias:
        inits.append(numpy_helper.from_array(np.ones(12, np.float32), "g"))
        nodes.append(n("LayerNormalization", ["h2", "g", "b"], ["ln"], name="ln"))
        outs.append(b.vi("ln", ["N", 12]))
    if softmax_reads_bias:
        nodes.append(n("Softmax", ["b"], ["sb"], name="sm"))
        outs.append(b.vi("sb", [12]))
    return b.make(nodes, [b.vi("x", ["N", 8])], outs, inits)


def test_a_shared_bias_is_copied_and_both_sites_cut():
    model = _two_mlps()
    sites, refused = find_sites(model, find_layers(model)[0])
    assert not {s.producer.name for s in sites} & {"p1", "p2"}  # (c1 -> p2 is a site)
    assert all("shared with other nodes" in r.reason for r in refused
               if r.producer in ("p1", "p2"))
    out, copies = unshare(model)
    assert copies == 1 and len(out.graph.initializer) == len(model.graph.initializer) + 1
    feed = b.feeds(model, 4, seed=2)
    np.testing.assert_array_equal(b.run(out, feed)[0], b.run(model, feed)[0])
    assert {s.producer.name for s in find_sites(out, find_layers(out)[0])[0]} >= {"p1", "p2"}
    data = DataSet(b.feeds(model, 64, seed=1), "feeds")
    res = prune_channels(model, find_layers(model)[0], data, 32, get_backend("cpu"), 0.3,
                         0.01, 2048)
    assert {r.producer for r in res.rows} >= {"p1", "p2"} and res.macs[1] < res.macs[0]


def test_a_vector_read_otherwise_stays_shared_and_weights_are_never_copied():
    model = _two_mlps(softmax_reads_bias=True)
    assert unshare(model) == (model, 0)  # a Softmax's data is no per-channel read
    model = _two_mlps(ln_reads_bias=True)  # a LayerNorm's bias is: one copy each
    out, copies = unshare(model)
    feed = b.feeds(model, 4, seed=2)
    assert copies == 2 and all(np.array_equal(a, c) for a, c in zip(b.run(out, feed),
                                                                     b.run(model, feed)))
    n = helper.make_node
    twice = b.make([n("Gemm", ["x", "w", "bb"], ["h"], name="g1", transB=1),
                    n("Gemm", ["h", "w", "bb"], ["y"], name="g2", transB=1)],
                   [b.vi("x", ["N", 8])], [b.vi("y", ["N", 8])],
                   [b.weight("w", (8, 8), 0), b.weight("bb", (8,), 1)])
    out, copies = unshare(twice)
    assert copies == 1 and [i.input[1] for i in out.graph.node] == ["w", "w"]
