"""The detection task: centre heat-map labels and loss, mAP/precision/recall, box-level parity.

Decoding is `edge_evolver.measure.detection.decode`, the one function the host's metrics, the export
parity check and the device-side output check share (docs/detection.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edge_evolver.measure.detection import decode, detection_agreement
from host_trainer.data.types import DetSplit
from host_trainer.method.export import Parity, onnx_and_torch, within_tolerance
from host_trainer.tasks.base import agreement_problem, predict_split
from host_trainer.tasks.detect_metrics import DetQuality, detection_quality
from host_trainer.tasks.heatmap import detection_loss, split_labels

OUTPUT_NAME = "detections"
MIN_PARITY_BOX_AGREEMENT = 0.95  # host: ONNX Runtime vs torch, same machine
MIN_DEVICE_BOX_AGREEMENT = 0.85  # device engine (TensorRT fp16, other kernels) vs the host's reference


class DetectionTask:
    name, output_name, augment = "detect", OUTPUT_NAME, False

    def __init__(self, num_classes: int, stride: int, input_shape: tuple[int, int, int]):
        self.num_classes, self.stride = num_classes, stride
        self.grid = (input_shape[1] // stride, input_shape[2] // stride)
        # Built once per split and run; the split is kept with its labels so that its id is never reused.
        self._labels: dict[int, tuple[DetSplit, list[torch.Tensor]]] = {}

    def expected_output(self) -> tuple[int, ...]:
        return (self.num_classes + 4, *self.grid)

    def output_contract(self) -> str:
        return ("a detector has one output of shape (N, K + 4, H/stride, W/stride): here (N, "
                f"{', '.join(map(str, self.expected_output()))}) for K = {self.num_classes} classes and output_stride "
                f"{self.stride} (docs/detection.md; a YOLO head with anchors, DFL or several scales does not fit)")

    def labels(self, split: DetSplit) -> list[torch.Tensor]:
        key = id(split)
        if key not in self._labels:
            arrays = split_labels(split.boxes, split.labels, self.num_classes, self.grid, self.stride)
            self._labels[key] = (split, [torch.from_numpy(a) for a in arrays])
        return self._labels[key][1]

    def loss(self, outputs: torch.Tensor, labels: list[torch.Tensor], teacher: torch.Tensor | None) -> torch.Tensor:
        heat, reg, mask = labels
        return detection_loss(outputs, heat, reg, mask)

    def batch_score(self, outputs: torch.Tensor, labels: list[torch.Tensor]) -> float | None:
        return None  # mAP needs decoding and matching: too slow for every training step

    def decode(self, outputs: np.ndarray) -> list:
        return decode(outputs, self.num_classes, self.stride)

    def batch_labels(self, batch: Any) -> list[torch.Tensor]:
        """A streamed training batch's heat-map labels, from its (augmented) boxes."""
        arrays = split_labels(tuple(b.numpy() for b in batch.boxes), tuple(t.numpy() for t in batch.labels),
                              self.num_classes, self.grid, self.stride)
        return [torch.from_numpy(a) for a in arrays]

    def evaluate(self, model: nn.Module, split: DetSplit) -> DetQuality:
        outputs = predict_split(model, split, batch_size=128)
        heat, reg, mask = self.labels(split)
        with torch.no_grad():
            loss = float(detection_loss(torch.from_numpy(outputs), heat, reg, mask))
        return detection_quality(self.decode(outputs), split.boxes, split.labels, self.num_classes, loss)

    def parity(self, onnx_bytes: bytes, model: nn.Module, x: np.ndarray) -> Parity:
        """Every output value within the fp16 tolerance, and the decoded boxes the same."""
        got, ref = onnx_and_torch(onnx_bytes, model, x)
        max_err, within = within_tolerance(got, ref)
        agree = detection_agreement(self.decode(got), self.decode(ref))
        agree = 1.0 if agree is None else float(agree)
        return Parity(max_abs_err=max_err, agreement=agree, samples=len(x),
                      ok=within and agree >= MIN_PARITY_BOX_AGREEMENT, metric="box")

    def job_check(self) -> dict | None:
        return {"kind": "detect", "num_classes": self.num_classes, "stride": self.stride}

    def disagreement(self, agreement: dict | None) -> str | None:
        return agreement_problem(agreement, "box_agreement", "box agreement", MIN_DEVICE_BOX_AGREEMENT)
