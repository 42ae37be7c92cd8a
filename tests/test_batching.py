"""Batched capture of models whose batch axis is fixed at 1 (batching.py): the Hessians and
ranges are those of one run per sample; a graph that hard-codes its batch is detected by
the check run and captured per sample; the proto is left as it was."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_obc import calib
from onnx_obc.backend import get_backend
from onnx_obc.batching import batch_free, sample_axes
from onnx_obc.capture import Runtime, capture_session
from onnx_obc.collect import collect
from onnx_obc.layers import find_layers

from . import builders as b

C, T, D, OUT = 3, 6, 8, 5


def _fixed_model(shape_op: str) -> onnx.ModelProto:
    """x [1, C, T, D] (batch fixed at 1):
    y = Conv(x) [1, C, T, D] -> Transpose [T, 1, C, D] -> Reshape -> MatMul W [C*D, OUT].
    shape_op "dynamic": Reshape to [0, 0, -1] then [-1, C*D] (the batch folded after T:
    interleaved rows, as an exported LSTM head); "hardcoded": Reshape to [T, C*D] (1 sample
    only); "flatten": Reshape to [-1, C*D] after moving the batch first (rows one sample
    after another)."""
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], kernel_shape=[1, 1])]
    inits = [b.weight("cw", [C, C, 1, 1], 1), b.weight("W", [C * D, OUT], 2)]
    if shape_op == "flatten":
        nodes.append(helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 1, 3]))
    else:
        nodes.append(helper.make_node("Transpose", ["c"], ["t"], perm=[2, 0, 1, 3]))
    if shape_op == "dynamic":
        inits += [onnx.numpy_helper.from_array(np.array([0, 0, -1], np.int64), "s1"),
                  onnx.numpy_helper.from_array(np.array([-1, C * D], np.int64), "s2")]
        nodes += [helper.make_node("Reshape", ["t", "s1"], ["r1"]),
                  helper.make_node("Reshape", ["r1", "s2"], ["r"])]
    else:
        shape = [T, C * D] if shape_op == "hardcoded" else [-1, C * D]
        inits.append(onnx.numpy_helper.from_array(np.array(shape, np.int64), "s"))
        nodes.append(helper.make_node("Reshape", ["t", "s"], ["r"]))
    nodes.append(helper.make_node("MatMul", ["r", "W"], ["y"]))
    return b.make(nodes, [b.vi("x", [1, C, T, D])], [b.vi("y", ["R", OUT])], inits)


def _data(n: int = 10) -> calib.DataSet:
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((3, C * T * D))
    x = (rng.standard_normal((n, 3)) @ mix + 0.1 * rng.standard_normal((n, C * T * D)))
    return calib.DataSet({"x": x.reshape(n, C, T, D).astype(np.float32)}, "test")


def _hessians(model: onnx.ModelProto, free: int, observe=("x", "r")):
    layers, _ = find_layers(model)
    accs, obs = collect(model, layers, _data(), 1, get_backend("cpu"), 64, False,
                        observe=list(observe), free_batch=free, subsample=4,
                        hessian_dtype=np.float32)
    return ({k: a.mean() for k, a in accs.items()},
            {k: (o.lo, o.hi, o.signed.copy()) for k, o in obs.items()})


def _runs(monkeypatch) -> list[int]:
    """The batch size of every capture run (onnxruntime's run, wrapped)."""
    import onnxruntime as ort

    sizes: list[int] = []
    real = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, names, feed, *a: (
        sizes.append(next(iter(feed.values())).shape[0]) or real(self, names, feed, *a)))
    return sizes


@pytest.mark.parametrize("shape_op", ["dynamic", "flatten"])
def test_batched_capture_gives_the_per_sample_hessians_and_ranges(shape_op, monkeypatch):
    """A fixed-batch-1 model whose shapes follow the batch: capture in runs of 4 samples
    (after the check runs), the Hessians (subsampled, float32 products) and the range
    observers' extremes and histograms equal to one run per sample's."""
    model = _fixed_model(shape_op)
    before = model.SerializeToString()
    H1, R1 = _hessians(model, free=0)
    sizes = _runs(monkeypatch)
    H4, R4 = _hessians(model, free=4)
    assert max(sizes) == 4 and len(sizes) < 10  # batched: 3 runs + the check's 3
    assert model.SerializeToString() == before  # the proto is restored
    for k in H1:
        np.testing.assert_allclose(H4[k], H1[k], rtol=1e-5, atol=1e-7)
    for k in R1:
        assert R4[k][:2] == pytest.approx(R1[k][:2], rel=1e-6)
        assert np.abs(R4[k][2] - R1[k][2]).sum() <= 2  # a value on a bin edge at most


def test_large_samples_are_captured_fewer_at_a_time(monkeypatch):
    """collect.FREE_RUN_BYTES bounds a batch-free run's fetched tensors: with room for two
    samples' (the MatMul's input r; x is fed, not fetched), runs of 2 instead of 4, the same
    Hessians."""
    import onnx_obc.collect as CO

    model = _fixed_model("dynamic")
    H4, _ = _hessians(model, free=4)
    per = T * C * D * 4  # r, float32, one sample
    monkeypatch.setattr(CO, "FREE_RUN_BYTES", 2 * per + per // 2)
    sizes = _runs(monkeypatch)
    H2, _ = _hessians(model, free=4)
    assert max(sizes) == 2 and len(sizes) > 5  # the check's runs and five of 2 samples
    for k in H4:
        np.testing.assert_allclose(H2[k], H4[k], rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(CO, "FREE_RUN_BYTES", per // 2)  # not even one sample: one a run
    planned = []
    real = CO._passes
    monkeypatch.setattr(CO, "_passes", lambda *a: planned.append(dict(a[2])) or real(*a))
    sizes.clear()
    H1, _ = _hessians(model, free=4)
    assert max(sizes) == 1 and len(sizes) == 10
    assert planned and all(v > 0 for p in planned for v in p.values())  # groups see sizes
    for k in H4:
        np.testing.assert_allclose(H1[k], H4[k], rtol=1e-5, atol=1e-7)


def test_a_hardcoded_batch_falls_back_to_one_sample_per_run(monkeypatch, caplog):
    """Reshape to [T, C*D] pins the batch: the check run fails (onnxruntime refuses the
    reshape of 2 samples), nothing crashes, every capture run has one sample and the
    Hessians are the per-sample ones."""
    model = _fixed_model("hardcoded")
    H1, _ = _hessians(model, free=0)
    sizes = _runs(monkeypatch)
    with caplog.at_level("INFO", logger="onnx_obc.batching"):
        H4, _ = _hessians(model, free=4)
    assert "batched capture refused" in caplog.text
    assert sizes.count(1) >= 10 and set(sizes) <= {1, 2}  # the check's 2-sample run
    for k in H1:
        np.testing.assert_array_equal(H4[k], H1[k])


def test_the_check_finds_each_tensors_sample_layout():
    """[1, C, T, D] inputs stack along axis 0; the LSTM-like [T * N, C*D] rows interleave
    the samples; a Reshape that folds the batch into the features is refused (the graph
    does not run on 2 samples)."""
    model = _fixed_model("dynamic")
    with batch_free(model, {"x": 0}):
        sess = capture_session(model, ["c", "r"], Runtime())
    assert sample_axes(sess, ["c", "r"], _data()) == {"c": (0, False), "r": (0, True)}
    mixed = _fixed_model("flatten")
    mixed.graph.initializer[-1].CopyFrom(onnx.numpy_helper.from_array(
        np.array([T, -1], np.int64), "s"))  # [N, T, C, D] -> [T, N * C * D]: runs at N = 1
    with batch_free(mixed, {"x": 0}):
        sess = capture_session(mixed, ["r"], Runtime())
    assert sample_axes(sess, ["r"], _data()) is None


@pytest.mark.parametrize("shape_op", ["dynamic", "hardcoded"])
def test_verification_runs_batches_when_every_model_passes_the_check(shape_op, monkeypatch):
    """verify.measure with free_batch: the dense model and a perturbed copy run 4 samples
    at once when both batch-free graphs pass the check (the same errors as one sample per
    run, within float rounding), one per run when the batch is hard-coded."""
    from onnx_obc.verify import measure

    dense = _fixed_model(shape_op)
    other = onnx.ModelProto()
    other.CopyFrom(dense)
    w = onnx.numpy_helper.to_array(other.graph.initializer[1]) * 1.01
    other.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(w, "W"))
    models = {"dense": dense, "compressed": other}
    sets = {"held": _data(10)}
    one = measure(models, sets, 1, Runtime())
    sizes = _runs(monkeypatch)
    four = measure(models, sets, 1, Runtime(), free_batch=4)
    assert (max(sizes) == 4) == (shape_op == "dynamic")
    a, b = one["held"]["compressed"], four["held"]["compressed"]
    assert b.samples == a.samples == 10
    assert b.rel_error["y"] == pytest.approx(a.rel_error["y"], rel=1e-5)
    assert b.top1_agreement == pytest.approx(a.top1_agreement)


def _dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its input through DynamicQuantizeLinear -> DequantizeLinear (the
    scale from the whole run: samples of one run interact)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for n in g.node:
        n.input[:] = ["xd" if i == "x" else i for i in n.input]
    g.node.insert(0, helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]))
    g.node.insert(1, helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]))
    return out


@pytest.mark.parametrize("other", ["hardcoded", "dynamic-quantized", "dense fails",
                                   "interleaved dense"])
def test_verification_batches_the_models_that_pass_and_runs_the_others_per_sample(
        other, monkeypatch):
    """A model whose batch-free graph fails the check (a hard-coded batch) or that quantizes
    with run-wide scales (never tried: DynamicQuantize* ops) runs one sample per run while
    the dense model runs 4 at once; the errors are those of one sample per run for both.
    Where the dense model fails it, no other is tried: every model one sample per run."""
    import onnx_obc.batching as batching
    from onnx_obc.verify import measure

    dense = _fixed_model("dynamic" if other == "interleaved dense" else "flatten")  # at one
    # sample, the same function as "hardcoded"; "dynamic": the samples' rows interleaved
    comp = _fixed_model("hardcoded")
    w = onnx.numpy_helper.to_array(comp.graph.initializer[1]) * 1.01
    comp.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(w, "W"))
    comp = _dynamic(comp) if other == "dynamic-quantized" else comp
    if other == "dense fails":
        dense, comp = _fixed_model("hardcoded"), _fixed_model("flatten")
        comp.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(w, "W"))
    models = {"dense": dense, "compressed": comp}
    sets = {"held": _data(10)}
    one = measure(models, sets, 1, Runtime())
    checked = []
    real = batching.sample_axes
    monkeypatch.setattr(batching, "sample_axes", lambda s, *a: checked.append(s) or real(s, *a))
    sizes = _runs(monkeypatch)
    four = measure(models, sets, 1, Runtime(), free_batch=4)
    assert sizes.count(1) >= 10 and (max(sizes) == 4) == (other != "dense fails")
    assert len(checked) == (1 if other in ("dynamic-quantized", "dense fails") else 2)
    a, b_ = one["held"]["compressed"], four["held"]["compressed"]
    assert b_.samples == a.samples == 10 and a.rel_error["y"] > 1e-3
    assert b_.rel_error["y"] == pytest.approx(a.rel_error["y"], rel=1e-5)
    assert b_.top1_agreement == pytest.approx(a.top1_agreement)


def test_narrow_float32_chunks_are_gathered_before_the_product(monkeypatch):
    """One sample per chunk (a fixed-batch model, 8-bit float32 products): the chunks of a
    layer narrower than its d are added d columns at a time (fewer d x d sums), H within
    float32 rounding of the float64 capture, which adds every chunk as it comes."""
    from onnx_obc.hessian import HessianAccumulator

    calls = []
    real = HessianAccumulator.add
    monkeypatch.setattr(HessianAccumulator, "add",
                        lambda self, X, X0=None: calls.append(X.dtype) or real(self, X, X0))
    model = _fixed_model("dynamic")
    layers, _ = find_layers(model)
    out = {}
    for dt in (np.float64, np.float32):
        calls.clear()
        accs, _ = collect(model, layers, _data(), 1, get_backend("cpu"), 64, False,
                          hessian_dtype=dt)
        out[dt] = ({k: a.mean() for k, a in accs.items()}, len(calls))
    assert out[np.float64][1] == 2 * 10  # two layers, ten samples
    assert out[np.float32][1] < out[np.float64][1]
    for k, H in out[np.float64][0].items():
        np.testing.assert_allclose(out[np.float32][0][k], H, rtol=1e-5,
                                   atol=1e-6 * np.abs(H).max())


@pytest.mark.parametrize("shape_op", ["dynamic", "hardcoded"])
def test_sequential_capture_batches_the_model_and_the_dense_reference(shape_op, monkeypatch):
    """With `dense` (--sequential's later groups): the partly compressed model and the dense
    reference both run 4 samples at once when their batch-free graphs pass the check, H and
    the cross moments C those of one run per sample within float rounding; a hard-coded
    batch: both one sample per run (the samples still paired), H and C exactly as before."""
    dense = _fixed_model(shape_op)
    current = onnx.ModelProto()
    current.CopyFrom(dense)
    w = onnx.numpy_helper.to_array(current.graph.initializer[0]) * 1.05
    current.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "cw"))
    layers, _ = find_layers(current)

    def moments(free: int) -> dict:
        accs, _ = collect(current, layers, _data(), 1, get_backend("cpu"), 64, False,
                          dense=dense, free_batch=free)
        return {k: a.take_mean() for k, a in accs.items()}

    one = moments(0)
    sizes = _runs(monkeypatch)
    four = moments(4)
    if shape_op == "dynamic":
        assert max(sizes) == 4 and len(sizes) < 20  # 2 x (3 runs + the check's 3)
    else:
        assert sizes.count(1) >= 20 and set(sizes) <= {1, 2}
    for k, (H, C) in one.items():
        tol = dict(rtol=1e-5, atol=1e-9) if shape_op == "dynamic" else dict(rtol=0, atol=0)
        np.testing.assert_allclose(four[k][0], H, **tol)
        np.testing.assert_allclose(four[k][1], C, **tol)
    H, C = one["W"]  # the MatMul's input differs between the models (the conv's does not)
    assert np.abs(C - H).max() > 1e-3 * np.abs(H).max()
