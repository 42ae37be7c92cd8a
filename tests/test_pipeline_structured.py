"""N:M and blocks end to end: the pattern holds along the axis TensorRT reads on every
compressed tensor (a Polygraphy-style check), layers that cannot hold it stay dense with
their reason, and the acceptance figures on the shipped models hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from onnx_obc import convert
from onnx_obc.config import CompressConfig
from onnx_obc.errors import ConfigError
from onnx_obc.layers import find_layers

MODELS = Path(__file__).resolve().parents[1] / "models"


def nm_ok(w: np.ndarray, op: str, trans_b: bool, n: int, m: int) -> bool:
    """Every run of m along the reduction axis has >= n zeros (TensorRT's 2:4 rule):
    Conv W[M, C, *k] axis 1; MatMul / Gemm(transB=0) B[K, N] axis 0; Gemm(transB=1) axis 1."""
    axis = 1 if op == "Conv" or (op == "Gemm" and trans_b) else 0
    a = np.moveaxis(w, axis, -1)
    if a.shape[-1] % m:
        return False
    runs = a.reshape(*a.shape[:-1], a.shape[-1] // m, m)
    return bool(((runs == 0).sum(axis=-1) >= n).all())


def _run(name, **kw):
    return convert(MODELS / f"{name}.onnx", None, calib=MODELS / f"{name}.calib.npz",
                   eval_data=MODELS / f"{name}.eval.npz", progress=False, device="cpu", **kw)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_vit"])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_pattern_on_every_compressed_tensor(name, nm):
    res = _run(name, nm=nm)
    layers, _ = find_layers(res.model)
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    compressed = {x.weight for x in res.report.layers}
    dense_reason = [s for s in res.report.skipped if "left dense" in s.reason]
    for L in layers:
        if L.weight in compressed:
            trans_b = L.layout == "rows"
            assert nm_ok(inits[L.weight], L.op, trans_b, *nm), L.name
    assert dense_reason  # the 1-input-channel convs cannot hold N:M and are reported
    ev = res.report.fidelity["eval"]
    if nm == (2, 4):  # acceptance: within 1.5 pt, at most half of magnitude 2:4's loss
        drop = ev["dense"].accuracy - ev["compressed"].accuracy
        assert drop <= 0.015
        assert drop <= 0.5 * max(ev["dense"].accuracy - ev["magnitude"].accuracy, 0.0) + 1e-9
        wide = [x.ratio for x in res.report.layers if x.cols >= 64]
        assert max(wide) <= 0.6


def test_blocks_are_whole_and_the_count_exact():
    res = _run("digits_vit", sparsity=0.5, block=4)
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    for x in res.report.layers:
        w = inits[x.weight]  # blocks of 4 along K: MatMul B[K, N] axis 0, Gemm B[N, K] axis 1
        a = w if x.op == "Gemm" else w.T
        runs = a.reshape(a.shape[0], -1, 4)
        z = (runs == 0).sum(axis=-1)
        assert set(np.unique(z)) <= {0, 4}  # whole blocks only
        assert abs(int((z == 4).sum()) - round(0.5 * w.size / 4)) <= 0
    ev = res.report.fidelity["eval"]
    assert ev["compressed"].accuracy > ev["magnitude"].accuracy


def test_structured_option_errors():
    with pytest.raises(ConfigError, match="drop prune.sparsity"):
        CompressConfig.from_options(nm=(2, 4), sparsity=0.5)
    with pytest.raises(ConfigError, match="0 < N < M"):
        CompressConfig.from_options(nm=(4, 4))
    with pytest.raises(ConfigError, match="add prune.sparsity"):
        CompressConfig.from_options(block=4)
