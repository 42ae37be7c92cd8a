"""Models of a real user's size, built here (nothing large is committed):

    resnet50()      onnx's own ResNet-50 topology (onnx/backend/test/data/light/
                    light_resnet50.onnx: 53 Conv + 53 BatchNormalization + Gemm, 25.6 M
                    parameters, weights stored as ConstantOfShape fills) given real values:
                    He-normal convolutions, BatchNormalization statistics set from the data
                    (each BN normalises its input over a batch of the calibration images, as
                    a trained network's running statistics do), the last BN of every residual
                    branch scaled by 0.2; opset 13, initializers instead of fills
    bert_base()     a BERT-base-size encoder (12 layers, hidden 768, 12 heads, FFN 3072,
                    sequence 128, vocabulary 30,522: 109 M parameters) from onnx.helper:
                    embeddings (Gather) + LayerNormalization, per layer Q/K/V/output MatMul
                    + Add, softmax attention, GELU (Erf) MLP; opset 17
    huge_external(folder)  (tests/builders.py) writes a > 2 GB model with external data (an
                    embedding table of 2.2 GB and two MatMul layers), for the round trip

resnet50 and bert_base return (model, feed function n -> {input: array}).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.builders import huge_external  # noqa: F401  (the > 2 GB model)

Feed = Callable[[int], dict[str, np.ndarray]]
LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_resnet50.onnx")


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random images [n, 3, 224, 224] (low-frequency noise, ImageNet-normalised range)."""
    rng = np.random.default_rng(seed)
    small = rng.standard_normal((n, 3, 14, 14)).astype(np.float32)
    return np.kron(small, np.ones((1, 1, 16, 16), np.float32))  # [n, 3, 224, 224]


def resnet50(seed: int = 0) -> tuple[onnx.ModelProto, Feed]:
    src = onnx.load(LIGHT)
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in src.graph.initializer}
    fills = {n.output[0]: tuple(int(v) for v in shapes[n.input[0]])
             for n in src.graph.node if n.op_type == "ConstantOfShape"}
    params = re.compile(r".*_(w|b|s|rm|riv)_0$")
    fills.update({k: v.shape for k, v in shapes.items() if params.match(k)})
    keep = [t for t in src.graph.initializer if not t.name.endswith("__SHAPE")
            and not params.match(t.name) and "blobs_queue" not in t.name]
    values: dict[str, np.ndarray] = {}
    for name, shape in fills.items():
        if name.endswith("_w_0") and len(shape) == 4:  # conv: He-normal
            fan_in = int(np.prod(shape[1:]))
            values[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif name.endswith("_w_0"):  # the classifier
            values[name] = (rng.standard_normal(shape) * 8 / np.sqrt(shape[1])).astype(np.float32)
        elif name.endswith("_s_0"):  # BN scale
            last = "branch2c" in name
            values[name] = np.full(shape, 0.2 if last else 1.0, np.float32)
        elif name.endswith("_riv_0"):
            values[name] = np.ones(shape, np.float32)
        else:  # BN bias, running mean, FC bias
            values[name] = np.zeros(shape, np.float32)
    nodes = [n for n in src.graph.node if n.op_type != "ConstantOfShape"]
    inits = keep + [numpy_helper.from_array(v, k) for k, v in values.items()]
    data_in = src.graph.input[0]
    graph = helper.make_graph(nodes, "resnet50", [data_in], list(src.graph.output), inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model = onnx.version_converter.convert_version(model, 13)
    model.ir_version = 8
    x_name = data_in.name
    for t in model.graph.initializer:  # the classifier's Reshape: any batch size
        if t.name == "OC2_DUMMY_1":
            t.CopyFrom(numpy_helper.from_array(np.array([-1, 2048], np.int64), t.name))
    del model.graph.value_info[:]
    for v in (model.graph.input[0], model.graph.output[0]):  # any batch size
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    _bn_statistics(model, x_name, _images(16, seed + 1))
    _center_classifier(model, x_name, _images(16, seed + 1))
    onnx.checker.check_model(model)
    return model, lambda n: {x_name: _images(n, seed + 2)}


def _bn_statistics(model: onnx.ModelProto, x_name: str, probe: np.ndarray) -> None:
    """Set every BatchNormalization's running mean / variance to its input's batch statistics
    on `probe`, in one run: a copy with training_mode=1 and momentum 0 (opset 15) returns
    the batch statistics as its running-statistics outputs."""
    import onnxruntime as ort

    m = onnx.version_converter.convert_version(model, 15)
    m.ir_version = 8
    stats = []
    for bn in (n for n in m.graph.node if n.op_type == "BatchNormalization"):
        del bn.attribute[:]
        bn.attribute.extend([helper.make_attribute("training_mode", 1),
                             helper.make_attribute("momentum", 0.0),
                             helper.make_attribute("epsilon", 1e-5)])
        bn.output.extend([bn.input[3] + ".batch", bn.input[4] + ".batch"])
        stats += [bn.input[3], bn.input[4]]
        m.graph.output.extend([helper.make_tensor_value_info(bn.input[3] + ".batch",
                                                             TensorProto.FLOAT, None),
                               helper.make_tensor_value_info(bn.input[4] + ".batch",
                                                             TensorProto.FLOAT, None)])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {x_name: probe})))
    by_name = {t.name: t for t in model.graph.initializer}
    for name in stats:
        v = got[name + ".batch"].astype(np.float32)
        by_name[name].CopyFrom(numpy_helper.from_array(v + 1e-3 if "riv" in name else v, name))


def _center_classifier(model: onnx.ModelProto, x_name: str, probe: np.ndarray) -> None:
    """Bias of the final Gemm = -W mean(features): logits vary with the input instead of
    following the features' common mean (random weights have no trained classifier)."""
    import onnxruntime as ort

    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(gemm.input[0], TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feats = sess.run([gemm.input[0]], {x_name: probe})[0]  # [n, 2048]
    by_name = {t.name: t for t in model.graph.initializer}
    W = numpy_helper.to_array(by_name[gemm.input[1]])  # [1000, 2048] (transB)
    bias = -(W @ feats.mean(axis=0)).astype(np.float32)
    by_name[gemm.input[2]].CopyFrom(numpy_helper.from_array(bias, gemm.input[2]))


def _init(name: str, shape: tuple[int, ...], rng: np.random.Generator, scale: float | None = None
          ) -> onnx.TensorProto:
    s = (1.0 / np.sqrt(shape[0])) if scale is None else scale
    return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)


def bert_base(layers: int = 12, hidden: int = 768, heads: int = 12, ffn: int = 3072,
              seq: int = 128, vocab: int = 30522, seed: int = 0) -> tuple[onnx.ModelProto, Feed]:
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [
        _init("word_emb", (vocab, hidden), rng, 0.05), _init("pos_emb", (seq, hidden), rng, 0.02),
        numpy_helper.from_array(np.ones(hidden, np.float32), "ln_one"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "ln_zero"),
        numpy_helper.from_array(np.array([0, 0, heads, hd], np.int64), "heads_shape"),
        numpy_helper.from_array(np.array([0, 0, hidden], np.int64), "merge_shape"),
        numpy_helper.from_array(np.array(1 / np.sqrt(hd), np.float32), "att_scale"),
        numpy_helper.from_array(np.array(np.sqrt(0.5), np.float32), "inv_sqrt2"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def linear(x: str, name: str, d_in: int, d_out: int) -> str:
        inits.append(_init(f"{name}.weight", (d_in, d_out), rng))
        inits.append(numpy_helper.from_array(np.zeros(d_out, np.float32), f"{name}.bias"))
        y = node("MatMul", [x, f"{name}.weight"], f"{name}.mm")
        return node("Add", [y, f"{name}.bias"], f"{name}.out")

    def ln(x: str, name: str) -> str:
        return node("LayerNormalization", [x, "ln_one", "ln_zero"], name, axis=-1, epsilon=1e-12)

    tok = node("Gather", ["word_emb", "input_ids"], "tok_emb")
    h = ln(node("Add", [tok, "pos_emb"], "emb_sum"), "emb_ln")
    for i in range(layers):
        p = f"layer{i}"
        q, k, v = (node("Transpose", [node("Reshape", [linear(h, f"{p}.{t}", hidden, hidden),
                                                         "heads_shape"], f"{p}.{t}.heads")],
                        f"{p}.{t}.bhtd", perm=[0, 2, 3, 1] if t == "k" else [0, 2, 1, 3])
                   for t in ("q", "k", "v"))
        s = node("Mul", [node("MatMul", [q, k], f"{p}.scores"), "att_scale"], f"{p}.scaled")
        a = node("MatMul", [node("Softmax", [s], f"{p}.probs", axis=-1), v], f"{p}.ctx")
        a = node("Reshape", [node("Transpose", [a], f"{p}.ctx.t", perm=[0, 2, 1, 3]),
                             "merge_shape"], f"{p}.ctx.merged")
        h = ln(node("Add", [h, linear(a, f"{p}.attn_out", hidden, hidden)], f"{p}.res1"),
               f"{p}.ln1")
        u = linear(h, f"{p}.ffn_in", hidden, ffn)
        g = node("Mul", [node("Mul", [u, "half"], f"{p}.gelu.h"),
                         node("Add", [node("Erf", [node("Mul", [u, "inv_sqrt2"], f"{p}.gelu.s")],
                                           f"{p}.gelu.erf"), "one"], f"{p}.gelu.p")],
                 f"{p}.gelu")
        h = ln(node("Add", [h, linear(g, f"{p}.ffn_out", ffn, hidden)], f"{p}.res2"), f"{p}.ln2")
    graph = helper.make_graph(
        nodes, "bert_base",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", seq])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["N", seq, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)

    def feed(n: int) -> dict[str, np.ndarray]:
        r = np.random.default_rng(seed + 3)
        return {"input_ids": r.integers(1000, vocab, size=(n, seq)).astype(np.int64)}
    return model, feed
