"""Magika, Google's file-type classifier, as a bench model: a jax2tf / tf2onnx export with
integer byte input, a one-hot embedding MatMul, a 512 x 1280 Conv over byte windows, layer
norms written out and a 214-class Gemm head (0.78 M parameters, opset 15, ai.onnx.ml).

    python bench/setup_models.py --models magika

fetch() copies the model out of the `magika==1.0.3` wheel (no dependencies installed);
data() reads real files of this machine (the Python installation, /usr/share, /usr/lib,
/etc, /usr/include, /usr/bin: at most 12 of each file extension, seeded) and extracts the
model's features as magika 1.0.3 does (its config: the first and last 1,024 bytes of at
most 4,096 read from each end, whitespace stripped from the outer side, padded with token
256): magika.calib.npz (256 files) and magika.eval.npz (512 others), input "bytes"
[N, 2048] int32. The model has no labels here; the bench scores top-1 agreement with the
dense model's file type. Its output Gemm sees one feature vector per file: 512 inputs,
rank at most the calibration files (the data-limited case of solvers/shrink.py)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx")
BEG, END, BLOCK, PAD = 1024, 1024, 4096, 256
ROOTS = ("/usr/share", "/usr/lib", "/etc", "/usr/include", "/usr/bin")


def fetch(out: Path) -> None:
    """pip download the wheel (no dependencies) and copy its model to out/magika.onnx."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "magika.onnx").is_file():
        return
    req, inner = WHEEL
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", req, "--no-deps",
                        "--only-binary=:all:", "-q", "-d", tmp], check=True)
        with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as z:
            (out / "magika.onnx").write_bytes(z.read(inner))


def features(path: str) -> list[int]:
    """The model's 2,048 input tokens for one file (magika 1.0.3's feature extraction)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = min(BLOCK, size)
        beg = f.read(n).lstrip()[:BEG]
        f.seek(size - n)
        end = f.read(n).rstrip()
        end = end[-END:] if len(end) > END else end
    return list(beg) + [PAD] * (BEG - len(beg)) + [PAD] * (END - len(end)) + list(end)


def files(seed: int = 0, per_ext: int = 12) -> list[str]:
    """At most `per_ext` regular files of each extension under ROOTS and Python's prefix."""
    by_ext: dict[str, list[str]] = {}
    for root in (*ROOTS, sys.base_prefix + "/lib"):
        for dp, _, fn in os.walk(root):
            for name in fn:
                p = os.path.join(dp, name)
                try:
                    if os.path.islink(p) or not os.path.isfile(p) or os.path.getsize(p) < 16:
                        continue
                except OSError:
                    continue
                by_ext.setdefault(os.path.splitext(name)[1].lower(), []).append(p)
    rng = random.Random(seed)
    picked = []
    for ext in sorted(by_ext):
        ps = sorted(by_ext[ext])
        rng.shuffle(ps)
        picked += ps[:per_ext]
    rng.shuffle(picked)
    return picked


def data(out: Path, calib: int = 256, evals: int = 512) -> None:
    feats = []
    for p in files():
        try:
            feats.append(features(p))
        except OSError:
            continue
        if len(feats) == calib + evals:
            break
    x = np.array(feats, dtype=np.int32)
    np.savez(out / "magika.calib.npz", bytes=x[:calib])
    np.savez(out / "magika.eval.npz", bytes=x[calib:])
