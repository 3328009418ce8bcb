"""preprocess.json's `output`: what the model's one output means, and for a detector how to decode it.

A classifier outputs raw logits (no softmax in the graph). A detector outputs the centre heat-map layout of
docs/detection.md, decoded by `edge_evolver.measure.detection.decode`: the numbers here are that function's
defaults and the thresholds the run's metrics and device checks used, read from where they are defined, so the
file cannot drift from the code that scored the model.
"""

from __future__ import annotations

from edge_evolver.measure import detection
from host_trainer.tasks import classify, detect, detect_metrics

DECODER = "edge_evolver.measure.detection.decode(output, num_classes, stride, score_threshold, nms_iou, max_detections)"


def classify_output(num_classes: int) -> dict:
    return {"name": classify.OUTPUT_NAME, "shape": [1, num_classes], "kind": "logits",
            "meaning": "one raw logit per class, in the order of `classes`: argmax is the predicted class, "
                       "softmax gives probabilities"}


def detect_output(num_classes: int, stride: int, input_shape: list[int]) -> dict:
    """The detector's output layout and the decoding the run scored it with."""
    grid = [int(input_shape[1]) // stride, int(input_shape[2]) // stride]
    k = num_classes
    return {
        "name": detect.OUTPUT_NAME, "shape": [1, k + 4, *grid], "kind": "centre-heatmap",
        "decode": {
            "function": DECODER, "anchor_free": True, "stride": stride, "num_classes": k,
            "channels": {"heatmap_logits": [0, k - 1], "centre_offset_cells": [k, k + 1],
                         "log_size_over_stride": [k + 2, k + 3]},
            "score": "sigmoid(heat-map logit)",
            "peaks": "cells equal to the maximum of their 3x3 neighbourhood in their class map",
            "box": "centre ((column + dx) * stride, (row + dy) * stride), size (exp(lw) * stride, exp(lh) * stride), "
                   "clipped to the input",
            "box_format": "xyxy", "box_units": "pixels of the network input (the letterboxed S x S image)",
            "to_image": "x_image = (x - offset_x) / scale, y_image = (y - offset_y) / scale (image.letterbox)",
            "score_threshold": detection.DEFAULT_SCORE_THRESHOLD, "nms": "greedy, class-wise",
            "nms_iou": detection.DEFAULT_NMS_IOU, "max_detections": detection.DEFAULT_MAX_DETECTIONS,
        },
        "metrics": {
            "map50": f"COCO AP at IoU {detect_metrics.IOU_THRESHOLD}, up to {detect_metrics.MAX_DETECTIONS} "
                     "detections per image, over every decoded box",
            "confidence_threshold": detect_metrics.CONF_THRESHOLD,
            "box_agreement_score": detection.AGREEMENT_SCORE,
            "box_agreement_iou": detection.AGREEMENT_IOU,
            "meaning": "precision and recall count boxes scoring >= confidence_threshold; the export and device "
                       "checks (box_agreement) compare boxes scoring >= box_agreement_score",
        },
    }


def output_spec(task: str, num_classes: int, input_shape: list[int], stride: int | None) -> dict:
    if task == "detect":
        if not isinstance(stride, int) or stride < 1:
            raise ValueError("a detector declares its output_stride (docs/detection.md)")
        return detect_output(num_classes, stride, input_shape)
    return classify_output(num_classes)
