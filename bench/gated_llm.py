"""Channel pruning of gated (SwiGLU) MLPs on a small trained decoder exported with its KV
cache, as Llama-family models reach onnxruntime (prints a table; asserts nothing).

    python bench/gated_llm.py build DIR [--steps 400]   # train (torch, ~5 min on 2 cores)
    python bench/gated_llm.py run DIR [--fractions 0.2 0.3] [--rounds 30]

`build` trains a byte-level LlamaForCausalLM (transformers; 4 layers, d 192, SwiGLU 512,
6 query / 2 key-value heads, untied head: 1.7 M parameters) on Python's standard-library
sources (the files sorted by name, the first 85% for training), then exports it with its
KV cache (torch.onnx.export, TorchScript, opset 17: input_ids, attention_mask and
past_key_values.i.key / .value in; logits and present.i.* out) and writes 64 calibration
windows (64 bytes, an empty past) from the training files and 128 evaluation windows from
the held-out ones: DIR/llama.onnx, DIR/calib.npz, DIR/eval.npz. No pretrained Llama-family
model installs from a package here; a trained one shows what random weights hide (the
channels' unequal importance).

`run`, per FLOP cut F: the channel stage as `--channels F` runs it (channels/stage.py: the
DP over the sites' OBS traces by the output objective) and the L2-norm baseline at the same
counts (the same shapes); the stage on the same model with each MLP's gate and up
projections fused into one MatMul and a Split (Phi-3's layout, `fuse_gate_up`: float-exact); then the CLI path `convert(channels=F)` (fold, verification) and
its combination with `--bits 4 --runtime onnxruntime` (MatMulNBits); W4 MatMulNBits and
W8A8 onnxruntime alone, and onnxruntime's `quantize_static` (bench/qs_static.py) as the
reference row. Columns: layer-FLOP cut, next-
byte accuracy and cross-entropy on the held-out windows (dense alongside), agreement of the
argmax with dense, output error ||y - y_dense|| / ||y_dense|| of the logits, file size, and
onnxruntime CPU latency as a ratio to fp32 (1 thread, ORT_ENABLE_ALL, medians of --rounds
rounds alternating every model in one process): a 64-byte prefill and one decode step
after a 64-byte past.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

LAYERS, D, FFN, HEADS, KV, DH = 4, 192, 512, 6, 2, 32
WIN = 64


def _corpus() -> tuple[bytes, bytes]:
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
    cut = int(0.85 * len(files))
    read = [Path(f).read_bytes() for f in files]
    return b"".join(read[:cut]), b"".join(read[cut:])


def _windows(text: bytes, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(text) - WIN - 1, n)
    return np.stack([np.frombuffer(text[s:s + WIN + 1], dtype=np.uint8) for s in starts])


def build(folder: Path, steps: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.cache_utils import DynamicCache

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=D, intermediate_size=FFN,
                      num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=KV, max_position_embeddings=512,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    train, held = _corpus()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(0)
    t0 = time.time()
    for step in range(steps):
        s = rng.integers(0, len(train) - 129, 32)
        batch = torch.from_numpy(np.stack([np.frombuffer(train[i:i + 129], np.uint8)
                                           for i in s]).astype(np.int64))
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss  # shifted inside
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()

    class Step(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, *past):
            cache = DynamicCache()
            for i in range(LAYERS):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.m(input_ids=input_ids, attention_mask=attention_mask,
                         past_key_values=cache, use_cache=True)
            pres = [t for lay in out.past_key_values.layers for t in (lay.keys, lay.values)]
            return (out.logits, *pres)

    names = [f"past_key_values.{i}.{k}" for i in range(LAYERS) for k in ("key", "value")]
    outs = ["logits"] + [n.replace("past_key_values", "present") for n in names]
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
           "logits": {0: "batch", 1: "seq"}}
    dyn.update({n: {0: "batch", 2: "past"} for n in names})
    dyn.update({n: {0: "batch", 2: "total"} for n in outs[1:]})
    ids = torch.randint(0, 256, (1, 8))
    past = [torch.zeros(1, KV, 4, DH) for _ in names]
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(Step(model), (ids, torch.ones(1, 12, dtype=torch.long), *past),
                          str(folder / "llama.onnx"), input_names=["input_ids",
                                                                    "attention_mask", *names],
                          output_names=outs, dynamic_axes=dyn, opset_version=17, dynamo=False)
    for name, text, n, seed in (("calib", train, 64, 1), ("eval", held, 128, 2)):
        w = _windows(text, n, seed)
        feeds = {"input_ids": w[:, :-1].astype(np.int64),
                 "attention_mask": np.ones((n, WIN), np.int64),
                 **{k: np.zeros((n, KV, 0, DH), np.float32) for k in names}}
        if name == "eval":
            feeds["next"] = w[:, 1:].astype(np.int64)
        np.savez(folder / f"{name}.npz", **feeds)
    print(f"wrote {folder}/llama.onnx, calib.npz, eval.npz", flush=True)


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _logits(s: ort.InferenceSession, ev: dict) -> np.ndarray:
    names = {i.name for i in s.get_inputs()}
    return np.concatenate([s.run(["logits"], {k: v[i:i + 16] for k, v in ev.items()
                                              if k in names})[0]
                           for i in range(0, len(ev["input_ids"]), 16)])


def _metrics(y: np.ndarray, dense: np.ndarray, nxt: np.ndarray) -> tuple:
    z = y - y.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, nxt[..., None], -1).mean()
    acc = (y.argmax(-1) == nxt).mean()
    agree = (y.argmax(-1) == dense.argmax(-1)).mean()
    err = np.linalg.norm(y - dense) / np.linalg.norm(dense)
    return acc, ce, agree, err


def _feeds(s: ort.InferenceSession) -> list[dict]:
    """A 64-byte prefill and one decode step after a 64-byte past (batch 1)."""
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 256, (1, WIN)).astype(np.int64)
    pre = {"input_ids": ids, "attention_mask": np.ones((1, WIN), np.int64)}
    step = {"input_ids": ids[:, :1], "attention_mask": np.ones((1, WIN + 1), np.int64)}
    for i in s.get_inputs():
        if i.name.startswith("past"):
            pre[i.name] = np.zeros((1, KV, 0, DH), np.float32)
            step[i.name] = rng.standard_normal((1, KV, WIN, DH)).astype(np.float32)
    return [pre, step]


def _latency(models: dict, rounds: int) -> dict:
    """{name: [prefill s, decode s]}: medians over `rounds` rounds alternating the models,
    each round a block of runs of about 20 ms per model and feed."""
    sess = {k: _session(m) for k, m in models.items()}
    feeds = _feeds(next(iter(sess.values())))
    reps = {}
    for k, s in sess.items():
        for j, f in enumerate(feeds):
            s.run(None, f)
            t = time.perf_counter()
            s.run(None, f)
            reps[k, j] = max(1, int(0.02 / max(time.perf_counter() - t, 1e-6)))
    times = {key: [] for key in reps}
    for _ in range(rounds):
        for k, s in sess.items():
            for j, f in enumerate(feeds):
                t = time.perf_counter()
                for _ in range(reps[k, j]):
                    s.run(None, f)
                times[k, j].append((time.perf_counter() - t) / reps[k, j])
    return {k: [statistics.median(times[k, j]) for j in range(len(feeds))] for k in sess}


def fuse_gate_up(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with each MLP's gate and up projections as one MatMul [d, 2F] and a
    Split into the two halves (Phi-3's gate_up_proj as ONNX writes torch's chunk at opset
    17): float-exact."""
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    by_name = {n.name: n for n in g.node}
    for i in range(LAYERS):
        gate = by_name[f"/m/model/layers.{i}/mlp/gate_proj/MatMul"]
        up = by_name[f"/m/model/layers.{i}/mlp/up_proj/MatMul"]
        w = np.hstack([numpy_helper.to_array(inits[gate.input[1]]),
                       numpy_helper.to_array(inits[up.input[1]])])
        name = f"gate_up.{i}"
        g.initializer.append(numpy_helper.from_array(w, name))
        fusedmm = helper.make_node("MatMul", [gate.input[0], name], [f"{name}.out"],
                                   name=f"/m/model/layers.{i}/mlp/gate_up_proj/MatMul")
        split = helper.make_node("Split", [f"{name}.out"], [gate.output[0], up.output[0]],
                                 name=f"/m/model/layers.{i}/mlp/chunk", axis=-1)
        at = list(g.node).index(gate)
        g.node.remove(gate)
        g.node.remove(up)
        g.node.insert(at, split)
        g.node.insert(at, fusedmm)
    onnx.checker.check_model(out)
    return out


def run(folder: Path, fractions: list[float], rounds: int) -> None:
    from qs_static import quantize_static

    from onnx_obc import convert
    from onnx_obc.backend import get_backend
    from onnx_obc.calib import DataSet
    from onnx_obc.channels.stage import cut_channels, plan_channels
    from onnx_obc.layers import find_layers

    path = str(folder / "llama.onnx")
    model = onnx.load(path)
    calib = dict(np.load(folder / "calib.npz"))
    ev = dict(np.load(folder / "eval.npz"))
    nxt = ev.pop("next")
    dense = _logits(_session(model), ev)
    models, cuts = {"fp32": model}, {"fp32": 0.0}
    plan = plan_channels(model, find_layers(model)[0], DataSet(calib, "calib"), 16,
                         get_backend("cpu"), 0.01, 2048, fraction=max(fractions))
    print(f"{len(plan.sites)} sites, {len(plan.refused)} producers kept; plan "
          f"{plan.seconds:.1f} s", flush=True)
    fusedm = fuse_gate_up(model)
    fplan = plan_channels(fusedm, find_layers(fusedm)[0], DataSet(calib, "calib"), 16,
                          get_backend("cpu"), 0.01, 2048, fraction=max(fractions))
    print(f"fused gate-up: {len(fplan.sites)} sites; its dense output error "
          f"{np.linalg.norm(_logits(_session(fusedm), ev) - dense) / np.linalg.norm(dense):.1e}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for f in fractions:
            r = cut_channels(plan, f, 0, "dp", "output")
            cut = 1 - r.macs[1] / r.macs[0]
            models[f"{f:.0%} OBS (stage)"], models[f"{f:.0%} L2 (same counts)"] = \
                r.model, r.baseline
            cuts[f"{f:.0%} OBS (stage)"] = cuts[f"{f:.0%} L2 (same counts)"] = cut
            print(f"  {f:.0%}: removed " + ", ".join(f"{row.removed}/{row.channels}"
                                                  for row in r.rows), flush=True)
            fr = cut_channels(fplan, f, 0, "dp", "output")
            models[f"{f:.0%} OBS, fused gate-up"] = fr.model
            cuts[f"{f:.0%} OBS, fused gate-up"] = 1 - fr.macs[1] / fr.macs[0]
            print(f"  {f:.0%} fused gate-up: removed " + ", ".join(
                f"{row.removed}/{row.channels}" for row in fr.rows), flush=True)
            for label, kw in ((f"{f:.0%} convert", {}),
                              (f"{f:.0%} convert + W4 MatMulNBits",
                               {"bits": 4, "runtime": "onnxruntime"})):
                out = os.path.join(tmp, f"{len(models)}.onnx")
                t = time.time()
                res = convert(path, out, calib=calib, channels=f, progress=False, **kw)
                models[label] = onnx.load(out)
                ch = res.report.channels
                cuts[label] = 1 - ch["macs_pruned"] / ch["macs_dense"]
                print(f"  {label}: {time.time() - t:.1f} s", flush=True)
        for label, kw in (("W4 MatMulNBits", {"bits": 4}),
                          ("W8A8 onnxruntime", {"bits": 8, "act_bits": 8})):
            out = os.path.join(tmp, f"{len(models)}.onnx")
            convert(path, out, calib=calib, runtime="onnxruntime", progress=False, **kw)
            models[label], cuts[label] = onnx.load(out), 0.0
        out = os.path.join(tmp, "qs.onnx")
        quantize_static(path, out, calib, model)
        models["quantize_static W8A8"], cuts["quantize_static W8A8"] = onnx.load(out), 0.0
        lat = _latency(models, rounds) if rounds else {}
        print("| model | FLOP cut | next-byte acc | CE (nats) | agree | logit error | MB | "
              "prefill x | decode x |")
        print("|---|---|---|---|---|---|---|---|---|")
        for k, m in models.items():
            acc, ce, agree, err = _metrics(_logits(_session(m), ev), dense, nxt)
            mb = len(m.SerializeToString()) / 1e6
            pf, dc = (f"{lat[k][j] / lat['fp32'][j]:.3f}" for j in (0, 1)) if lat else "--"
            print(f"| {k} | {cuts[k]:.1%} | {acc:.2%} | {ce:.3f} | {agree:.2%} | {err:.4f} | "
                  f"{mb:.2f} | {pf} | {dc} |", flush=True)
        if lat:
            print(f"fp32: prefill {1e3 * lat['fp32'][0]:.2f} ms, decode "
                  f"{1e3 * lat['fp32'][1]:.3f} ms (1 thread)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["build", "run"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.3])
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.folder, a.steps)
    else:
        run(a.folder, a.fractions, a.rounds)


if __name__ == "__main__":
    main()
