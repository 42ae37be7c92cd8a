"""Bias correction after compression: it lowers the output error, folds into existing biases
or adds a bias input, and reports the layers it cannot correct."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from onnx_obc import convert
from onnx_obc.config import CompressConfig
from onnx_obc.correct import bias_targets
from onnx_obc.layers import find_layers

from . import builders as b

MODELS = Path(__file__).resolve().parents[1] / "models"


def _err(res, name):
    return max(res.report.fidelity["eval"][name].rel_error.values())


def test_correction_lowers_the_output_error_on_held_out_data():
    res = convert(MODELS / "digits_vit.onnx", None, sparsity=0.7, correct=True,
                  calib=MODELS / "digits_vit.calib.npz", eval_data=MODELS / "digits_vit.eval.npz",
                  progress=False, device="cpu")
    assert _err(res, "compressed") < 0.9 * _err(res, "uncorrected")
    shifts = res.report.correction["mean_abs_shift_per_pass"]
    assert len(shifts) >= 2 and all(s >= 0 for s in shifts)


def test_conv_without_bias_gets_one_and_matmul_uses_its_add():
    cnn = onnx.load(MODELS / "digits_cnn.onnx")  # the stem Conv has no bias input
    layers, _ = find_layers(cnn, CompressConfig(sparsity=0.5))
    targets, skipped = bias_targets(cnn, layers)
    assert set(targets) == {L.name for L in layers} and not skipped
    vit = onnx.load(MODELS / "digits_vit.onnx")
    layers, _ = find_layers(vit, CompressConfig(sparsity=0.5))
    targets, _ = bias_targets(vit, layers)
    assert targets["attn.q"][1][0] == "add"  # MatMul -> Add(bias)
    res = convert(cnn, None, sparsity=0.5, correct=True, progress=False, device="cpu",
                  calib=MODELS / "digits_cnn.calib.npz")
    stem = next(n for n in res.model.graph.node if n.name == "stem")
    assert len(stem.input) == 3  # a bias input was added
    names = [n.op_type for n in res.model.graph.node]
    assert names == [n.op_type for n in cnn.graph.node]  # no node added or removed


def test_matmul_without_bias_is_reported():
    model = b.mlp((8, 16, 4))
    feed = b.feeds(model, 40)
    res = convert(model, None, sparsity=0.5, correct=True, calib=[feed], progress=False,
                  device="cpu")
    assert any("no bias to fold" in w for w in res.report.warnings)
