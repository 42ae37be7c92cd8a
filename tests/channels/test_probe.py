"""probe.py: the sizes shape inference leaves unknown are measured in a session of the run's
Runtime (its providers and custom ops, as sensitivity.py's), and when onnxruntime cannot run
the model (or there is no sample) the fallback to the inferred shapes is a run warning."""

from __future__ import annotations

import onnx
import pytest

from onnx_obc.capture import Runtime
from onnx_obc.channels import layer_macs, probe
from onnx_obc.channels.probe import probe_sizes
from onnx_obc.errors import ModelError
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import graphs


def _dynamic() -> onnx.ModelProto:
    """transformer_mlp with its sequence length T only known at run time."""
    m = onnx.ModelProto()
    m.CopyFrom(graphs.transformer_mlp(t=4))
    for v in [*m.graph.input, *m.graph.output]:
        v.type.tensor_type.shape.dim[1].dim_param = "T"
    return m


def test_the_probe_runs_in_the_runs_runtime(monkeypatch, tmp_path):
    model, seen = _dynamic(), []
    real = probe._session
    monkeypatch.setattr(probe, "_session", lambda m, n, rt: seen.append(rt) or real(m, n, rt))
    rt = Runtime(("CPUExecutionProvider",), None)
    sizes, why = probe_sizes(model, b.feeds(model, 2), rt)
    assert seen and seen[0] is rt and not why
    assert sizes and all(d[1] == 4 for d in sizes.values())  # T measured
    # a custom-op library the run was given is registered on the probe's session too
    missing = Runtime(("CPUExecutionProvider",), str(tmp_path / "ops.so"))
    with pytest.raises(ModelError, match="does not exist"):
        real(model, list(sizes), missing)
    sizes, why = probe_sizes(model, b.feeds(model, 2), missing)
    assert sizes == {} and "could not run the model" in why and "does not exist" in why


def test_the_probe_needs_a_reason_only_when_sizes_are_unknown():
    static = graphs.transformer_mlp(t=4)
    assert probe_sizes(static, None) == ({}, "")  # every size known: nothing to measure
    sizes, why = probe_sizes(_dynamic(), None)
    assert sizes == {} and "no calibration sample" in why and "taken as 1" in why


def test_a_probe_that_cannot_run_is_a_run_warning(monkeypatch):
    """As sensitivity.py's fallback: the inferred shapes are used (T counted 1) and the
    run's report says so."""
    from onnx_obc import convert

    def fail(*a):
        raise RuntimeError("Foo is not a registered op")

    monkeypatch.setattr(probe, "_session", fail)
    model = _dynamic()
    r = convert(model, None, calib=[b.feeds(model, 64, seed=1)], channels=0.3,
                progress=False)
    (w,) = [w for w in r.report.warnings if "taken as 1" in w]
    assert "could not run the model (Foo is not a registered op)" in w
    layers = find_layers(model)[0]
    assert r.report.channels["macs_dense"] == layer_macs(model, layers)  # inferred: T = 1


def test_a_model_with_a_fixed_batch_of_one_is_probed_at_its_batch():
    """A probe batch of 2 cannot run a model whose batch axis is fixed at 1 (ddddocr's
    recognizer): the probe runs the run's own batch, so T is measured, not taken as 1."""
    from onnx_obc import convert

    dynamic = _dynamic()
    feed = b.feeds(dynamic, 64, seed=1)  # [64, T=4, 8]: the samples along the batch axis
    fixed = onnx.ModelProto()
    fixed.CopyFrom(dynamic)
    for v in [*fixed.graph.input, *fixed.graph.output]:
        v.type.tensor_type.shape.dim[0].dim_value = 1  # batch fixed at 1, T still symbolic
    r = convert(fixed, None, calib=[feed], channels=0.3, progress=False)
    assert not [w for w in r.report.warnings if "taken as 1" in w]
    layers = find_layers(fixed)[0]
    sizes = {t: [None, 4, *d[2:]] for t, d in {"x": [1, 4, 8], "h": [1, 4, 16], "r": [1, 4, 16],
                                               "o": [1, 4, 8]}.items()}
    assert r.report.channels["macs_dense"] == layer_macs(fixed, layers, sizes=sizes)
    assert r.report.channels["macs_dense"] == 4 * layer_macs(fixed, layers)  # T = 4, not 1
