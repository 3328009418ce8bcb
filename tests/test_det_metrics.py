"""host_trainer/tasks/detect_metrics.py: precision, recall and mAP@0.5 on hand-worked cases, and mAP@0.5 against
pycocotools' COCOeval on the same random predictions."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from edge_evolver.measure.detection import Detections
from host_trainer.tasks.detect_metrics import (
    CONF_THRESHOLD,
    IOU_THRESHOLD,
    DetQuality,
    average_precision,
    average_precision_50,
    detection_quality,
    map50,
    precision_recall,
)

K = 3
A, B, C = [0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 30]


def dets(boxes, scores, labels) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64))


def quality(preds, truth) -> DetQuality:
    """truth: one (boxes, labels) per image."""
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b, _ in truth]
    labels = [np.asarray(lab, np.int64) for _, lab in truth]
    return detection_quality(preds, boxes, labels, K, loss=0.25)


def test_thresholds_are_the_contract():
    assert (CONF_THRESHOLD, IOU_THRESHOLD) == (0.3, 0.5)


def test_perfect_prediction():
    q = quality([dets([A, B], [0.9, 0.8], [0, 1]), dets([C], [0.7], [2])], [([A, B], [0, 1]), ([C], [2])])
    assert (q.precision, q.recall, q.map50, q.loss) == (1.0, 1.0, 1.0, 0.25)
    assert q.to_dict() == {"accuracy": 1.0, "map50": 1.0, "precision": 1.0, "recall": 1.0, "loss": 0.25}


def test_missed_box():
    q = quality([dets([A], [0.9], [0])], [([A, B], [0, 0])])
    assert (q.precision, q.recall) == (1.0, 0.5)
    # One detection, a TP: recall 0.5 at precision 1. Of the 101 recall points 0, 0.01, ..., 1 the 51 up
    # to 0.50 find that precision (searchsorted left: 0.5 itself is reached), the 50 above it sample 0:
    # AP = 51/101 = 0.50495..., not 0.5.
    assert q.map50 == pytest.approx(51 / 101, abs=1e-12)


def test_duplicate_detection_is_a_false_positive():
    q = quality([dets([A, A], [0.9, 0.8], [0, 0])], [([A], [0])])
    # ranks: TP (P 1, R 1), FP (P 0.5, R 1): every recall point finds rank 1 → AP 1
    assert (q.precision, q.recall, q.map50) == (0.5, 1.0, 1.0)


def test_false_positive_ranked_between_two_hits():
    q = quality([dets([A, C, B], [0.9, 0.8, 0.7], [0, 0, 0])], [([A, B], [0, 0])])
    # ranks TP, FP, TP: precision 1, 1/2, 2/3, recall 1/2, 1/2, 1; envelope 1, 2/3, 2/3.
    # Recall points 0..0.50 → rank 1 (precision 1), 0.51..1.00 → rank 3 (2/3): AP = (51 + 50·2/3) / 101
    assert q.map50 == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert (q.precision, q.recall) == (2 / 3, 1.0)


def test_wrong_class():
    q = quality([dets([A], [0.9], [1])], [([A], [0])])
    # class 0: a ground-truth box and no hit (AP 0); class 1: no ground truth, left out of the mean
    assert (q.precision, q.recall, q.map50) == (0.0, 0.0, 0.0)
    q = quality([dets([A, B], [0.9, 0.8], [0, 2])], [([A, B], [0, 1])])
    assert (q.precision, q.recall, q.map50) == (0.5, 0.5, 0.5)  # classes 0 (AP 1) and 1 (AP 0)


def test_low_scores_count_for_map_but_not_for_precision_recall():
    low = CONF_THRESHOLD / 2
    q = quality([dets([A], [low], [0])], [([A], [0])])
    assert (q.precision, q.recall, q.map50) == (0.0, 0.0, 1.0)  # P: no detection at all above 0.3 → 0
    q = quality([dets([A, B], [0.9, low], [0, 0])], [([A, B], [0, 0])])
    assert (q.precision, q.recall, q.map50) == (1.0, 0.5, 1.0)
    q = quality([dets([A], [CONF_THRESHOLD], [0])], [([A], [0])])  # the threshold itself counts
    assert (q.precision, q.recall) == (1.0, 1.0)


def test_iou_exactly_one_half_matches_and_just_below_does_not():
    truth = ([np.array([A], np.float32)], [np.array([0])])
    assert precision_recall([dets([[0, 0, 10, 20]], [0.9], [0])], *truth) == (1.0, 1.0)  # 100 / 200
    assert precision_recall([dets([[0, 0, 10, 20.001]], [0.9], [0])], *truth) == (0.0, 0.0)
    assert map50([dets([[0, 0, 10, 20]], [0.9], [0])], *truth, K) == 1.0
    assert map50([dets([[0, 0, 10, 20.001]], [0.9], [0])], *truth, K) == 0.0


def test_image_without_ground_truth():
    q = quality([dets([A], [0.9], [0]), dets([A], [0.8], [0])], [([A], [0]), ([], [])])
    assert (q.precision, q.recall, q.map50) == (0.5, 1.0, 1.0)  # the FP ranks below the TP
    q = quality([dets([A], [0.8], [0]), dets([A], [0.9], [0])], [([A], [0]), ([], [])])
    # the FP ranks first: precision 0 then 1/2 at recall 1; envelope 1/2 at every recall point
    assert (q.precision, q.recall, q.map50) == (0.5, 1.0, 0.5)


def test_no_ground_truth_at_all():
    q = quality([dets([A], [0.9], [0])], [([], [])])
    assert (q.precision, q.recall, q.map50) == (0.0, 0.0, 0.0)
    assert average_precision_50([dets([A], [0.9], [0])], [np.zeros((0, 4))], [np.zeros(0, np.int64)], K) == \
        [None, None, None]


def test_the_unmatched_ground_truth_with_the_highest_iou_is_taken():
    tall, short = [0, 0, 10, 16], [0, 0, 10, 10]
    # the first detection overlaps both (IoU 0.83 with `short`, 0.75 with `tall`) and takes `short`, which
    # leaves `tall` to the second (IoU 0.73; 0.45 with `short`). Taking the first box listed, `tall`,
    # would leave the second nothing.
    pred = [dets([[0, 0, 10, 12], [0, 0, 10, 22]], [0.9, 0.8], [0, 0])]
    assert quality(pred, [([tall, short], [0, 0])]).precision == 1.0


def test_equal_ious_go_to_the_later_ground_truth_box():
    left, right = [0, 0, 10, 10], [5, 0, 15, 10]
    # `middle` has IoU 0.6 with both and takes `right`, the later one (pycocotools' loop keeps the last of
    # equal IoUs), so `left` is still free for the second detection: two hits, AP 1
    middle = [2.5, 0, 12.5, 10]
    pred = [dets([middle, left], [0.9, 0.8], [0, 0])]
    assert quality(pred, [([left, right], [0, 0])]).map50 == 1.0
    assert quality(pred, [([right, left], [0, 0])]).map50 == pytest.approx(51 / 101)


def test_equal_scores_rank_in_image_order_then_detection_order():
    # one FP (image 0) and one TP (image 1) with the same score: image 0 ranks first, as in pycocotools
    tie = [dets([C], [0.5], [0]), dets([A], [0.5], [0])]
    assert quality(tie, [([], []), ([A], [0])]).map50 == 0.5
    assert quality(tie[::-1], [([A], [0]), ([], [])]).map50 == 1.0
    # within an image the earlier of two equal detections matches first: `only_a` (IoU 0.9 with A, 0.45
    # with `tall`) then `both` (0.83 with A, 0.6 with `tall`) gives two hits; the other way round `both`
    # takes A and `only_a` finds nothing
    only_a, both, tall = [0, 0, 10, 9], [0, 0, 10, 12], [0, 0, 10, 20]
    truth = [([A, tall], [0, 0])]
    assert quality([dets([only_a, both], [0.5, 0.5], [0, 0])], truth).map50 == 1.0
    assert quality([dets([both, only_a], [0.5, 0.5], [0, 0])], truth).map50 == pytest.approx(51 / 101)


def test_map_counts_the_best_100_detections_per_image():
    junk = [[60 + i % 10, 60, 61 + i % 10, 61] for i in range(100)]
    pred = [dets(junk + [A], [0.9] * 100 + [0.5], [1] * 100 + [0])]
    truth = [([A], [0])]
    assert quality(pred, truth).map50 == 0.0  # the 101st detection, the only hit, is not evaluated
    assert quality(pred, truth).recall == 1.0  # precision and recall see every detection
    assert quality([dets(junk[:99] + [A], [0.9] * 99 + [0.5], [1] * 99 + [0])], truth).map50 == 1.0


def test_average_precision_of_a_ranked_list():
    assert average_precision(np.array([0.9, 0.8]), np.array([False, True]), 1) == 0.5
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0
    assert average_precision(np.array([0.1, 0.9]), np.array([False, True]), 1) == 1.0  # any order in


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 predicted images but 1"):
        map50([dets([], [], [])] * 2, [np.zeros((0, 4))], [np.zeros(0, np.int64)], K)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        map50([dets([], [], [])], [np.array([A], np.float32)], [np.array([3])], K)


# ---- against pycocotools ------------------------------------------------------------------------------
IMAGE = 96


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(-4, IMAGE - 8, (n, 2))
    wh = rng.uniform(3, 40, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _random_set(seed: int, images: int = 30) -> tuple[list, list, list]:
    """Ground truth over `images` images and K classes (class K-1 never in odd images, some images empty)
    and predictions: jittered copies of most boxes (some duplicated, some with the wrong class) and junk,
    all well-formed (x1 <= x2: pycocotools would ignore an unmatched box of negative area, decode never
    makes one).
    Scores are rounded to 0.05 so that many tie, within images and across them."""
    rng = np.random.default_rng(seed)
    boxes, labels, preds = [], [], []
    for i in range(images):
        n = 0 if i % 7 == 3 else int(rng.integers(1, 7))
        truth, classes = _boxes(rng, n), rng.integers(0, K - (i % 2), n)
        seen = rng.random(n) < 0.8
        copies = np.concatenate([np.flatnonzero(seen), np.flatnonzero(seen & (rng.random(n) < 0.2))])
        size = np.tile(truth[copies, 2:] - truth[copies, :2], 2)
        jitter = (rng.normal(0, 0.1, (len(copies), 4)) * size).astype(np.float32)
        guessed = np.where(rng.random(len(copies)) < 0.1, (classes[copies] + 1) % K, classes[copies])
        extra = int(rng.integers(0, 4))
        found = np.concatenate([truth[copies] + jitter, _boxes(rng, extra)])
        found = np.concatenate([np.minimum(found[:, :2], found[:, 2:]), np.maximum(found[:, :2], found[:, 2:])], 1)
        scores = np.round(rng.uniform(0.05, 1.0, len(found)) * 20) / 20
        boxes.append(truth)
        labels.append(classes.astype(np.int64))
        preds.append(dets(found, scores, np.concatenate([guessed, rng.integers(0, K, extra)])))
    return preds, boxes, labels


def _xywh(box: list[float]) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _coco_per_class_ap(preds: list, boxes: list, labels: list) -> list[float | None]:
    """pycocotools' AP at IoU 0.5 (area "all", 100 detections) per class; None without ground truth."""
    coco_module = pytest.importorskip("pycocotools.coco", reason="pycocotools is not installed")
    cocoeval_module = pytest.importorskip("pycocotools.cocoeval", reason="pycocotools is not installed")
    images, annotations, results = [], [], []
    for image_id, (det, truth, classes) in enumerate(zip(preds, boxes, labels), start=1):
        images.append({"id": image_id, "width": IMAGE, "height": IMAGE})
        for box, c in zip(truth.tolist(), classes.tolist()):
            x, y, w, h = _xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": c + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        for box, s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            results.append({"image_id": image_id, "category_id": c + 1, "bbox": _xywh(box), "score": s})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = coco_module.COCO()
        gt.dataset = {"info": {}, "images": images, "annotations": annotations,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(K)]}
        gt.createIndex()
        evaluation = cocoeval_module.COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.params.iouThrs = np.array([0.5])
        evaluation.evaluate()
        evaluation.accumulate()
    assert evaluation.params.areaRngLbl[0] == "all" and evaluation.params.maxDets[-1] == 100
    precision = evaluation.eval["precision"][0, :, :, 0, -1]  # (101 recall points, K): IoU 0.5, all, 100
    return [None if (precision[:, k] == -1).all() else float(precision[:, k].mean()) for k in range(K)]


@pytest.mark.parametrize("seed", range(5))
def test_map50_equals_pycocotools(seed):
    preds, boxes, labels = _random_set(seed)
    assert any(len(b) == 0 for b in boxes) and max(len(d.scores) for d in preds) <= 100
    coco = _coco_per_class_ap(preds, boxes, labels)
    ours = average_precision_50(preds, boxes, labels, K)
    assert [ap is None for ap in ours] == [ap is None for ap in coco]
    np.testing.assert_allclose([ap for ap in ours if ap is not None], [ap for ap in coco if ap is not None],
                               rtol=0, atol=1e-6)
    expected = float(np.mean([ap for ap in coco if ap is not None]))
    assert map50(preds, boxes, labels, K) == pytest.approx(expected, abs=1e-6)
    assert 0.3 < expected < 0.95  # a case with something to get wrong, neither trivial nor hopeless


def test_the_hand_worked_tie_breaks_equal_pycocotools():
    left, right, middle = [0, 0, 10, 10], [5, 0, 15, 10], [2.5, 0, 12.5, 10]
    only_a, both, tall = [0, 0, 10, 9], [0, 0, 10, 12], [0, 0, 10, 20]
    cases = [  # (detections, ground-truth boxes, labels) per image
        (dets([middle, left], [0.9, 0.8], [0, 0]), [left, right], [0, 0]),
        (dets([middle, left], [0.9, 0.8], [1, 1]), [right, left], [1, 1]),
        (dets([both, only_a], [0.5, 0.5], [0, 0]), [A, tall], [0, 0]),
        (dets([only_a, both], [0.5, 0.5], [1, 1]), [A, tall], [1, 1]),
        (dets([[0, 0, 10, 12], [0, 0, 10, 22]], [0.7, 0.6], [2, 2]), [[0, 0, 10, 16], A], [2, 2]),
        (dets([C, [0, 0, 10, 20]], [0.5, 0.5], [0, 2]), [], []),
        (dets([[0, 0, 10, 20]], [0.5], [0]), [A], [0]),
    ]
    preds = [d for d, _, _ in cases]
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for _, b, _ in cases]
    labels = [np.asarray(lab, np.int64) for _, _, lab in cases]
    coco = _coco_per_class_ap(preds, boxes, labels)
    np.testing.assert_allclose(average_precision_50(preds, boxes, labels, K), coco, rtol=0, atol=1e-12)


def test_a_class_missing_everywhere_is_left_out_like_pycocotools():
    preds, boxes, labels = _random_set(7, images=12)
    labels = [np.where(lab == 2, 1, lab) for lab in labels]  # class 2 is only ever predicted
    coco = _coco_per_class_ap(preds, boxes, labels)
    ours = average_precision_50(preds, boxes, labels, K)
    assert coco[2] is None and ours[2] is None
    assert map50(preds, boxes, labels, K) == pytest.approx(np.mean(coco[:2]), abs=1e-6)
