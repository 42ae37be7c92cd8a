"""observe.py: tensors that hold another observed tensor's values (value-preserving ops, zero
Pads) get the observer binning them would give, without binning them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_obc import calib as calib_mod
from onnx_obc.actrange import RangeObserver
from onnx_obc.backend import get_backend
from onnx_obc.collect import collect
from onnx_obc.layers import find_layers
from onnx_obc.observe import Observers

OBSERVED = ["r", "t", "sq", "p_const", "p_run", "p_crop", "conv_in"]


def _model() -> onnx.ModelProto:
    """x [N, 4, 6, 6] -> Relu r; Transpose t (of r), Unsqueeze + Squeeze sq (of t: a
    chain); zero Pads of r with constant pads (p_const; p_crop: one negative), with pads
    computed at run time (p_run: a crop on runs whose mean x is negative); a Conv reading
    Identity(p_const)."""
    inits = [
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads_c"),
        numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 2, 1], np.int64), "pads_base"),
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 0, 2], np.int64), "pads_step"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, -1, 1], np.int64), "pads_neg"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
        numpy_helper.from_array(
            np.random.default_rng(0).standard_normal((3, 4, 3, 3)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Unsqueeze", ["t", "ax0"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax0"], ["sq"]),
        helper.make_node("Pad", ["r", "pads_c"], ["p_const"], mode="constant"),
        # run-time pads: pads_base - pads_step * [mean(x) < 0] (a crop on such batches)
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
        helper.make_node("Less", ["m", "zero"], ["neg"]),
        helper.make_node("Cast", ["neg"], ["negi"], to=TensorProto.INT64),
        helper.make_node("Mul", ["pads_step", "negi"], ["cut"]),
        helper.make_node("Sub", ["pads_base", "cut"], ["pads_r"]),
        helper.make_node("Pad", ["r", "pads_r"], ["p_run"], mode="constant"),
        helper.make_node("Pad", ["r", "pads_neg"], ["p_crop"], mode="constant"),
        helper.make_node("Identity", ["p_const"], ["conv_in"]),
        helper.make_node("Conv", ["conv_in", "w"], ["y"]),
    ]
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 4, 6, 6])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None), helper.make_tensor_value_info(
            "sq", TensorProto.FLOAT, None), helper.make_tensor_value_info(
            "p_run", TensorProto.FLOAT, None), helper.make_tensor_value_info(
            "p_crop", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _data(shift: float) -> calib_mod.DataSet:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((24, 4, 6, 6)).astype(np.float32)
    x[:8] += 0.5  # mean > 0: p_run pads
    x[8:16] += shift  # the second run of 8 (shift < 0: mean < 0, p_run crops there)
    x[16:] = x[16:] * 3.0 + 0.5  # a later run widens the histogram's range
    return calib_mod.DataSet({"x": x}, "calib")


def _direct(model: onnx.ModelProto, data: calib_mod.DataSet, names: list[str]
            ) -> dict[str, RangeObserver]:
    """Every named tensor binned, run by run (what the capture did before observe.py)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names
                          if n not in have)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = {n: RangeObserver() for n in names}
    for _, feed in data.batches(8):
        for n, v in zip(names, s.run(names, feed)):
            out[n].add(v)
    return out


def test_which_tensors_are_copies_and_what_is_fetched_for_them():
    obs = Observers(_model(), OBSERVED)
    assert {t: c.src for t, c in obs.copies.items()} == {
        "t": "r", "sq": "r", "p_const": "r", "p_run": "r"}
    # constant pads with a negative one (a crop), and a copy of a padded copy: binned
    assert set(obs.own) == {"r", "p_crop", "conv_in"}
    units = obs.fetch({"x"})
    assert ["r", "p_run", "pads_r"] in units and ["r", "p_const"] in units
    assert not any("t" in u or "sq" in u for u in units)  # value copies are not fetched


@pytest.mark.parametrize("shift,memory_mb", [(0.0, 2048), (-3.0, 2048), (-3.0, 0)])
def test_derived_observers_equal_binning_every_tensor(shift, memory_mb):
    """Same histogram, extremes and ranges as binning each tensor, run by run: through
    value-preserving chains, constant zero pads, run-time pads, and (shift < 0) a run
    whose pads crop, after which that tensor is binned on its own; with no memory (a
    capture in several passes, tensors in more than one) each observed once, the Pads
    binned on their own."""
    model, data = _model(), _data(shift)
    layers, _ = find_layers(model)
    _, got = collect(model, layers, data, 8, get_backend("cpu"), memory_mb, False,
                     observe=OBSERVED)
    ref = _direct(model, data, OBSERVED)
    assert list(got) == OBSERVED
    for n in OBSERVED:
        a, b = got[n], ref[n]
        np.testing.assert_array_equal(a.signed, b.signed, err_msg=n)
        assert (a.amax, a.top, a.lo, a.hi) == (b.amax, b.top, b.lo, b.hi), n
        for method in ("minmax", "percentile", "mse"):
            assert a.bounds(method) == b.bounds(method), (n, method)
            assert a.scale(method) == b.scale(method), (n, method)


def test_a_run_with_a_crop_turns_the_pad_into_a_binned_tensor():
    model, data = _model(), _data(-3.0)
    obs = Observers(model, OBSERVED)
    s = ort.InferenceSession(_with_outputs(model, ["r", "p_run", "pads_r"]).SerializeToString(),
                             providers=["CPUExecutionProvider"])
    for k, (_, feed) in enumerate(data.batches(8)):
        acts = dict(zip(["r", "p_run", "pads_r"], s.run(["r", "p_run", "pads_r"], feed)))
        obs.add(acts, lambda n: n in acts)
        assert ("p_run" in obs.copies) == (k == 0)  # the second run crops


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return m
