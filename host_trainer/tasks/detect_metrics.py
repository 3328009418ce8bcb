"""Detection quality on held-out data: precision and recall at a fixed confidence, and mAP@0.5.

Conventions (docs/detection.md); predictions are `Detections` (edge_evolver/measure/detection.py), ground truth
per image float32 (n, 4) xyxy boxes and int64 (n,) labels, boxes in the same pixels:
- Matching (COCO's greedy rule), per image: detections in descending score (stable sort, mergesort,
  as pycocotools, so equal scores keep their input order); each takes the not-yet-matched ground-truth
  box of its class with the highest IoU, when that IoU is >= IOU_THRESHOLD (0.5, inclusive); equal IoUs
  go to the later ground-truth box of the image, as pycocotools' loop does. Unmatched detections are
  false positives. IoU is `box_iou`: no +1 on widths, pycocotools' arithmetic. Boxes are expected
  well-formed (x1 <= x2, y1 <= y2, as `decode` makes them): an inverted box has IoU 0 here, while
  pycocotools ignores an unmatched one (its negative area falls outside the area range "all").
- Precision and recall (micro: every image and class pooled) over the detections scoring >=
  CONF_THRESHOLD (0.3), all of them (the 100 per image cap is mAP's): P = TP / max(1, TP + FP),
  R = TP / max(1, ground-truth boxes). So P = 0 without detections and R = 0 without ground truth.
  Lower-scored detections are matched after every higher one, so leaving them out or in changes no match
  above the threshold: one matching pass serves precision, recall and mAP.
- mAP@0.5 is COCO's AP at IoU 0.5 (area "all", no crowd boxes, at most MAX_DETECTIONS = 100 detections
  per image): the image's best 100 by score over all classes, as `decode` returns them and as COCO
  results files hold them; pycocotools caps per image *and class* instead, which only differs for an
  image with more than 100 detections. Per class: every image's detections of that class (image order,
  then descending score) sorted again by descending score (mergesort), cumulative TP/FP, recall =
  TP / ground truth, precision = TP / (TP + FP) (pycocotools adds 2.2e-16 to that denominator, ours is
  never 0: values differ by at most 1e-16 relative), the precision envelope made monotone (running
  maximum from the end), sampled at the 101 recall points np.linspace(0, 1, 101) by
  searchsorted(side="left"); a recall point beyond the last recall reached samples 0. A class's AP is
  the mean of the 101 samples; a class with ground truth but no detection has AP 0; mAP is the mean
  over the classes with at least one ground-truth box (0.0 when no class has any, where COCO's is
  undefined). tests/test_det_metrics.py checks it against pycocotools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_evolver.measure.detection import Detections, box_iou

CONF_THRESHOLD = 0.3
IOU_THRESHOLD = 0.5
MAX_DETECTIONS = 100
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # exactly pycocotools' recThrs


@dataclass(frozen=True)
class DetQuality:
    """Quality of a detector on held-out data. `to_dict()["accuracy"]` is mAP@0.5: the controller's
    accuracy brake and the selection among offspring read `accuracy`, whatever the task."""

    map50: float
    precision: float
    recall: float
    loss: float

    @property
    def accuracy(self) -> float:
        return self.map50

    def to_dict(self) -> dict[str, float]:
        return {"accuracy": self.map50, "map50": self.map50, "precision": self.precision, "recall": self.recall,
                "loss": self.loss}


def match_image(det: Detections, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """True-positive flags (bool, in the order of `det`) of one image's detections by COCO's greedy rule."""
    tp = np.zeros(len(det.scores), dtype=bool)
    if len(det.scores) == 0 or len(gt_labels) == 0:
        return tp
    overlaps = box_iou(det.boxes, gt_boxes)
    candidates = (np.asarray(det.labels)[:, None] == np.asarray(gt_labels)[None, :]) & (overlaps >= iou_threshold)
    if candidates.sum(axis=0).max() <= 1:  # no ground-truth box is wanted twice: order cannot matter
        return candidates.any(axis=1)
    taken = np.zeros(len(gt_labels), dtype=bool)
    for i in np.argsort(-np.asarray(det.scores), kind="mergesort"):
        free = candidates[i] & ~taken
        if free.any():
            reverse = np.where(free, overlaps[i], -1.0)[::-1]
            best = len(reverse) - 1 - int(np.argmax(reverse))  # highest IoU, the later box on a tie
            taken[best] = tp[i] = True
    return tp


@dataclass(frozen=True)
class _Ranked:
    """Every image's detections in descending score (mergesort), pooled in image order, with their flags."""

    scores: np.ndarray  # float64
    labels: np.ndarray  # int64
    tp: np.ndarray      # bool
    rank: np.ndarray    # position within its image's ranking (0 = best)
    num_gt: int


def _rank(preds: Sequence[Detections], gt_boxes: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray]) -> _Ranked:
    if not len(preds) == len(gt_boxes) == len(gt_labels):
        raise ValueError(f"{len(preds)} predicted images but {len(gt_boxes)} ground-truth box sets and "
                         f"{len(gt_labels)} label sets")
    scores, labels, flags, ranks = [np.zeros(0)], [np.zeros(0, np.int64)], [np.zeros(0, bool)], [np.zeros(0, int)]
    for det, boxes, truth in zip(preds, gt_boxes, gt_labels):
        order = np.argsort(-np.asarray(det.scores), kind="mergesort")
        ranked = Detections(np.asarray(det.boxes)[order], np.asarray(det.scores)[order], np.asarray(det.labels)[order])
        scores.append(ranked.scores.astype(np.float64))
        labels.append(ranked.labels.astype(np.int64))
        flags.append(match_image(ranked, boxes, truth))
        ranks.append(np.arange(len(order)))
    return _Ranked(np.concatenate(scores), np.concatenate(labels), np.concatenate(flags), np.concatenate(ranks),
                   sum(len(t) for t in gt_labels))


def _precision_recall(r: _Ranked, conf: float) -> tuple[float, float]:
    confident = r.scores >= conf
    tp = int(np.sum(r.tp & confident))
    return tp / max(1, int(confident.sum())), tp / max(1, r.num_gt)


def precision_recall(preds: Sequence[Detections], gt_boxes: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray],
                     conf: float = CONF_THRESHOLD) -> tuple[float, float]:
    """Micro precision and recall, at IoU 0.5, of the detections scoring >= conf (module docstring)."""
    return _precision_recall(_rank(preds, gt_boxes, gt_labels), conf)


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated AP of one class from its detections' scores and TP flags (any order;
    equal scores keep the given order) and its ground-truth count (> 0)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = np.asarray(tp, dtype=bool)[order]
    if len(hits) == 0:
        return 0.0
    tps = np.cumsum(hits).astype(np.float64)
    fps = np.cumsum(~hits).astype(np.float64)
    recall = tps / num_gt
    precision = np.maximum.accumulate((tps / (tps + fps))[::-1])[::-1]  # the envelope: best precision to the right
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def _per_class(r: _Ranked, gt_labels: Sequence[np.ndarray], num_classes: int) -> list[float | None]:
    truth = np.concatenate([np.zeros(0, np.int64)] + [np.asarray(t, np.int64).reshape(-1) for t in gt_labels])
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(f"ground-truth labels must lie in [0, {num_classes}), got {truth.min()}..{truth.max()}")
    counts = np.bincount(truth, minlength=num_classes)
    top = r.rank < MAX_DETECTIONS
    aps: list[float | None] = []
    for c in range(num_classes):
        mine = top & (r.labels == c)
        aps.append(average_precision(r.scores[mine], r.tp[mine], int(counts[c])) if counts[c] else None)
    return aps


def average_precision_50(preds: Sequence[Detections], gt_boxes: Sequence[np.ndarray],
                         gt_labels: Sequence[np.ndarray], num_classes: int) -> list[float | None]:
    """AP at IoU 0.5 of every class (module docstring); None for a class without ground truth."""
    return _per_class(_rank(preds, gt_boxes, gt_labels), gt_labels, num_classes)


def _mean(aps: list[float | None]) -> float:
    present = [ap for ap in aps if ap is not None]
    return float(np.mean(present)) if present else 0.0


def map50(preds: Sequence[Detections], gt_boxes: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray],
          num_classes: int) -> float:
    """COCO's mAP@0.5: the mean AP over the classes with ground truth (0.0 when none has any)."""
    return _mean(average_precision_50(preds, gt_boxes, gt_labels, num_classes))


def detection_quality(preds: Sequence[Detections], gt_boxes: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray],
                      num_classes: int, loss: float) -> DetQuality:
    """mAP@0.5, precision and recall at CONF_THRESHOLD (one matching pass serves all three), and the loss."""
    ranked = _rank(preds, gt_boxes, gt_labels)
    p, r = _precision_recall(ranked, CONF_THRESHOLD)
    return DetQuality(map50=_mean(_per_class(ranked, gt_labels, num_classes)), precision=p, recall=r,
                      loss=float(loss))
