"""What the deployable-result tests share (tests/test_deploy_result.py, tests/test_deploy_detection.py): tiny runs
through the CLI as subprocesses, and a preprocessing written from preprocess.json alone (`from_json`), not from
host_trainer's code. Subprocesses get PYTHONPATH = this checkout, so they run this code even where another checkout
is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from host_trainer.data.stream import stream_data

ROOT = Path(__file__).resolve().parents[1]
FINAL_FILES = {"model.onnx", "model.safetensors", "architecture.json", "preprocess.json", "README.md"}
QUICK = ["--epochs", "1", "--final-epochs", "0", "--env-factor", "0.7", "--max-accuracy-drop", "100",
         "--bench-min-seconds", "0.05", "--bench-min-iterations", "5", "--no-mqtt", "--allocation", "magnitude",
         "--train-device", "cpu"]


def env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def evolve_cli(args: list[str], cwd: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "host_trainer.cli", "evolve", *args, "--run-dir", str(cwd / "runs")],
                          cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (cwd / "runs").iterdir()
    return run


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]


def accepted(run: Path, generation: int) -> dict:
    return [r for r in rows(run) if r["accepted"] and r["generation"] == generation][-1]


# ---- preprocessing from preprocess.json alone (what a deployment writes) --------------------------------------
def from_json(spec: dict, path: Path) -> np.ndarray:
    """(C, H, W) float32 per the spec: decode, stretch or letterbox, scale, normalise."""
    img = Image.open(path)
    mode, (width, height), im = spec["input"]["channels"], spec["image"]["size"], spec["image"]
    if im["resize"] == "letterbox":
        scale = width / max(img.size)
        w, h = max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))
        canvas = Image.new(mode, (width, height), tuple(im["pad"]) if mode == "RGB" else im["pad"][0])
        canvas.paste(img.convert(mode).resize((w, h), Image.Resampling.BILINEAR), ((width - w) // 2, (height - h) // 2))
        img = canvas
    else:
        assert im["resize"] == "stretch" and im["interpolation"] == "bilinear"
        img = img.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
    x = np.asarray(img, np.float32) / np.float32(im["scale"])
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    mean = np.asarray(spec["normalize"]["mean"], np.float32)[:, None, None]
    std = np.asarray(spec["normalize"]["std"], np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


def run_onnx(folder: Path, x: np.ndarray) -> np.ndarray:
    spec = json.loads((folder / "preprocess.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {spec["input"]["name"]: x})[0]


def held_out_split(task: str, ref: str, size: int):
    """The run's held-out test split, as the run cut it (which files: host_trainer's; how to feed them: the JSON)."""
    return stream_data(task, ref, seed=0, image_size=size, workers=0).test

