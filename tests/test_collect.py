"""collect.py's per-channel means: taken from the capture's own runs of the dense model
(the mean correction's reference, without a pass of its own), only where they fit the
groups the Hessians need."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx

from onnx_obc import calib as calib_mod
from onnx_obc import correct as C
from onnx_obc.backend import get_backend
from onnx_obc.collect import ChannelMean, collect
from onnx_obc.config import CompressConfig
from onnx_obc.layers import find_layers

MODELS = Path(__file__).resolve().parents[1] / "models"


def _digits():
    model = onnx.load(MODELS / "digits_cnn.onnx")
    layers, _ = find_layers(model)
    data = calib_mod.DataSet({"input": np.load(MODELS / "digits_cnn.calib.npz")["input"][:48]},
                             "calib")
    return model, layers, data


W8A8_ORT = CompressConfig.from_options(None, bits=8, act_bits=8, runtime="onnxruntime")


def _all(data):  # a Calibration whose correction measures every calibration sample
    return SimpleNamespace(fit=data, corrected=data)


def test_the_capture_takes_the_means_the_correction_pass_measures():
    """Every correction site's output mean from the capture equals the correction's own
    pass over the same samples (conv outputs: per channel over batch and positions; the
    Gemm's over the batch)."""
    model, layers, data = _digits()
    means = C.reference_means(model, layers, W8A8_ORT, _all(data))
    assert len(means) == len(layers) >= 3
    collect(model, layers, data, 16, get_backend("cpu"), 2048, False, means=means)
    sites, _ = C.bias_targets(model, layers)
    outputs = {label: s.output for label, s in sites.items()}
    ref = C._output_means(model, outputs, data, 16, ["CPUExecutionProvider"])
    for label, t in outputs.items():
        assert means[t].n > 0 and means[t].mean().shape == ref[label].shape
        np.testing.assert_allclose(means[t].mean(), ref[label], rtol=1e-5,
                                   atol=1e-6 * np.abs(ref[label]).max())


def test_means_that_would_cost_another_pass_are_not_taken():
    """With a budget that gives every tensor a group of its own (each group one pass over
    the data), the outputs would add passes: none is taken, the Hessians are unchanged."""
    model, layers, data = _digits()
    means = C.reference_means(model, layers, W8A8_ORT, _all(data))
    tight, _ = collect(model, layers, data, 16, get_backend("cpu"), 0, False, means=means)
    assert all(m.n == 0 for m in means.values())
    plain, _ = collect(model, layers, data, 16, get_backend("cpu"), 0, False)
    for w in plain:
        np.testing.assert_array_equal(tight[w].mean(), plain[w].mean())


def test_no_means_where_the_correction_does_not_run_on_the_captured_model():
    """None (the capture takes none) where no correction runs (tensorrt target, --no-correct),
    with the scale correction and with --sequential, and where the correction measures a
    subset of the calibration samples (its means then from its own pass over them)."""
    model, layers, data = _digits()
    for kw in (dict(runtime="tensorrt"), dict(correct=False), dict(correct_scale=True),
               dict(sequential=True)):
        cfg = CompressConfig.from_options(None, bits=8, act_bits=8,
                                          **{"runtime": "onnxruntime", **kw})
        assert C.reference_means(model, layers, cfg, _all(data)) is None, kw
    assert C.reference_means(model, layers, W8A8_ORT, _all(data))
    subset = SimpleNamespace(fit=data, corrected=data.take(np.arange(16)))
    assert C.reference_means(model, layers, W8A8_ORT, subset) is None


def test_channel_mean_streams_batches_in_float64():
    rng = np.random.default_rng(0)
    y = (1e4 + rng.standard_normal((6, 3, 5, 5))).astype(np.float32)
    m = ChannelMean(1)
    for part in np.split(y, 3):
        m.add(part)
    assert m.n == 6 * 25
    np.testing.assert_allclose(m.mean(), y.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    last = ChannelMean(-1)
    last.add(y[:, :, 0, :])
    np.testing.assert_allclose(last.mean(), y[:, :, 0, :].astype(np.float64).mean(axis=(0, 1)),
                               rtol=1e-12)


def test_a_free_batch_is_captured_in_runs_of_capture_batch_samples(monkeypatch):
    """Where the batch is free (shrink) the capture runs CAPTURE_BATCH samples at a time,
    in one pass where a full batch's tensors would not fit the budget; the same Hessians.
    With shrink off (a fixed batch): full batches, in groups, as before."""
    import onnx_obc.collect as K

    model, layers, data = _digits()  # 48 samples
    inputs = {i.name for i in model.graph.input}
    names = list(dict.fromkeys(u.input for L in layers for u in L.uses if u.input not in inputs))
    first = next(data.batches(48))[1]
    total = sum(K.activation_bytes(model, names, first).values())
    seen: list[tuple[int, int]] = []  # (pass, samples) per run
    real = K.capture

    def spy(sess, group, batches):
        for samples, acts in real(sess, group, batches):
            seen.append((id(sess), samples))
            yield samples, acts

    whole, _ = collect(model, layers, data, 48, get_backend("cpu"), 64, False)
    monkeypatch.setattr(K, "capture", spy)
    monkeypatch.setattr(K, "MB", 1)  # memory_mb in bytes
    budget = int(0.75 * total)
    assert len(K.plan_groups([[n] for n in names], K.activation_bytes(model, names, first),
                             budget)) > 1
    small, _ = collect(model, layers, data, 48, get_backend("cpu"), budget, False, shrink=True)
    assert [s for _, s in seen] == [K.CAPTURE_BATCH] * (48 // K.CAPTURE_BATCH)
    assert len({p for p, _ in seen}) == 1
    for w, acc in whole.items():
        np.testing.assert_allclose(small[w].mean(), acc.mean(), rtol=1e-10)
    seen.clear()
    collect(model, layers, data, 48, get_backend("cpu"), budget, False, shrink=False)
    assert len({p for p, _ in seen}) > 1 and {s for _, s in seen} == {48}


def test_the_means_are_worth_a_pass_only_when_they_add_none():
    """_passes: runs of CAPTURE_BATCH samples where the batch is free, the means' tensors in
    the one pass where they fit; with a fixed batch they are left out rather than costing a
    second pass, and kept where the passes are several anyway and they add none."""
    from onnx_obc.collect import CAPTURE_BATCH, _passes

    units, extra = [["a"], ["b"]], [["c"]]
    sizes = {"a": 60, "b": 50, "c": 40}
    assert CAPTURE_BATCH == 8
    assert _passes(units, extra, sizes, 120, 32, True) == (8, [["a", "b", "c"]], True)
    assert _passes(units, extra, sizes, 30, 32, True) == (8, [["a", "b"]], False)  # 37.5
    assert _passes(units, extra, sizes, 120, 32, False) == (32, [["a", "b"]], False)
    assert _passes(units, extra, sizes, 90, 32, False) == (32, [["a"], ["b", "c"]], True)
    assert _passes(units, [], sizes, 100, 32, True) == (8, [["a", "b"]], True)
    assert _passes(units, [], sizes, 100, 4, True) == (4, [["a"], ["b"]], True)  # < 8

def test_capture_runs_fetching_large_tensors_do_without_the_memory_arena(monkeypatch):
    """A capture session fetching a tensor of capture.ARENA_MAX bytes or more per run is
    built without onnxruntime's CPU memory arena, the others keep it; the Hessians are the
    same either way."""
    import onnx_obc.capture as CA
    import onnx_obc.collect as CO

    model, layers, data = _digits()
    made: list[bool] = []
    real = CA.session

    def spy(m, providers, optimize=False, arena=True):
        made.append(arena)
        return real(m, providers, optimize, arena)

    monkeypatch.setattr(CA, "session", spy)

    def run(limit):
        made.clear()
        monkeypatch.setattr(CO, "ARENA_MAX", limit)
        accs, _ = collect(model, layers, data, 16, get_backend("cpu"), 2048, False)
        return accs, list(made)

    kept, arenas = run(1 << 30)
    assert arenas and all(arenas)
    less, arenas = run(1)
    assert arenas and not any(arenas)
    for w in kept:
        np.testing.assert_array_equal(kept[w].mean(), less[w].mean())


def test_kept_outputs_give_way_to_the_means(monkeypatch):
    """The graph outputs a Captured keeps ride in the capture's runs like the means; where
    the two together would cost a pass and the means alone would not, the means are taken
    and the outputs left (the verification then runs the dense model)."""
    from onnx_obc import collect as collect_mod
    from onnx_obc.refs import Captured

    model, layers, data = _digits()  # + a Softmax: an output no correction site shares
    model.graph.node.append(onnx.helper.make_node("Softmax", ["logits"], ["probs"]))
    model.graph.output[0].name = "probs"
    names = ["probs"]
    passes = collect_mod._passes

    def tight(units, extra, sizes, budget, batch, shrink):  # no room for the outputs
        run, groups, keep = passes(units, extra, sizes, budget, batch, shrink)
        return run, groups, keep and not any(e[0] in names for e in extra)
    monkeypatch.setattr(collect_mod, "_passes", tight)
    means = C.reference_means(model, layers, W8A8_ORT, _all(data))
    kept = Captured(np.arange(data.n), names)
    collect(model, layers, data, 16, get_backend("cpu"), 2048, False, means=means,
            outputs=kept)
    assert all(m.n > 0 for m in means.values()) and not kept.per
    monkeypatch.setattr(collect_mod, "_passes", passes)  # room for both
    means = C.reference_means(model, layers, W8A8_ORT, _all(data))
    kept = Captured(np.arange(data.n), names)
    collect(model, layers, data, 16, get_backend("cpu"), 2048, False, means=means,
            outputs=kept)
    assert all(m.n > 0 for m in means.values()) and len(kept.per) == data.n
