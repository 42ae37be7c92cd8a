"""Gated units built in code (opset 17): down(act(gate(x)) * up(x)) as Llama / Mistral /
Qwen (SwiGLU), Gemma and T5 v1.1 (GeGLU) export their MLPs, a gated Conv block, and Muls
of two activations that are not gated units."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from tests import builders as b


def _c(name: str, arr) -> object:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _silu(x: str, name: str) -> list:
    """x * Sigmoid(x), as torch's TorchScript exporter writes SiLU."""
    return [helper.make_node("Sigmoid", [x], [f"{name}.s"], name=f"{name}.sig"),
            helper.make_node("Mul", [x, f"{name}.s"], [f"{name}.o"], name=f"{name}.mul")]


def gated_mlp(d: int = 8, hidden: int = 16, t: int = 4, seed: int = 0, act: str = "silu",
              bias: bool = False, up_first: bool = False, scale: bool = False):
    """[N, T, d] -> gate MatMul (+ bias) -> act -> Mul <- up MatMul (+ bias) -> down MatMul.
    act: silu (Sigmoid + Mul), tanh, none (a bilinear GLU); `up_first`: the up projection
    comes first in the graph (it owns the site then); `scale`: a per-channel constant Mul on
    the up branch (sliced with it)."""
    rng = np.random.default_rng(seed)
    inits = [b.weight("gate.w", (d, hidden), seed), b.weight("up.w", (d, hidden), seed + 1),
             b.weight("down.w", (hidden, d), seed + 2)]
    n = helper.make_node
    gate = [n("MatMul", ["x", "gate.w"], ["g0"], name="gate")]
    g = "g0"
    up = [n("MatMul", ["x", "up.w"], ["u0"], name="up")]
    u = "u0"
    if bias:
        inits += [_c("gate.b", rng.standard_normal(hidden)),
                  _c("up.b", rng.standard_normal(hidden))]
        gate.append(n("Add", ["g0", "gate.b"], ["g1"], name="gate.add"))
        up.append(n("Add", ["u0", "up.b"], ["u1"], name="up.add"))
        g, u = "g1", "u1"
    if scale:
        inits.append(_c("up.scale", 1 + 0.1 * rng.standard_normal(hidden)))
        up.append(n("Mul", [u, "up.scale"], ["u2"], name="up.scale"))
        u = "u2"
    if act == "silu":
        gate += _silu(g, "act")
        g = "act.o"
    elif act == "tanh":
        gate.append(n("Tanh", [g], ["act.o"], name="act"))
        g = "act.o"
    nodes = (up + gate if up_first else gate + up) + [
        n("Mul", [g, u], ["h"], name="glu"),
        n("MatMul", ["h", "down.w"], ["y"], name="down")]
    return b.make(nodes, [b.vi("x", ["N", t, d])], [b.vi("y", ["N", t, d])], inits)


def gated_conv(c_in: int = 3, mid: int = 8, c_out: int = 5, seed: int = 0):
    """[N, C, 6, 6] -> Conv 1x1 (bias) -> Sigmoid -> Mul <- Conv 3x3 (bias) -> Conv 3x3: a
    gated convolution (the gate's channels are the up branch's)."""
    rng = np.random.default_rng(seed)
    inits = [b.weight("g.w", (mid, c_in, 1, 1), seed), _c("g.b", rng.standard_normal(mid)),
             b.weight("p.w", (mid, c_in, 3, 3), seed + 1), _c("p.b", rng.standard_normal(mid)),
             b.weight("c.w", (c_out, mid, 3, 3), seed + 2)]
    n = helper.make_node
    nodes = [n("Conv", ["x", "p.w", "p.b"], ["p"], name="prod", pads=[1, 1, 1, 1]),
             n("Conv", ["x", "g.w", "g.b"], ["g"], name="gate"),
             n("Sigmoid", ["g"], ["s"], name="sig"),
             n("Mul", ["p", "s"], ["h"], name="glu"),
             n("Conv", ["h", "c.w"], ["y"], name="cons", pads=[1, 1, 1, 1])]
    return b.make(nodes, [b.vi("x", ["N", c_in, 6, 6])], [b.vi("y", ["N", c_out, 6, 6])],
                  inits)


def not_gated(kind: str, d: int = 8, t: int = 4, seed: int = 0):
    """A MatMul producer whose channels meet another activation in a Mul that is no gated
    unit: kind `input` (the model's input x itself), `fanout` (the other branch's
    activation also feeds a graph output), `width` (the other producer's 2d channels
    sliced to d by a Slice: not per channel)."""
    inits = [b.weight("p.w", (d, d), seed), b.weight("q.w", (d, 2 * d if kind == "width"
                                                              else d), seed + 1),
             b.weight("c.w", (d, d), seed + 2)]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "p.w"], ["p"], name="prod")]
    outs = [b.vi("y", ["N", t, d])]
    other = "x"
    if kind in ("fanout", "width"):
        nodes.append(n("MatMul", ["x", "q.w"], ["q"], name="other"))
        nodes.append(n("Sigmoid", ["q"], ["qs"], name="sig"))
        other = "qs"
        if kind == "fanout":
            outs.append(b.vi("qs", ["N", t, d]))
        else:
            inits += [numpy_helper.from_array(np.array([v], dtype=np.int64), k)
                      for k, v in (("s0", 0), ("s1", d), ("ax", -1))]
            nodes.append(n("Slice", ["qs", "s0", "s1", "ax"], ["qh"], name="half"))
            other = "qh"
    nodes += [n("Mul", ["p", other], ["h"], name="mul"),
              n("MatMul", ["h", "c.w"], ["y"], name="cons")]
    return b.make(nodes, [b.vi("x", ["N", t, d])], outs, inits)


def fused_mlp(d: int = 8, hidden: int = 16, t: int = 4, seed: int = 0, how: str = "split",
              bias: bool = True):
    """The gate and up projections of gated_mlp(bias=...) as one MatMul [d, 2 hidden] (+ a
    bias Add [2 hidden]) chunked in two, as Phi-3 exports: how `split` (Split into two
    equal outputs), `slices` (two Slices whose bounds torch's chunk computes from Shape:
    half = size / 2), `constant` (two Slices with constant bounds: refused), `uneven` (a
    Split with sizes [h + 1, h - 1]: refused). Same weights as gated_mlp(bias=bias, seed)."""
    base = gated_mlp(d, hidden, t, seed, bias=bias)
    w = {i.name: numpy_helper.to_array(i) for i in base.graph.initializer}
    n = helper.make_node
    inits = [numpy_helper.from_array(np.hstack([w["gate.w"], w["up.w"]]), "gu.w"),
             numpy_helper.from_array(w["down.w"], "down.w")]
    nodes = [n("MatMul", ["x", "gu.w"], ["h0"], name="gu")]
    h = "h0"
    if bias:
        inits.append(numpy_helper.from_array(np.concatenate([w["gate.b"], w["up.b"]]), "gu.b"))
        nodes.append(n("Add", ["h0", "gu.b"], ["h1"], name="gu.add"))
        h = "h1"
    ints = lambda k, v: numpy_helper.from_array(np.array(v, dtype=np.int64), k)  # noqa: E731
    if how in ("split", "uneven"):
        extra = [] if how == "split" else ["sizes"]
        if how == "uneven":
            inits.append(ints("sizes", [hidden + 1, hidden - 1]))
        nodes.append(n("Split", [h, *extra], ["g", "u"], name="chunk", axis=-1))
    elif how == "slices":
        inits += [ints("last", -1), ints("two", 2), ints("zero", [0]), ints("ax", [-1]),
                  ints("big", [2 ** 62]), ints("at0", [0])]
        nodes += [n("Shape", [h], ["s"], name="shape"),
                  n("Gather", ["s", "last"], ["c"], name="size", axis=0),
                  n("Div", ["c", "two"], ["half0"], name="half"),
                  n("Unsqueeze", ["half0", "at0"], ["half1"], name="half.u"),
                  n("Slice", [h, "zero", "half1", "ax"], ["g"], name="first"),
                  n("Slice", [h, "half1", "big", "ax"], ["u"], name="second")]
    else:  # constant bounds
        inits += [ints("zero", [0]), ints("hid", [hidden]), ints("end", [2 * hidden]),
                  ints("ax", [-1])]
        nodes += [n("Slice", [h, "zero", "hid", "ax"], ["g"], name="first"),
                  n("Slice", [h, "hid", "end", "ax"], ["u"], name="second")]
    nodes += _silu("g", "act") + [n("Mul", ["act.o", "u"], ["m"], name="glu"),
                                  n("MatMul", ["m", "down.w"], ["y"], name="down")]
    return b.make(nodes, [b.vi("x", ["N", t, d])], [b.vi("y", ["N", t, d])], inits)


def glu_conv(c_in: int = 4, mid: int = 8, c_out: int = 5, seed: int = 0):
    """A Conformer convolution module: Conv 1x1 to 2 mid channels -> GLU on the channel axis
    (Split, Sigmoid of the second half, Mul) -> depthwise Conv 3x3 (bias) -> Relu -> Conv."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    inits = [b.weight("pw1.w", (2 * mid, c_in, 1, 1), seed),
             _c("pw1.b", rng.standard_normal(2 * mid)),
             b.weight("dw.w", (mid, 1, 3, 3), seed + 1), _c("dw.b", rng.standard_normal(mid)),
             b.weight("pw2.w", (c_out, mid, 1, 1), seed + 2)]
    nodes = [n("Conv", ["x", "pw1.w", "pw1.b"], ["p"], name="pw1"),
             n("Split", ["p"], ["a", "g"], name="glu.split", axis=1),
             n("Sigmoid", ["g"], ["s"], name="glu.sig"),
             n("Mul", ["a", "s"], ["m"], name="glu"),
             n("Conv", ["m", "dw.w", "dw.b"], ["d"], name="dw", group=mid, pads=[1, 1, 1, 1]),
             n("Relu", ["d"], ["r"], name="act"),
             n("Conv", ["r", "pw2.w"], ["y"], name="pw2")]
    return b.make(nodes, [b.vi("x", ["N", c_in, 6, 6])], [b.vi("y", ["N", c_out, 6, 6])],
                  inits)


def squeeze_excite(c_in: int = 4, mid: int = 16, squeeze: int = 8, c_out: int = 5,
                   seed: int = 0, pool: str = "global"):
    """An inverted-residual block with squeeze-excite (MobileNetV3): Conv 1x1 (expand, bias)
    -> Relu -> x; x -> GlobalAveragePool -> Conv 1x1 (squeeze, bias) -> Relu -> Conv 1x1
    (excite, bias) -> HardSigmoid -> Mul(x, .) -> Conv 3x3 (project). `pool`: `global`,
    `reducemean` (ReduceMean over H, W keeping them), `average` (a 2x2 AveragePool: no global
    pool, so no squeeze-excite)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    inits = [b.weight("e.w", (mid, c_in, 1, 1), seed), _c("e.b", rng.standard_normal(mid)),
             b.weight("s.w", (squeeze, mid, 1, 1), seed + 1),
             _c("s.b", rng.standard_normal(squeeze)),
             b.weight("x.w", (mid, squeeze, 1, 1), seed + 2), _c("x.b", rng.standard_normal(mid)),
             b.weight("p.w", (c_out, mid, 3, 3), seed + 3)]
    if pool == "global":
        pooled = [n("GlobalAveragePool", ["x"], ["pl"], name="pool")]
    elif pool == "reducemean":
        pooled = [n("ReduceMean", ["x"], ["pl"], name="pool", axes=[2, 3], keepdims=1)]
    else:
        pooled = [n("AveragePool", ["x"], ["pl"], name="pool", kernel_shape=[6, 6])]
    nodes = [n("Conv", ["in", "e.w", "e.b"], ["e"], name="expand"),
             n("Relu", ["e"], ["x"], name="act"), *pooled,
             n("Conv", ["pl", "s.w", "s.b"], ["sq"], name="squeeze"),
             n("Relu", ["sq"], ["sr"], name="sq.act"),
             n("Conv", ["sr", "x.w", "x.b"], ["ex"], name="excite"),
             n("HardSigmoid", ["ex"], ["gate"], name="gate", alpha=1 / 6, beta=0.5),
             n("Mul", ["x", "gate"], ["m"], name="scale"),
             n("Conv", ["m", "p.w"], ["y"], name="project", pads=[1, 1, 1, 1])]
    return b.make(nodes, [b.vi("in", ["N", c_in, 6, 6])], [b.vi("y", ["N", c_out, 6, 6])],
                  inits)
