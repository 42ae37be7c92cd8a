"""The detector's ground truth (bench/setup_models.py scenes) and box metrics
(bench/det_metric.py)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


dm = _load("det_metric")
setup_models = _load("setup_models")


def test_ground_truth_boxes_leave_the_images_unchanged():
    pytest.importorskip("PIL")
    plain = setup_models.scenes(6, seed=4)
    images, boxes = setup_models.scenes(6, seed=4, with_boxes=True)
    assert np.array_equal(plain, images)  # the boxes draw no random numbers
    assert boxes.shape[1] == 5 and 3 * 6 <= len(boxes) <= 8 * 6
    assert set(boxes[:, 0].astype(int)) == set(range(6))
    assert (boxes[:, 1:] >= 0).all() and (boxes[:, 1:] <= 416).all()
    assert (boxes[:, 3] > boxes[:, 1]).all() and (boxes[:, 4] > boxes[:, 2]).all()


def test_ground_truth_boxes_hold_the_drawn_characters(monkeypatch):
    """Each character's ink, drawn alone on a mask of the scene, lies in its box (before the
    resize: the box divided by the scene's resize factors), and the box is not loose."""
    from PIL import Image, ImageDraw

    inks, sizes = [], []
    text = ImageDraw.ImageDraw.text

    def spy(self, xy, ch, *args, **kw):
        mask = Image.new("L", self.im.size, 0)
        text(ImageDraw.Draw(mask), xy, ch, font=kw["font"], fill=255)
        ys, xs = np.nonzero(np.asarray(mask))
        inks.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else None)
        sizes.append(self.im.size)
        return text(self, xy, ch, *args, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    _, boxes = setup_models.scenes(5, seed=9, with_boxes=True)
    assert len(inks) == len(boxes)
    for (w, h), ink, b in zip(sizes, inks, boxes[:, 1:]):
        r = min(416 / h, 416 / w)
        x0, y0, x1, y1 = b / np.array([int(w * r) / w, int(h * r) / h] * 2)
        assert ink is not None
        assert x0 - 0.01 <= ink[0] and y0 - 0.01 <= ink[1]
        assert ink[2] <= x1 + 0.01 and ink[3] <= y1 + 0.01
        # vertically ink-tight; horizontally the advance width (side bearings: a few px)
        assert abs(ink[1] - y0) < 1.01 and abs(ink[3] - y1) < 1.01
        assert (x1 - x0) - (ink[2] - ink[0]) < 0.3 * (ink[2] - ink[0]) + 4


def test_f1_of_identical_boxes_is_one_and_of_disjoint_zero():
    a = [np.array([[0, 0, 10, 10], [20, 20, 40, 30]], float), np.zeros((0, 4))]
    assert dm.f1(dm.counts(a, a)) == 1.0
    far = [b + 100 for b in a]
    assert dm.f1(dm.counts(a, far)) == 0.0
    # IoU 0.6 matches at 0.5, not at 0.7
    shifted = [np.array([[2.5, 0, 12.5, 10]]), np.zeros((0, 4))]
    one = [a[0][:1], a[1]]
    assert dm.f1(dm.counts(one, shifted)) == 1.0
    assert dm.f1(dm.counts(one, shifted, thr=0.7)) == 0.0


def test_a_predicted_box_matches_one_reference_only():
    ref = np.array([[0, 0, 10, 10], [0, 0, 10, 10.5]], float)
    got = np.array([[0, 0, 10, 10]], float)
    assert dm.matches(ref, got) == 1
    c = dm.counts([ref], [got])
    assert c.tolist() == [[1, 2, 1]] and dm.f1(c) == pytest.approx(2 / 3)


def test_boxes_decode_to_input_pixels():
    """One anchor of the stride-16 grid at cell (x 3, y 5), offset (0.5, 0.5), w = h = 2
    strides: a 32-pixel box centred at (56, 88)."""
    y = np.zeros((1, 52 * 52 + 26 * 26 + 13 * 13, 6), np.float32)
    y[0, :, 2:4] = -5.0
    k = 52 * 52 + 5 * 26 + 3
    y[0, k] = (0.5, 0.5, np.log(2), np.log(2), 0.9, 0.9)
    b = dm.boxes(y)
    assert b.shape == (1, 4)
    np.testing.assert_allclose(b[0], [40, 72, 72, 104], atol=1e-4)
    assert dm.boxes(y, thr=0.9).shape == (0, 4)  # 0.81 is not > 0.9


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    n = 200
    nr = rng.integers(3, 9, n)
    a = np.stack([nr, nr, nr], 1)  # every box found
    tp = np.minimum(nr, rng.integers(0, 9, n))
    b = np.stack([tp, nr, tp], 1)  # misses some
    d, lo, hi = dm.bootstrap_diff(a, b)
    assert d == pytest.approx(dm.f1(a) - dm.f1(b)) and 0 < lo < d < hi
    assert dm.bootstrap_diff(a, a) == (0.0, 0.0, 0.0)
    # half the images: a wider interval
    _, lo2, hi2 = dm.bootstrap_diff(a[:50], b[:50])
    assert hi2 - lo2 > hi - lo


def test_deploy_scores_detections_against_the_drawn_boxes():
    sys.path.insert(0, str(BENCH))
    deploy = _load("deploy")
    y = np.zeros((1, 52 * 52 + 26 * 26 + 13 * 13, 6), np.float32)
    y[0, 52 * 52 + 5 * 26 + 3] = (0.5, 0.5, np.log(2), np.log(2), 0.5, 0.5)  # score 0.25
    ev = {"boxes": np.array([[0, 40, 72, 72, 104], [1, 0, 0, 10, 10]], np.float32)}
    c = deploy.gt_counts([y, np.zeros_like(y)], ev)
    assert c.tolist() == [[1, 1, 1], [0, 1, 0]]  # found at ddddocr's 0.1, not at 0.5
    assert deploy.gt_counts([y, np.zeros_like(y)], ev, 0.5)[:, 0].sum() == 0


def test_average_precision_reads_the_ranking_not_the_threshold():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    hit, miss = gt.copy(), gt + 100
    perfect = dm.ap_records(gt, hit, np.array([0.9, 0.8]))
    assert perfect[:, 1].tolist() == [1, 1]
    assert dm.average_precision([perfect], 2) == pytest.approx(1.0)
    # a false positive ranked below both hits costs nothing; ranked first it costs a third
    b = np.concatenate([hit, miss[:1]])
    low = dm.ap_records(gt, b, np.array([0.9, 0.8, 0.1]))
    assert dm.average_precision([low], 2) == pytest.approx(1.0)
    high = dm.ap_records(gt, b[[2, 0, 1]], np.array([0.95, 0.9, 0.8]))
    assert dm.average_precision([high], 2) == pytest.approx(2 / 3)  # envelope: 2/3 at both
    # a detection cannot take an already matched box; an unfound box caps recall
    twice = dm.ap_records(gt[:1], np.stack([hit[0], hit[0]]), np.array([0.9, 0.8]))
    assert twice[:, 1].tolist() == [1, 0]
    assert dm.average_precision([dm.ap_records(gt, hit[:1], np.array([0.9]))], 2) == 0.5
    # every score scaled (a quantized model's shift): the same AP, not the same F1 at 0.5
    rng = np.random.default_rng(0)
    recs = [dm.ap_records(gt, np.concatenate([hit, miss]), rng.random(4)) for _ in range(20)]
    shifted = [np.stack([r[:, 0] ** 3, r[:, 1]], 1) for r in recs]
    assert dm.average_precision(shifted, 40) == pytest.approx(dm.average_precision(recs, 40))
    d, lo, hi = dm.bootstrap_ap_diff(recs, shifted, np.full(20, 2), reps=200)
    assert d == pytest.approx(0) and lo == pytest.approx(0) and hi == pytest.approx(0)
