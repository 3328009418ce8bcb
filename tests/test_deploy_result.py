"""A result you can deploy (docs/deploy.md, docs/api.md): final/ at the end of a run, `host-trainer export`, and
`host_trainer.load` / `host_trainer.evolve`, on a tiny classification run (mlp on a generated image folder, measured
in-process). The held-out images are fed to final/model.onnx through a preprocessing written from preprocess.json
alone (tests/deploy_support.py `from_json`), not through host_trainer's, and must score what the run recorded.
The detection counterpart is tests/test_deploy_detection.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import host_trainer
from host_trainer.cli import app
from host_trainer.deploy.preprocess import normalisation
from host_trainer.errors import UserError
from host_trainer.method.export import ATOL, RTOL

from .deploy_support import (
    FINAL_FILES,
    QUICK,
    ROOT,
    accepted,
    env,
    evolve_cli,
    from_json,
    held_out_split,
    rows,
    run_onnx,
)

OLD_RUN = ROOT / "tests" / "fixtures" / "run-v0.1"
CLASSES = ("cat", "dog", "eel")


def _image_folder(root: Path) -> Path:
    """Three classes told apart by a faint patch in one colour channel, in noise: hard enough that the
    accuracy is not 100 % (so a wrong preprocessing would show), images of several sizes (so resizing counts)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(24):
            a = rng.integers(0, 200, (10 + i % 5, 13, 3)).astype(np.uint8)
            a[2:6, 3:9, c] = np.clip(a[2:6, 3:9, c].astype(int) + 90, 0, 255)
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, image folder) of a 2-generation mlp run on 8×8 inputs."""
    base = tmp_path_factory.mktemp("classify")
    images = _image_folder(base / "images")
    run = evolve_cli(["--model", "mlp", "--dataset", f"imagefolder:{images}", "--image-size", "8", "--generations",
                      "2", "--gen0-epochs", "3", *QUICK], base)
    return run, images


# ---- classification -------------------------------------------------------------------------------------------
def test_a_run_ends_with_final_holding_the_last_accepted_generation(classify_run):
    run, _ = classify_run
    final = run / "final"
    assert {p.name for p in final.iterdir()} == FINAL_FILES
    last = max(r["generation"] for r in rows(run) if r["accepted"])
    assert (final / "model.onnx").read_bytes() == (run / f"gen-{last:03d}" / "model.onnx").read_bytes()
    spec = json.loads((final / "preprocess.json").read_text())
    assert spec["format"] == "edge-evolver-preprocess" and spec["version"] == 1 and spec["task"] == "classify"
    assert spec["classes"] == list(CLASSES) and spec["input"]["shape"] == [1, 3, 8, 8]
    assert spec["source"]["generation"] == last and spec["source"]["test_score"] == accepted(run, last)["accuracy"]
    dataset = json.loads((run / "dataset.json").read_text())  # recorded when the run started
    assert dataset["class_names"] == list(CLASSES) and spec["normalize"]["mean"] == dataset["mean"]  # per channel
    arch = json.loads((final / "architecture.json").read_text())
    assert arch["format"] == "edge-evolver-architecture" and arch["model"] == "mlp"
    readme = (final / "README.md").read_text()
    assert "trtexec --onnx=model.onnx --fp16 --shapes=input:1x3x8x8" in readme
    assert "edge-evolver bench model.onnx --backend tensorrt" in readme


def test_onnx_fed_through_preprocess_json_scores_the_recorded_test_accuracy(classify_run):
    """Exact unless the run itself saw ONNX Runtime and torch disagree: the recorded accuracy is torch's (fp16
    weights, fp32 arithmetic) and the file computes in fp16; the run's parity check, on these same test images,
    recorded the share of images where the two differ, and only those may move the accuracy."""
    run, images = classify_run
    final = run / "final"
    spec = json.loads((final / "preprocess.json").read_text())
    test = held_out_split("classify", f"imagefolder:{images}", 8)
    x = np.stack([from_json(spec, Path(test.path(i))) for i in range(len(test))])
    pipeline = np.stack([test[i].image.numpy() for i in range(len(test))])
    np.testing.assert_allclose(x, pipeline, rtol=0, atol=1e-6)  # the same inputs the run scored
    accuracy = float(np.mean(run_onnx(final, x).argmax(1) == test.y))
    record = accepted(run, spec["source"]["generation"])
    assert record["onnx_parity_samples"] == len(test)
    assert abs(accuracy - record["accuracy"]) <= 1.0 - record["onnx_top1_agreement"] + 1e-12
    assert 0.0 < record["accuracy"] < 1.0  # neither trivial nor hopeless: a wrong preprocessing would show


def test_load_gives_the_network_the_onnx_computes(classify_run):
    run, images = classify_run
    final = run / "final"
    test = held_out_split("classify", f"imagefolder:{images}", 8)
    from_run, from_final = host_trainer.load(run), host_trainer.load(final)
    assert from_run.generation == from_final.generation == json.loads((final / "preprocess.json").read_text())[
        "source"]["generation"]
    assert from_run.classes == list(CLASSES) and not from_final.model.training
    for (k, a), (_, b) in zip(from_run.model.state_dict().items(), from_final.model.state_dict().items()):
        assert a.dtype == torch.float32 or not a.is_floating_point()
        assert torch.equal(a, b), k  # safetensors round trip: bit for bit
    x = np.concatenate([from_final.prepare(test.path(i)) for i in range(len(test))])
    np.testing.assert_allclose(x, np.stack([from_json(from_final.preprocess, Path(test.path(i)))
                                            for i in range(len(test))]), rtol=0, atol=1e-6)
    with torch.no_grad():
        torch_out = from_final.model(torch.from_numpy(x)).numpy()
    onnx_out = run_onnx(final, x)
    assert np.all(np.abs(onnx_out - torch_out) <= ATOL + RTOL * np.abs(torch_out))  # the export's fp16 tolerance
    assert host_trainer.load(run, generation=1).generation == 1


def test_the_readme_snippet_runs_on_the_folder(classify_run, tmp_path):
    run, images = classify_run
    folder = shutil.copytree(run / "final", tmp_path / "final")
    snippet = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    photo = images / "dog" / "3.png"
    (folder / "run.py").write_text(snippet.replace('"photo.jpg"', repr(str(photo))))
    done = subprocess.run([sys.executable, "run.py"], cwd=folder, env=env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    spec = json.loads((folder / "preprocess.json").read_text())
    expected = spec["classes"][int(run_onnx(folder, from_json(spec, photo)[None])[0].argmax())]
    assert done.stdout.strip() == expected


def _export(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def test_export_a_given_generation_and_the_fastest_within_a_drop(classify_run, tmp_path):
    run, _ = classify_run
    done = _export(str(run), "--generation", "1", "--out", str(tmp_path / "g1"))
    assert done.exit_code == 0, done.output
    assert (tmp_path / "g1" / "model.onnx").read_bytes() == (run / "gen-001" / "model.onnx").read_bytes()
    assert json.loads((tmp_path / "g1" / "preprocess.json").read_text())["source"]["generation"] == 1
    points = [p for p in json.loads((run / "pareto.json").read_text())["front"] if p["accepted"]]
    best = max(p["accuracy"] for p in points)
    for drop in (0.0, 100.0):
        near = [p for p in points if p["accuracy"] >= best - drop / 100 - 1e-12]
        expected = max(near, key=lambda p: (p["fps"], p["accuracy"], -p["generation"]))["generation"]
        out = tmp_path / f"pick-{drop:g}"
        done = _export(str(run), "--pick", "fastest-within", f"{drop:g}", "--out", str(out))
        assert done.exit_code == 0, done.output
        source = json.loads((out / "preprocess.json").read_text())["source"]
        assert source["generation"] == expected and "fastest point of the Pareto front" in source["picked"]
    again = _export(str(run), "--generation", "0", "--out", str(tmp_path / "g1"))  # an earlier export is replaced
    assert again.exit_code == 0 and json.loads((tmp_path / "g1" / "preprocess.json").read_text())["source"][
        "generation"] == 0


def _break_architecture(run: Path, tmp_path: Path) -> Path:
    copy = shutil.copytree(run, tmp_path / "broken", ignore=shutil.ignore_patterns("final"))
    meta = json.loads((copy / "gen-002" / "checkpoint.json").read_text())
    meta["architecture"]["widths"] = "all of them"
    (copy / "gen-002" / "checkpoint.json").write_text(json.dumps(meta))
    return copy


BAD_EXPORTS = {
    "missing run directory": (lambda run, tmp: [str(tmp / "nope")], "run directory not found"),
    "not a run directory": (lambda run, tmp: [str(tmp)], "not a run directory"),
    "generation that does not exist": (lambda run, tmp: [str(run), "--generation", "99"],
                                       "no accepted generation 99"),
    "corrupt architecture": (lambda run, tmp: [str(_break_architecture(run, tmp))], "not an architecture"),
    "unknown pick": (lambda run, tmp: [str(run), "--pick", "smallest", "1"], "--pick takes fastest-within"),
    "negative drop": (lambda run, tmp: [str(run), "--pick", "fastest-within", "-1"], ">= 0"),
    "both choices": (lambda run, tmp: [str(run), "--generation", "1", "--pick", "fastest-within", "1"], "not both"),
}


@pytest.mark.parametrize("case", list(BAD_EXPORTS))
def test_bad_export_input_is_one_line_exit_2(case, classify_run, tmp_path):
    run, _ = classify_run
    build, expected = BAD_EXPORTS[case]
    args = build(run, tmp_path)
    done = _export(*args, "--out", str(tmp_path / "out"))
    assert done.exit_code == 2, done.output
    lines = [ln for ln in done.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.output
    assert not (tmp_path / "out").exists()


def test_export_never_empties_a_folder_of_the_users(classify_run, tmp_path):
    run, _ = classify_run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    done = _export(str(run), "--out", str(tmp_path / "mine"))
    assert done.exit_code == 2 and "not an earlier export" in done.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_damaged_final_folder_is_a_user_error(classify_run, tmp_path):
    run, _ = classify_run
    folder = shutil.copytree(run / "final", tmp_path / "final")
    arch = json.loads((folder / "architecture.json").read_text())
    (folder / "architecture.json").write_text("{not json")
    with pytest.raises(UserError, match="architecture.json cannot be read as JSON"):
        host_trainer.load(folder)
    (folder / "architecture.json").write_text(json.dumps({**arch, "widths": {"fc1": 3, "fc2": 5}}))
    with pytest.raises(UserError, match="cannot rebuild the model from .*architecture.json"):
        host_trainer.load(folder)
    (folder / "architecture.json").write_text(json.dumps(arch))
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="model.safetensors"):
        host_trainer.load(folder)


def test_a_run_from_before_dataset_json_exports_with_its_data_read_again(tmp_path):
    """0.1's runs recorded no class names or normalisation: export reads the data set again (digits, seed 0)."""
    done = _export(str(OLD_RUN), "--out", str(tmp_path / "old"))
    assert done.exit_code == 0, done.output
    spec = json.loads((tmp_path / "old" / "preprocess.json").read_text())
    assert spec["classes"] == [str(d) for d in range(10)] and spec["input"]["shape"] == [1, 1, 8, 8]
    assert spec["input"]["channels"] == "L" and len(spec["normalize"]["mean"]) == 1
    assert spec["source"]["generation"] == 1 and spec["source"]["precision"] == "fp16"
    assert not (OLD_RUN / "dataset.json").exists() and not (OLD_RUN / "final").exists()  # export writes no run file
    assert host_trainer.load(tmp_path / "old").model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_normalisation_prefers_the_runs_per_channel_lists():
    facts = {"input_shape": [3, 8, 8], "mean": 0.5, "std": 0.25}
    assert normalisation({}, facts) == ([0.5] * 3, [0.25] * 3)
    assert normalisation({"mean": [0.1, 0.2, 0.3], "std": [1, 2, 4]}, facts) == ([0.1, 0.2, 0.3], [1.0, 2.0, 4.0])
    assert normalisation({}, {**facts, "mean": [0.1, 0.2, 0.3]})[0] == [0.1, 0.2, 0.3]
    for bad in ({"mean": [0.1, 0.2], "std": [1, 1]}, {"mean": [0.1] * 3, "std": [1, 0, 1]}):
        with pytest.raises(UserError):
            normalisation(bad, facts)


# ---- the Python API -------------------------------------------------------------------------------------------
def test_import_host_trainer_loads_no_torch():
    code = "import sys, host_trainer; assert callable(host_trainer.load) and callable(host_trainer.evolve); " \
           "assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_evolve_returns_the_run_directory_with_final(classify_run, tmp_path):
    _, images = classify_run
    code = f"""
import dataclasses, json, sys
import host_trainer
from host_trainer.config import EvolveConfig
cfg = EvolveConfig.for_task("classify", model="mlp", dataset="imagefolder:{images}", image_size=8, generations=0,
                            gen0_epochs=1.0, final_epochs=0.0, bench_min_seconds=0.05, bench_min_iterations=5,
                            no_mqtt=True, train_device="cpu")
before = dataclasses.asdict(cfg)
run = host_trainer.evolve(cfg, {str(tmp_path / "runs")!r})
assert dataclasses.asdict(cfg) == before, "the caller's config changed"
print(json.dumps({{"run": str(run), "generation": host_trainer.load(run).generation}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    run = Path(answer["run"])
    assert run.parent == tmp_path / "runs" and answer["generation"] == 0
    assert {p.name for p in (run / "final").iterdir()} == FINAL_FILES
    assert any(json.loads(line)["event"] == "final written" for line in (run / "events.jsonl").read_text().splitlines())
