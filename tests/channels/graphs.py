"""Small channel-pruning graphs built in code (opset 17), each with a producer -> consumer
site or a pattern that must be refused."""

from __future__ import annotations

import itertools

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests import builders as b


def axes(layer) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of a layer's ONNX weight, spelled out for
    the tests: MatMul B [K, N] and ConvTranspose W [C, M, *k] hold their outputs on axis 1."""
    return (1, 0) if layer.layout in ("cols", "deconv") else (0, 1)


def _c(name: str, arr: np.ndarray):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _w(name: str, shape, seed: int):
    return b.weight(name, shape, seed)


def conv_bn_relu_conv(c_in: int = 3, mid: int = 8, c_out: int = 5, seed: int = 0):
    """Conv(3x3, bias) -> BatchNormalization -> Relu -> Conv(3x3, bias)."""
    rng = np.random.default_rng(seed)
    inits = [_w("p.w", (mid, c_in, 3, 3), seed), _c("p.b", rng.standard_normal(mid)),
             _c("bn.s", 1 + 0.1 * rng.standard_normal(mid)), _c("bn.b", rng.standard_normal(mid)),
             _c("bn.m", 0.1 * rng.standard_normal(mid)), _c("bn.v", 1 + rng.random(mid)),
             _w("c.w", (c_out, mid, 3, 3), seed + 1), _c("c.b", rng.standard_normal(c_out))]
    nodes = [helper.make_node("Conv", ["x", "p.w", "p.b"], ["p"], name="prod", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["p", "bn.s", "bn.b", "bn.m", "bn.v"],
                              ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "c.w", "c.b"], ["y"], name="cons", pads=[1] * 4)]
    return b.make(nodes, [b.vi("x", ["N", c_in, 6, 6])], [b.vi("y", ["N", c_out, 6, 6])], inits)



def deconv_bn_relu_conv(c_in: int = 3, mid: int = 8, c_out: int = 5, seed: int = 0):
    """ConvTranspose(4x4, stride 2, bias) -> BatchNormalization -> Relu -> Conv(3x3): a
    ConvTranspose producer, its output channels on its weight's axis 1."""
    rng = np.random.default_rng(seed)
    inits = [_w("p.w", (c_in, mid, 4, 4), seed), _c("p.b", rng.standard_normal(mid)),
             _c("bn.s", 1 + 0.1 * rng.standard_normal(mid)), _c("bn.b", rng.standard_normal(mid)),
             _c("bn.m", 0.1 * rng.standard_normal(mid)), _c("bn.v", 1 + rng.random(mid)),
             _w("c.w", (c_out, mid, 3, 3), seed + 1), _c("c.b", rng.standard_normal(c_out))]
    nodes = [helper.make_node("ConvTranspose", ["x", "p.w", "p.b"], ["p"], name="prod",
                              kernel_shape=[4, 4], strides=[2, 2], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["p", "bn.s", "bn.b", "bn.m", "bn.v"],
                              ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "c.w", "c.b"], ["y"], name="cons", pads=[1] * 4)]
    return b.make(nodes, [b.vi("x", ["N", c_in, 5, 5])], [b.vi("y", ["N", c_out, 10, 10])],
                  inits)


def conv_relu_deconv(c_in: int = 3, mid: int = 8, c_out: int = 5, seed: int = 0):
    """Conv(3x3) -> Relu -> ConvTranspose(2x2, stride 2): a ConvTranspose consumer, its
    input channels on its weight's axis 0 (a U-Net's up-sampler)."""
    rng = np.random.default_rng(seed)
    inits = [_w("p.w", (mid, c_in, 3, 3), seed), _c("p.b", rng.standard_normal(mid)),
             _w("c.w", (mid, c_out, 2, 2), seed + 1), _c("c.b", rng.standard_normal(c_out))]
    nodes = [helper.make_node("Conv", ["x", "p.w", "p.b"], ["p"], name="prod", pads=[1] * 4),
             helper.make_node("Relu", ["p"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "c.w", "c.b"], ["y"], name="cons",
                              kernel_shape=[2, 2], strides=[2, 2])]
    return b.make(nodes, [b.vi("x", ["N", c_in, 6, 6])], [b.vi("y", ["N", c_out, 12, 12])],
                  inits)

def conv_leaky_max_conv(c_in: int = 3, mid: int = 8, c_out: int = 5, seed: int = 0,
                        per_channel: bool = False):
    """tf2onnx's Conv -> LeakyRelu -> Max(., c) -> Conv, the floor c [1, 1, 1, 1] shared
    with a second Max on the consumer's output (openWakeWord's embedding shares one);
    per_channel: c [1, mid, 1, 1] (and c_out = mid), which a cut would have to slice."""
    rng = np.random.default_rng(seed)
    c_out = mid if per_channel else c_out
    inits = [_w("p.w", (mid, c_in, 3, 3), seed), _c("p.b", rng.standard_normal(mid)),
             _w("c.w", (c_out, mid, 3, 3), seed + 1), _c("c.b", rng.standard_normal(c_out)),
             _c("floor", np.full((1, mid if per_channel else 1, 1, 1), -0.4))]
    nodes = [helper.make_node("Conv", ["x", "p.w", "p.b"], ["p"], name="prod", pads=[1] * 4),
             helper.make_node("LeakyRelu", ["p"], ["l"], name="leaky", alpha=0.2),
             helper.make_node("Max", ["l", "floor"], ["m"], name="max"),
             helper.make_node("Conv", ["m", "c.w", "c.b"], ["c"], name="cons", pads=[1] * 4),
             helper.make_node("Max", ["floor", "c"], ["y"], name="max_out")]
    return b.make(nodes, [b.vi("x", ["N", c_in, 6, 6])], [b.vi("y", ["N", c_out, 6, 6])], inits)


def depthwise_block(c_in: int = 3, mid: int = 6, c_out: int = 4, seed: int = 0):
    """Conv 1x1 -> Relu -> depthwise Conv 3x3 (bias) -> Clip -> Conv 1x1, plus a per-channel
    Mul constant [1, C, 1, 1] and PRelu slopes [C, 1, 1] on the way."""
    rng = np.random.default_rng(seed)
    inits = [_w("p.w", (mid, c_in, 1, 1), seed), _c("dw.w", rng.standard_normal((mid, 1, 3, 3))),
             _c("dw.b", rng.standard_normal(mid)), _c("s", 1 + rng.random((1, mid, 1, 1))),
             _c("slope", 0.1 * rng.random((mid, 1, 1))), _c("lo", 0.0), _c("hi", 6.0),
             _w("c.w", (c_out, mid, 1, 1), seed + 1)]
    nodes = [helper.make_node("Conv", ["x", "p.w"], ["p"], name="prod"),
             helper.make_node("PRelu", ["p", "slope"], ["a"], name="prelu"),
             helper.make_node("Conv", ["a", "dw.w", "dw.b"], ["d"], name="dw", group=mid,
                              pads=[1] * 4),
             helper.make_node("Mul", ["d", "s"], ["m"], name="scale"),
             helper.make_node("Clip", ["m", "lo", "hi"], ["r"], name="clip"),
             helper.make_node("Conv", ["r", "c.w"], ["y"], name="cons")]
    return b.make(nodes, [b.vi("x", ["N", c_in, 5, 5])], [b.vi("y", ["N", c_out, 5, 5])], inits)


def same_pad_block(c_in: int = 3, mid: int = 6, c_out: int = 4, seed: int = 0,
                   pads_input: bool = False):
    """Conv 1x1 -> Clip -> Pad (a "same" pad computed at run time from Shape, as PyTorch
    exports TF-style padding) -> depthwise Conv 3x3 (no pads) -> Clip -> Conv 1x1;
    pads_input: the pads are a graph input instead (nothing to evaluate them from).
    The spatial size is fixed (5 x 5), so the fold makes the pads a constant."""
    rng = np.random.default_rng(seed)
    ints = {"two": [2], "zeros2": [0, 0], "one": [1]}
    inits = [_w("p.w", (mid, c_in, 1, 1), seed), _c("dw.w", rng.standard_normal((mid, 1, 3, 3))),
             _c("dw.b", rng.standard_normal(mid)), _c("lo", 0.0), _c("hi", 6.0),
             _w("c.w", (c_out, mid, 1, 1), seed + 1),
             *(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items())]
    nodes = [helper.make_node("Conv", ["x", "p.w"], ["p"], name="prod"),
             helper.make_node("Clip", ["p", "lo", "hi"], ["a"], name="relu6")]
    if not pads_input:  # (H - H) + 1 on each side of H and W
        nodes += [helper.make_node("Shape", ["a"], ["shape"], name="shape"),
                  helper.make_node("Gather", ["shape", "two"], ["h"], name="h", axis=0),
                  helper.make_node("Sub", ["h", "h"], ["zero"], name="zero"),
                  helper.make_node("Add", ["zero", "one"], ["q"], name="q"),
                  helper.make_node("Concat", ["zeros2", "q", "q", "zeros2", "q", "q"],
                                   ["pads"], name="pads", axis=0)]
    nodes += [helper.make_node("Pad", ["a", "pads"], ["ap"], name="pad"),
              helper.make_node("Conv", ["ap", "dw.w", "dw.b"], ["d"], name="dw", group=mid),
              helper.make_node("Clip", ["d", "lo", "hi"], ["r"], name="clip"),
              helper.make_node("Conv", ["r", "c.w"], ["y"], name="cons")]
    ins = [b.vi("x", ["N", c_in, 5, 5])]
    if pads_input:
        ins.append(helper.make_tensor_value_info("pads", TensorProto.INT64, [8]))
    return b.make(nodes, ins, [b.vi("y", ["N", c_out, 5, 5])], inits)


def conv_silu_conv(c_in: int = 3, mid: int = 8, c_out: int = 5, seed: int = 0):
    """Conv(3x3, bias) -> x * Sigmoid(x) (SiLU as exported by PyTorch) -> Conv(1x1)."""
    rng = np.random.default_rng(seed)
    inits = [_w("p.w", (mid, c_in, 3, 3), seed), _c("p.b", rng.standard_normal(mid)),
             _w("c.w", (c_out, mid, 1, 1), seed + 1)]
    nodes = [helper.make_node("Conv", ["x", "p.w", "p.b"], ["p"], name="prod", pads=[1] * 4),
             helper.make_node("Sigmoid", ["p"], ["sg"], name="sig"),
             helper.make_node("Mul", ["p", "sg"], ["r"], name="silu"),
             helper.make_node("Conv", ["r", "c.w"], ["y"], name="cons")]
    return b.make(nodes, [b.vi("x", ["N", c_in, 6, 6])], [b.vi("y", ["N", c_out, 6, 6])], inits)


def transformer_mlp(d: int = 8, hidden: int = 16, t: int = 4, seed: int = 0):
    """[N, T, d] MatMul -> Add bias -> Relu -> MatMul -> Add bias."""
    rng = np.random.default_rng(seed)
    inits = [_w("fc1.w", (d, hidden), seed), _c("fc1.b", rng.standard_normal(hidden)),
             _w("fc2.w", (hidden, d), seed + 1), _c("fc2.b", rng.standard_normal(d))]
    nodes = [helper.make_node("MatMul", ["x", "fc1.w"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "fc1.b"], ["hb"], name="bias1"),
             helper.make_node("Relu", ["hb"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "fc2.w"], ["o"], name="fc2"),
             helper.make_node("Add", ["o", "fc2.b"], ["y"], name="bias2")]
    return b.make(nodes, [b.vi("x", ["N", t, d])], [b.vi("y", ["N", t, d])], inits)


def mlp_gelu(d: int = 8, hidden: int = 16, t: int = 4, seed: int = 0, leak: bool = False):
    """[N, T, d] MatMul -> Add bias -> GELU as PyTorch exports it before opset 20 (x * 0.5 *
    (1 + Erf(x / sqrt 2)), five nodes) -> MatMul. `leak`: the Erf output is also a graph
    output (the region does not close)."""
    rng = np.random.default_rng(seed)
    inits = [_w("fc1.w", (d, hidden), seed), _c("fc1.b", rng.standard_normal(hidden)),
             _w("fc2.w", (hidden, d), seed + 1), _c("half", 0.5), _c("one", 1.0),
             _c("rsqrt2", 2 ** -0.5)]
    nodes = [helper.make_node("MatMul", ["x", "fc1.w"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "fc1.b"], ["u"], name="bias1"),
             helper.make_node("Mul", ["u", "half"], ["uh"], name="gelu.h"),
             helper.make_node("Mul", ["u", "rsqrt2"], ["us"], name="gelu.s"),
             helper.make_node("Erf", ["us"], ["e"], name="gelu.erf"),
             helper.make_node("Add", ["e", "one"], ["p"], name="gelu.p"),
             helper.make_node("Mul", ["uh", "p"], ["g"], name="gelu"),
             helper.make_node("MatMul", ["g", "fc2.w"], ["y"], name="fc2")]
    outs = [b.vi("y", ["N", t, d])] + ([b.vi("e", ["N", t, hidden])] if leak else [])
    return b.make(nodes, [b.vi("x", ["N", t, d])], outs, inits)


def attention(d: int = 8, t: int = 5, seed: int = 0):
    """Single-head self-attention [N, T, d]: q, k, v projections (v with bias), softmax(q k^T)
    @ v, output projection. Only v -> out is a site (value channels)."""
    rng = np.random.default_rng(seed)
    inits = [_w("q.w", (d, d), seed), _w("k.w", (d, d), seed + 1), _w("v.w", (d, d), seed + 2),
             _c("v.b", rng.standard_normal(d)), _w("o.w", (d, d), seed + 3)]
    nodes = [helper.make_node("MatMul", ["x", "q.w"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "k.w"], ["k"], name="k"),
             helper.make_node("MatMul", ["x", "v.w"], ["v0"], name="v"),
             helper.make_node("Add", ["v0", "v.b"], ["v"], name="v.add"),
             helper.make_node("Transpose", ["k"], ["kT"], name="kT", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kT"], ["s"], name="scores"),
             helper.make_node("Softmax", ["s"], ["a"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["a", "v"], ["m"], name="mix"),
             helper.make_node("MatMul", ["m", "o.w"], ["y"], name="out")]
    return b.make(nodes, [b.vi("x", ["N", t, d])], [b.vi("y", ["N", t, d])], inits)


def gemm_pair(d: int = 8, hidden: int = 12, out: int = 5, seed: int = 0):
    """Gemm(transB=1, bias) -> LeakyRelu -> Gemm(transB=0, bias)."""
    rng = np.random.default_rng(seed)
    inits = [_w("g1.w", (hidden, d), seed), _c("g1.b", rng.standard_normal(hidden)),
             _w("g2.w", (hidden, out), seed + 1), _c("g2.b", rng.standard_normal(out))]
    nodes = [helper.make_node("Gemm", ["x", "g1.w", "g1.b"], ["h"], name="g1", transB=1),
             helper.make_node("LeakyRelu", ["h"], ["r"], name="act", alpha=0.1),
             helper.make_node("Gemm", ["r", "g2.w", "g2.b"], ["y"], name="g2")]
    return b.make(nodes, [b.vi("x", ["N", d])], [b.vi("y", ["N", out])], inits)


def refused(kind: str, d: int = 6, seed: int = 0):
    """A Gemm producer whose output channels cannot go: kind is residual, concat, reshape,
    output or fanout."""
    inits = [_w("p.w", (d, d), seed), _w("c.w", (d, d), seed + 1), _w("e.w", (d, d), seed + 2)]
    nodes = [helper.make_node("Gemm", ["x", "p.w"], ["p"], name="prod", transB=1),
             helper.make_node("Relu", ["p"], ["r"], name="act")]
    outs = [b.vi("y", ["N", d])]
    if kind == "residual":
        nodes += [helper.make_node("Gemm", ["r", "c.w"], ["c"], name="cons", transB=1),
                  helper.make_node("Add", ["r", "c"], ["y"], name="res")]
    elif kind == "concat":  # rows joined (a Concat of channels is a site: concat.py)
        nodes += [helper.make_node("Concat", ["r", "x"], ["cat"], name="cat", axis=0),
                  helper.make_node("MatMul", ["cat", "e.w"], ["y"], name="cons")]
    elif kind == "reshape":  # [N, d] -> [N / 2, 2 d]: channels of two rows side by side
        inits.append(numpy_helper.from_array(np.array([-1, 2 * d], dtype=np.int64), "shape"))
        inits[1] = _w("c.w", (d, 2 * d), seed + 1)
        nodes += [helper.make_node("Reshape", ["r", "shape"], ["rs"], name="reshape"),
                  helper.make_node("Gemm", ["rs", "c.w"], ["y"], name="cons", transB=1)]
    elif kind == "output":
        nodes += [helper.make_node("Gemm", ["r", "c.w"], ["y"], name="cons", transB=1)]
        outs.append(b.vi("r", ["N", d]))
    elif kind == "fanout":  # a layer and another node (two layers alike: fanout.py's site)
        nodes += [helper.make_node("Gemm", ["r", "c.w"], ["c"], name="cons", transB=1),
                  helper.make_node("Sigmoid", ["r"], ["e"], name="other"),
                  helper.make_node("Sub", ["c", "e"], ["y"], name="sub")]
    return b.make(nodes, [b.vi("x", ["N", d])], outs, inits)


def chain(dims=(8, 12, 10, 4), seed: int = 0):
    """MatMul -> Relu -> MatMul -> Relu -> MatMul: the middle layer is the consumer of one
    site and the producer of the next."""
    nodes, inits, t = [], [], "x"
    for i, (a, c) in enumerate(itertools.pairwise(dims)):
        inits.append(_w(f"w{i}", (a, c), seed + i))
        nodes.append(helper.make_node("MatMul", [t, f"w{i}"], [f"m{i}"], name=f"fc{i}"))
        t = f"m{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [t], [f"r{i}"], name=f"act{i}"))
            t = f"r{i}"
    return b.make(nodes, [b.vi("x", ["N", dims[0]])], [b.vi(t, ["N", dims[-1]])], inits)


def as_constants(model):
    """`model` with every initializer moved into a Constant node before the graph, as
    TensorFlow and Paddle export their weights (float scalars as `value_float`)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes = []
    for t in g.initializer:
        arr = numpy_helper.to_array(t)
        kw = ({"value_float": float(arr)} if arr.ndim == 0 and arr.dtype == np.float32
              else {"value": t})
        nodes.append(helper.make_node("Constant", [], [t.name], name=f"const.{t.name}", **kw))
    nodes += list(g.node)
    del g.initializer[:]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


def conv1d_mlp(d: int = 8, hidden: int = 16, t: int = 4, seed: int = 0, shared: bool = False):
    """An MLP as GPT-2's Conv1D exports it: x [N, T, d] -> Reshape [-1, d] -> Gemm (fc, its
    weight [d, hidden]) -> Reshape to Concat(B, T read from x, [hidden]) -> Relu -> Reshape
    to Concat([-1], the Relu output's last size read at run time: Shape -> Slice [-1:] ->
    Squeeze -> Unsqueeze) -> Gemm (proj) -> Reshape back to [B, T, d]. `shared`: that last
    size also feeds a second graph output (read elsewhere: refused)."""
    big = 2 ** 63 - 1
    inits = [_w("fc.w", (d, hidden), seed), _c("fc.b", np.linspace(-0.2, 0.2, hidden)),
             _w("proj.w", (hidden, d), seed + 1), _c("proj.b", np.zeros(d))]
    ints = {"flat": [-1, d], "i0": 0, "i1": 1, "ax0": [0], "h": [hidden], "dd": [d],
            "m1": [-1], "end": [big]}
    inits += [numpy_helper.from_array(np.array(v, dtype=np.int64), k) for k, v in ints.items()]
    n = helper.make_node
    nodes = [n("Shape", ["x"], ["xs"], name="xs"),
             n("Gather", ["xs", "i0"], ["b0"], name="b0", axis=0),
             n("Gather", ["xs", "i1"], ["t0"], name="t0", axis=0),
             n("Unsqueeze", ["b0", "ax0"], ["B"], name="B"),
             n("Unsqueeze", ["t0", "ax0"], ["T"], name="T"),
             n("Reshape", ["x", "flat"], ["xf"], name="fc.flat"),
             n("Gemm", ["xf", "fc.w", "fc.b"], ["h0"], name="fc"),
             n("Concat", ["B", "T", "h"], ["hs"], name="fc.shape", axis=0),
             n("Reshape", ["h0", "hs"], ["h1"], name="fc.view"),
             n("Relu", ["h1"], ["a"], name="act"),
             n("Shape", ["a"], ["as"], name="a.shape"),
             n("Slice", ["as", "m1", "end", "ax0"], ["aw"], name="a.width"),
             n("Squeeze", ["aw", "ax0"], ["aw0"], name="a.sq"),
             n("Unsqueeze", ["aw0", "ax0"], ["aw1"], name="a.unsq"),
             n("Concat", ["m1", "aw1"], ["ps"], name="proj.shape", axis=0),
             n("Reshape", ["a", "ps"], ["af"], name="proj.flat"),
             n("Gemm", ["af", "proj.w", "proj.b"], ["y0"], name="proj"),
             n("Concat", ["B", "T", "dd"], ["ys"], name="proj.shape2", axis=0),
             n("Reshape", ["y0", "ys"], ["y"], name="proj.view")]
    outs = [b.vi("y", ["N", t, d])]
    if shared:
        nodes.append(n("Identity", ["aw0"], ["width"], name="width.out"))
        outs.append(b.vi("width", [], TensorProto.INT64))
    return b.make(nodes, [b.vi("x", ["N", t, d])], outs, inits)


def grouped_block(c_in: int = 4, mid: int = 16, groups: int = 4, c_out: int = 5, seed: int = 0):
    """A RegNet / ResNeXt bottleneck's middle: Conv 1x1 -> Relu -> grouped Conv 3x3 (`groups`
    groups of mid / groups channels, bias) -> BatchNormalization -> Relu -> Conv 1x1. The
    grouped conv is a site's producer (its channels go in equal numbers from each group);
    it is no consumer (the first conv keeps its channels)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    inits = [_w("a.w", (mid, c_in, 1, 1), seed), _w("g.w", (mid, mid // groups, 3, 3), seed + 1),
             _c("g.b", rng.standard_normal(mid)), _c("bn.s", 1 + 0.1 * rng.random(mid)),
             _c("bn.b", rng.standard_normal(mid)), _c("bn.m", 0.1 * rng.standard_normal(mid)),
             _c("bn.v", 1 + rng.random(mid)), _w("c.w", (c_out, mid, 1, 1), seed + 2)]
    nodes = [n("Conv", ["x", "a.w"], ["a"], name="first"), n("Relu", ["a"], ["ar"], name="act0"),
             n("Conv", ["ar", "g.w", "g.b"], ["gc"], name="grouped", group=groups, pads=[1] * 4),
             n("BatchNormalization", ["gc", "bn.s", "bn.b", "bn.m", "bn.v"], ["bn"], name="bn"),
             n("Relu", ["bn"], ["r"], name="act1"), n("Conv", ["r", "c.w"], ["y"], name="last")]
    return b.make(nodes, [b.vi("x", ["N", c_in, 5, 5])], [b.vi("y", ["N", c_out, 5, 5])], inits)
