"""Microsoft's DNSMOS P.835 as a bench model: a keras2onnx export (opset 12, 0.29 M
parameters) that rates 9.01 s of 16 kHz speech with three raw MOS scores (signal,
background, overall); its front end frames the waveform into 320-sample frames and runs the
STFT as two Convs on 320 input channels, then log power and a small CNN with dense layers.

    python bench/setup_models.py --models vad,dnsmos      # vad first: its speech files

fetch() copies dnsmos_models/sig_bak_ovr.onnx out of the `speechmos==0.0.1.1` wheel (no
dependencies installed). data() cuts the pocketsphinx speech of `vad_audio.npz`
(bench/real_vad.py) into 144,160-sample windows every 0.5 s of each speaker group's audio
run together (calibration from the first 9 files, eval from the other 7: other speakers),
half of them (seeded) with white noise at a random level up to 0.03, as the model rates
noisy speech: dnsmos.calib.npz (30 windows) / dnsmos.eval.npz (46), input `input_1`. No
labels: the bench scores the output error against the dense scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from wheels import extract

WHEEL = "speechmos==0.0.1.1"
INNER = "speechmos/dnsmos_models/sig_bak_ovr.onnx"
LENGTH, HOP = 144160, 8000


def fetch(out: Path) -> None:
    """pip download the wheel (no dependencies); out/dnsmos.onnx."""
    extract(WHEEL, {INNER: out / "dnsmos.onnx"})


def data(out: Path, calib_files: int = 9) -> None:
    """dnsmos.calib.npz / .eval.npz from out/vad_audio.npz (setup_models.py --models vad)."""
    audio = out / "vad_audio.npz"
    if not audio.is_file():
        raise SystemExit(f"{audio} is missing: run setup_models.py --models vad first")
    clips = np.load(audio)
    keys = sorted(clips.files)
    rng = np.random.default_rng(0)
    for name, part in (("calib", keys[:calib_files]), ("eval", keys[calib_files:])):
        run = np.concatenate([clips[k] for k in part])
        x = np.stack([run[s:s + LENGTH] for s in range(0, len(run) - LENGTH + 1, HOP)])
        level = 0.03 * rng.uniform(0, 1, (len(x), 1)) * (rng.uniform(0, 1, (len(x), 1)) < 0.5)
        x = x + rng.normal(0, 1, x.shape) * level
        np.savez(out / f"dnsmos.{name}.npz", input_1=x.astype(np.float32))
