"""Decoding a detector's output into boxes: the one function host metrics and device checks share.

The output layout (docs/detection.md): one tensor (N, K + 4, h, w) for K classes; channels 0..K-1 are
class heat-map logits, K and K+1 the centre offset (dx, dy) inside a cell, K+2 and K+3 log(w / stride)
and log(h / stride). Boxes are xyxy in input pixels (the input is h·stride × w·stride).

numpy only and Python 3.6-compatible: a Jetson decodes its engine's outputs with this very code.
"""

from typing import List, NamedTuple, Optional, Sequence

import numpy as np

DEFAULT_SCORE_THRESHOLD = 0.05
DEFAULT_NMS_IOU = 0.5
DEFAULT_MAX_DETECTIONS = 100
AGREEMENT_SCORE = 0.3  # the boxes that count in a device check: those the host's metrics count too
AGREEMENT_IOU = 0.5


class Detections(NamedTuple):
    boxes: np.ndarray   # float32 (n, 4) xyxy, input pixels
    scores: np.ndarray  # float32 (n,), descending
    labels: np.ndarray  # int64 (n,)


def empty_detections() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow warnings for large |x|."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def peak_mask(scores: np.ndarray) -> np.ndarray:
    """Cells equal to the maximum of their 3×3 neighbourhood (per map; -inf padding at the border)."""
    padded = np.pad(scores, [(0, 0)] * (scores.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    h, w = scores.shape[-2:]
    best = scores.copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(best, padded[..., dy:dy + h, dx:dx + w], out=best)
    return scores >= best


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` with every box of `b` (xyxy); boxes without area have IoU 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = DEFAULT_NMS_IOU) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, in descending score (a box overlapping a kept
    one by IoU > `iou` is suppressed)."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    overlaps = box_iou(boxes[order], boxes[order])
    keep = []
    suppressed = np.zeros(len(order), dtype=bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= overlaps[i] > iou
    return np.asarray(keep, dtype=np.int64)


def _check_output(output: np.ndarray, num_classes: int, stride: int) -> np.ndarray:
    output = np.asarray(output)
    if output.ndim != 4:
        raise ValueError(f"a detector output must be (N, K + 4, h, w), got shape {list(output.shape)}")
    if output.shape[1] != num_classes + 4:
        raise ValueError(f"a detector output for {num_classes} classes has {num_classes + 4} channels, "
                         f"got {output.shape[1]}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return output.astype(np.float32, copy=False)


def _decode_one(out: np.ndarray, k: int, stride: int, threshold: float, nms_iou: float, limit: int) -> Detections:
    scores = sigmoid(out[:k])
    cls, ys, xs = np.nonzero(peak_mask(scores) & (scores >= threshold))
    if cls.size == 0:
        return empty_detections()
    h, w = out.shape[1:]
    dx, dy = out[k, ys, xs], out[k + 1, ys, xs]
    bw = np.exp(np.minimum(out[k + 2, ys, xs], 20.0)) * stride  # the cap keeps a wild logit finite
    bh = np.exp(np.minimum(out[k + 3, ys, xs], 20.0)) * stride
    cx, cy = (xs + dx) * stride, (ys + dy) * stride
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    boxes = np.clip(boxes, 0, [w * stride, h * stride, w * stride, h * stride]).astype(np.float32)
    found = scores[cls, ys, xs]
    keep: List[np.ndarray] = []
    for c in np.unique(cls):  # class-wise NMS
        idx = np.flatnonzero(cls == c)
        keep.append(idx[nms(boxes[idx], found[idx], nms_iou)])
    kept = np.concatenate(keep)
    kept = kept[np.argsort(-found[kept], kind="mergesort")][:limit]
    return Detections(boxes[kept], found[kept].astype(np.float32), cls[kept].astype(np.int64))


def decode(output: np.ndarray, num_classes: int, stride: int, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
           nms_iou: float = DEFAULT_NMS_IOU, max_detections: int = DEFAULT_MAX_DETECTIONS) -> List[Detections]:
    """One Detections per image of `output` (N, K + 4, h, w): heat-map peaks at or above
    `score_threshold`, class-wise NMS at `nms_iou`, the best `max_detections` by score."""
    output = _check_output(output, num_classes, stride)
    return [_decode_one(o, num_classes, stride, score_threshold, nms_iou, max_detections) for o in output]


def detection_agreement(got: Sequence[Detections], want: Sequence[Detections],
                        iou: float = AGREEMENT_IOU) -> Optional[float]:
    """Fraction of `want`'s boxes scoring >= AGREEMENT_SCORE that `got` also has (same class, IoU >= iou,
    any score >= DEFAULT_SCORE_THRESHOLD); None when `want` has no such box."""
    found = total = 0
    for g, w in zip(got, want):
        confident = w.scores >= AGREEMENT_SCORE
        total += int(confident.sum())
        if not confident.any() or len(g.boxes) == 0:
            continue
        overlaps = box_iou(w.boxes[confident], g.boxes)
        same = w.labels[confident][:, None] == g.labels[None, :]
        found += int(np.sum(np.any((overlaps >= iou) & same, axis=1)))
    return found / total if total else None
