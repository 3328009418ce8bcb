"""Decoding a detector's output into boxes: the one function host metrics and device checks share.

The output layout (docs/detection.md): one tensor (N, K + 4, h, w) for K classes; channels 0..K-1 are
class heat-map logits, K and K+1 the centre offset (dx, dy) inside a cell, K+2 and K+3 log(w / stride)
and log(h / stride). Boxes are xyxy in input pixels (the input is h·stride × w·stride).

numpy only and Python 3.6-compatible: a Jetson decodes its engine's outputs with this very code, so
the host's metrics and the device's check can never disagree about what a tensor means.

Conventions beyond the contract:
- scores are float32 (sigmoid in float32) and compared with the threshold in float32;
- equal scores keep the order (class, row, column) of the cells (stable sorts everywhere), so the
  result is deterministic;
- a box size logit is capped at 30 before exp(): the box is clipped to the image anyway, and the cap
  keeps a wild output (an fp16 engine gone wrong) from overflowing to inf.
"""

from typing import List, NamedTuple, Optional, Sequence

import numpy as np

DEFAULT_SCORE_THRESHOLD = 0.05
DEFAULT_NMS_IOU = 0.5
DEFAULT_MAX_DETECTIONS = 100
AGREEMENT_SCORE = 0.3  # the boxes that count in a device check: those the host's precision/recall count too
AGREEMENT_IOU = 0.5
_MAX_LOG_SIZE = 30.0
_CHUNK = 256  # images decoded together: vectorised, yet a large evaluation set needs no copies of all its maps


class Detections(NamedTuple):
    boxes: np.ndarray   # float32 (n, 4) xyxy, input pixels
    scores: np.ndarray  # float32 (n,), descending
    labels: np.ndarray  # int64 (n,)


def empty_detections() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in float32, without overflow for large |x| (exp only ever sees -|x|)."""
    x = np.asarray(x, dtype=np.float32)
    flat = x.reshape(-1)  # in-place steps below need arrays, not the scalars a 0-d input would give
    e = np.abs(flat)
    np.negative(e, out=e)
    np.exp(e, out=e)  # in (0, 1]: never overflows
    r = e + np.float32(1.0)
    np.reciprocal(r, out=r)  # sigmoid(|x|)
    np.multiply(e, r, out=e)  # sigmoid(-|x|) = exp(-|x|) / (1 + exp(-|x|))
    return np.where(flat >= 0, r, e).reshape(x.shape)


def peak_mask(scores: np.ndarray) -> np.ndarray:
    """Cells equal to the maximum of their 3×3 neighbourhood in the last two axes (CenterNet's max-pool
    with -inf padding: a border cell only competes with the cells inside the map). Separable: a 3-wide
    maximum along the rows, then along the columns. A NaN cell is never a peak, nor are its neighbours."""
    scores = np.asarray(scores)
    rows = scores.copy()
    np.maximum(rows[..., 1:], scores[..., :-1], out=rows[..., 1:])
    np.maximum(rows[..., :-1], scores[..., 1:], out=rows[..., :-1])
    best = rows.copy()
    np.maximum(best[..., 1:, :], rows[..., :-1, :], out=best[..., 1:, :])
    np.maximum(best[..., :-1, :], rows[..., 1:, :], out=best[..., :-1, :])
    return scores == best


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of broadcast-aligned float64 boxes (..., 4)."""
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_a = np.maximum(a[..., 2] - a[..., 0], 0.0) * np.maximum(a[..., 3] - a[..., 1], 0.0)
    area_b = np.maximum(b[..., 2] - b[..., 0], 0.0) * np.maximum(b[..., 3] - b[..., 1], 0.0)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` with every box of `b` (xyxy), float64 (len(a), len(b)). Boxes without
    area (or inverted) have IoU 0 with everything, themselves included. The arithmetic is pycocotools'
    (intersection w·h, union = area_a + area_b - intersection, no +1), so thresholds agree with COCO."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return _iou(a[:, None, :], b[None, :, :])


def _greedy(boxes: np.ndarray, labels: Optional[np.ndarray], iou: float, limit: Optional[int]) -> np.ndarray:
    """Positions kept by greedy NMS of boxes already in descending score; only same-label boxes suppress
    one another when `labels` is given. Stops once `limit` are kept: later boxes cannot displace them.

    Works on a growing prefix (a box is only ever suppressed by higher-scoring ones, so a prefix's result
    is final) and computes IoU only for the pairs that could suppress (same label, i before j)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    n = len(boxes)
    size = n if limit is None else min(n, limit)
    while True:
        if labels is None:
            first, second = np.triu_indices(size, 1)
        else:
            first, second = np.nonzero(np.triu(labels[:size, None] == labels[None, :size], 1))
        hit = _iou(boxes[first], boxes[second]) > iou
        kept = np.flatnonzero(_resolve(size, first[hit], second[hit]))
        if limit is None or len(kept) >= limit or size == n:
            return kept if limit is None else kept[:limit]
        size = min(n, 2 * size)


def _resolve(size: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Which of `size` boxes greedy NMS keeps, given the suppression edges first[e] -> second[e]
    (first < second). Vectorised in rounds rather than box by box: a box is removed once some source
    of an edge into it is kept, and kept once every such source is removed. The first undecided box has
    only decided sources, so every round settles at least one box; there are as many rounds as the
    longest chain of overlaps, a handful."""
    state = np.zeros(size, dtype=np.int8)  # 0 undecided, 1 kept, 2 removed
    while True:
        state[second[state[first] == 1]] = 2
        undecided = state == 0
        if not undecided.any():
            return state == 1
        undecided[second[state[first] == 0]] = False  # waits for an undecided source
        state[undecided] = 1


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = DEFAULT_NMS_IOU,
        labels: Optional[np.ndarray] = None, limit: Optional[int] = None) -> np.ndarray:
    """Indices (int64) kept by greedy non-maximum suppression, in descending score: a box whose IoU with
    a kept, higher-scoring box is > `iou` is suppressed. With `labels`, only boxes of the same label
    suppress one another (class-wise NMS); with `limit`, at most that many are kept. Equal scores keep
    their input order. `decode` uses it per image; it is public for anyone decoding outputs themselves."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    ranked = None if labels is None else np.asarray(labels)[order]
    return order[_greedy(boxes[order], ranked, iou, limit)].astype(np.int64)


def _check_output(output: np.ndarray, num_classes: int, stride: int) -> np.ndarray:
    output = np.asarray(output)
    if output.ndim != 4:
        raise ValueError(f"a detector output must be (N, K + 4, h, w), got shape {list(output.shape)}")
    if num_classes < 1:
        raise ValueError(f"a detector needs at least 1 class, got num_classes={num_classes}")
    if output.shape[1] != num_classes + 4:
        raise ValueError(f"a detector output for {num_classes} classes has {num_classes + 4} channels (K + 4), "
                         f"got shape {list(output.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return output.astype(np.float32, copy=False)


def _boxes(output: np.ndarray, n: np.ndarray, ys: np.ndarray, xs: np.ndarray, k: int, stride: int) -> np.ndarray:
    """float32 xyxy boxes of the cells (n, ys, xs), clipped to the input image."""
    h, w = output.shape[2:]
    dx, dy = output[n, k, ys, xs].astype(np.float64), output[n, k + 1, ys, xs].astype(np.float64)
    bw = np.exp(np.minimum(output[n, k + 2, ys, xs].astype(np.float64), _MAX_LOG_SIZE)) * stride
    bh = np.exp(np.minimum(output[n, k + 3, ys, xs].astype(np.float64), _MAX_LOG_SIZE)) * stride
    cx, cy = (xs + dx) * stride, (ys + dy) * stride
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    np.maximum(boxes, 0.0, out=boxes)
    np.minimum(boxes, np.array([w, h, w, h], np.float64) * stride, out=boxes)
    return boxes.astype(np.float32)


def decode(output: np.ndarray, num_classes: int, stride: int, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
           nms_iou: float = DEFAULT_NMS_IOU, max_detections: int = DEFAULT_MAX_DETECTIONS) -> List[Detections]:
    """One Detections per image of `output` (N, K + 4, h, w), sorted by descending score: heat-map peaks
    (3×3 maxima of the sigmoid) scoring >= `score_threshold`, class-wise NMS (IoU > `nms_iou`
    suppresses), the best `max_detections` by score. Raises ValueError when the layout does not fit."""
    output = _check_output(output, num_classes, stride)
    result: List[Detections] = []
    for start in range(0, len(output), _CHUNK):
        result.extend(_decode_chunk(output[start:start + _CHUNK], num_classes, stride, score_threshold, nms_iou,
                                    max_detections))
    return result


def _decode_chunk(output: np.ndarray, k: int, stride: int, score_threshold: float, nms_iou: float,
                  max_detections: int) -> List[Detections]:
    scores = sigmoid(output[:, :k])
    n, cls, ys, xs = np.nonzero(peak_mask(scores) & (scores >= np.float32(score_threshold)))
    found = scores[n, cls, ys, xs]
    boxes = _boxes(output, n, ys, xs, k, stride)
    bounds = np.searchsorted(n, np.arange(len(output) + 1))  # np.nonzero lists image by image
    result = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi == lo or max_detections <= 0:
            result.append(empty_detections())
            continue
        kept = lo + nms(boxes[lo:hi], found[lo:hi], nms_iou, labels=cls[lo:hi], limit=max_detections)
        result.append(Detections(boxes[kept], found[kept], cls[kept].astype(np.int64)))
    return result


def detection_agreement(got: Sequence[Detections], want: Sequence[Detections],
                        iou: float = AGREEMENT_IOU) -> Optional[float]:
    """Fraction of `want`'s detections scoring >= AGREEMENT_SCORE that `got` also has: some `got` box of
    the same class, of any score, at IoU >= iou (one `got` box may vouch for several). None when `want`
    has no such detection. Raises ValueError when the two cover different numbers of images."""
    if len(got) != len(want):
        raise ValueError(f"detections of {len(got)} image(s) compared with {len(want)}")
    found = total = 0
    for g, w in zip(got, want):
        confident = np.asarray(w.scores) >= AGREEMENT_SCORE
        total += int(confident.sum())
        if not confident.any() or len(g.boxes) == 0:
            continue
        overlaps = box_iou(w.boxes[confident], g.boxes)
        same = np.asarray(w.labels)[confident][:, None] == np.asarray(g.labels)[None, :]
        found += int(np.sum(np.any((overlaps >= iou) & same, axis=1)))
    return found / total if total else None
