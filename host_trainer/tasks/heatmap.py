"""Training labels and loss of the centre heat-map detector (docs/detection.md).

The labels are dense maps at the output grid (S/stride cells a side), built once per split:
- `heat` (K, h, w): for each object an elliptical Gaussian around its centre cell in its class's map,
  peak exactly 1 at the centre cell, sigma = 0.54 · size / 6 per axis (TTFNet's choice: the ellipse
  follows the box's aspect, which a round CenterNet radius does not); overlapping objects take the max.
- `reg` (4, h, w): at centre cells, the offset (dx, dy) of the true centre inside the cell and
  log(w / stride), log(h / stride); zero elsewhere.
- `mask` (1, h, w): 1 at centre cells. Two objects of one class whose centres fall in one cell keep
  the larger one (the smaller is, unavoidably, not learnable at this stride).

The loss is CenterNet's: a penalty-reduced focal loss on the heat-map plus L1 on the four regression
channels at centre cells, both divided by the number of objects.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIGMA_SCALE = 0.54 / 6.0
FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0
MIN_LOG_SIZE = np.log(0.25)  # a box smaller than a quarter cell is clamped: log(0) would be -inf


def image_labels(boxes: np.ndarray, labels: np.ndarray, num_classes: int, grid: tuple[int, int],
                  stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heat, reg, mask) of one image; boxes are xyxy in input pixels."""
    gh, gw = grid
    heat = np.zeros((num_classes, gh, gw), dtype=np.float32)
    reg = np.zeros((4, gh, gw), dtype=np.float32)
    mask = np.zeros((1, gh, gw), dtype=np.float32)
    area_at = np.zeros((num_classes, gh, gw), dtype=np.float32)
    ys, xs = np.arange(gh, dtype=np.float32)[:, None], np.arange(gw, dtype=np.float32)[None, :]
    for (x1, y1, x2, y2), label in zip(np.asarray(boxes, dtype=np.float64), labels):
        w, h = (x2 - x1) / stride, (y2 - y1) / stride
        cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        j, i = min(int(cx), gw - 1), min(int(cy), gh - 1)
        sx, sy = max(w * SIGMA_SCALE, 0.25), max(h * SIGMA_SCALE, 0.25)
        g = np.exp(-((xs - j) ** 2 / (2 * sx * sx) + (ys - i) ** 2 / (2 * sy * sy))).astype(np.float32)
        np.maximum(heat[label], g, out=heat[label])
        if w * h >= area_at[label, i, j]:  # the larger object of a shared cell keeps its regression
            area_at[label, i, j] = w * h
            reg[:, i, j] = (cx - j, cy - i, max(np.log(max(w, 1e-6)), MIN_LOG_SIZE),
                            max(np.log(max(h, 1e-6)), MIN_LOG_SIZE))
            mask[0, i, j] = 1.0
    return heat, reg, mask


def split_labels(boxes: tuple[np.ndarray, ...], labels: tuple[np.ndarray, ...], num_classes: int,
                  grid: tuple[int, int], stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacked (heat, reg, mask) for every image of a split (heat as float16: it is the big one)."""
    n = len(boxes)
    heat = np.zeros((n, num_classes, *grid), dtype=np.float16)
    reg = np.zeros((n, 4, *grid), dtype=np.float32)
    mask = np.zeros((n, 1, *grid), dtype=np.float32)
    for k, (b, lab) in enumerate(zip(boxes, labels)):
        heat[k], reg[k], mask[k] = image_labels(b, lab, num_classes, grid, stride)
    return heat, reg, mask


def focal_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's focal loss, summed (the caller divides by the number of objects)."""
    pos = heat.eq(1).float()
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)  # stable log(p) and log(1 - p)
    p = torch.sigmoid(logits)
    pos_term = -log_p * (1 - p) ** FOCAL_ALPHA * pos
    neg_term = -log_not_p * p ** FOCAL_ALPHA * (1 - heat) ** FOCAL_BETA * (1 - pos)
    return pos_term.sum() + neg_term.sum()


def detection_loss(output: torch.Tensor, heat: torch.Tensor, reg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Focal heat-map loss + L1 on offsets and log sizes at centre cells, per object."""
    k = heat.shape[1]
    objects = mask.sum().clamp(min=1.0)
    heat_loss = focal_loss(output[:, :k].float(), heat.float())
    reg_loss = (F.l1_loss(output[:, k:k + 4].float(), reg, reduction="none") * mask).sum()
    return (heat_loss + reg_loss) / objects
