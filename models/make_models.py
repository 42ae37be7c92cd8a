"""Build the small test models that onnx-obc is measured on.

Trains two classifiers on scikit-learn's bundled handwritten digits
(1797 8x8 images, 10 classes) and writes, for each ``<name>`` in
``digits_cnn`` and ``digits_vit``:

* ``models/<name>.onnx``      input ``input`` float32 [N, 1, 8, 8] -> ``logits`` [N, 10]
* ``models/<name>.calib.npz`` key ``input``: 256 calibration images
* ``models/<name>.eval.npz``  keys ``input`` and ``labels``: 500 evaluation images

Train / calib / eval are disjoint and fixed by a seed (the same for both
models). The ONNX graphs are written by hand with ``onnx.helper`` (opset 17,
IR version 8), checked, and compared against the torch model in onnxruntime.
The models are deliberately narrow, so naive magnitude pruning visibly hurts
them; the table printed at the end shows dense / magnitude-50% / magnitude-70%
eval accuracy.

Usage::

    pip install -e ".[models]"
    python models/make_models.py               # retrain and rewrite everything
    python models/make_models.py --check-only  # reload saved models, print the table
"""
import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

OUT_DIR = Path(__file__).resolve().parent
SEED = 0
N_EVAL, N_CALIB = 500, 256
OPSET, IR_VERSION = 17, 8
PRUNABLE_OPS = ("Conv", "Gemm", "MatMul")
CNN_WIDTHS, CNN_EPOCHS = dict(c1=32, c2=32), 80
VIT_WIDTHS, VIT_EPOCHS = dict(dim=64, mlp=128), 200
TRAIN = dict(batch=64, lr=3e-3, weight_decay=1e-4)  # AdamW + one-cycle schedule


# ----------------------------------------------------------------------------- data
def load_splits():
    """Return {"train"|"calib"|"eval": (x float32 [n,1,8,8], y int64 [n])}."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(SEED).permutation(len(y))
    idx = {"eval": perm[:N_EVAL], "calib": perm[N_EVAL:N_EVAL + N_CALIB],
           "train": perm[N_EVAL + N_CALIB:]}
    return {k: (x[i], y[i]) for k, i in idx.items()}


def random_shift(x, gen):
    """Shift each image by a random offset in {-1, 0, 1}^2 (zero fill)."""
    padded = F.pad(x, (1, 1, 1, 1))
    crops = torch.stack([padded[:, :, i:i + 8, j:j + 8] for i in range(3) for j in range(3)])
    pick = torch.randint(0, 9, (x.shape[0],), generator=gen)
    return crops[pick, torch.arange(x.shape[0])]


# ---------------------------------------------------------------------------- models
class DigitsCNN(nn.Module):
    """Stem conv+BN, one residual block, depthwise stride-2 conv, 1x1 conv, GAP, FC."""

    def __init__(self, c1, c2):
        super().__init__()
        def conv_bn(cin, cout, k, stride=1, groups=1):
            return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout))
        self.stem = conv_bn(1, c1, 5)  # 25 inputs per output: a 3x3 stem (9) is too small
        self.block1 = conv_bn(c1, c1, 3)
        self.block2 = conv_bn(c1, c1, 3)
        self.down = conv_bn(c1, c1, 3, stride=2, groups=c1)
        self.expand = conv_bn(c1, c2, 1)
        self.fc = nn.Linear(c2, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(x + self.block2(F.relu(self.block1(x))))
        x = F.relu(self.expand(F.relu(self.down(x))))
        return self.fc(x.mean((2, 3)))


class DigitsViT(nn.Module):
    """2x2 patch embedding, one pre-norm single-head transformer block, mean pool, FC."""

    def __init__(self, dim, mlp):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 16, dim))
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)
        self.head = nn.Linear(dim, 10)
        self.scale = dim ** -0.5

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        h = self.ln1(x)
        attn = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) * self.scale, dim=-1)
        x = x + self.o(attn @ self.v(h))
        x = x + self.fc2(F.relu(self.fc1(self.ln2(x))))
        return self.head(self.ln_f(x).mean(1))


def train(model, x, y, epochs, batch, lr, weight_decay):
    gen = torch.Generator().manual_seed(SEED)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(y) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            loss = F.cross_entropy(model(random_shift(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


# ---------------------------------------------------------------------------- export
class GraphBuilder:
    """Tiny helper around onnx.helper: collects nodes and initializers."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name, array):
        array = np.asarray(array)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type, inputs, out=None, name=None, **attrs):
        self.count += 1
        out = out or f"{op_type.lower()}_{self.count}"
        name = name or f"{op_type}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def build(self, name):
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="onnx-obc/models/make_models.py")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def npy(t):
    return t.detach().cpu().numpy().astype(np.float32)


def export_cnn(m):
    g = GraphBuilder()

    def conv(x, seq, name, fold_bn=True):
        c, bn = seq
        attrs = dict(kernel_shape=list(c.kernel_size), strides=list(c.stride),
                     pads=[c.padding[0]] * 4, group=c.groups)
        if not fold_bn:  # keep a real BatchNormalization node
            y = g.op("Conv", [x, g.const(f"{name}.weight", npy(c.weight))], name=name, **attrs)
            return g.op("BatchNormalization",
                        [y, g.const(f"{name}.bn.scale", npy(bn.weight)), g.const(f"{name}.bn.bias", npy(bn.bias)),
                         g.const(f"{name}.bn.mean", npy(bn.running_mean)),
                         g.const(f"{name}.bn.var", npy(bn.running_var))], epsilon=bn.eps)
        s = npy(bn.weight) / np.sqrt(npy(bn.running_var) + bn.eps)
        w = npy(c.weight) * s[:, None, None, None]
        b = npy(bn.bias) - npy(bn.running_mean) * s
        return g.op("Conv", [x, g.const(f"{name}.weight", w), g.const(f"{name}.bias", b)],
                    name=name, **attrs)

    x = g.op("Relu", [conv("input", m.stem, "stem", fold_bn=False)])
    y = g.op("Relu", [conv(x, m.block1, "block1")])
    x = g.op("Relu", [g.op("Add", [x, conv(y, m.block2, "block2")])])
    x = g.op("Relu", [conv(x, m.down, "down")])
    x = g.op("Relu", [conv(x, m.expand, "expand")])
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    g.op("Gemm", [x, g.const("fc.weight", npy(m.fc.weight)), g.const("fc.bias", npy(m.fc.bias))],
         out="logits", name="fc", transB=1)
    return g.build("digits_cnn")


def export_vit(m):
    g = GraphBuilder()
    dim = m.pos.shape[-1]

    def linear(x, lin, name):  # x [N, T, in] @ W [in, out] + b
        y = g.op("MatMul", [x, g.const(f"{name}.weight", npy(lin.weight).T.copy())], name=name)
        return g.op("Add", [y, g.const(f"{name}.bias", npy(lin.bias))])

    def layer_norm(x, ln, name):
        return g.op("LayerNormalization", [x, g.const(f"{name}.scale", npy(ln.weight)),
                                           g.const(f"{name}.bias", npy(ln.bias))], axis=-1, epsilon=ln.eps)

    p = m.patch
    x = g.op("Conv", ["input", g.const("patch.weight", npy(p.weight)), g.const("patch.bias", npy(p.bias))],
             name="patch", kernel_shape=[2, 2], strides=[2, 2])
    x = g.op("Reshape", [x, g.const("patch.shape", np.array([0, dim, 16], np.int64))])
    x = g.op("Transpose", [x], perm=[0, 2, 1])
    x = g.op("Add", [x, g.const("pos_embed", npy(m.pos))])
    h = layer_norm(x, m.ln1, "ln1")
    q, k, v = linear(h, m.q, "attn.q"), linear(h, m.k, "attn.k"), linear(h, m.v, "attn.v")
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])])
    scores = g.op("Mul", [scores, g.const("attn.scale", np.array(m.scale, np.float32))])
    attn = g.op("Softmax", [scores], axis=-1)
    x = g.op("Add", [x, linear(g.op("MatMul", [attn, v]), m.o, "attn.out")])
    h = g.op("Relu", [linear(layer_norm(x, m.ln2, "ln2"), m.fc1, "mlp.fc1")])
    x = g.op("Add", [x, linear(h, m.fc2, "mlp.fc2")])
    x = g.op("ReduceMean", [layer_norm(x, m.ln_f, "ln_f")], axes=[1], keepdims=0)
    g.op("Gemm", [x, g.const("head.weight", npy(m.head.weight)), g.const("head.bias", npy(m.head.bias))],
         out="logits", name="head", transB=1)
    return g.build("digits_vit")


# ------------------------------------------------------------------------ evaluation
def run_onnx(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def accuracy(model, x, y):
    return float((run_onnx(model, x).argmax(1) == y).mean())


def magnitude_prune(model, frac):
    """Copy of `model` with the `frac` smallest-|w| entries of every Conv/Gemm/MatMul
    weight initializer set to zero (per tensor)."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    inits = {t.name: t for t in pruned.graph.initializer}
    for node in pruned.graph.node:
        if node.op_type in PRUNABLE_OPS and len(node.input) > 1 and node.input[1] in inits:
            t = inits[node.input[1]]
            w = numpy_helper.to_array(t).copy()
            flat = w.reshape(-1)
            flat[np.argsort(np.abs(flat), kind="stable")[:int(round(frac * flat.size))]] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return pruned


def sensitivity_row(model, x, y):
    """Eval accuracy dense / magnitude-pruned at 50% / 70%."""
    return [accuracy(model, x, y)] + [accuracy(magnitude_prune(model, f), x, y) for f in (0.5, 0.7)]


def print_table(rows):
    print(f"\n{'model':<12} {'dense':>7} {'mag-50%':>8} {'mag-70%':>8}  (eval accuracy, %)")
    for name, (dense, m50, m70) in rows.items():
        print(f"{name:<12} {100 * dense:7.1f} {100 * m50:8.1f} {100 * m70:8.1f}")


def check_only():
    rows = {}
    for name in ("digits_cnn", "digits_vit"):
        model = onnx.load(OUT_DIR / f"{name}.onnx")
        data = np.load(OUT_DIR / f"{name}.eval.npz")
        rows[name] = sensitivity_row(model, data["input"], data["labels"])
    print_table(rows)


# ------------------------------------------------------------------------------ main
def build_all():
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    splits = load_splits()
    (x_tr, y_tr), (x_cal, _), (x_ev, y_ev) = splits["train"], splits["calib"], splits["eval"]
    specs = {"digits_cnn": (DigitsCNN, CNN_WIDTHS, CNN_EPOCHS, export_cnn),
             "digits_vit": (DigitsViT, VIT_WIDTHS, VIT_EPOCHS, export_vit)}
    rows = {}
    for name, (cls, widths, epochs, export) in specs.items():
        t0 = time.time()
        torch.manual_seed(SEED)
        model = train(cls(**widths), x_tr, y_tr, epochs=epochs, **TRAIN)
        onnx_model = export(model)
        with torch.no_grad():
            ref = model(torch.from_numpy(x_ev)).numpy()
        got = run_onnx(onnx_model, x_ev)
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel < 1e-4, f"{name}: onnxruntime vs torch relative error {rel:.2e}"
        onnx.save(onnx_model, OUT_DIR / f"{name}.onnx")
        np.savez(OUT_DIR / f"{name}.calib.npz", input=x_cal)
        np.savez(OUT_DIR / f"{name}.eval.npz", input=x_ev, labels=y_ev)
        torch_acc = (ref.argmax(1) == y_ev).mean()
        rows[name] = sensitivity_row(onnx_model, x_ev, y_ev)
        print(f"{name}: {sum(p.numel() for p in model.parameters())} params, torch eval acc "
              f"{100 * torch_acc:.1f}%, ort/torch rel err {rel:.1e}, {time.time() - t0:.1f}s")
    print_table(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check-only", action="store_true",
                        help="reload the saved models and print the sensitivity table")
    args = parser.parse_args()
    torch.set_num_threads(1)  # results depend on the thread count; 1 keeps them reproducible
    check_only() if args.check_only else build_all()


if __name__ == "__main__":
    main()
