"""CuPy path against NumPy: same masks, losses within 1e-4 relative. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.backend import get_backend
from onnx_obc.errors import DeviceError
from onnx_obc.solvers import prune_layer

from .test_solvers import correlated_H, weights


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
    cpu = prune_layer(W, H, sparsity=0.5)
    gpu = prune_layer(be.to_device(W), be.to_device(H), sparsity=0.5)
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
    from onnx_obc.solvers import solve_layer

    be = _cupy_backend()
    W = weights(48, 96, 3)
    H = correlated_H(96, 3)[None]
    spec = QuantSpec(bits=4)
    cpu = solve_layer(W, H, sparsity=sparsity, quant=spec, method=method)
    gpu = solve_layer(be.to_device(W), be.to_device(H), sparsity=sparsity, quant=spec,
                      method=method)
    same = (be.to_host(gpu.codes) == cpu.codes).mean()
    assert same >= 0.99  # float32 near-ties may flip a few roundings
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-3)
