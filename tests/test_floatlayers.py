"""Layers written float after the solve (onnx_obc/floatlayers.py): --float-layer, without
measuring, quantize-only (the layer left out, its input weights) and pruned (its zeros
kept, written float, its row without bits)."""

from __future__ import annotations

import numpy as np
import onnx

from onnx_obc import convert, floatcheck
from onnx_obc.floatlayers import forced
from onnx_obc.layers import find_layers

from . import builders as b
from .export.test_ortstem import mobile


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_patterns_name_solved_layers_by_their_nodes() -> None:
    layers = find_layers(mobile())[0]
    solved = {L.weight: None for L in layers if L.weight != "Wd2"}
    assert forced(layers, solved, ("dw*", "fc")) == {"Wd": "dw*", "Wf": "fc"}  # dw2 unsolved
    assert forced(layers, solved, ()) == {}


def test_a_float_layer_in_a_quantize_only_run_keeps_its_input_weights(monkeypatch) -> None:
    def fail(*a, **k):
        raise AssertionError("--float-layer measures nothing")
    monkeypatch.setattr(floatcheck, "_accept", fail)
    m = mobile()
    r = convert(m, None, calib=[b.feeds(m, 24, seed=2)], bits=8, float_layers=["pw"],
                progress=False)
    (s,) = r.report.skipped
    assert (s.node, s.reason) == ("pw", "kept float by --float-layer 'pw'")
    assert "pw" not in {row.name for row in r.report.layers} and len(r.report.layers) == 6
    assert np.array_equal(_weights(r.model)["Wp"], _weights(m)["Wp"])
    assert "--float-layer: pw written float, not measured" in r.report.notes


def test_a_float_layer_in_a_pruned_run_keeps_its_zeros() -> None:
    """W8A8 on onnxruntime at 50%: the named layer solved with the rest (pruned, on the
    grid), written float: its row stays, without bits; one integer layer fewer."""
    m = mobile()
    kw = dict(calib=[b.feeds(m, 64, seed=2)], sparsity=0.5, allocate="uniform", bits=8,
              act_bits=8, runtime="onnxruntime", float_stem=False, float_highres=False,
              float_heads=False, progress=False)
    r = convert(m, None, float_layers=["pw"], **kw)
    base = convert(m, None, **kw)
    rows = {row.name: row for row in r.report.layers}
    assert r.report.skipped == [] and rows["pw"].bits is None and rows["dw2"].bits == 8
    w = _weights(r.model)["Wp"]
    assert w.dtype == np.float32 and np.isclose((w == 0).mean(), rows["pw"].sparsity)
    assert rows["pw"].sparsity > 0.3
    assert r.report.fusion["layers"] == base.report.fusion["layers"] - 1


def test_a_pattern_that_names_no_layer_is_refused_before_any_work(monkeypatch) -> None:
    import pytest

    import onnx_obc.pipeline as pipeline
    from onnx_obc import ConfigError

    def fail(*a, **k):
        raise AssertionError("refused before the calibration data is read")
    monkeypatch.setattr(pipeline, "_calibration", fail)
    m = mobile()
    with pytest.raises(ConfigError, match=r"'pww' matches no layer to compress .*stem, dw"):
        convert(m, None, calib=[b.feeds(m, 8, seed=2)], bits=8, float_layers=["pw", "pww"],
                progress=False)


def test_bits_allocated_by_bops_or_a_profile_with_bits(tmp_path) -> None:
    import json

    from onnx_obc import CompressConfig
    from onnx_obc.floatlayers import bits_allocated

    def profile(choice: dict) -> str:
        path = tmp_path / f"p{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"version": 1, "choice": choice, "cost": 1.0, "error": 0.0,
                                    "budget": 1.0}))
        return str(path)
    cfg = CompressConfig.from_options
    assert not bits_allocated(cfg(bits=8, act_bits=8))
    assert not bits_allocated(cfg(sparsity=0.5, bits=8))  # the default DP: zeros only
    assert bits_allocated(cfg(allocate="dp", budget="bops", target=8))
    assert bits_allocated(cfg(bits=8, profile=profile({"fc": "2:4+w4", "pw": 0.5})))
    assert not bits_allocated(cfg(bits=8, profile=profile({"fc": 0.7, "pw": "0.3"})))
