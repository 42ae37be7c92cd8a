"""Capture layer Hessians of a real OCR recognizer (ddddocr's common.onnx) for solver studies.

    pip download --no-deps -d /tmp/dl ddddocr   # then unzip ddddocr/*.onnx into bench/real/
    python bench/real_capture.py [--model bench/real/ddddocr/common.onnx] [--n 128]
    python bench/real_capture.py --model bench/real/efficientnet_lite0.onnx \
        --calib bench/real/efficientnet_lite0.calib.npz --n 128 --name eff_hessians --batch 16

Renders random text lines with PIL (DejaVu or PIL's default font), preprocessed as ddddocr
does (height 64, grayscale, /255), and writes bench/real/calib.npz (input1 [N,1,64,W] and the
texts) and bench/real/hessians.npz (per layer: W [G, r, d], H [G, d, d] mean Hessian, N).
Everything under bench/real/ is git-ignored (model files are never committed)."""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def render(n: int, width: int, seed: int) -> tuple[np.ndarray, list[str]]:
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    fonts = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/DejaVuSans*.ttf"))
    imgs, texts = [], []
    for i in range(n):
        text = "".join(rng.choice(list(ALPHABET), size=int(rng.integers(4, 7))))
        size = int(rng.integers(36, 48))
        font = (ImageFont.truetype(fonts[i % len(fonts)], size) if fonts
                else ImageFont.load_default())
        bg = int(rng.integers(180, 256))
        im = Image.new("RGB", (width * 2, 128), (bg, bg, bg))
        dr = ImageDraw.Draw(im)
        x0, y0, x1, y1 = dr.textbbox((0, 0), text, font=font)
        fg = tuple(int(c) for c in rng.integers(0, 90, size=3))
        dr.text((int(rng.integers(4, 16)) - x0, (128 - (y1 - y0)) // 2 - y0), text, font=font,
                fill=fg)
        for _ in range(int(rng.integers(0, 4))):  # a little clutter, as in captchas
            dr.line([tuple(rng.integers(0, (width * 2, 128)))
                     for _ in range(2)], fill=fg, width=1)
        im = im.crop((0, 0, min(width * 2, x1 - x0 + 32), 128))
        im = im.resize((width, 64), Image.LANCZOS).convert("L")  # ddddocr: height 64, gray
        imgs.append(np.asarray(im, dtype=np.float32)[None] / 255.0)
        texts.append(text)
    return np.stack(imgs), texts


def main() -> None:
    import onnx
    from onnx_obc.backend import get_backend
    from onnx_obc.calib.arrays import DataSet
    from onnx_obc.collect import collect
    from onnx_obc.layers import constant_weights, find_layers, weight_matrix
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bench/real/ddddocr/common.onnx")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--out", default="bench/real")
    ap.add_argument("--calib", help="an .npz of the model's inputs (instead of rendering "
                    "text lines), e.g. bench/real/efficientnet_lite0.calib.npz")
    ap.add_argument("--name", default="hessians", help="writes OUT/NAME.npz")
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    proto = onnx.load(a.model)
    if a.calib:
        z = np.load(a.calib)
        inputs = {i.name for i in proto.graph.input}
        feeds = {k: z[k][:a.n] for k in z.files if k in inputs}
    else:
        x, texts = render(a.n, a.width, seed=0)
        np.savez(os.path.join(a.out, "calib.npz"), input1=x, texts=np.array(texts))
        feeds = {"input1": x}
    layers, _ = find_layers(proto)
    weights = constant_weights(proto.graph)
    accs, _ = collect(proto, layers, DataSet(feeds, "bench"), a.batch,
                      get_backend("cpu"), 2048, False)
    out = {"names": np.array([L.name for L in layers])}
    for i, L in enumerate(layers):  # keys by index: node names may hold '/'
        acc = accs[L.weight]
        out[f"L{i}/W"] = weight_matrix(weights, L)
        out[f"L{i}/H"] = acc.mean()
        out[f"L{i}/N"] = np.array(acc.samples)
    path = os.path.join(a.out, f"{a.name}.npz")
    np.savez(path, **out)
    print(f"{len(layers)} layers, {len(next(iter(feeds.values())))} samples -> {path}")


if __name__ == "__main__":
    main()
