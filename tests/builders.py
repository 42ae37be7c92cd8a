"""Tiny ONNX models built in code (opset 17, IR 8) with seeded weights, plus matching feeds.

Every builder returns an `onnx.ModelProto` that passes `onnx.checker` (unless its docstring
says otherwise) and runs in onnxruntime. Graph inputs use the symbolic batch dimension "N";
`feeds()` replaces it by the requested sample count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
F32 = TensorProto.FLOAT
BATCH = "N"


# --------------------------------------------------------------------------- helpers


def make(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
         outputs: list[onnx.ValueInfoProto], inits: Sequence[onnx.TensorProto] = (),
         name: str = "g", check: bool = True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnx-obc-tests")
    model.ir_version = IR_VERSION
    if check:
        onnx.checker.check_model(model)
    return model


def vi(name: str, shape: Sequence[int | str] | None, elem: int = F32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def weight(name: str, shape: Sequence[int], seed: int, dtype=np.float32) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        arr = rng.integers(-3, 4, size=tuple(shape)).astype(dtype)
    else:
        arr = (rng.standard_normal(tuple(shape)) / np.sqrt(max(1, np.prod(shape[1:])))).astype(
            dtype)
    return numpy_helper.from_array(arr, name)


def _tuple(v: int | Sequence[int], nd: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * nd


# --------------------------------------------------------------------------- layer builders


def conv(dims: int = 2, c_in: int = 4, c_out: int = 6, kernel: int | Sequence[int] = 3,
         spatial: int | Sequence[int] = 7, strides: Sequence[int] | None = None,
         dilations: Sequence[int] | None = None, pads: Sequence[int] | None = None,
         auto_pad: str | None = None, group: int = 1, bias: bool = True, seed: int = 0,
         kernel_attr: bool = True) -> onnx.ModelProto:
    """One Conv, 1-D/2-D/3-D, on the graph input.

        x [N, c_in, *spatial] --Conv(W [c_out, c_in/group, *k], B [c_out])--> y
    `pads` are ONNX pads (all begins, then all ends); `auto_pad` is SAME_UPPER, SAME_LOWER
    or VALID; group == c_in == c_out is depthwise.
    """
    k = _tuple(kernel, dims)
    sp = _tuple(spatial, dims)
    attrs: dict = {}
    if kernel_attr:
        attrs["kernel_shape"] = list(k)
    if strides is not None:
        attrs["strides"] = list(strides)
    if dilations is not None:
        attrs["dilations"] = list(dilations)
    if pads is not None:
        attrs["pads"] = list(pads)
    if auto_pad is not None:
        attrs["auto_pad"] = auto_pad
    if group != 1:
        attrs["group"] = group
    return _one_layer("Conv", (c_out, c_in // group, *k), c_in, c_out, sp, attrs, bias, seed)


def _one_layer(op: str, wshape: tuple[int, ...], c_in: int, c_out: int,
               spatial: tuple[int, ...], attrs: dict, bias: bool, seed: int
               ) -> onnx.ModelProto:
    """x [N, c_in, *spatial] --op(W [wshape], B [c_out] if bias, **attrs)--> y."""
    inits = [weight("W", wshape, seed)]
    ins = ["x", "W"]
    if bias:
        inits.append(weight("B", (c_out,), seed + 1))
        ins.append("B")
    node = helper.make_node(op, ins, ["y"], name="conv" if op == "Conv" else "deconv", **attrs)
    out_shape = [BATCH, c_out, *(f"o{i}" for i in range(len(spatial)))]
    return make([node], [vi("x", [BATCH, c_in, *spatial])], [vi("y", out_shape)], inits)


def conv_transpose(dims: int = 2, c_in: int = 4, c_out: int = 6,
                   kernel: int | Sequence[int] = 3, spatial: int | Sequence[int] = 5,
                   strides: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                   output_padding: Sequence[int] | None = None,
                   dilations: Sequence[int] | None = None, group: int = 1,
                   auto_pad: str | None = None, bias: bool = True, seed: int = 0
                   ) -> onnx.ModelProto:
    """One ConvTranspose, 1-D/2-D/3-D, on the graph input.

        x [N, c_in, *spatial] --ConvTranspose(W [c_in, c_out/group, *k], B [c_out])--> y
    """
    k = _tuple(kernel, dims)
    attrs: dict = {"kernel_shape": list(k)}
    for name, v in (("strides", strides), ("pads", pads), ("output_padding", output_padding),
                    ("dilations", dilations), ("auto_pad", auto_pad)):
        if v is not None:
            attrs[name] = v if isinstance(v, str) else list(v)
    if group != 1:
        attrs["group"] = group
    return _one_layer("ConvTranspose", (c_in, c_out // group, *k), c_in, c_out,
                      _tuple(spatial, dims), attrs, bias, seed)


def decoder(seed: int = 0, c: int = 16) -> onnx.ModelProto:
    """Conv -> Relu -> ConvTranspose (2x up) -> Relu -> Conv, an upsampling decoder.

        x [N, 4, 6, 6] --conv1(W1 [c, 4, 3, 3])--> Relu --up(Wt [c, c, 4, 4], stride 2,
        pads 1)--> [N, c, 12, 12] Relu --conv2(W2 [3, c, 3, 3])--> y [N, 3, 12, 12]
    """
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["ra"], name="relu1"),
             helper.make_node("ConvTranspose", ["ra", "Wt", "Bt"], ["u"], name="up",
                              kernel_shape=[4, 4], strides=[2, 2], pads=[1] * 4),
             helper.make_node("Relu", ["u"], ["ru"], name="relu2"),
             helper.make_node("Conv", ["ru", "W2", "B2"], ["y"], name="conv2", pads=[1] * 4)]
    inits = [weight("W1", (c, 4, 3, 3), seed), weight("B1", (c,), seed + 1),
             weight("Wt", (c, c, 4, 4), seed + 2), weight("Bt", (c,), seed + 3),
             weight("W2", (3, c, 3, 3), seed + 4), weight("B2", (3,), seed + 5)]
    return make(nodes, [vi("x", [BATCH, 4, 6, 6])], [vi("y", [BATCH, 3, 12, 12])], inits)


def decoder_step() -> onnx.ModelProto:
    """One decoder step with a KV cache: present = Concat(Identity(past), x Wk) (the cache,
    through an exporter's one-input node), logits = (x W1 + 0.01 x Wk) W2."""
    nodes = [helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k_proj"),
             helper.make_node("Identity", ["past"], ["p1"], name="past_in"),
             helper.make_node("Concat", ["p1", "k"], ["present"], name="cache", axis=1),
             helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Mul", ["k", "tenth"], ["k1"], name="mix"),
             helper.make_node("Add", ["h", "k1"], ["s"], name="add"),
             helper.make_node("MatMul", ["s", "W2"], ["logits"], name="fc2")]
    inits = [weight("Wk", (8, 8), 1), weight("W1", (8, 8), 2), weight("W2", (8, 5), 3),
             numpy_helper.from_array(np.float32(0.01), "tenth")]
    return make(nodes, [vi("x", [BATCH, 4, 8]), vi("past", [BATCH, 2, 8])],
                [vi("logits", [BATCH, 4, 5]), vi("present", [BATCH, 6, 8])], inits)


def gemm(d_in: int = 6, d_out: int = 5, trans_a: bool = False, trans_b: bool = True,
         alpha: float = 1.0, beta: float = 1.0, bias: bool = True, seed: int = 0
         ) -> onnx.ModelProto:
    """One Gemm: y = alpha * A' @ B' + beta * C.

        x [N, d_in]  (or [d_in, N] with trans_a) --Gemm(B, C [d_out])--> y [N, d_out]
    B is [d_out, d_in] with trans_b, else [d_in, d_out].
    """
    b_shape = (d_out, d_in) if trans_b else (d_in, d_out)
    inits = [weight("B", b_shape, seed)]
    ins = ["x", "B"]
    if bias:
        inits.append(weight("C", (d_out,), seed + 1))
        ins.append("C")
    node = helper.make_node("Gemm", ins, ["y"], name="gemm", transA=int(trans_a),
                            transB=int(trans_b), alpha=float(alpha), beta=float(beta))
    x_shape = [d_in, BATCH] if trans_a else [BATCH, d_in]
    return make([node], [vi("x", x_shape)], [vi("y", [BATCH, d_out])], inits)


MATMUL_LEADING = {2: (), 3: (5,), 4: (2, 3)}


def matmul(d_in: int = 6, d_out: int = 5, rank: int = 2, seed: int = 0,
           dtype=np.float32) -> onnx.ModelProto:
    """One MatMul with activations of rank 2, 3 or 4.

        x [N, *lead, d_in] --MatMul(W [d_in, d_out])--> y [N, *lead, d_out]
    lead = () / (5,) / (2, 3) for rank 2 / 3 / 4.
    """
    lead = MATMUL_LEADING[rank]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    return make([node], [vi("x", [BATCH, *lead, d_in], elem)],
                [vi("y", [BATCH, *lead, d_out], elem)], [weight("W", (d_in, d_out), seed, dtype)])


def zipmap_classifier(d_in: int = 8, hidden: int = 16, classes: int = 4, seed: int = 0
                      ) -> onnx.ModelProto:
    """skl2onnx's classifier layout: a label output first, the probabilities as a sequence
    of maps (ZipMap, ai.onnx.ml) second.

        x [N, d_in] --MatMul--Relu--MatMul--Softmax--> p --ArgMax--> label [N] (int64)
                                                         p --ZipMap--> probs seq(map(int64, float))
    """
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["z"], name="fc2"),
             helper.make_node("Softmax", ["z"], ["p"], axis=1),
             helper.make_node("ArgMax", ["p"], ["label"], axis=1, keepdims=0),
             helper.make_node("ZipMap", ["p"], ["probs"], domain="ai.onnx.ml",
                              classlabels_int64s=list(range(classes)))]
    probs = helper.make_value_info("probs", helper.make_sequence_type_proto(
        helper.make_map_type_proto(onnx.TensorProto.INT64,
                                   helper.make_tensor_type_proto(F32, []))))
    graph = helper.make_graph(nodes, "g", [vi("x", [BATCH, d_in])],
                              [vi("label", [BATCH], onnx.TensorProto.INT64), probs],
                              [weight("W1", (d_in, hidden), seed),
                               weight("W2", (hidden, classes), seed + 1)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def mlp(dims: Sequence[int] = (8, 12, 4), seed: int = 0, named: bool = True) -> onnx.ModelProto:
    """MatMul -> Relu -> MatMul (unnamed nodes when named=False: labels "<MatMul #i>").

        x [N, d0] --fc1(W1 [d0, d1])--> h --Relu--> r --fc2(W2 [d1, d2])--> y [N, d2]
    """
    d0, d1, d2 = dims
    n = (lambda s: s) if named else (lambda s: None)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name=n("fc1")),
             helper.make_node("Relu", ["h"], ["r"], name=n("relu")),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name=n("fc2"))]
    return make(nodes, [vi("x", [BATCH, d0])], [vi("y", [BATCH, d2])],
                [weight("W1", (d0, d1), seed), weight("W2", (d1, d2), seed + 1)])


def constant_weight(d_in: int = 6, d_out: int = 5, seed: int = 0) -> onnx.ModelProto:
    """The weight is the output of a Constant node (value attribute), not an initializer.

        Constant(value=W) -> W
        x [N, d_in] --MatMul(W [d_in, d_out])--> y
    """
    t = weight("", (d_in, d_out), seed)
    nodes = [helper.make_node("Constant", [], ["W"], name="wconst", value=t),
             helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    return make(nodes, [vi("x", [BATCH, d_in])], [vi("y", [BATCH, d_out])])


def shared_weight(d: int = 6, d_out: int = 5, seed: int = 0) -> onnx.ModelProto:
    """One initializer W used by two MatMul nodes on different activations.

        x --mm1(W)--> y1
        x --Tanh--> t --mm2(W)--> y2
    """
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y1"], name="mm1"),
             helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
             helper.make_node("MatMul", ["t", "W"], ["y2"], name="mm2")]
    return make(nodes, [vi("x", [BATCH, d])], [vi("y1", [BATCH, d_out]), vi("y2", [BATCH, d_out])],
                [weight("W", (d, d_out), seed)])


def shared_weight_chain(d: int = 6, seed: int = 0) -> onnx.ModelProto:
    """A weight A read before and after another layer B (Basic Pitch's CQT: one lowpass on
    every octave), a layer P before them and a layer C behind B:

        x --mmP(P)--> p --mmA1(A)--> y1
        p --Tanh--> t --mmB(B)--> u --mmA2(A)--> y2
                                  u --mmC(C)--> y3
    """
    nodes = [helper.make_node("MatMul", ["x", "P"], ["p"], name="mmP"),
             helper.make_node("MatMul", ["p", "A"], ["y1"], name="mmA1"),
             helper.make_node("Tanh", ["p"], ["t"], name="tanh"),
             helper.make_node("MatMul", ["t", "B"], ["u"], name="mmB"),
             helper.make_node("MatMul", ["u", "A"], ["y2"], name="mmA2"),
             helper.make_node("MatMul", ["u", "C"], ["y3"], name="mmC")]
    return make(nodes, [vi("x", [BATCH, d])], [vi(y, [BATCH, d]) for y in ("y1", "y2", "y3")],
                [weight(w, (d, d), seed + i) for i, w in enumerate("PABC")])


def weight_also_used_elsewhere(d: int = 6, seed: int = 0) -> onnx.ModelProto:
    """Initializer W used by a MatMul and by an Add (so it cannot change alone).

        x --mm(W)--> y
        W --Add(one)--> z   (second graph output)
    """
    one = numpy_helper.from_array(np.ones((1,), np.float32), "one")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
             helper.make_node("Add", ["W", "one"], ["z"], name="add")]
    return make(nodes, [vi("x", [BATCH, d])], [vi("y", [BATCH, d]), vi("z", [d, d])],
                [weight("W", (d, d), seed), one])


def activation_matmul(d: int = 5, t: int = 4, seed: int = 0) -> onnx.ModelProto:
    """MatMul of two graph inputs (no constant weight at all).

        a [N, t, d], b [N, d, t] --MatMul--> y [N, t, t]
    """
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="bmm")
    return make([node], [vi("a", [BATCH, t, d]), vi("b", [BATCH, d, t])],
                [vi("y", [BATCH, t, t])])


def attention_scores(d: int = 6, t: int = 4, seed: int = 0) -> onnx.ModelProto:
    """Two compressible projections and one activation x activation MatMul.

        x [N, t, d] --q(Wq)--> q ;  x --k(Wk)--> k --Transpose--> kT
        q --scores(kT)--> s [N, t, t]
    """
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k"),
             helper.make_node("Transpose", ["k"], ["kT"], name="kT", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kT"], ["s"], name="scores")]
    return make(nodes, [vi("x", [BATCH, t, d])], [vi("s", [BATCH, t, t])],
                [weight("Wq", (d, d), seed), weight("Wk", (d, d), seed + 1)])


def weight_from_transpose(d_in: int = 6, d_out: int = 5, seed: int = 0) -> onnx.ModelProto:
    """MatMul whose weight is computed at run time: Transpose(initializer).

        W0 [d_out, d_in] --Transpose--> Wt [d_in, d_out]
        x [N, d_in] --mm(Wt)--> y
    """
    nodes = [helper.make_node("Transpose", ["W0"], ["Wt"], name="tr", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "Wt"], ["y"], name="mm")]
    return make(nodes, [vi("x", [BATCH, d_in])], [vi("y", [BATCH, d_out])],
                [weight("W0", (d_out, d_in), seed)])


def weight_is_graph_input(d_in: int = 6, d_out: int = 5, seed: int = 0) -> onnx.ModelProto:
    """W is an initializer AND a graph input (a default the caller may override).

        x [N, d_in], W (input with initializer) --mm--> y
    """
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    return make([node], [vi("x", [BATCH, d_in]), vi("W", [d_in, d_out])],
                [vi("y", [BATCH, d_out])], [weight("W", (d_in, d_out), seed)])


def weight_first_matmul(d_in: int = 6, d_out: int = 5, seed: int = 0) -> onnx.ModelProto:
    """Constant as the FIRST MatMul input (W @ X), samples along axis 1.

        W [d_out, d_in] @ x [d_in, N] --mm--> y [d_out, N]
    """
    node = helper.make_node("MatMul", ["W", "x"], ["y"], name="mm")
    return make([node], [vi("x", [d_in, BATCH])], [vi("y", [d_out, BATCH])],
                [weight("W", (d_out, d_in), seed)])


def int_matmul(d_in: int = 6, d_out: int = 5, seed: int = 0) -> onnx.ModelProto:
    """Integer MatMul (int32 weight): not compressible.

        x int32 [N, d_in] --mm(W int32)--> y int32
    """
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    return make([node], [vi("x", [BATCH, d_in], TensorProto.INT32)],
                [vi("y", [BATCH, d_out], TensorProto.INT32)],
                [weight("W", (d_in, d_out), seed, np.int32)])


def batched_weight_matmul(d_in: int = 4, d_out: int = 3, seed: int = 0) -> onnx.ModelProto:
    """MatMul with a rank-3 (batched) weight: only 2-D weights are compressed.

        x [2, N, d_in] --mm(W [2, d_in, d_out])--> y [2, N, d_out]
    """
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    return make([node], [vi("x", [2, BATCH, d_in])], [vi("y", [2, BATCH, d_out])],
                [weight("W", (2, d_in, d_out), seed)])


def mixed_layouts(d: int = 6, seed: int = 0) -> onnx.ModelProto:
    """One weight used as Gemm B with transB=1 (rows) and as MatMul B (cols).

        x --gemm(W, transB=1)--> y1 ; x --mm(W)--> y2      (W square [d, d])
    """
    nodes = [helper.make_node("Gemm", ["x", "W"], ["y1"], name="gemm", transB=1),
             helper.make_node("MatMul", ["x", "W"], ["y2"], name="mm")]
    return make(nodes, [vi("x", [BATCH, d])], [vi("y1", [BATCH, d]), vi("y2", [BATCH, d])],
                [weight("W", (d, d), seed)])


def gemm_and_matmul_share(d: int = 6, d_out: int = 5, seed: int = 0) -> onnx.ModelProto:
    """One weight used as Gemm B with transB=0 and as MatMul B: same layout, one layer.

        x --gemm(W, transB=0)--> y1 ; x --Neg--> n --mm(W)--> y2
    """
    nodes = [helper.make_node("Gemm", ["x", "W"], ["y1"], name="gemm"),
             helper.make_node("Neg", ["x"], ["n"], name="neg"),
             helper.make_node("MatMul", ["n", "W"], ["y2"], name="mm")]
    return make(nodes, [vi("x", [BATCH, d])],
                [vi("y1", [BATCH, d_out]), vi("y2", [BATCH, d_out])],
                [weight("W", (d, d_out), seed)])


def weight_is_graph_output(d_in: int = 6, d_out: int = 5, seed: int = 0) -> onnx.ModelProto:
    """The weight is also a graph output.

        x --mm(W)--> y ;  W --> (graph output)
    """
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    return make([node], [vi("x", [BATCH, d_in])],
                [vi("y", [BATCH, d_out]), vi("W", [d_in, d_out])],
                [weight("W", (d_in, d_out), seed)])


def conv_bad_group(seed: int = 0) -> onnx.ModelProto:
    """Conv whose group (2) does not divide its 5 output channels (invalid; not run).

        x [N, 4, 6, 6] --Conv(W [5, 2, 3, 3], group=2)--> y
    """
    node = helper.make_node("Conv", ["x", "W"], ["y"], name="conv", group=2)
    return make([node], [vi("x", [BATCH, 4, 6, 6])], [vi("y", [BATCH, 5, 4, 4])],
                [weight("W", (5, 2, 3, 3), seed)], check=False)


def mlp3(dims: Sequence[int] = (8, 24, 16, 6), seed: int = 0) -> onnx.ModelProto:
    """x -> fc1 -> Relu -> fc2 -> Relu -> fc3 -> y (MatMul layers)."""
    nodes, inits, prev = [], [], "x"
    for i, (a, c) in enumerate(zip(dims, dims[1:]), 1):
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"], name=f"fc{i}"))
        inits.append(weight(f"W{i}", (a, c), seed + i))
        prev = f"h{i}"
        if i < len(dims) - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    nodes[-1].output[0] = "y"
    return make(nodes, [vi("x", [BATCH, dims[0]])], [vi("y", [BATCH, dims[-1]])],
                  inits)


def cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> Gemm, a small classifier (fixed spatial size).

        x [N, 2, 6, 6] --conv(W [4, 2, 3, 3], B)--> Relu --Flatten--> [N, 64]
                        --fc(Wfc [3, 64], transB=1, bfc)--> logits [N, 3]
    """
    nodes = [helper.make_node("Conv", ["x", "Wc", "Bc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "Wfc", "bfc"], ["logits"], name="fc", transB=1)]
    inits = [weight("Wc", (4, 2, 3, 3), seed), weight("Bc", (4,), seed + 1),
             weight("Wfc", (3, 4 * 6 * 6), seed + 2), weight("bfc", (3,), seed + 3)]
    return make(nodes, [vi("x", [BATCH, 2, 6, 6])], [vi("logits", [BATCH, 3])], inits)


def no_layers() -> onnx.ModelProto:
    """Nothing compressible.

        x --Relu--> y
    """
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    return make([node], [vi("x", [BATCH, 4])], [vi("y", [BATCH, 4])])


def two_inputs(d_a: int = 4, d_b: int = 3, d_out: int = 5, seed: int = 0) -> onnx.ModelProto:
    """Two float inputs and an int64 input (for calibration checks).

        a [N, d_a] --mm_a(Wa)--> ya ; b [N, d_b] --mm_b(Wb)--> yb
        ids int64 [N, 2] --Cast--> idf (graph output)
    """
    nodes = [helper.make_node("MatMul", ["a", "Wa"], ["ya"], name="mm_a"),
             helper.make_node("MatMul", ["b", "Wb"], ["yb"], name="mm_b"),
             helper.make_node("Cast", ["ids"], ["idf"], name="cast", to=F32)]
    return make(nodes, [vi("a", [BATCH, d_a]), vi("b", [BATCH, d_b]),
                        vi("ids", [BATCH, 2], TensorProto.INT64)],
                [vi("ya", [BATCH, d_out]), vi("yb", [BATCH, d_out]), vi("idf", [BATCH, 2])],
                [weight("Wa", (d_a, d_out), seed), weight("Wb", (d_b, d_out), seed + 1)])


def symbolic_feature(d_out: int = 3, seed: int = 0) -> onnx.ModelProto:
    """Input with a symbolic NON-batch dimension (cannot be synthesized).

        x [N, T, 4] --mm(W [4, d_out])--> y
    """
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    return make([node], [vi("x", [BATCH, "T", 4])], [vi("y", [BATCH, "T", d_out])],
                [weight("W", (4, d_out), seed)])


def if_subgraph_weight(d_in: int = 4, d_out: int = 3, seed: int = 0) -> onnx.ModelProto:
    """W feeds a top-level MatMul AND (from outer scope) a MatMul inside an If branch.

        x --outer_mm(W)--> y0
        If(c): then: x --inner_mm(W)--> t ; else: Identity(y0)  --> y
    """
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["t"], name="inner_mm")],
                               "then", [], [vi("t", [BATCH, d_out])])
    else_g = helper.make_graph([helper.make_node("Identity", ["y0"], ["e"], name="ident")],
                               "else", [], [vi("e", [BATCH, d_out])])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y0"], name="outer_mm"),
             helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_g,
                              else_branch=else_g)]
    return make(nodes, [vi("x", [BATCH, d_in]), vi("c", [], TensorProto.BOOL)],
                [vi("y", [BATCH, d_out])], [weight("W", (d_in, d_out), seed)])


# --------------------------------------------------------------------------- data


def huge_external(folder: str | os.PathLike, table_rows: int = 540_000, dim: int = 1024,
                  seed: int = 0) -> tuple[str, Callable[[int], dict[str, np.ndarray]]]:
    """Write `folder`/huge.onnx + huge.onnx.data, a model of 2.2 GB (defaults): input_ids
    [N, 16] -> Gather(table [rows, dim]) -> MatMul(dim x 256) -> Relu -> MatMul(256 x 64).
    The table is written to the data file in chunks and referenced as external data (a
    protobuf message cannot hold it), so building needs little memory. Returns the model path
    and a feed function."""
    data = Path(folder) / "huge.onnx.data"
    rng = np.random.default_rng(seed)
    with open(data, "wb") as f:
        for start in range(0, table_rows, 65536):
            rows = min(65536, table_rows - start)
            f.write(rng.standard_normal((rows, dim), dtype=np.float32).tobytes())
    table = onnx.TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[table_rows, dim])
    table.data_location = TensorProto.EXTERNAL
    for k, v in (("location", data.name), ("offset", "0"), ("length", str(table_rows * dim * 4))):
        table.external_data.add(key=k, value=v)
    fc1 = (rng.standard_normal((dim, 256)) / np.sqrt(dim)).astype(np.float32)
    fc2 = (rng.standard_normal((256, 64)) / 16).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("MatMul", ["emb", "fc1.weight"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("MatMul", ["hr", "fc2.weight"], ["y"], name="fc2")]
    graph = helper.make_graph(
        nodes, "huge", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 64])],
        [table, numpy_helper.from_array(fc1, "fc1.weight"),
         numpy_helper.from_array(fc2, "fc2.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = Path(folder) / "huge.onnx"
    onnx.save_model(model, str(path))  # the table stays where it is: only its reference

    def feed(n: int) -> dict[str, np.ndarray]:
        r = np.random.default_rng(seed + 1)
        return {"ids": r.integers(0, table_rows, size=(n, 16)).astype(np.int64)}
    return str(path), feed


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (what a feed must contain)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def feeds(model: onnx.ModelProto, n: int, seed: int = 0, correlated: bool = True
          ) -> dict[str, np.ndarray]:
    """{input name: array} with the symbolic batch dim "N" set to n (axis 0 for all builders
    except gemm(trans_a=True) and weight_first_matmul, whose samples lie along axis 1).

    Float inputs are correlated when asked: each sample's flattened features are a rank-3
    mixture plus 10% noise (realistic, far from identity Hessians). Integer inputs are small
    non-negative ints; bool inputs are True.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for v in graph_inputs(model):
        tt = v.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
        if any(isinstance(d, str) and d != BATCH for d in dims):
            dims = [4 if isinstance(d, str) and d != BATCH else d for d in dims]
        batch_ax = dims.index(BATCH) if BATCH in dims else None
        shape = [n if d == BATCH else d for d in dims]
        if dtype == np.bool_:
            out[v.name] = np.ones(shape, dtype=bool)
            continue
        if dtype.kind in "iu":
            out[v.name] = rng.integers(0, 5, size=shape).astype(dtype)
            continue
        # generate sample-major, then move the batch axis to where the model wants it
        s_major = ([shape[batch_ax]] + shape[:batch_ax] + shape[batch_ax + 1:]
                   if batch_ax is not None else [1] + shape)
        m, feat = s_major[0], int(np.prod(s_major[1:], dtype=np.int64))
        if correlated:
            r = min(3, feat)
            a = rng.standard_normal((m, r)) @ rng.standard_normal((r, feat))
            a += 0.1 * rng.standard_normal((m, feat))
        else:
            a = rng.standard_normal((m, feat))
        a = a.reshape(s_major)
        a = np.moveaxis(a, 0, batch_ax) if batch_ax is not None else a[0]
        out[v.name] = np.ascontiguousarray(a).astype(dtype)
    return out


def run(model_or_path: onnx.ModelProto | str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of a model (proto or path) on `feed`, in onnxruntime on the CPU."""
    import onnxruntime as ort

    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) \
        else str(model_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def weights_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant weight (initializer or Constant node) by tensor name."""
    from onnx import numpy_helper

    from onnx_obc.layers import constant_weights

    return {k: numpy_helper.to_array(t) for k, (_, t) in constant_weights(model.graph).items()}


def gelu(x: str, y: str, half: float = 0.5) -> tuple[list[onnx.NodeProto],
                                                    list[onnx.TensorProto]]:
    """GELU written out as paddle2onnx writes it, y = x * (Erf(x / sqrt 2) + 1) * half:
    its five nodes and three constants (names prefixed with y)."""
    c = {k: numpy_helper.from_array(np.array(v, np.float32), f"{y}.{k}")
         for k, v in (("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", half))}
    nodes = [helper.make_node("Div", [x, f"{y}.sqrt2"], [f"{y}.d"], name=f"{y}.div"),
             helper.make_node("Erf", [f"{y}.d"], [f"{y}.e"], name=f"{y}.erf"),
             helper.make_node("Add", [f"{y}.one", f"{y}.e"], [f"{y}.p"], name=f"{y}.add"),
             helper.make_node("Mul", [f"{y}.p", x], [f"{y}.m"], name=f"{y}.mul"),
             helper.make_node("Mul", [f"{y}.m", f"{y}.half"], [y], name=f"{y}.half")]
    return nodes, list(c.values())
