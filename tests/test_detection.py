"""The detection task end to end: det-small compaction and checkpoints, targets ↔ decode consistency,
ONNX parity of the detector, the device-side box check, option errors, and a 2-generation run
through the CLI (embedded broker and daemon) followed by `host-trainer report`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from edge_evolver.measure.detection import decode
from host_trainer.loop import checkpoint as ckpt
from host_trainer.method.compaction import cluster_groups, compact, widths
from host_trainer.method.export import to_onnx_bytes
from host_trainer.method.masks import dense_masks
from host_trainer.method.restriction import restrict
from host_trainer.method.synthesis import SynthesisConfig, plan_offspring
from host_trainer.models.detectors import DetSmall
from host_trainer.models.registry import fixed_layers
from host_trainer.tasks.detect import DetectionTask
from host_trainer.tasks.heatmap import detection_loss, image_labels

SHAPE = (3, 64, 64)
K = 3


def _model(seed=0):
    torch.manual_seed(seed)
    model = DetSmall(K, SHAPE)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so compaction has something to carry
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _offspring(model, alpha=0.6, seed=1):
    example = torch.zeros((1, *SHAPE))
    groups = cluster_groups(model, example, fixed_layers(model))
    plan = plan_offspring(model, groups, dense_masks(model), SynthesisConfig(alpha, 0.9, 0.1, "calibrated", 1),
                          np.random.default_rng(seed))
    return compact(model, plan.masks, groups, plan.keep, example)


def test_det_small_output_layout_and_fixed_head():
    model = _model()
    out = model(torch.zeros((2, *SHAPE)))
    assert out.shape == (2, K + 4, 16, 16) and model.output_stride == 4
    groups = cluster_groups(model, torch.zeros((1, *SHAPE)), fixed_layers(model))
    members = {m for g in groups for m in g.members}
    assert "out" not in members and {"stem.0", "neck2.0", "head.0"} <= members  # backbone, neck, head lose clusters
    assert torch.sigmoid(model.out.bias[:K]).allclose(torch.tensor(0.1))  # CenterNet's prior


def test_det_small_compacts_through_the_concatenations_and_round_trips():
    model = _model()
    child, masks = _offspring(model)
    assert sum(widths(child).values()) < sum(widths(model).values())
    assert widths(child)["out"] == K + 4  # the head's output never loses clusters
    assert child(torch.zeros((1, *SHAPE))).shape == (1, K + 4, 16, 16)
    folder_meta = ckpt.architecture(child, "det-small", K, SHAPE)
    rebuilt = ckpt.build_architecture(folder_meta)
    rebuilt.load_state_dict(child.state_dict())
    x = torch.randn(2, *SHAPE)
    assert torch.allclose(rebuilt.eval()(x), child.eval()(x))


def test_labels_decode_back_to_the_boxes():
    """A perfect network output built from the labels decodes to the very boxes (to float rounding)."""
    boxes = np.array([[4, 6, 20, 30], [30, 30, 62, 50], [40, 2, 49, 11]], np.float32)
    labels = np.array([0, 2, 1])
    heat, reg, mask = image_labels(boxes, labels, K, (16, 16), 4)
    assert heat.max() == 1.0 and mask.sum() == 3
    logits = np.where(heat >= 1.0, 8.0, -8.0 + 4.0 * heat)  # peaks only at the centre cells
    out = np.concatenate([logits, reg], 0)[None].astype(np.float32)
    (det,) = decode(out, K, 4)
    order = np.argsort(det.labels)
    assert list(det.labels[order]) == [0, 1, 2]
    np.testing.assert_allclose(det.boxes[order], boxes[[0, 2, 1]], atol=1e-3)


def test_loss_is_finite_and_falls_when_training():
    model = _model()
    task = DetectionTask(K, 4, SHAPE)
    boxes = (np.array([[8, 8, 40, 40]], np.float32),) * 4
    labels = (np.array([1]),) * 4
    from host_trainer.data.types import DetSplit

    split = DetSplit(np.random.default_rng(0).normal(size=(4, *SHAPE)).astype(np.float32), boxes, labels)
    heat, reg, mask = task.labels(split)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = detection_loss(model(torch.from_numpy(split.x)), heat, reg, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


def test_onnx_parity_of_the_detector_dense_and_compacted():
    task = DetectionTask(K, 4, SHAPE)
    x = np.random.default_rng(0).normal(size=(16, *SHAPE)).astype(np.float32)
    for model in (_model(), _offspring(_model())[0]):
        restrict(model, "fp16")
        with torch.no_grad():
            model.out.bias[:K] = 2.0  # confident boxes, so that box agreement is really compared
        onnx_bytes = to_onnx_bytes(model, SHAPE, "fp16", task.output_name)
        parity = task.parity(onnx_bytes, model, x)
        assert parity.ok and parity.metric == "box" and parity.agreement >= 0.95
        assert "onnx_box_agreement" in parity.to_dict()


def test_the_device_check_veto():
    moved = {"box_agreement": 0.0, "nonfinite": 0}
    assert DetectionTask(K, 4, SHAPE).disagreement(moved).startswith("box agreement 0.000")
    assert DetectionTask(K, 4, SHAPE).disagreement({"box_agreement": 0.9, "nonfinite": 0}) is None
    assert DetectionTask(K, 4, SHAPE).disagreement({"box_agreement": None, "nonfinite": 0}) is None  # no boxes
    assert "non-finite" in DetectionTask(K, 4, SHAPE).disagreement({"box_agreement": 1.0, "nonfinite": 2})


def _evolve(args, cwd, timeout=600):
    cmd = [sys.executable, "-m", "host_trainer.cli", "evolve", *args]
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, fragment", [
    (["--task", "detect", "--distill", "0.5"], "--distill is implemented for classification only"),
    (["--task", "detect", "--dataset", "glyphs"], "a classification set: drop --task detect"),
    (["--dataset", "shapes-det"], "shapes-det is a detection data set: add --task detect"),
    (["--model", "det-small", "--dataset", "digits"], "det-small is a detector: add --task detect"),
    (["--task", "detect", "--model", "mlp", "--image-size", "64"], "must declare `output_stride`"),
    (["--task", "detect", "--image-size", "100"], "multiple of 16"),
    (["--task", "detect", "--dataset", "coco:/nonexistent/x.json"], "/nonexistent"),
    (["--task", "track"], "'track' is not one of 'classify', 'detect'"),  # typer checks the choices
])
def test_bad_detection_options_are_one_line_errors(tmp_path, args, fragment):
    proc = _evolve([*args, "--run-dir", str(tmp_path / "runs")], tmp_path, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("error: ") and fragment in lines[-1], proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_two_generation_detection_run_through_the_cli_and_report(tmp_path):
    args = ["--task", "detect", "--generations", "2", "--gen0-epochs", "1", "--epochs", "0.5", "--train-subset",
            "256", "--final-epochs", "1", "--image-size", "32", "--env-factor", "0.7", "--max-accuracy-drop", "100",
            "--bench-min-seconds", "0.2", "--bench-min-iterations", "20", "--run-dir", str(tmp_path / "runs")]
    proc = _evolve(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    accepted = [r for r in rows if r["accepted"]]
    assert [r["generation"] for r in accepted if not r["final_tune"]] == [0, 1, 2]
    final = rows[-1]  # the final fine-tune (--final-epochs): generation 3, landed or rejected
    assert final["final_tune"] and final["generation"] == 3 and final["parent"] == 2
    for r in accepted:
        assert r["task"] == "detect" and r["accuracy"] == r["map50"] and 0 <= r["map50"] <= 1
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["fps"] > 0 and r["device_id"] == "local"
        assert r["onnx_parity_ok"] and "onnx_box_agreement" in r and "agreement_boxes" in r
    assert accepted[-1]["synapses"] < accepted[0]["synapses"]
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "detect" and config["model"] == "det-small" and config["dataset"] == "shapes-det"
    report = subprocess.run([sys.executable, "-m", "host_trainer.cli", "report", str(run)], capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    markdown = (run / "report.md").read_text()
    assert "mAP@0.5 %" in markdown and "precision / recall at IoU 0.5, score ≥ 0.3" in markdown
    for name in ("synapses_fps.png", "precision_recall.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


USER_DETECTOR = '''
import torch
from torch import nn


class TinyDet(nn.Module):
    output_stride = 8  # the documented interface: one output (N, K + 4, S/8, S/8) in det-small's layout

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Conv2d(32, num_classes + 4, 1)

    def forward(self, x):
        return self.head(self.body(x))


def build(num_classes, in_channels):
    return TinyDet(num_classes, in_channels)
'''


def _yolo_set(root, n=12):
    from PIL import Image, ImageDraw

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("box\ndisc\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.new("RGB", (64, 48), (40, 40, 40))
        x, y, s = int(rng.integers(4, 40)), int(rng.integers(4, 26)), int(rng.integers(10, 18))
        cls = i % 2
        draw = ImageDraw.Draw(img)
        (draw.rectangle if cls == 0 else draw.ellipse)([x, y, x + s, y + s], fill=(220, 200, 60))
        img.save(root / "images" / f"im{i:02d}.png")
        cx, cy = (x + s / 2) / 64, (y + s / 2) / 48
        (root / "labels" / f"im{i:02d}.txt").write_text(f"{cls} {cx:.5f} {cy:.5f} {s / 64:.5f} {s / 48:.5f}\n")


def _user_detector_args(tmp_path, allocation):
    """`evolve` of the documented user detector on a tiny yolo:PATH set, measured in-process."""
    (tmp_path / "det.py").write_text(USER_DETECTOR)
    _yolo_set(tmp_path / "yolo")
    return ["--task", "detect", "--model", f"{tmp_path / 'det.py'}:build", "--dataset", f"yolo:{tmp_path / 'yolo'}",
            "--image-size", "32", "--generations", "1", "--gen0-epochs", "2", "--epochs", "1", "--final-epochs", "0",
            "--no-mqtt", "--allocation", allocation, "--max-accuracy-drop", "100", "--bench-min-seconds", "0.1",
            "--bench-min-iterations", "10", "--run-dir", str(tmp_path / "runs")]


def test_an_offspring_whose_onnx_disagrees_with_torch_is_rejected_not_fatal(tmp_path):
    """This seeded run's magnitude offspring flips one of 4 boxes at fp16: it is rejected, and the run goes on."""
    proc = _evolve(_user_detector_args(tmp_path, "magnitude"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    failed = [r for r in rows if str(r.get("reject_reason") or "").startswith("export parity")]
    assert failed and all(not r["accepted"] for r in failed), [r.get("reject_reason") for r in rows]
    assert rows[0]["accepted"] and (run / "final" / "model.onnx").exists()


def test_a_user_detector_on_yolo_data_through_the_cli(tmp_path):
    """--model file.py:factory with the documented interface, on a yolo:PATH set, measured in-process."""
    proc = _evolve(_user_detector_args(tmp_path, "device"), tmp_path)  # the interface; magnitude: the test above
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows if r["accepted"]] == [0, 1]
    assert all(r["task"] == "detect" for r in rows) and all(r["onnx_parity_ok"] for r in rows if r["accepted"])
    # Device allocation follows measured times, so which cut is drawn varies with the machine's load; a cut whose
    # fp16 ONNX flips a box of this near-random detector is rejected for it, never kept.
    assert all(r["onnx_parity_ok"] or str(r["reject_reason"]).startswith("export parity") for r in rows)
    import onnx

    graph = onnx.load(str(run / rows[-1]["onnx_path"])).graph
    assert [o.name for o in graph.output] == ["detections"]
    dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert dims[1:] == [2 + 4, 4, 4]  # K + 4 channels at stride 8 of a 32x32 input
    # a detection run resumes like any other: the config brings back the task, the data and the model
    resumed = subprocess.run([sys.executable, "-m", "host_trainer.cli", "evolve", "--resume", str(run),
                              "--generations", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows if r["accepted"]] == [0, 1, 2] and rows[-1]["task"] == "detect"
