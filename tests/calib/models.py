"""Models for the calibration tests and bench/calib_stream.py, built in code.

    vad():  a streaming voice-activity model, as the issue describes it:
            input [sequence_length, 576] --proj(W1 [576, 32])--> [seq, 32] --Reshape-->
            [seq, 1, 32] --LSTM(hidden 128, initial h, c [1, 1, 128])--> [seq, 1, 1, 128]
            --Reshape--> [seq, 128] --head(W2 [128, 2])--> prob [seq, 2]; hn, cn [1, 1, 128]
    dynamic_cnn():  x [N, 3, H, W] --conv1 3x3--> Relu --conv2 3x3 stride 2--> Relu
            --GlobalAveragePool--> Flatten --fc(Gemm [16 -> 10])--> y [N, 10]
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT


def _w(name: str, shape: tuple[int, ...], rng: np.random.Generator, scale: float = 0.1
       ) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                          producer_name="onnx-obc-tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def vad(feat: int = 576, proj: int = 32, hidden: int = 128, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    vi = helper.make_tensor_value_info
    inits = [_w("W1", (feat, proj), rng), _w("W2", (hidden, 2), rng),
             _w("Wl", (1, 4 * hidden, proj), rng), _w("Rl", (1, 4 * hidden, hidden), rng),
             numpy_helper.from_array(np.array([-1, 1, proj], np.int64), "s3"),
             numpy_helper.from_array(np.array([-1, hidden], np.int64), "s2")]
    nodes = [helper.make_node("MatMul", ["input", "W1"], ["p"], name="proj"),
             helper.make_node("Reshape", ["p", "s3"], ["p3"], name="to_seq"),
             helper.make_node("LSTM", ["p3", "Wl", "Rl", "", "", "h", "c"], ["Y", "hn", "cn"],
                              name="lstm", hidden_size=hidden),
             helper.make_node("Reshape", ["Y", "s2"], ["y2"], name="flat"),
             helper.make_node("MatMul", ["y2", "W2"], ["prob"], name="head")]
    return _model(nodes, [vi("input", F32, ["sequence_length", feat]),
                          vi("h", F32, [1, 1, hidden]), vi("c", F32, [1, 1, hidden])],
                  [vi("prob", F32, ["sequence_length", 2]), vi("hn", F32, [1, 1, hidden]),
                   vi("cn", F32, [1, 1, hidden])], inits)


def dynamic_cnn(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    vi = helper.make_tensor_value_info
    inits = [_w("W1", (8, 3, 3, 3), rng, 0.3), _w("B1", (8,), rng),
             _w("W2", (16, 8, 3, 3), rng, 0.2), _w("B2", (16,), rng),
             _w("Wf", (10, 16), rng, 0.3), _w("Bf", (10,), rng)]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["a2"], name="conv2", pads=[1] * 4,
                              strides=[2, 2]),
             helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="pool"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "Wf", "Bf"], ["y"], name="fc", transB=1)]
    return _model(nodes, [vi("x", F32, ["N", 3, "H", "W"])], [vi("y", F32, ["N", 10])], inits)


def vad_feeds(frames: int = 512, seed: int = 0) -> dict[str, np.ndarray]:
    """512 frames of correlated features plus one LSTM state (the issue's calibration file)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((frames, 6)) @ rng.standard_normal((6, 576))
    x += 0.1 * rng.standard_normal((frames, 576))
    return {"input": x.astype(np.float32),
            "h": (0.1 * rng.standard_normal((1, 1, 128))).astype(np.float32),
            "c": (0.1 * rng.standard_normal((1, 1, 128))).astype(np.float32)}


def images(sizes: list[tuple[int, int]], per_size: int, seed: int = 0) -> list[np.ndarray]:
    """`per_size` smooth random images [3, H, W] of every size, interleaved by size."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(per_size):
        for h, w in sizes:
            base = rng.standard_normal((3, 1, 1)) + np.linspace(-1, 1, h)[None, :, None] * \
                rng.standard_normal((3, 1, 1)) + np.linspace(-1, 1, w)[None, None, :]
            out.append((base + 0.2 * rng.standard_normal((3, h, w))).astype(np.float32))
    return out
