"""The user's image files, streamed through the whole loop: training, BatchNorm recalibration, evaluation, the
export's parity samples and the device job's reference images read `imagefolder:`/`yolo:` a batch at a time
(host_trainer/data/splits.py); on two ranks too. The built-in in-memory sets are untouched (test_evolve_cli)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from host_trainer.data import splits
from host_trainer.data.stream import load_data, stream_data
from host_trainer.loop.training import TrainConfig, recalibrate_batchnorm, train
from host_trainer.method.masks import dense_masks
from host_trainer.models.registry import build_model
from host_trainer.tasks.registry import make_task

from .test_stream_data import write_folder, write_yolo

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--epochs", "1", "--gen0-epochs", "1", "--final-epochs", "0", "--env-factor", "0.7",
       "--max-accuracy-drop", "100", "--no-mqtt", "--generations", "1", "--allocation", "magnitude",
       "--bench-min-seconds", "0.05", "--bench-min-iterations", "10"]


def _evolve(args: list[str], cwd: Path, *launcher: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "host_trainer", "evolve", *launcher, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _rows(parent: Path) -> list[dict]:
    (run,) = [p for p in parent.iterdir() if p.is_dir()]
    return [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]


def test_the_loop_streams_an_image_folder(tmp_path):
    folder = write_folder(tmp_path / "imgs", per_class=20, size=(40, 30))
    data = load_data("classify", f"imagefolder:{folder}", seed=0, image_size=16)
    assert splits.streamed(data.train) and not hasattr(data.train, "x")  # paths, not pixels
    proc = _evolve([*RUN, "--model", "mlp", "--dataset", f"imagefolder:{folder}", "--image-size", "16",
                    "--run-dir", str(tmp_path / "runs")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(tmp_path / "runs")
    assert [r["generation"] for r in rows] == [0, 1]
    assert all(0 <= r["accuracy"] <= 1 and r["onnx_parity_ok"] for r in rows)


def test_two_ranks_stream_their_shares(tmp_path):
    folder = write_folder(tmp_path / "imgs", per_class=20, size=(40, 30))
    proc = _evolve([*RUN, "--model", "mlp", "--dataset", f"imagefolder:{folder}", "--image-size", "16",
                    "--run-dir", str(tmp_path / "runs")], tmp_path, "--nproc-per-node", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["generation"] for r in _rows(tmp_path / "runs")] == [0, 1]


def test_a_detector_trains_and_evaluates_on_streamed_yolo(tmp_path):
    data = stream_data("detect", f"yolo:{write_yolo(tmp_path / 'yolo', n=12)}", seed=0, image_size=32)
    model = build_model("det-small", data.num_classes, data.input_shape)
    task = make_task("detect", data, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = train(model, dense_masks(model), data.train, TrainConfig(epochs=2, seed=0, batch_size=4), task)
    assert np.isfinite(loss) and any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    quality = task.evaluate(model, data.val)
    assert 0.0 <= quality.accuracy <= 1.0
    assert splits.head(data.test, 2).shape == (2, *data.input_shape)


def test_helpers_agree_for_both_kinds(tmp_path):
    folder = write_folder(tmp_path / "imgs", per_class=6, size=(20, 20))
    streamed = stream_data("classify", f"imagefolder:{folder}", seed=0, image_size=8)
    short = splits.take(streamed.train, 5)
    assert len(short) == 5 and list(short.y) == list(streamed.train.y[:5])
    batches = list(splits.images(streamed.test, batch_size=2))
    assert sum(len(b) for b in batches) == len(streamed.test)
    np.testing.assert_array_equal(splits.head(streamed.test, 3), np.concatenate(batches)[:3])
    model = build_model("mlp", streamed.num_classes, streamed.input_shape)
    recalibrate_batchnorm(model, streamed.train, TrainConfig(epochs=1, seed=0, batch_size=4))  # no BN: a no-op
