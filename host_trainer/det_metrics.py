"""Detection quality on held-out data: precision and recall at a fixed confidence, and mAP@0.5.

Conventions (docs/detection.md):
- Matching, per image and class: detections in descending score (stable: mergesort, as pycocotools),
  each matched to the not-yet-matched ground-truth box of the same class with the highest IoU, when
  that IoU is at least IOU_THRESHOLD. Unmatched detections are false positives.
- Precision and recall pool every image and class (micro averages) over detections with score >=
  CONF_THRESHOLD: P = TP / max(1, TP + FP), R = TP / max(1, ground-truth boxes).
- mAP@0.5 is COCO's AP at IoU 0.5 (area "all", at most 100 detections per image, no crowd boxes):
  per class, every image's detections sorted by score, the precision envelope made monotone, sampled
  at 101 recall points (searchsorted, side "left"; points beyond the last recall count 0); the mean
  over the classes that have ground truth. tests/test_det_metrics.py checks it against pycocotools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_evolver.detection import Detections, box_iou

CONF_THRESHOLD = 0.3
IOU_THRESHOLD = 0.5
MAX_DETECTIONS = 100
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class DetQuality:
    map50: float
    precision: float
    recall: float
    loss: float

    @property
    def accuracy(self) -> float:
        """The score the controller brakes on: mAP@0.5 for a detector."""
        return self.map50

    def to_dict(self) -> dict[str, float]:
        return {"accuracy": self.map50, "map50": self.map50, "precision": self.precision, "recall": self.recall,
                "loss": self.loss}


def match_image(det: Detections, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """True-positive flags of one image's detections, in the order of `det` (COCO's greedy rule)."""
    tp = np.zeros(len(det.scores), dtype=bool)
    if len(det.scores) == 0 or len(gt_labels) == 0:
        return tp
    overlaps = box_iou(det.boxes, gt_boxes)
    taken = np.zeros(len(gt_labels), dtype=bool)
    for i in np.argsort(-det.scores, kind="mergesort"):
        candidates = (gt_labels == det.labels[i]) & ~taken & (overlaps[i] >= iou_threshold)
        if candidates.any():
            best = int(np.argmax(np.where(candidates, overlaps[i], -1.0)))
            taken[best] = tp[i] = True
    return tp


def _per_class(dets: Sequence[Detections], gt_boxes: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray],
               c: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, TP flags, ground-truth count) of class c over all images."""
    scores, flags, count = [], [], 0
    for det, boxes, labels in zip(dets, gt_boxes, gt_labels):
        mine, theirs = det.labels == c, labels == c
        count += int(theirs.sum())
        one = Detections(det.boxes[mine], det.scores[mine], det.labels[mine])
        scores.append(one.scores)
        flags.append(match_image(one, boxes[theirs], labels[theirs]))
    return np.concatenate(scores) if scores else np.zeros(0), np.concatenate(flags) if flags else np.zeros(0), count


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated AP of one class."""
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order].astype(np.float64)
    tps, fps = np.cumsum(tp), np.cumsum(1.0 - tp)
    recall = tps / num_gt
    precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision  # envelope
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean()) if len(precision) else 0.0


def _top(det: Detections, limit: int) -> Detections:
    order = np.argsort(-det.scores, kind="mergesort")[:limit]
    return Detections(det.boxes[order], det.scores[order], det.labels[order])


def map50(dets: Sequence[Detections], gt_boxes: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray],
          num_classes: int) -> float:
    """Mean AP at IoU 0.5 over the classes with ground truth (0 when there is none at all)."""
    dets = [_top(d, MAX_DETECTIONS) for d in dets]
    aps = []
    for c in range(num_classes):
        scores, tp, count = _per_class(dets, gt_boxes, gt_labels, c)
        if count:
            aps.append(average_precision(scores, tp, count))
    return float(np.mean(aps)) if aps else 0.0


def precision_recall(dets: Sequence[Detections], gt_boxes: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray],
                     conf: float = CONF_THRESHOLD) -> tuple[float, float]:
    """Micro precision and recall of the detections scoring >= conf, at IoU 0.5."""
    tp = fp = total = 0
    for det, boxes, labels in zip(dets, gt_boxes, gt_labels):
        keep = det.scores >= conf
        flags = match_image(Detections(det.boxes[keep], det.scores[keep], det.labels[keep]), boxes, labels)
        tp, fp, total = tp + int(flags.sum()), fp + int((~flags).sum()), total + len(labels)
    return tp / max(1, tp + fp), tp / max(1, total)


def detection_quality(dets: Sequence[Detections], gt_boxes: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray],
                      num_classes: int, loss: float) -> DetQuality:
    p, r = precision_recall(dets, gt_boxes, gt_labels)
    return DetQuality(map50=map50(dets, gt_boxes, gt_labels, num_classes), precision=p, recall=r, loss=float(loss))
