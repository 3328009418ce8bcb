"""A detection run's deployable result (docs/deploy.md): a user detector on a generated YOLO set, measured
in-process. preprocess.json must state the letterbox and the decoding well enough that the held-out images,
letterboxed from it alone (tests/deploy_support.py `from_json`) and decoded with its numbers, score the run's
recorded mAP@0.5 on final/model.onnx; final/ rebuilds in PyTorch from its copy of the user's factory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import host_trainer
from host_trainer.method.export import ATOL, RTOL

from .deploy_support import FINAL_FILES, QUICK, accepted, evolve_cli, from_json, held_out_split, run_onnx
from .test_detection import USER_DETECTOR  # the documented detector interface, written once


def _yolo_set(root: Path, n: int = 24) -> Path:
    """Boxes and discs on 64×48 images (not square: the letterbox pads)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("box\ndisc\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.new("RGB", (64, 48), (40, 40, 40))
        x, y, s = int(rng.integers(4, 40)), int(rng.integers(4, 26)), int(rng.integers(12, 20))
        draw = ImageDraw.Draw(img)
        (draw.rectangle if i % 2 == 0 else draw.ellipse)([x, y, x + s, y + s], fill=(220, 200, 60))
        img.save(root / "images" / f"im{i:02d}.png")
        cx, cy = (x + s / 2) / 64, (y + s / 2) / 48
        (root / "labels" / f"im{i:02d}.txt").write_text(f"{i % 2} {cx:.5f} {cy:.5f} {s / 64:.5f} {s / 48:.5f}\n")
    return root


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("detect")
    (base / "tinydet.py").write_text(USER_DETECTOR)
    data = _yolo_set(base / "yolo")
    run = evolve_cli(["--task", "detect", "--model", f"{base / 'tinydet.py'}:build", "--dataset", f"yolo:{data}",
                      "--image-size", "32", "--generations", "1", "--gen0-epochs", "3", *QUICK], base)
    return run, data


def test_a_detection_run_states_its_letterbox_and_decoding(detect_run):
    from edge_evolver.measure import detection

    run, _ = detect_run
    final = run / "final"
    assert {p.name for p in final.iterdir()} == FINAL_FILES | {"tinydet.py"}  # the user's factory, copied
    spec = json.loads((final / "preprocess.json").read_text())
    assert spec["task"] == "detect" and spec["classes"] == ["box", "disc"]
    assert spec["image"]["resize"] == "letterbox" and spec["image"]["size"] == [32, 32]
    assert spec["image"]["pad"] == [round(m * 255) for m in spec["normalize"]["mean"]]
    decode = spec["output"]["decode"]
    assert spec["output"]["name"] == "detections" and spec["output"]["shape"] == [1, 6, 4, 4]
    assert decode["stride"] == 8 and decode["num_classes"] == 2 and decode["anchor_free"]
    assert decode["box_format"] == "xyxy" and decode["score_threshold"] == detection.DEFAULT_SCORE_THRESHOLD
    assert decode["nms_iou"] == detection.DEFAULT_NMS_IOU and decode["max_detections"] == 100
    assert spec["output"]["metrics"]["box_agreement_score"] == detection.AGREEMENT_SCORE == 0.3
    assert "from edge_evolver.measure.detection import decode" in (final / "README.md").read_text()
    assert json.loads((final / "architecture.json").read_text())["factory"] == "tinydet.py:build"


def test_detections_decoded_per_preprocess_json_score_the_recorded_map(detect_run, tmp_path):
    """The inputs must be the pipeline's exactly; the mAP of the file's decoded boxes must be the run's (torch's,
    fp16 weights) exactly, unless the run's own parity check saw boxes move (box agreement below 1)."""
    from edge_evolver.measure.detection import decode
    from host_trainer.tasks.detect_metrics import detection_quality

    run, data = detect_run
    final = shutil.copytree(run / "final", tmp_path / "final")  # rebuilt from the copy: the factory travels
    spec = json.loads((final / "preprocess.json").read_text())
    test = held_out_split("detect", f"yolo:{data}", 32)
    x = np.stack([from_json(spec, Path(test.path(i))) for i in range(len(test))])
    np.testing.assert_allclose(x, np.stack([test[i].image.numpy() for i in range(len(test))]), rtol=0, atol=1e-6)
    d = spec["output"]["decode"]
    found = decode(run_onnx(final, x), d["num_classes"], d["stride"], d["score_threshold"], d["nms_iou"],
                   d["max_detections"])
    score = detection_quality(found, test.boxes, test.labels, d["num_classes"], 0.0).map50
    record = accepted(run, spec["source"]["generation"])
    if record["onnx_box_agreement"] == 1.0:
        assert score == pytest.approx(record["accuracy"], abs=1e-9)
    else:
        assert abs(score - record["accuracy"]) <= 1.0 - record["onnx_box_agreement"]
    deployed = host_trainer.load(final)
    with torch.no_grad():
        out = deployed.model(torch.from_numpy(x)).numpy()
    onnx_out = run_onnx(final, x)
    assert np.all(np.abs(onnx_out - out) <= ATOL + RTOL * np.abs(out))
