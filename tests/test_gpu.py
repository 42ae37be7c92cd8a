"""CuPy path against NumPy: same masks, losses within 1e-4 relative. Skipped without a GPU;
`python -m pytest -p tests.fakedev.plugin -m gpu tests/test_gpu.py` runs them on the fake
device (checks the tests themselves, ~2 min)."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.backend import get_backend
from onnx_obc.errors import DeviceError
from onnx_obc.solvers import Unstructured, solve_layer

from .solvers.data import correlated_H, weights


def _cupy_backend():
    try:
        be = get_backend("cuda")
    except DeviceError as exc:
        pytest.skip(str(exc))
    return be


pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("shape", [(1, 32, 64), (2, 16, 72), (1, 128, 288)])
def test_cupy_solver_matches_numpy(shape):
    be = _cupy_backend()
    G, r, d = shape
    W = np.concatenate([weights(r, d, g) for g in range(G)])
    H = np.stack([correlated_H(d, g) for g in range(G)])
    cpu = solve_layer(W, H, structure=Unstructured(0.5))
    gpu = solve_layer(be.to_device(W), be.to_device(H), structure=Unstructured(0.5))
    np.testing.assert_array_equal(be.to_host(gpu.W) == 0, cpu.W == 0)
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-4)
    assert gpu.baseline_loss == pytest.approx(cpu.baseline_loss, rel=1e-9)


def test_cupy_hessian_matches_numpy():
    be = _cupy_backend()
    from onnx_obc.hessian import conv_columns
    from onnx_obc.layers import Use

    use = Use(node="c", op="Conv", input="x", kernel=(3, 3), strides=(2, 1), dilations=(1, 2),
              pads=(1, 0, 2, 1), group=2)
    x = np.random.default_rng(0).standard_normal((3, 4, 9, 11))
    a = conv_columns(use, x)
    b = be.to_host(conv_columns(use, be.to_device(x)))
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("method", ["obc", "gptq"])
@pytest.mark.parametrize("sparsity", [None, 0.5])
def test_cupy_quantization_matches_numpy(method, sparsity):
    from onnx_obc.quant import QuantSpec

    be = _cupy_backend()
    W = weights(48, 96, 3)
    H = correlated_H(96, 3)[None]
    spec = QuantSpec(bits=4)
    st = None if sparsity is None else Unstructured(sparsity)
    cpu = solve_layer(W, H, structure=st, quant=spec, method=method)
    gpu = solve_layer(be.to_device(W), be.to_device(H), structure=st, quant=spec,
                      method=method)
    same = (be.to_host(gpu.codes) == cpu.codes).mean()
    assert same >= 0.99  # float32 near-ties may flip a few roundings
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-3)


@pytest.mark.parametrize("kind", ["nm", "block"])
def test_cupy_structured_matches_numpy(kind):
    from onnx_obc.solvers import NM, Blocks, linear_nm_groups

    be = _cupy_backend()
    W = weights(64, 128, 4)
    H = correlated_H(128, 4)[None]
    groups = linear_nm_groups(128, 4)
    st = (NM(2, 4) if kind == "nm" else Blocks(4, 0.5)).on_columns(groups)
    cpu = solve_layer(W, H, structure=st)
    gpu = solve_layer(be.to_device(W), be.to_device(H),
                      structure=st)  # host column groups, as the pipeline passes them
    same = ((be.to_host(gpu.W) == 0) == (cpu.W == 0)).mean()
    assert same >= 0.99 and gpu.zeros == cpu.zeros
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-3)


def test_cupy_pipeline_with_mixed_levels_matches_numpy():
    """The BOP-budget allocation (one solve per mixed level) and the final solve on CuPy."""
    from pathlib import Path

    from onnx_obc import convert

    _cupy_backend()
    models = Path(__file__).resolve().parents[1] / "models"
    kw = dict(allocate="dp", budget="bops", target=32, act_bits=8, progress=False,
              calib=models / "digits_vit.calib.npz", eval_data=models / "digits_vit.eval.npz")
    cpu = convert(models / "digits_vit.onnx", None, device="cpu", **kw)
    gpu = convert(models / "digits_vit.onnx", None, device="cuda", **kw)
    assert gpu.report.device != cpu.report.device  # "cuda (CuPy, ...)", or the fake device
    assert gpu.report.profile["choice"] == cpu.report.profile["choice"]
    assert gpu.report.profile["error"] == pytest.approx(cpu.report.profile["error"], rel=1e-2)
    e = [max(r.report.fidelity["eval"]["compressed"].rel_error.values()) for r in (cpu, gpu)]
    assert e[1] == pytest.approx(e[0], rel=0.05)
