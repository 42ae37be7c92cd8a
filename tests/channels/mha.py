"""Multi-head self-attention graphs (opset 17) built in code, as PyTorch / HF export them:
the standard pattern the head sites take, and variants that must be refused."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from tests import builders as b


def _c(name: str, arr, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(arr, dtype=dtype), name)


def mha(d: int = 12, heads: int = 4, t: int = 6, seed: int = 0, variant: str = "bert",
        mlp: bool = False):
    """[N, T, d] -> Q, K, V (biases) -> Reshape [0, 0, H, dh] -> Transpose -> scores ->
    scale -> causal mask Add [T, T] -> Softmax -> A @ V -> Transpose -> Reshape [0, 0, d] ->
    Wo (+ bias). variant: "bert" (one shared heads shape, Kᵀ by perm [0, 2, 3, 1]), "hf"
    (per-projection shapes [0, -1, H, dh], Kᵀ as two Transposes, Q scaled before the
    scores, merge to [0, 0, -1]), "torch" (as torch.onnx exports HF attention: each shape
    a Concat of B, T read from the tensor itself by Shape -> Gather, and constants), "sdpa"
    (as torch exports scaled_dot_product_attention: q and k each scaled by a run-time
    sqrt(1 / sqrt(dh)), dh read from q's shape), "const" (the heads shapes as Constant
    nodes), "dynamic" (as torch, the value head count computed as C / dh at run time),
    "runtime_merge" (as torch, the merged size H * dh read from the context's shape),
    "hfmask" (the mask the first Add operand, (1 - m) * -1e4 from an input m), "sdpa_hf"
    (as torch exports HF's SDPA attention, all-MiniLM-L6-v2: each heads shape a Concat of
    B, T read at run time, -1 and dh; q and kᵀ each times a constant; a mask of a shape
    known only at run time; the Softmax behind its NaN guard Where(IsNaN(p), 0, p); the
    context restated as [B, -1, T, dh] before its Transpose; merged to [B, T, -1]),
    "hf_cast" (as "torch", the attention weights through two Casts to float, as HF's eager
    attention exports), "paddle_softmax" (the Softmax over a Flatten(axis 3) of the scores,
    shaped back by Reshape(Shape(scores)), as paddle2onnx exports it), "bias"
    (a per-head score bias [1, H, T, T]), "perm" (the context merged without its
    Transpose back), "dynamo" (as "sdpa_hf", every Reshape with allowzero=1 and kᵀ as a
    Reshape to [-1, T, dh], a Transpose and a Reshape back, as torch's dynamo exporter
    writes them; channel sites after the fold, fold/swaplast.py). `mlp`: Wo -> Relu -> MatMul after it (a second, overlapping site)."""
    dynamo = variant == "dynamo"
    variant = "sdpa_hf" if dynamo else variant
    rng = np.random.default_rng(seed)
    dh = d // heads
    inits = [b.weight(f"{p}.w", (d, d), seed + i) for i, p in enumerate("qkvo")]
    inits += [_c(f"{p}.b", rng.standard_normal(d)) for p in "qkvo"]
    inits += [_c("heads", [0, 0, heads, dh], np.int64), _c("merge", [0, 0, d], np.int64),
              _c("scale", 1 / np.sqrt(dh)), _c("mask", np.triu(np.full((t, t), -1e4), 1))]
    nodes = []

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def sizes(y, keep=(0, 1), tag=""):  # Shape -> Gather -> Unsqueeze, as torch exports
        sy = node("Shape", [y], f"{y}.shape{tag}")
        return [node("Unsqueeze", [node("Gather", [sy, f"i{i}"], f"{y}.g{i}{tag}"), "ax0"],
                     f"{y}.u{i}{tag}") for i in keep]

    def proj(p, shape):
        y = node("Add", [node("MatMul", ["x", f"{p}.w"], f"{p}.mm"), f"{p}.b"], f"{p}.out")
        if shape is None:  # B, T read from y at run time
            h = "m1" if variant == "sdpa_hf" else "H"
            if variant == "dynamic" and p == "v":  # the head count from C / dh
                h = node("Div", [sizes(y, (2,), "c")[0], "dh"], "v.hdyn")
            shape = node("Concat", [*sizes(y), h, "dh"], f"{p}.shape", axis=0)
        return node("Reshape", [y, shape], f"{p}.heads")

    shapes = {p: "heads" for p in "qkv"}
    runtime = variant in ("torch", "sdpa", "dynamic", "runtime_merge", "sdpa_hf", "hf_cast")
    inits += [_c("i0", 0, np.int64), _c("i1", 1, np.int64), _c("i2", 2, np.int64),
              _c("i3", 3, np.int64), _c("ax0", [0], np.int64), _c("H", [heads], np.int64),
              _c("dh", [dh], np.int64), _c("C", [d], np.int64), _c("m1", [-1], np.int64),
              _c("one1", [1], np.int64)]
    if variant == "hf":
        inits += [_c(f"{p}.shape", [0, -1, heads, dh], np.int64) for p in "qkv"]
        shapes = {p: f"{p}.shape" for p in "qkv"}
    if runtime:
        shapes = {p: None for p in "qkv"}
    if variant == "const":  # shapes as Constant nodes
        for p in "qkv":
            nodes.append(helper.make_node("Constant", [], [f"{p}.shape"], name=f"{p}.const",
                                          value=_c("v", [0, 0, heads, dh], np.int64)))
            shapes[p] = f"{p}.shape"
    q = node("Transpose", [proj("q", shapes["q"])], "q.t", perm=[0, 2, 1, 3])
    v = node("Transpose", [proj("v", shapes["v"])], "v.t", perm=[0, 2, 1, 3])
    if variant == "hf":
        q = node("Mul", [q, "scale"], "q.scaled")
        k = node("Transpose", [node("Transpose", [proj("k", shapes["k"])], "k.t",
                                    perm=[0, 2, 1, 3])], "k.tt", perm=[0, 1, 3, 2])
        s = node("MatMul", [q, k], "scores")
    elif variant == "sdpa":  # q, k each times sqrt(1 / sqrt(dh)), dh read from q's shape
        inits += [_c("end", [2 ** 62], np.int64), _c("last", [-1], np.int64), _c("one", 1.0)]
        dq = node("Cast", [node("Slice", [node("Shape", [q], "q.t.shape"), "last", "end"],
                                "q.dh")], "q.dhf", to=1)
        half = node("Sqrt", [node("Div", ["one", node("Sqrt", [dq], "sqrt.dh")], "inv")],
                    "half")
        k = node("Transpose", [proj("k", shapes["k"])], "k.t", perm=[0, 2, 3, 1])
        s = node("MatMul", [node("Mul", [q, half], "q.s"), node("Mul", [k, half], "k.s")],
                 "scores")
    elif variant == "sdpa_hf":  # q and kᵀ each times a constant, a run-time shaped mask
        inits.append(_c("root", np.sqrt(1 / np.sqrt(dh))))
        if not dynamo:
            k = node("Transpose", [proj("k", shapes["k"])], "k.t", perm=[0, 2, 3, 1])
        else:  # kᵀ as dynamo writes it: [B, H, T, dh] -> [-1, T, dh] -> swap -> back
            inits += [_c("big", [2 ** 62], np.int64), _c("small", [-2 ** 62], np.int64),
                      _c("m2", [-2], np.int64)]
            k = node("Transpose", [proj("k", shapes["k"])], "k.t", perm=[0, 2, 1, 3])
            ks = node("Shape", [k], "k.t.shape")
            d3 = node("Slice", [ks, "m1", "big"], "k.d3")
            d2 = node("Slice", [ks, "m2", "m1"], "k.d2")
            lead = node("Slice", [ks, "small", "m2"], "k.lead")
            flat = node("Reshape", [k, node("Concat", ["m1", d2, d3], "k.flat.shape", axis=0)],
                        "k.flat")
            k = node("Reshape", [node("Transpose", [flat], "k.swap", perm=[0, 2, 1]),
                                 node("Concat", [lead, d3, d2], "k.back.shape", axis=0)],
                     "k.back")
        s = node("MatMul", [node("Mul", [q, "root"], "q.s"), node("Mul", [k, "root"], "k.s")],
                 "scores")
        ms = node("Concat", [sizes("x", (0,), "m")[0], "one1", "one1",
                             sizes("x", (1,), "t")[0]], "mask.shape", axis=0)
        m = node("Reshape", [node("ReduceMax", ["x"], "x.max", axes=[2], keepdims=0), ms],
                 "mask.r")
        s = node("Add", [s, node("Mul", [m, "scale"], "mask.rt")], "masked")
    else:
        k = node("Transpose", [proj("k", shapes["k"])], "k.t", perm=[0, 2, 3, 1])
        s = node("Mul", [node("MatMul", [q, k], "scores"), "scale"], "scaled")
    if variant == "hfmask":  # HF's extended mask, (1 - m) * -1e4 from an input [N, 1, 1, T]
        inits += [_c("onef", 1.0), _c("big", -1e4)]
        ext = node("Mul", [node("Sub", ["onef", "m"], "m.inv"), "big"], "m.ext")
        s = node("Add", [ext, s], "masked")
    elif variant != "sdpa_hf":
        s = node("Add", [s, "mask"], "masked")
    if variant == "bias":
        inits.append(_c("rel", 0.1 * rng.standard_normal((1, heads, t, t))))
        s = node("Add", [s, "rel"], "biased")
    if variant == "paddle_softmax":  # paddle2onnx: the Softmax on a 2-D view, shaped back
        f = node("Softmax", [node("Flatten", [s], "probs.flat", axis=3)], "probs.2d", axis=-1)
        p = node("Reshape", [f, node("Shape", [s], "probs.shape")], "probs")
    else:
        p = node("Softmax", [s], "probs", axis=-1)
    if variant == "hf_cast":  # HF eager: softmax(..., dtype=float32).to(dtype), two Casts
        p = node("Cast", [node("Cast", [p], "probs.f32", to=1)], "probs.cast", to=1)
    if variant == "sdpa_hf":  # the NaN guard, the context restated as [B, -1, T, dh]
        inits.append(_c("zero", 0.0))
        p = node("Where", [node("IsNaN", [p], "probs.nan"), "zero", p], "probs.safe")
    a = node("MatMul", [p, v], "ctx")
    if variant == "sdpa_hf":
        back = node("Concat", [sizes(a, (0,), "b")[0], "m1", *sizes(q, (2, 3), "q")],
                    "ctx.shape", axis=0)
        a = node("Reshape", [a, back], "ctx.same")
    if variant != "perm":
        a = node("Transpose", [a], "ctx.t", perm=[0, 2, 1, 3])
    inits.append(_c("merge2", [0, 0, -1] if variant == "hf" else [0, -1, d], np.int64))
    merge = "merge2" if variant in ("hf", "perm") else "merge"
    if runtime:
        last = "C"
        if variant == "runtime_merge":  # H * dh read back from the context's shape
            last = node("Mul", sizes(a, (2, 3), "hd"), "ctx.hd")
        if variant == "sdpa_hf":
            last = "m1"
        merge = node("Concat", [*sizes(a), last], "merge.shape", axis=0)
    a = node("Reshape", [a, merge], "ctx.merged")
    y = node("Add", [node("MatMul", [a, "o.w"], "o.mm"), "o.b"], "o.out" if mlp else "y")
    if mlp:  # Wo -> Relu -> MatMul: Wo is also the producer of a channel site
        inits.append(b.weight("f.w", (d, d), seed + 9))
        node("MatMul", [node("Relu", [y], "o.relu"), "f.w"], "y")
    inputs = [b.vi("x", ["N", t, d])] + ([b.vi("m", ["N", 1, 1, t])] if variant == "hfmask"
                                         else [])
    for n in nodes if dynamo else []:
        n.attribute.extend([helper.make_attribute("allowzero", 1)] * (n.op_type == "Reshape"))
    return b.make(nodes, inputs, [b.vi("y", ["N", t, d])], inits)


def fused(d: int = 12, heads: int = 4, t: int = 6, seed: int = 0):
    """One QKV projection [d, 3d] -> Split -> heads: refused (the split mixes roles)."""
    dh = d // heads
    inits = [b.weight("qkv.w", (d, 3 * d), seed), b.weight("o.w", (d, d), seed + 1),
             _c("heads", [0, 0, heads, dh], np.int64), _c("merge", [0, 0, d], np.int64)]
    nodes = [helper.make_node("MatMul", ["x", "qkv.w"], ["qkv"], name="qkv"),
             helper.make_node("Split", ["qkv", "sizes"], ["q0", "k0", "v0"], name="split",
                              axis=-1)]
    inits.append(_c("sizes", [d, d, d], np.int64))
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("Reshape", [f"{p}0", "heads"], [f"{p}h"], name=f"{p}.heads"),
                  helper.make_node("Transpose", [f"{p}h"], [f"{p}t"], name=f"{p}.t", perm=perm)]
    nodes += [helper.make_node("MatMul", ["qt", "kt"], ["s"], name="scores"),
              helper.make_node("Softmax", ["s"], ["p"], name="probs", axis=-1),
              helper.make_node("MatMul", ["p", "vt"], ["c"], name="ctx"),
              helper.make_node("Transpose", ["c"], ["ct"], name="ctx.t", perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ct", "merge"], ["m"], name="ctx.merged"),
              helper.make_node("MatMul", ["m", "o.w"], ["y"], name="o.mm")]
    return b.make(nodes, [b.vi("x", ["N", t, d])], [b.vi("y", ["N", t, d])], inits)


def fused_qkv(d: int = 12, heads: int = 4, t: int = 6, seed: int = 0, variant: str = "paddle"):
    """One QKV projection [d, 3d] (+ bias) -> Reshape [B, T, 3, H, dh] -> Transpose
    [2, 0, 3, 1, 4] -> q, k, v -> scale q -> q @ kᵀ -> Softmax -> @ v -> Transpose ->
    Reshape [B, T, d] -> Wo (+ bias). variant: "paddle" (as paddle2onnx exports SVTR: q, k,
    v by Slice + Squeeze, both shapes Concats of Cast(int32 constant) pieces and the
    sequence length sliced from Shape(x)), "timm" (q, k, v by Gather, constant shapes),
    "perm" (timm with the Transpose [2, 0, 1, 3, 4]: refused)."""
    rng = np.random.default_rng(seed)
    dh = d // heads
    inits = [b.weight("qkv.w", (d, 3 * d), seed), _c("qkv.b", rng.standard_normal(3 * d)),
             b.weight("o.w", (d, d), seed + 1), _c("o.b", rng.standard_normal(d)),
             _c("scale", [dh ** -0.5])]
    nodes = []

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def shape(vals, tag):
        if variant != "paddle":
            inits.append(_c(tag, vals, np.int64))
            return tag
        pieces = []
        for i, v in enumerate(vals):
            if v is None:  # the sequence length, Shape(x)[1:2]
                pieces.append(node("Cast", [node("Slice", [node("Cast", [node(
                    "Shape", ["x"], f"{tag}.shape")], f"{tag}.s64", to=7), "one", "two",
                    "zero"], f"{tag}.t")], f"{tag}.tc", to=7))
            else:
                inits.append(_c(f"{tag}.{i}", [v], np.int32))
                pieces.append(node("Cast", [f"{tag}.{i}"], f"{tag}.c{i}", to=7))
        return node("Concat", pieces, tag, axis=0)

    if variant == "paddle":
        inits += [_c(n, [v], np.int64) for n, v in (("zero", 0), ("one", 1), ("two", 2))]
    qkv = node("Add", [node("MatMul", ["x", "qkv.w"], "qkv.mm"), "qkv.b"], "qkv.out")
    r = node("Reshape", [qkv, shape([0, None if variant == "paddle" else -1, 3, heads, dh],
                                    "qkv.shape")], "qkv.heads")
    tr = node("Transpose", [r], "qkv.t",
              perm=[2, 0, 1, 3, 4] if variant == "perm" else [2, 0, 3, 1, 4])
    parts = []
    for i, p in enumerate("qkv"):
        if variant == "paddle":
            inits += [_c(f"{p}.start", [i], np.int64), _c(f"{p}.end", [i + 1], np.int64)]
            sl = node("Slice", [tr, f"{p}.start", f"{p}.end", "zero"], f"{p}.slice")
            parts.append(node("Squeeze", [sl, "zero"], f"{p}.part"))
        else:
            inits.append(_c(f"{p}.i", i, np.int64))
            parts.append(node("Gather", [tr, f"{p}.i"], f"{p}.part", axis=0))
    q, k, v = parts
    s = node("MatMul", [node("Mul", [q, "scale"], "q.scaled"),
                        node("Transpose", [k], "k.t", perm=[0, 1, 3, 2])], "scores")
    a = node("MatMul", [node("Softmax", [s], "probs", axis=-1), v], "ctx")
    a = node("Transpose", [a], "ctx.t", perm=[0, 2, 1, 3])
    m = node("Reshape", [a, shape([0, None if variant == "paddle" else -1, d], "merge")],
             "ctx.merged")
    node("Add", [node("MatMul", [m, "o.w"], "o.mm"), "o.b"], "y")
    return b.make(nodes, [b.vi("x", ["N", t, d])], [b.vi("y", ["N", t, d])], inits)
