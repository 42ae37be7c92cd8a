"""verify: fidelity against the dense model, the same whether the sessions are held together
or two at a time (large models)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnx_obc import calib, verify
from onnx_obc.capture import Runtime
from onnx_obc.refs import Captured, sum_sq
from onnx_obc.export.values import apply_weights
from onnx_obc.layers import constant_weights, select_layers
from onnx_obc.specs import Selection

from . import builders as b


def test_two_sessions_at_a_time_give_the_same_fidelity(monkeypatch):
    model = b.mlp((8, 12, 4), seed=1)
    layers, _ = select_layers(model, Selection())
    rng = np.random.default_rng(0)
    weights = constant_weights(model.graph)
    other = {}
    for i, L in enumerate(layers):
        w = numpy_helper.to_array(weights[L.weight][1])
        other[L.weight] = w * (1 + 0.1 * (i + 1) * rng.standard_normal(w.shape)).astype(w.dtype)
    models = {"dense": model, "a": apply_weights(model, layers, other),
              "b": apply_weights(model, layers[:1], {layers[0].weight: other[layers[0].weight]})}
    sets = {"held-out": calib.DataSet(b.feeds(model, 40, seed=2), "feeds")}
    rt = Runtime(("CPUExecutionProvider",))
    together = verify.measure(models, sets, 16, rt)
    monkeypatch.setattr(verify, "ONE_AT_A_TIME", 0)
    apart = verify.measure(models, sets, 16, rt)
    assert apart["held-out"].keys() == together["held-out"].keys() == models.keys()
    for k in models:
        assert apart["held-out"][k].to_dict() == together["held-out"][k].to_dict()
    errs = [together["held-out"][k].rel_error for k in ("dense", "a", "b")]
    assert all(v == 0 for v in errs[0].values())
    assert all(v > 0 for e in errs[1:] for v in e.values())


def test_sums_of_squares_in_float32_match_float64():
    """verify's error sums: float32 outputs squared in float32, summed in float64, within
    1e-6 relative of the all-float64 sums (other dtypes take float64 throughout)."""
    rng = np.random.default_rng(3)
    y0 = (rng.standard_normal((4, 40, 6625)) * 3).astype(np.float32)
    y = y0 + (0.01 * rng.standard_normal(y0.shape)).astype(np.float32)
    want_ref = float(np.square(y0.astype(np.float64)).sum())
    want_err = float(np.square(y.astype(np.float64) - y0).sum())
    assert abs(sum_sq(y0) - want_ref) <= 1e-6 * want_ref
    assert abs(sum_sq(y, y0) - want_err) <= 1e-6 * want_err
    ints = np.arange(10, dtype=np.int64)
    assert sum_sq(ints, ints[::-1].copy()) == float(np.square(ints - ints[::-1]).sum())


def test_the_dense_outputs_are_kept_for_the_next_measure():
    """References: the second measure on the same sets reads the dense model's outputs of
    the first (its dense model is not even loaded: an empty proto would fail), with the same
    fidelity; over the budget nothing is kept and the dense model runs again."""
    import onnx
    import pytest

    from onnx_obc.errors import ModelError

    model = b.mlp((8, 12, 4), seed=1)
    layers, _ = select_layers(model, Selection())
    w = numpy_helper.to_array(constant_weights(model.graph)[layers[0].weight][1])
    other = apply_weights(model, layers[:1], {layers[0].weight: w * 1.1})
    sets = {"held-out": calib.DataSet(b.feeds(model, 40, seed=2), "feeds"),
            "eval": calib.DataSet(b.feeds(model, 24, seed=3), "feeds")}
    rt = Runtime(("CPUExecutionProvider",))
    refs = verify.References()
    first = verify.measure({"dense": model, "a": other}, sets, 16, rt, refs=refs)
    assert refs.used > 0 and len(refs.sets) == 2
    again = verify.measure({"dense": onnx.ModelProto(), "a": other}, sets, 16, rt, refs=refs)
    for s in sets:
        assert again[s]["a"].to_dict() == first[s]["a"].to_dict()
        assert again[s]["a"].rel_error["y"] > 0 and again[s]["dense"].rel_error["y"] == 0
    assert first == verify.measure({"dense": model, "a": other}, sets, 16, rt)  # no refs
    small = verify.References(budget=0)
    verify.measure({"dense": model, "a": other}, sets, 16, rt, refs=small)
    assert small.sets == {} and small.used == 0
    with pytest.raises(ModelError):
        verify.measure({"dense": onnx.ModelProto(), "a": other}, sets, 16, rt, refs=small)


@pytest.mark.parametrize("kept_as", ["dense", "perturbed", "none"])
def test_per_sample_verification_takes_the_captured_dense_outputs(kept_as, monkeypatch):
    """A compressed model with run-wide scales runs one sample at a time beside the dense
    model's batch-free runs of 4: with the dense outputs the capture kept (Captured), the
    dense model runs for the first batch only, whose outputs are compared first; kept
    outputs that do not match, or none, and it runs for every batch. The same fidelity."""
    from onnx import helper

    from .test_batching import C, D, T, _data, _dynamic, _runs

    def conv(scale: float) -> onnx.ModelProto:  # x [1, C, T, D] -> y [1, C, T, D]
        w = numpy_helper.to_array(b.weight("cw", [C, C, 1, 1], 1)) * scale
        return b.make([helper.make_node("Conv", ["x", "cw"], ["y"], kernel_shape=[1, 1])],
                      [b.vi("x", [1, C, T, D])], [b.vi("y", [1, C, T, D])],
                      [numpy_helper.from_array(w, "cw")])

    dense, data = conv(1.0), _data(10)
    models = {"dense": dense, "compressed": _dynamic(conv(1.01))}
    kept = Captured(np.arange(data.n), ["y"])
    one = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])
    for i, (_, feed) in enumerate(data.batches(1)):
        y = one.run(["y"], feed)[0] * (1.01 if kept_as == "perturbed" else 1.0)
        kept.add({"y": y}, i, 1)
    assert kept.batch(9, 1) is not None
    rt = Runtime(("CPUExecutionProvider",))
    want = verify.measure(models, {"held": data}, 1, rt, free_batch=4)
    sizes = _runs(monkeypatch)
    got = verify.measure(models, {"held": data}, 1, rt, free_batch=4,
                         samples={"held": kept} if kept_as != "none" else None)
    assert got["held"]["compressed"].rel_error["y"] == pytest.approx(
        want["held"]["compressed"].rel_error["y"], rel=1e-6)
    assert got["held"]["compressed"].rel_error["y"] > 1e-3
    dense_runs = [s for s in sizes if s > 1]  # the batch-free check's probe (2), then the
    assert dense_runs == ([2, 4] if kept_as == "dense" else [2, 4, 4, 2])  # dense model's
    assert sizes.count(1) >= 10  # the compressed model: one sample a run


@pytest.mark.parametrize("opts", [dict(sparsity=0.5), dict(bits=8, act_bits=8),
                                  dict(bits=4, runtime="onnxruntime")])
def test_a_classifier_with_a_label_output_and_a_sequence_of_maps(tmp_path, opts):
    """skl2onnx's layout (label [N] int64 first, the probabilities as ZipMap's sequence of
    maps): the run compares the class scores ZipMap reads and scores top-1 and accuracy
    on them (before: a traceback in the capture, "'list' object has no attribute
    'ndim'"); the written file keeps its outputs' types (graph-surgeon wrote the sequence
    as a tensor of no type, which onnxruntime refused after MatMulNBits)."""
    import onnxruntime as ort

    from onnx_obc import convert

    model = b.zipmap_classifier()
    calib = b.feeds(model, 64)
    ev = {**b.feeds(model, 32, seed=1)}
    dense = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ev["labels"] = dense.run(["label"], ev)[0]
    r = convert(model, tmp_path / "out.onnx", calib=calib, eval_data=ev, progress=False, **opts)
    fid = r.report.fidelity["eval"]["compressed"]
    assert set(fid.rel_error) == {"probs.scores"}  # no relative error of class indices
    assert 0 < fid.rel_error["probs.scores"] < 0.5
    assert fid.top1_agreement is not None and fid.accuracy is not None and fid.accuracy > 0.5
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert [o.type for o in out.graph.output] == [o.type for o in model.graph.output]
    s = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    label, probs = s.run(None, {"x": ev["x"]})
    assert isinstance(probs, list) and set(probs[0]) == {0, 1, 2, 3}
    assert np.mean(label == ev["labels"]) == pytest.approx(fid.accuracy)
