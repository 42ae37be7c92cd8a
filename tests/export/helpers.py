"""Models and host-side solutions for the export tests (built with onnx.helper)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_obc.export import ChannelFix
from onnx_obc.layers import Layer, constant_weights
from onnx_obc.quant import QuantSpec, codes, fit_grid, rtn
from onnx_obc.solve import HostSolution, HostWeights

from .. import builders as b


def mixed(seed: int = 0) -> onnx.ModelProto:
    """Every place a correction folds into:

        x [N, 2, 5, 5] --conv1(Wa, Ba)--> Relu --conv2(Wb, no bias)--> Flatten [N, 100]
          --gemm(Wg [6, 100], Cg, beta 0.5)--> Relu --mm(Wm [6, 5])--> Add(bm) --> y [N, 5]
    """
    nodes = [helper.make_node("Conv", ["x", "Wa", "Ba"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "Wb"], ["c2"], name="conv2"),
             helper.make_node("Flatten", ["c2"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "Wg", "Cg"], ["g"], name="gemm", transB=1,
                              beta=0.5),
             helper.make_node("Relu", ["g"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "Wm"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "bm"], ["y"], name="add")]
    inits = [b.weight("Wa", (3, 2, 3, 3), seed), b.weight("Ba", (3,), seed + 1),
             b.weight("Wb", (4, 3, 1, 1), seed + 2), b.weight("Wg", (6, 100), seed + 3),
             b.weight("Cg", (6,), seed + 4), b.weight("Wm", (6, 5), seed + 5),
             b.weight("bm", (5,), seed + 6)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 2, 5, 5])], [b.vi("y", [b.BATCH, 5])], inits)


def paddle_convs(seed: int = 0) -> onnx.ModelProto:
    """As paddle2onnx writes it: every Conv has x, w, b, and the weights AND biases are
    outputs of Constant nodes (no initializers).

        x [N, 3, 6, 6] --p2o.Conv.0(w1, b1)--> Relu --p2o.Conv.1(w2, b2)--> y [N, 5, 6, 6]
    """
    rng = np.random.default_rng(seed)

    def const(name: str, shape: tuple[int, ...]) -> onnx.NodeProto:
        t = numpy_helper.from_array((rng.standard_normal(shape) / 3).astype(np.float32), name)
        return helper.make_node("Constant", [], [name], name=f"p2o.Constant.{name}", value=t)

    nodes = [const("w1", (4, 3, 3, 3)), const("b1", (4,)), const("w2", (5, 4, 1, 1)),
             const("b2", (5,)),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="p2o.Conv.0",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"], name="p2o.Relu.0"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="p2o.Conv.1")]
    return b.make(nodes, [b.vi("x", [b.BATCH, 3, 6, 6])], [b.vi("y", [b.BATCH, 5, 6, 6])])


def _host(L: Layer, W: np.ndarray, bits: int | None) -> HostWeights:
    """W [G, r, d] float64 -> host weights (on an RTN grid when `bits`)."""
    if bits is None:
        return HostWeights(L.from_matrix(W))
    G, r, d = W.shape
    grid = fit_grid(W.reshape(G * r, d), QuantSpec(bits=bits))
    q = rtn(W.reshape(G * r, d), grid)
    return HostWeights(L.from_matrix(q.reshape(G, r, d)),
                       codes(q, grid).reshape(G, r, d), grid, bits)


def solutions(model: onnx.ModelProto, layers: list[Layer], bits: int | None = None,
              seed: int = 0) -> dict[str, HostSolution]:
    """Half the weights zeroed (compressed: one mask; baseline: another), RTN with `bits`."""
    rng = np.random.default_rng(seed)
    weights = constant_weights(model.graph)
    out = {}
    for L in layers:
        W = L.to_matrix(numpy_helper.to_array(weights[L.weight][1])).astype(np.float64)
        out[L.weight] = HostSolution(_host(L, W * (rng.random(W.shape) < 0.5), bits),
                                     _host(L, W * (rng.random(W.shape) < 0.5), bits))
    return out


def fixes(layers: list[Layer], scale: bool = True, seed: int = 0) -> dict[str, ChannelFix]:
    """A random shift (and scale) per output channel of every use."""
    rng = np.random.default_rng(seed)
    out = {}
    for L in layers:
        _, r, _ = L.matrix_shape
        m = r * L.matrix_shape[0]
        for u in L.uses:
            a = 1.0 + 0.2 * rng.standard_normal(m) if scale and len(L.uses) == 1 else None
            out[u.node] = ChannelFix(rng.standard_normal(m), a)
    return out


def tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant (initializer or Constant node value) by name."""
    return {k: numpy_helper.to_array(t) for k, (_, t) in constant_weights(model.graph).items()}
