"""Spotify's Basic Pitch as a bench model: a tf2onnx export (opset 15, 0.06 M parameters)
of a polyphonic note transcriber whose front end is a constant-Q transform written as
Convs: one 256-tap lowpass weight (stride 2) on every octave and one bank of 36 real and 36
imaginary 256-tap filters on each (one weight each, 8 uses), then log magnitudes, harmonic
stacking and five small 2-D Convs; input [N, 43844, 1] (2 s of 22,050 Hz audio), outputs
onset and note posteriors [N, 172, 88] and pitch contours [N, 172, 264].

    python bench/setup_models.py --models pitch

fetch() copies nmp.onnx out of the `basic-pitch==0.4.0` wheel (no dependencies installed).
data() writes basicpitch.calib.npz / .eval.npz: no music ships in a package, so the clips
are synthesized notes, 1-4 at a time at MIDI 40-89, each with 5 harmonics of random weights,
a 20 ms attack and an exponential decay, plus a little noise (seeds 0 and 1: the eval notes
are others). The task metric (note_f1) is the F1 of the note frames (posterior > 0.3, Basic
Pitch's frame threshold) against the dense model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from wheels import extract

WHEEL = "basic-pitch==0.4.0"
INNER = "basic_pitch/saved_models/icassp_2022/nmp.onnx"
INPUT = "serving_default_input_2:0"
RATE, LENGTH = 22050, 43844
FRAME = 0.3  # basic_pitch's default frame threshold


def fetch(out: Path) -> None:
    """pip download the wheel (no dependencies); out/basicpitch.onnx."""
    extract(WHEEL, {INNER: out / "basicpitch.onnx"})


def clip(rng: np.random.Generator) -> np.ndarray:
    """One [LENGTH, 1] clip of 1-4 synthesized notes, peak 0.3."""
    t = np.arange(LENGTH) / RATE
    y = np.zeros(LENGTH)
    for _ in range(rng.integers(1, 5)):
        f0 = 440.0 * 2 ** ((rng.integers(40, 90) - 69) / 12)
        on, dur = rng.uniform(0, 1.5), rng.uniform(0.2, 1.5)
        env = (np.clip((t - on) * 50, 0, 1) * np.exp(-np.clip(t - on, 0, None)
               * rng.uniform(1, 4)) * (t < on + dur))
        for h in range(1, 6):
            y += env * rng.uniform(0.2, 1) / h * np.sin(2 * np.pi * f0 * h * t
                                                        + rng.uniform(0, 2 * np.pi))
    y += rng.normal(0, 0.005, LENGTH)
    return (0.3 * y / max(1e-6, np.abs(y).max())).astype(np.float32)[:, None]


def data(out: Path, n: int = 64) -> None:
    for name, seed in (("calib", 0), ("eval", 1)):
        rng = np.random.default_rng(seed)
        np.savez(out / f"basicpitch.{name}.npz", **{INPUT: np.stack([clip(rng)
                                                                      for _ in range(n)])})


def note_f1(dense: list[list[np.ndarray]], ys: list[list[np.ndarray]]) -> float:
    """F1 of the note frames (output 1, [N, 172, 88] > FRAME) against the dense model's,
    over every batch (each a list of the model's outputs)."""
    a = np.concatenate([d[1] for d in dense]) > FRAME
    b = np.concatenate([y[1] for y in ys]) > FRAME
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
