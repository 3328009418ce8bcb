"""edge_evolver/measure/detection.py on hand-built network outputs: decode, peaks, NMS, IoU, agreement.

Python 3.6-compatible like the package it tests (a Jetson could run it with the JetPack set)."""

import warnings

import numpy as np
import pytest

from edge_evolver.measure import detection
from edge_evolver.measure.detection import (
    AGREEMENT_SCORE,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_NMS_IOU,
    DEFAULT_SCORE_THRESHOLD,
    Detections,
    box_iou,
    decode,
    detection_agreement,
    nms,
    peak_mask,
    sigmoid,
)

K = 3
STRIDE = 4
HIGH, LOW = 4.0, -8.0  # heat-map logits of a peak and of the background (scores 0.982 and 0.0003)


def output(n=1, h=8, w=8):
    """(n, K + 4, h, w): background everywhere, offset (0.5, 0.5), box 2 × 2 cells."""
    out = np.full((n, K + 4, h, w), LOW, np.float32)
    out[:, K:K + 2] = 0.5
    out[:, K + 2:K + 4] = np.log(2.0)
    return out


def put(out, c, i, j, logit=HIGH, offset=(0.5, 0.5), size=(2.0, 2.0), image=0):
    """An object of class c centred in cell (row i, column j); size in cells."""
    out[image, c, i, j] = logit
    out[image, K:K + 2, i, j] = offset
    out[image, K + 2:K + 4, i, j] = np.log(size)


def score(logit):
    return 1.0 / (1.0 + np.exp(-logit))


def dets(boxes, scores, labels):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64))


def test_constants_are_the_contract():
    assert (DEFAULT_SCORE_THRESHOLD, DEFAULT_NMS_IOU, DEFAULT_MAX_DETECTIONS, AGREEMENT_SCORE) == (0.05, 0.5, 100, 0.3)


def test_one_object_decodes_to_its_exact_box():
    out = output()
    put(out, 1, 3, 2, offset=(0.25, 0.75), size=(3.0, 1.5))
    (d,) = decode(out, K, STRIDE)
    # centre ((2 + 0.25)·4, (3 + 0.75)·4) = (9, 15); size (12, 6) px
    np.testing.assert_allclose(d.boxes, [[3, 12, 15, 18]], atol=1e-5)
    assert d.labels.tolist() == [1]
    assert d.scores[0] == pytest.approx(score(HIGH), rel=1e-6)
    assert (d.boxes.dtype, d.scores.dtype, d.labels.dtype) == (np.float32, np.float32, np.int64)


def test_two_classes_even_in_one_cell():
    out = output()
    put(out, 0, 1, 1)
    put(out, 2, 5, 6, logit=3.0)
    out[0, 1, 1, 1] = 2.0  # class 1 peaks in class 0's cell: peaks are per class map
    (d,) = decode(out, K, STRIDE)
    assert d.labels.tolist() == [0, 2, 1]  # by descending score
    np.testing.assert_allclose(d.scores, score(np.array([HIGH, 3.0, 2.0])), rtol=1e-6)
    np.testing.assert_allclose(d.boxes[[0, 2]], [[2, 2, 10, 10]] * 2, atol=1e-5)  # one cell, one box


def test_a_weaker_neighbour_is_not_a_peak_but_a_cell_two_away_is():
    out = output()
    put(out, 0, 3, 3)
    put(out, 0, 4, 4, logit=3.0)  # diagonal neighbour: inside the 3×3 window
    put(out, 0, 3, 5, logit=3.0)  # two columns away: a peak of its own
    (d,) = decode(out, K, STRIDE, nms_iou=1.0)
    np.testing.assert_allclose(d.boxes, [[10, 10, 18, 18], [18, 10, 26, 18]], atol=1e-5)


def test_equal_neighbours_are_both_peaks_and_keep_cell_order():
    out = output()
    put(out, 0, 2, 2)
    put(out, 0, 2, 3)  # a plateau: both equal the 3×3 maximum
    (d,) = decode(out, K, STRIDE, nms_iou=1.0)
    np.testing.assert_allclose(d.boxes[:, 0], [6, 10], atol=1e-5)  # ties keep (class, row, column) order
    (d,) = decode(out, K, STRIDE)  # 8 px boxes 4 px apart: IoU 1/3, both kept at 0.5
    assert len(d.scores) == 2
    (d,) = decode(out, K, STRIDE, nms_iou=0.3)
    np.testing.assert_allclose(d.boxes, [[6, 6, 14, 14]], atol=1e-5)  # the earlier cell survives


def test_peak_mask_matches_a_padded_max_pool():
    rng = np.random.default_rng(0)
    scores = rng.random((2, 3, 7, 5)).astype(np.float32)
    scores[0, 0, 2, 2] = scores[0, 0, 2, 3] = 2.0  # a plateau
    padded = np.pad(scores, [(0, 0), (0, 0), (1, 1), (1, 1)], constant_values=-np.inf)
    pooled = np.max([padded[..., i:i + 7, j:j + 5] for i in range(3) for j in range(3)], axis=0)
    np.testing.assert_array_equal(peak_mask(scores), scores == pooled)
    assert peak_mask(np.zeros((1, 1))).tolist() == [[True]]


def test_score_threshold_is_inclusive_and_in_float32():
    out = output()
    put(out, 0, 1, 1)
    put(out, 1, 5, 5, logit=-3.0)  # score 0.0474 < 0.05
    assert decode(out, K, STRIDE)[0].labels.tolist() == [0]
    assert decode(out, K, STRIDE, score_threshold=0.04)[0].labels.tolist() == [0, 1]
    exact = float(sigmoid(np.float32(-3.0)))
    assert decode(out, K, STRIDE, score_threshold=exact)[0].labels.tolist() == [0, 1]
    assert len(decode(out, K, STRIDE, score_threshold=0.99)[0].scores) == 0


def test_boxes_are_clipped_to_the_image():
    out = output(h=4, w=6)  # a 24 × 16 px input
    put(out, 0, 0, 0, offset=(0.0, 0.0), size=(4.0, 4.0))  # centre (0, 0), 16 px
    put(out, 1, 3, 5, offset=(0.9, 0.9), size=(3.0, 2.0))  # centre (23.6, 15.6), 12 × 8 px
    (d,) = decode(out, K, STRIDE)
    np.testing.assert_allclose(d.boxes, [[0, 0, 8, 8], [17.6, 11.6, 24, 16]], atol=1e-5)


def test_nms_removes_a_same_class_duplicate_but_not_another_class():
    out = output(w=12)
    # 24 px boxes 8 px apart horizontally: IoU about 16·24 / (2·576 - 384) = 0.5 (exp(log 6) is not quite 6)
    put(out, 0, 3, 3, size=(6.0, 6.0))
    put(out, 0, 3, 5, logit=3.0, size=(6.0, 6.0))
    put(out, 1, 3, 5, logit=2.0, size=(6.0, 6.0))
    (d,) = decode(out, K, STRIDE, nms_iou=0.45)
    assert d.labels.tolist() == [0, 1]
    (d,) = decode(out, K, STRIDE, nms_iou=0.55)
    assert d.labels.tolist() == [0, 0, 1]
    np.testing.assert_allclose(d.scores, score(np.array([HIGH, 3.0, 2.0])), rtol=1e-6)


def test_max_detections_keeps_the_best():
    out = output(h=16, w=16)
    for n, (i, j) in enumerate([(1, 1), (1, 8), (8, 1), (8, 8), (14, 14)]):
        put(out, n % K, i, j, logit=float(n))
    (d,) = decode(out, K, STRIDE, max_detections=3)
    np.testing.assert_allclose(d.scores, score(np.array([4.0, 3.0, 2.0])), rtol=1e-6)
    assert len(decode(out, K, STRIDE, max_detections=0)[0].scores) == 0


def test_the_cap_applies_after_nms():
    out = output(h=8, w=32)
    for n, j in enumerate([10, 12, 14, 16]):  # 80 × 16 px boxes 8 to 24 px apart: IoU 0.82, 0.67, 0.54
        put(out, 0, 4, j, logit=HIGH - n / 10, size=(20.0, 4.0))
    put(out, 1, 4, 28, logit=1.0)
    put(out, 0, 1, 28, logit=0.5)
    (d,) = decode(out, K, STRIDE, max_detections=2)  # the 2 best boxes only come 5th and 6th by score
    assert d.labels.tolist() == [0, 1]
    np.testing.assert_allclose(d.scores, score(np.array([HIGH, 1.0])), rtol=1e-6)
    assert decode(out, K, STRIDE, max_detections=3)[0].labels.tolist() == [0, 1, 0]


def test_images_decode_independently():
    out = output(n=3)
    put(out, 0, 1, 1, image=0)
    put(out, 2, 6, 6, image=2)
    put(out, 1, 6, 6, logit=2.0, image=2)
    got = decode(out, K, STRIDE)
    assert [d.labels.tolist() for d in got] == [[0], [], [2, 1]]
    assert got[1].boxes.shape == (0, 4) and decode(output(n=0), K, STRIDE) == []


def test_decoding_in_chunks_changes_nothing(monkeypatch):
    rng = np.random.default_rng(5)
    out = rng.normal(0, 1, (10, K + 4, 9, 11)).astype(np.float32)
    out[:, :K] -= 1.0
    whole = decode(out, K, STRIDE)
    monkeypatch.setattr(detection, "_CHUNK", 3)
    chunked = decode(out, K, STRIDE)
    assert len(chunked) == 10 and sum(len(d.scores) for d in whole) > 100
    for a, b in zip(whole, chunked):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_wild_outputs_decode_without_floating_point_errors():
    out = output()
    put(out, 0, 1, 1, logit=1e30, size=(1.0, 1.0))
    out[0, K + 2, 1, 1] = 1e30  # exp would overflow
    out[0, 1, 5, 5] = np.nan
    out[0, 2] = -1e30
    with np.errstate(over="raise", invalid="raise", divide="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        (d,) = decode(out, K, STRIDE)
    assert d.labels.tolist() == [0]
    np.testing.assert_allclose(d.boxes, [[0, 4, 32, 8]], atol=1e-5)  # width capped, then clipped


@pytest.mark.parametrize("shape, num_classes, stride, message", [
    ((K + 4, 8, 8), K, STRIDE, "must be \\(N, K \\+ 4, h, w\\)"),
    ((1, K + 3, 8, 8), K, STRIDE, "for 3 classes has 7 channels"),
    ((1, 4, 8, 8), 0, STRIDE, "at least 1 class"),
    ((1, K + 4, 8, 8), K, 0, "stride must be >= 1"),
])
def test_decode_rejects_a_wrong_layout(shape, num_classes, stride, message):
    with pytest.raises(ValueError, match=message):
        decode(np.zeros(shape, np.float32), num_classes, stride)


def _reference_decode(out, k, stride, threshold, nms_iou, limit):
    """The contract written out cell by cell, class by class, to check the vectorised decode against."""
    h, w = out.shape[1:]
    scores = sigmoid(out[:k])
    reg = out[k:].astype(np.float64)
    found = []
    for c in range(k):
        for i in range(h):
            for j in range(w):
                window = scores[c, max(0, i - 1):i + 2, max(0, j - 1):j + 2]
                if scores[c, i, j] == window.max() and scores[c, i, j] >= np.float32(threshold):
                    cx, cy = (j + reg[0, i, j]) * stride, (i + reg[1, i, j]) * stride
                    bw, bh = np.exp(reg[2, i, j]) * stride, np.exp(reg[3, i, j]) * stride
                    box = np.clip([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 0, [w * stride, h * stride] * 2)
                    found.append((-float(scores[c, i, j]), len(found), c, box.astype(np.float32)))
    kept = []
    for neg, _, c, box in sorted(found):  # descending score, then cell order
        if all(kc != c or box_iou([box], [kb])[0, 0] <= nms_iou for _, _, kc, kb in kept):
            kept.append((neg, 0, c, box))
    return kept[:limit]


@pytest.mark.parametrize("seed, bias, size, limit", [
    (0, -2.19, 0.8, 100), (1, -2.19, 1.5, 20), (2, -4.0, 1.5, 100), (3, 0.0, 2.5, 3), (4, 0.0, 2.5, 8),
])
def test_decode_agrees_with_the_contract_written_out(seed, bias, size, limit):
    rng = np.random.default_rng(seed)
    out = rng.normal(0, 1, (2, K + 4, 12, 10)).astype(np.float32)
    out[:, :K] += bias  # -2.19: an untrained det-small, every cell near score 0.1
    out[:, K + 2:] += size  # log size in cells: larger boxes overlap more, and NMS has more to do
    for image, d in enumerate(decode(out, K, STRIDE, max_detections=limit)):
        want = _reference_decode(out[image], K, STRIDE, 0.05, 0.5, limit)
        assert d.labels.tolist() == [c for _, _, c, _ in want]
        np.testing.assert_allclose(d.scores, [-s for s, _, _, _ in want], rtol=1e-6)
        np.testing.assert_allclose(d.boxes, np.reshape([b for _, _, _, b in want], (-1, 4)), atol=1e-4)


def test_sigmoid_is_stable():
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is the right answer
        s = sigmoid(np.array([-1e4, -50.0, 0.0, 50.0, 1e4], np.float32))
    np.testing.assert_allclose(s, [0.0, 1.9287499e-22, 0.5, 1.0, 1.0], rtol=1e-5)
    assert s.dtype == np.float32


def test_box_iou_cases():
    a = np.array([[0, 0, 10, 10]], np.float32)
    assert box_iou(a, a)[0, 0] == 1.0
    assert box_iou(a, [[20, 20, 30, 30]])[0, 0] == 0.0
    assert box_iou(a, [[10, 0, 20, 10]])[0, 0] == 0.0  # touching edges
    assert box_iou(a, [[5, 0, 15, 10]])[0, 0] == 50 / 150  # half of each overlaps: 1/3
    assert box_iou(a, [[0, 0, 10, 5]])[0, 0] == 0.5  # one inside the other, half its area
    assert box_iou(a, [[3, 3, 3, 9]])[0, 0] == 0.0  # zero area
    assert box_iou([[3, 3, 3, 9]], [[3, 3, 3, 9]])[0, 0] == 0.0  # zero area with itself: no division by 0
    iou = box_iou([[0, 0, 10, 10], [0, 0, 20, 20]], [[0, 0, 10, 10], [0, 0, 5, 5], [50, 50, 60, 60]])
    np.testing.assert_allclose(iou, [[1, 0.25, 0], [0.25, 25 / 400, 0]])
    assert iou.dtype == np.float64
    assert box_iou(np.zeros((0, 4)), a).shape == (0, 1) and box_iou(a, np.zeros((0, 4))).shape == (1, 0)


def test_nms_keeps_indices_in_descending_score():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.9).tolist() == [1, 2, 0]  # 0 and 3 are the same box: the earlier wins
    assert nms(boxes, scores, 0.5, labels=np.array([0, 1, 0, 0])).tolist() == [1, 2, 0]  # class-wise
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []
    assert nms(boxes, scores).dtype == np.int64
    assert nms([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], 0.5).tolist() == [0, 1]  # IoU 0.5 is not > 0.5


def test_nms_suppression_only_by_kept_boxes():
    # b overlaps a and c, a and c do not overlap: a suppresses b, so b cannot suppress c.
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.4).tolist() == [0, 2]


def test_agreement_counts_the_confident_reference_boxes():
    want = [dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, AGREEMENT_SCORE - 0.01], [0, 1]),
            dets([[0, 0, 10, 10]], [AGREEMENT_SCORE], [2])]
    same = [dets([[1, 0, 10, 10]], [0.06], [0]), dets([[0, 0, 10, 10]], [0.5], [2])]  # any score will do
    assert detection_agreement(same, want) == 1.0
    wrong_class = [dets([[0, 0, 10, 10]], [0.9], [1]), same[1]]
    assert detection_agreement(wrong_class, want) == 0.5
    far = [dets([[0, 0, 10, 20]], [0.9], [0]), dets([], [], [])]  # IoU 0.5 exactly counts, nothing in image 2
    assert detection_agreement(far, want) == 0.5
    assert detection_agreement(far, want, iou=0.6) == 0.0
    assert detection_agreement([dets([], [], [])], [dets([[0, 0, 1, 1]], [0.1], [0])]) is None
    assert detection_agreement([], []) is None
    with pytest.raises(ValueError, match="1 image"):
        detection_agreement(same[:1], want)
