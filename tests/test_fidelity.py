"""fidelity: the measures, and which outputs the model's error reads (a decoder's KV-cache
outputs aside, every output's error still kept)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx_obc import calib, verify
from onnx_obc.capture import Runtime
from onnx_obc.fidelity import Fidelity, cache_outputs, is_logits, scored_outputs

from . import builders as b


def test_top1_agreement_only_for_class_scores():
    """[batch, classes] and a CTC head's [batch, steps, classes] get a top-1 agreement; a
    detector's [N, 1, H, W] probability map does not (its last axis is the width: PP-OCR's
    text detectors reported 41% "agreement" on a map within 0.08 of dense); nor do
    independent probabilities (Basic Pitch's sigmoid notes: 31% "agreement" at a note-frame
    F1 of 98), while a softmax's rows, summing to 1, do."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 40, 97))
    assert is_logits(logits[:, 0]) and is_logits(logits)
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert is_logits(soft.astype(np.float32))
    assert not is_logits(1 / (1 + np.exp(-logits)))  # sigmoid: several classes or none
    assert not is_logits(np.zeros((4, 1, 32, 32))) and not is_logits(np.zeros((4, 1)))
    assert not is_logits(np.zeros(4))
    emb = logits[:, 0] / np.linalg.norm(logits[:, 0], axis=-1, keepdims=True)
    assert not is_logits(emb.astype(np.float32))  # a normalized embedding: no classes


def test_the_kv_cache_outputs_are_found_by_their_concat_of_a_past_input():
    model = b.decoder_step()
    assert cache_outputs(model) == {"present"} and scored_outputs(model) == ["logits"]
    assert scored_outputs(b.mlp()) == ["y"]
    only = copy.deepcopy(model)  # every output a cache: none set aside
    del only.graph.output[0]
    assert cache_outputs(only) == set()
    two = copy.deepcopy(model)  # a Concat of what a layer computes from the past: no cache
    two.graph.node[1].CopyFrom(helper.make_node("MatMul", ["past", "W1"], ["p1"]))
    assert cache_outputs(two) == set()
    cast = copy.deepcopy(model)  # through a Cast and a Transpose pair: still the cache
    cast.graph.node[1].CopyFrom(helper.make_node("Cast", ["past"], ["c0"], to=1))
    cast.graph.node.insert(2, helper.make_node("Transpose", ["c0"], ["c1"], perm=[0, 2, 1]))
    cast.graph.node.insert(3, helper.make_node("Transpose", ["c1"], ["p1"], perm=[0, 2, 1]))
    assert cache_outputs(cast) == {"present"}
    mixed = copy.deepcopy(model)  # an Add on the way: the past is computed on, no cache
    mixed.graph.node[1].CopyFrom(helper.make_node("Add", ["past", "past"], ["p1"]))
    assert cache_outputs(mixed) == set()


@pytest.mark.parametrize("name, cache", [("present.0.key", True), ("present_values", True),
                                         ("PRESENT.1.encoder.value", True), ("keys", False),
                                         ("presence", False), ("y.present.0", False)])
def test_with_no_past_input_the_cache_is_known_by_its_name(name, cache):
    """A first decoding step (no past to concatenate): the cache output is the key
    projection itself, known by the name Hugging Face's exporters give it."""
    model = b.decoder_step()
    g = model.graph
    g.node[2].CopyFrom(helper.make_node("Identity", ["k"], [name], name="cache"))
    del g.node[1]
    del g.input[1]
    g.output[1].name = name
    assert cache_outputs(model) == ({name} if cache else set())


def test_the_models_error_reads_the_outputs_not_aside():
    f = Fidelity(8, {"logits": 0.02, "present.0": 0.09, "present.1": 0.05},
                 aside=("present.0", "present.1"))
    assert f.counted == {"logits": 0.02} and f.error == 0.02 and f.mean_error == 0.02
    assert f.to_dict()["error"] == 0.02 and f.to_dict()["rel_error"]["present.0"] == 0.09
    every = Fidelity(8, {"a": 0.1, "b": 0.3}, aside=("a", "b"))  # all aside: all read
    assert every.error == 0.3 and every.mean_error == pytest.approx(0.2)
    plain = Fidelity(8, {"a": 0.1, "b": 0.3})
    assert plain.error == 0.3 and "outputs_aside" not in plain.to_dict()
    assert Fidelity().error == 0.0 and Fidelity().mean_error == 0.0


@pytest.mark.parametrize("apart", [False, True])
def test_measure_sets_a_decoders_cache_aside(apart, monkeypatch):
    """The key projection perturbed: its error in the cache output is its own (large), on
    the logits small; the model's error is the logits', computed here with NumPy, whether
    the sessions run together or two at a time."""
    model = b.decoder_step()
    other = copy.deepcopy(model)
    wk = numpy_helper.to_array(next(t for t in other.graph.initializer if t.name == "Wk"))
    for t in other.graph.initializer:
        if t.name == "Wk":
            t.CopyFrom(numpy_helper.from_array((wk * 1.3).astype(np.float32), "Wk"))
    feed = b.feeds(model, 24, seed=4)
    if apart:
        monkeypatch.setattr(verify, "ONE_AT_A_TIME", 0)
    got = verify.measure({"dense": model, "c": other}, {"s": calib.DataSet(feed, "feeds")}, 8,
                         Runtime(("CPUExecutionProvider",)))["s"]["c"]
    y0, y = (np.asarray(b.run(m, feed)[0], np.float64) for m in (model, other))
    want = float(np.sqrt(((y - y0) ** 2).sum() / (y0 ** 2).sum()))
    assert got.aside == ("present",)
    assert got.error == pytest.approx(want, rel=1e-5) == got.rel_error["logits"]
    assert got.rel_error["present"] > 10 * got.error == pytest.approx(10 * got.mean_error)
