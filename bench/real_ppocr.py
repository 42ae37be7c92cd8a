"""PP-OCR models with squeeze-excite blocks, from the rapidocr-onnxruntime wheel (PyPI).

    python bench/setup_models.py --models ppocr      # calls fetch() and data() below

The wheel (`pip download rapidocr-onnxruntime==1.4.4 --no-deps`) ships three ONNX models
whose weights are Constant nodes (paddle2onnx):
  ppocr_rec.onnx  ch_PP-OCRv4_rec_infer: PPLCNetV3 backbone with squeeze-excite 1x1 convs
                  (global pool -> 1x1 conv), an SVTR neck (MatMuls) and a CTC head, 6,625
                  classes; input [N, 3, 48, 320] in (x / 255 - 0.5) / 0.5, right-padded with 0.
  ppocr_cls.onnx  ch_ppocr_mobile_v2.0_cls_infer: MobileNetV3-small (x0.35, squeeze-excite),
                  text orientation 0 / 180; input [N, 3, 48, 192], same normalisation.
  ppocr_det.onnx  ch_PP-OCRv4_det_infer: PPLCNetV3 + FPN, DB text probability map; input
                  [N, 3, H, W] (multiples of 32), same normalisation.
Data, rendered with PIL (DejaVu fonts): text lines of 5-12 letters / digits on light,
slightly textured backgrounds (rec: the labels; cls: half of them turned 180 degrees, the
label 1), and 320 x 320 pages of 3-7 lines for the detector. Task metrics: text accuracy
of the CTC decode (rec), accuracy on the rotation labels (cls), F1 of the probability map
> 0.3 against the dense model's, per pixel (det)."""

from __future__ import annotations

import json
import string
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

VERSION = "1.4.4"
FILES = {"ppocr_rec.onnx": "ch_PP-OCRv4_rec_infer.onnx",
         "ppocr_cls.onnx": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
         "ppocr_det.onnx": "ch_PP-OCRv4_det_infer.onnx"}
TEXT = string.digits + string.ascii_letters
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")


def fetch(out: Path) -> None:
    """pip download the wheel; copy its models, and the recognizer's charset (blank first,
    space last, as rapidocr decodes) to ppocr_charset.json."""
    if all((out / f).is_file() for f in FILES) and (out / "ppocr_charset.json").is_file():
        return
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download",
                        f"rapidocr-onnxruntime=={VERSION}", "--no-deps",
                        "--only-binary=:all:", "-q", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("rapidocr_onnxruntime-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for ours, theirs in FILES.items():
                (out / ours).write_bytes(z.read(f"rapidocr_onnxruntime/models/{theirs}"))
    meta = {p.key: p.value for p in onnx.load(str(out / "ppocr_rec.onnx")).metadata_props}
    chars = ["blank"] + meta["character"].splitlines() + [" "]
    (out / "ppocr_charset.json").write_text(json.dumps(chars, ensure_ascii=False))


def _font(rng: np.random.Generator, size: int):
    from PIL import ImageFont

    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu"):
        try:
            return ImageFont.truetype(f"{folder}/{FONTS[int(rng.integers(len(FONTS)))]}", size)
        except OSError:
            continue
    return ImageFont.load_default()


def _line(rng: np.random.Generator):
    from PIL import Image, ImageDraw

    text = "".join(rng.choice(list(TEXT), size=int(rng.integers(5, 13))))
    f = _font(rng, int(rng.integers(28, 40)))
    w = int(f.getlength(text)) + int(rng.integers(8, 24))
    img = Image.new("RGB", (w, 48), tuple(int(v) for v in rng.integers(190, 256, 3)))
    ImageDraw.Draw(img).text((int(rng.integers(2, 8)), int(rng.integers(0, 6))), text, font=f,
                             fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
    a = np.asarray(img, np.float32) + rng.normal(0, 6, (48, w, 1))  # paper texture
    return np.clip(a, 0, 255), text


def _norm(a: np.ndarray, width: int) -> np.ndarray:
    """rapidocr's resize_norm_img: height 48, width by the aspect (at most `width`), then
    (x / 255 - 0.5) / 0.5, right-padded with zeros."""
    from PIL import Image

    h, w = a.shape[:2]
    rw = min(width, int(np.ceil(48 * w / h)))
    img = np.asarray(Image.fromarray(a.astype(np.uint8)).resize((rw, 48)), np.float32)
    out = np.zeros((3, 48, width), np.float32)
    out[:, :, :rw] = (img.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out


def lines(n: int, seed: int, width: int = 320, turn: bool = False
          ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """n recognizer (or, with turn, classifier) inputs [n, 3, 48, width], texts, labels."""
    rng = np.random.default_rng(seed)
    xs, texts, labels = [], [], []
    for _ in range(n):
        a, t = _line(rng)
        flip = bool(turn and rng.random() < 0.5)
        xs.append(_norm(a[::-1, ::-1] if flip else a, width))
        texts.append(t)
        labels.append(int(flip))
    return np.stack(xs), texts, np.array(labels)


def pages(n: int, seed: int, size: int = 320) -> np.ndarray:
    """n detector inputs [n, 3, size, size]: 3-7 text lines placed on a light page."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        page = np.full((size, size, 3), rng.integers(200, 256, 3), np.float32)
        for _ in range(int(rng.integers(3, 8))):
            a, _ = _line(rng)
            s = rng.uniform(0.4, 0.9)
            from PIL import Image
            a = np.asarray(Image.fromarray(a.astype(np.uint8)).resize(
                (max(int(a.shape[1] * s), 8), max(int(48 * s), 8))), np.float32)
            h, w = min(a.shape[0], size), min(a.shape[1], size)
            y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            page[y:y + h, x:x + w] = a[:h, :w]
        out[i] = (page.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out


V6 = ("rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx",
      "rapidocr/models/PP-OCRv6_det_small.onnx")


def fetch_v6(out: Path) -> None:
    """PP-OCRv6's small recognizer and detector from the rapidocr 3.10 wheel. The
    recognizer (5.3 M parameters: a conv backbone, attention blocks with Erf GELU and
    written-out layer norms, an 18,710-class CTC head; opset 11, input [N, 3, 48, W] as
    ppocr_rec's): ppocr6_rec.onnx, its charset ppocr6_charset.json and the same rendered
    lines as ppocr_rec (ppocr6_rec.calib / .eval npz, from data()). The detector (83 convs,
    13 written-out GELUs in conv blocks, a MaxPool after the stem): ppocr6_det.onnx with
    ppocr_det's rendered pages (ppocr6_det.calib / .eval npz)."""
    import onnx

    if not (out / "ppocr6_rec.onnx").is_file() or not (out / "ppocr6_det.onnx").is_file():
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", V6[0], "--no-deps",
                            "--only-binary=:all:", "-q", "-d", tmp], check=True)
            with zipfile.ZipFile(next(Path(tmp).glob("rapidocr-*.whl"))) as z:
                (out / "ppocr6_rec.onnx").write_bytes(z.read(V6[1]))
                (out / "ppocr6_det.onnx").write_bytes(z.read(V6[2]))
    meta = {p.key: p.value for p in onnx.load(str(out / "ppocr6_rec.onnx")).metadata_props}
    chars = ["blank"] + meta["character"].splitlines() + [" "]
    (out / "ppocr6_charset.json").write_text(json.dumps(chars, ensure_ascii=False))
    for kind in ("calib", "eval"):
        if not (out / f"ppocr_rec.{kind}.npz").is_file():
            data(out, 96, 200)
        for m in ("rec", "det"):
            (out / f"ppocr6_{m}.{kind}.npz").write_bytes(
                (out / f"ppocr_{m}.{kind}.npz").read_bytes())


def data(out: Path, n_calib: int, n_eval: int) -> None:
    x, _, _ = lines(n_calib, seed=21)
    np.savez(out / "ppocr_rec.calib.npz", x=x)
    x, texts, _ = lines(n_eval, seed=22)
    np.savez(out / "ppocr_rec.eval.npz", x=x, texts=np.array(texts))
    x, _, _ = lines(n_calib, seed=23, width=192, turn=True)
    np.savez(out / "ppocr_cls.calib.npz", x=x)
    x, _, labels = lines(n_eval, seed=24, width=192, turn=True)
    np.savez(out / "ppocr_cls.eval.npz", x=x, labels=labels)
    np.savez(out / "ppocr_det.calib.npz", x=pages(max(n_calib // 2, 16), seed=25))
    np.savez(out / "ppocr_det.eval.npz", x=pages(max(n_eval // 4, 16), seed=26))


def ctc(ys: list[np.ndarray], charset: list[str]) -> list[str]:
    """Greedy CTC decode of [N, T, C] probabilities (blank 0), as rapidocr does."""
    out = []
    for y in ys:
        for idx in y.argmax(-1):
            chars, prev = [], -1
            for k in idx:
                if k != prev and k != 0:
                    chars.append(charset[int(k)])
                prev = k
            out.append("".join(chars).strip())
    return out


def map_f1(dense: list[np.ndarray], ys: list[np.ndarray], thr: float = 0.3) -> float:
    """Per-pixel F1 of the DB probability map > thr against the dense model's."""
    tp = n0 = n1 = 0
    for d, y in zip(dense, ys):
        a, b = d > thr, y > thr
        tp, n0, n1 = tp + int((a & b).sum()), n0 + int(a.sum()), n1 + int(b.sum())
    return 2 * tp / max(n0 + n1, 1)
