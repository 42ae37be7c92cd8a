"""Write a synthetic ~2.7 M-parameter OCR-style model and calibration data for the benchmarks.

    python bench/make_synthetic.py [--out bench/synthetic] [--samples 128]
    onnx-obc bench/synthetic/ocr_like.onnx /tmp/ocr50.onnx --sparsity 0.5 \\
        --calib bench/synthetic/ocr_like.calib.npz

A CNN backbone (3x3 and 1x1 convs) feeding a transformer-style head over 80 column tokens,
then a 6625-way per-token classifier, as text-recognition models are built. It contains the
layer shapes (rows x cols) the solver benchmark names: 60x2880 (3x3 conv, 320 -> 60),
480x240 and 480x480 (MLP MatMuls), 6625x120 (classifier). Weights are random (He init), so
accuracy means nothing here; it exists to time the whole job. Calibration images are smooth
random fields (noise upsampled from a coarse grid), so activations are correlated as real
images make them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

H, W_IN, CLASSES = 48, 320, 6625


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.params = 0

    def init(self, name: str, a: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(a, name))
        if a.dtype == np.float32:
            self.params += a.size
        return name

    def he(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        w = (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return self.init(name, w)

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, name: str, cin: int, cout: int, k: int, stride=(1, 1)) -> str:
        w = self.he(f"{name}.weight", (cout, cin, k, k), cin * k * k)
        b = self.init(f"{name}.bias", np.zeros(cout, np.float32))
        y = self.node("Conv", [x, w, b], name, kernel_shape=[k, k], strides=list(stride),
                      pads=[k // 2] * 4)
        return self.node("Relu", [y], f"{name}.relu")

    def linear(self, x: str, name: str, din: int, dout: int, relu: bool = False) -> str:
        y = self.node("MatMul", [x, self.he(f"{name}.weight", (din, dout), din)], name)
        y = self.node("Add", [y, self.init(f"{name}.bias", np.zeros(dout, np.float32))],
                      f"{name}.add")
        return self.node("Relu", [y], f"{name}.relu") if relu else y

    def layer_norm(self, x: str, name: str, dim: int) -> str:
        return self.node("LayerNormalization", [x, self.init(f"{name}.scale", np.ones(
            dim, np.float32)), self.init(f"{name}.bias", np.zeros(dim, np.float32))], name,
            axis=-1)


def build(seed: int = 0) -> onnx.ModelProto:
    b = Builder(seed)
    x = b.conv("image", "stem", 3, 32, 3, (2, 2))  # [N, 32, 24, 160]
    x = b.conv(x, "conv2", 32, 64, 3, (2, 2))  # [N, 64, 12, 80]
    x = b.conv(x, "conv3", 64, 128, 3)  # [N, 128, 12, 80]
    x = b.conv(x, "conv4", 128, 320, 3, (2, 1))  # [N, 320, 6, 80]
    x = b.conv(x, "conv4b", 320, 320, 1)  # [N, 320, 6, 80]
    x = b.conv(x, "conv5", 320, 60, 3)  # [N, 60, 6, 80]: W 60 x 2880
    x = b.conv(x, "conv6", 60, 120, 3)  # [N, 120, 6, 80]
    x = b.node("ReduceMean", [x], "pool_h", axes=[2], keepdims=0)  # [N, 120, 80]
    t = b.node("Transpose", [x], "tokens", perm=[0, 2, 1])  # [N, 80, 120]
    for i in range(2):  # two pre-norm blocks: attention (dim 120), MLP 120-240-480-480-120
        h = b.layer_norm(t, f"blk{i}.ln1", 120)
        q, k, v = (b.linear(h, f"blk{i}.attn.{n}", 120, 120) for n in "qkv")
        s = b.node("MatMul", [q, b.node("Transpose", [k], f"blk{i}.kT", perm=[0, 2, 1])],
                   f"blk{i}.scores")
        s = b.node("Mul", [s, b.init(f"blk{i}.scale", np.array(120 ** -0.5, np.float32))],
                   f"blk{i}.scaled")
        a = b.node("MatMul", [b.node("Softmax", [s], f"blk{i}.softmax", axis=-1), v],
                   f"blk{i}.mix")
        t = b.node("Add", [t, b.linear(a, f"blk{i}.attn.out", 120, 120)], f"blk{i}.res1")
        h = b.layer_norm(t, f"blk{i}.ln2", 120)
        h = b.linear(h, f"blk{i}.mlp.fc1", 120, 240, relu=True)
        h = b.linear(h, f"blk{i}.mlp.fc2", 240, 480, relu=True)  # W 480 x 240
        h = b.linear(h, f"blk{i}.mlp.fc3", 480, 480, relu=True)  # W 480 x 480
        t = b.node("Add", [t, b.linear(h, f"blk{i}.mlp.fc4", 480, 120)], f"blk{i}.res2")
    t = b.layer_norm(t, "ln_f", 120)
    logits = b.linear(t, "classifier", 120, CLASSES)  # W 6625 x 120
    b.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        b.nodes, "ocr_like",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, H, W_IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 80, CLASSES])],
        b.inits)
    del logits
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="onnx-obc/bench/make_synthetic.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    print(f"ocr_like: {b.params / 1e6:.2f} M parameters")
    return model


def smooth_images(n: int, seed: int) -> np.ndarray:
    """Random fields upsampled from a 6 x 40 grid, plus a little pixel noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, 6, 40)).astype(np.float32)
    img = coarse.repeat(8, axis=2).repeat(8, axis=3)
    return img + 0.1 * rng.standard_normal(img.shape).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "synthetic"))
    ap.add_argument("--samples", type=int, default=128)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(build(), out / "ocr_like.onnx")
    np.savez(out / "ocr_like.calib.npz", image=smooth_images(args.samples, 1))
    print(f"wrote {out / 'ocr_like.onnx'} and {out / 'ocr_like.calib.npz'}")


if __name__ == "__main__":
    main()
