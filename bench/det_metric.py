"""Box metrics of the YOLOX-style character detector (ddddocr's common_det).

Decoding as ddddocr's own `get_bbox`: anchor (x, y) plus its grid cell times the stride,
w, h = exp(log w, log h) times the stride (so boxes are in the 416 input's pixels), score =
obj * cls, greedy NMS at IoU 0.45. ddddocr keeps scores > 0.1 (GT_SCORE, used against the
ground truth); the agreement-with-dense figure keeps bench/deploy.py's historical 0.5.

Matching: each reference box in order takes the unused predicted box of highest IoU, a
true positive when that IoU > 0.5. F1 = 2 TP / (#reference + #predicted), summed over the
images (not a mean of per-image F1s), and its per-image paired bootstrap. Threshold-free:
average precision at IoU 0.5 over all detections with score > AP_SCORE (a quantized model
that shifts every score up or down moves along the precision-recall curve, which F1 at one
threshold reads as a gain or a loss; AP does not). AP_SCORE = 0.001 as YOLO-family mAP
evaluations use: with 0.01 the curve is cut where this detector still finds characters
(dense: recall 0.68 at scores > 0.01, 0.77 at > 0.001 on the 200 GT scenes), and a model
that lifts low scores gains recall that is only the cut's.
"""

from __future__ import annotations

import numpy as np

SIZES, STRIDES = (52, 26, 13), (8, 16, 32)
GT_SCORE = 0.1  # ddddocr's get_bbox: multiclass_nms(..., nms_thr=0.45, score_thr=0.1)
IOU = 0.5
AP_SCORE = 0.001


def boxes(y: np.ndarray, thr: float = 0.5) -> np.ndarray:
    """YOLOX head [1, A, 6] (x, y, log w, log h, obj, cls) -> boxes [k, 4] (x0, y0, x1, y1 in
    input pixels) with score obj * cls > thr, after NMS, highest score first."""
    return scored(y, thr)[0]


def scored(y: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """boxes() and their scores [k] (descending)."""
    grids = np.concatenate([np.stack(np.meshgrid(np.arange(s), np.arange(s)), -1).reshape(-1, 2)
                            for s in SIZES])
    st = np.concatenate([np.full((s * s, 1), t) for s, t in zip(SIZES, STRIDES)])
    y = y[0]
    keep = y[:, 4] * y[:, 5] > thr
    xy = (y[keep, :2] + grids[keep]) * st[keep]
    wh = np.exp(np.clip(y[keep, 2:4], -10, 10)) * st[keep]
    b = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    s = y[keep, 4] * y[keep, 5]
    k = nms(b, s)
    return b[k].reshape(-1, 4), s[k]


def nms(b: np.ndarray, s: np.ndarray, thr: float = 0.45) -> list[int]:
    """Indices kept by greedy NMS, highest score first."""
    order, keep = np.argsort(-s, kind="stable"), []
    while order.size:
        i = order[0]
        keep.append(int(i))
        order = order[1:][iou(b[i], b[order[1:]]) < thr]
    return keep


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box a [4] with each of boxes b [k, 4]."""
    lt, rb = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda x: np.prod(x[..., 2:] - x[..., :2], axis=-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter + 1e-9)


def matches(ref: np.ndarray, got: np.ndarray, thr: float = IOU) -> int:
    """True positives: each box of ref in order matched to the unused box of got with the
    highest IoU, when that IoU > thr."""
    used = np.zeros(len(got), bool)
    tp = 0
    for b in ref:
        if not len(got):
            break
        o = np.where(used, -1.0, iou(b, got))
        j = int(np.argmax(o))
        if o[j] > thr:
            used[j] = True
            tp += 1
    return tp


def counts(refs: list[np.ndarray], gots: list[np.ndarray], thr: float = IOU) -> np.ndarray:
    """Per image (true positives, #ref, #got): [n, 3] ints."""
    return np.array([(matches(r, g, thr), len(r), len(g)) for r, g in zip(refs, gots)],
                    dtype=np.int64).reshape(-1, 3)


def f1(c: np.ndarray) -> float:
    """F1 of per-image counts [n, 3] pooled over the images."""
    tp, nr, ng = c.sum(0)
    return float(2 * tp / max(nr + ng, 1))


def gt_boxes(gt: np.ndarray, n: int) -> list[np.ndarray]:
    """[K, 5] (image index, x0, y0, x1, y1) -> per-image [k, 4] lists for images 0..n-1."""
    return [gt[gt[:, 0] == i, 1:5] for i in range(n)]


def bootstrap_diff(a: np.ndarray, b: np.ndarray, reps: int = 10000, seed: int = 0
                   ) -> tuple[float, float, float]:
    """F1(a) - F1(b) and its 95% percentile interval, resampling the images (the same
    indices for both: paired). a, b: per-image counts [n, 3] of the same images."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(reps, len(a)))

    def pooled(c: np.ndarray) -> np.ndarray:
        s = c[idx].sum(1)  # [reps, 3]
        return 2 * s[:, 0] / np.maximum(s[:, 1] + s[:, 2], 1)

    d = pooled(a) - pooled(b)
    lo, hi = np.percentile(d, [2.5, 97.5])
    return f1(a) - f1(b), float(lo), float(hi)


def ap_records(gt: np.ndarray, b: np.ndarray, s: np.ndarray, thr: float = IOU
               ) -> np.ndarray:
    """One image's detections (boxes b, scores s, descending) against its ground truth gt:
    [k, 2] (score, 1 if a true positive): each detection in score order takes the unmatched
    ground-truth box of highest IoU, a true positive when that IoU > thr."""
    used = np.zeros(len(gt), bool)
    tp = np.zeros(len(b))
    for i, d in enumerate(b):
        if not len(gt):
            break
        o = np.where(used, -1.0, iou(d, gt))
        j = int(np.argmax(o))
        if o[j] > thr:
            used[j] = True
            tp[i] = 1
    return np.stack([s, tp], 1).reshape(-1, 2)


def average_precision(records: list[np.ndarray], n_gt: int) -> float:
    """Area under the precision-recall curve of the pooled detections (all-point
    interpolation: precision made non-increasing in recall), as VOC / COCO at one IoU."""
    r = np.concatenate(records) if records else np.zeros((0, 2))
    if not len(r) or not n_gt:
        return 0.0
    tp = r[np.argsort(-r[:, 0], kind="stable"), 1]
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def bootstrap_ap_diff(a: list[np.ndarray], b: list[np.ndarray], n_gt: np.ndarray,
                      reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """AP(a) - AP(b) and its 95% percentile interval over images resampled (paired). a, b:
    per-image ap_records of the same images; n_gt: per-image ground-truth counts."""
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(reps):
        idx = rng.integers(0, len(a), len(a))
        n = int(n_gt[idx].sum())
        d.append(average_precision([a[i] for i in idx], n)
                 - average_precision([b[i] for i in idx], n))
    lo, hi = np.percentile(d, [2.5, 97.5])
    total = int(np.sum(n_gt))
    return average_precision(a, total) - average_precision(b, total), float(lo), float(hi)
