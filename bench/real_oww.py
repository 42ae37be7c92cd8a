"""openWakeWord's speech embedding as a bench model: a tf2onnx export of Google's speech
embedding CNN (20 Convs, 0.33 M parameters, opset 13; each Conv followed by a LeakyRelu and
a Max(., -0.4), four MaxPools), which turns 76 mel frames (0.775 s) into one 96-value
embedding for the wake-word heads; NHWC input [N, 76, 32, 1].

    python bench/setup_models.py --models vad,oww      # vad first: its speech files

fetch() copies embedding_model.onnx and melspectrogram.onnx out of the `openwakeword==0.4.0`
wheel (the last release that ships its models; no dependencies installed). data() turns the
pocketsphinx speech of `vad_audio.npz` (bench/real_vad.py) into the model's input as
openWakeWord does (int16-scaled audio through melspectrogram.onnx, then x / 10 + 2, windows
of 76 frames every 8): calibration from the first 9 files, eval from the other 8 (other
speakers), oww_embed.calib.npz / oww_embed.eval.npz, input `input_1`. No labels: the bench
scores the output error against the dense embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from wheels import extract

WHEEL = "openwakeword==0.4.0"
INNER = "openwakeword/resources/models/"
FRAMES, STEP = 76, 8


def fetch(out: Path) -> None:
    """pip download the wheel (no dependencies); out/oww_embed.onnx, out/oww_mel.onnx."""
    extract(WHEEL, {INNER + "embedding_model.onnx": out / "oww_embed.onnx",
                    INNER + "melspectrogram.onnx": out / "oww_mel.onnx"})


def windows(mel: object, audio: np.ndarray) -> np.ndarray:
    """[W, 76, 32, 1] embedding inputs of one 16 kHz clip (float in [-1, 1])."""
    x = (audio * 32767).astype(np.float32)[None]  # openWakeWord feeds int16 sample values
    m = mel.run(None, {"input": x})[0].squeeze() / 10 + 2  # [T, 32]
    return np.stack([m[i:i + FRAMES] for i in range(0, len(m) - FRAMES, STEP)])[..., None]


def data(out: Path, calib_files: int = 9) -> None:
    """oww_embed.calib.npz / .eval.npz from out/vad_audio.npz (setup_models.py --models vad)."""
    import onnxruntime as ort

    audio = out / "vad_audio.npz"
    if not audio.is_file():
        raise SystemExit(f"{audio} is missing: run setup_models.py --models vad first")
    clips = np.load(audio)
    mel = ort.InferenceSession(str(out / "oww_mel.onnx"), providers=["CPUExecutionProvider"])
    keys = sorted(clips.files)
    for name, part in (("calib", keys[:calib_files]), ("eval", keys[calib_files:])):
        x = np.concatenate([windows(mel, clips[k]) for k in part]).astype(np.float32)
        np.savez(out / f"oww_embed.{name}.npz", input_1=x)
