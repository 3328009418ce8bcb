"""`host-trainer evolve` end to end: tiny runs through the CLI as real subprocesses, resume after
SIGKILL, and every bad input (one line, exit 2, nothing written)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from host_trainer import cli
from host_trainer.cli import app
from host_trainer.config import EvolveConfig
from host_trainer.loop import checkpoint as ckpt
from host_trainer.method.restriction import restrict_tensor

TINY = ["--model", "mlp", "--dataset", "digits", "--epochs", "1", "--gen0-epochs", "3", "--final-epochs", "0",
        "--env-factor", "0.7", "--max-accuracy-drop", "100", "--bench-min-seconds", "0.1",
        "--bench-min-iterations", "20"]
# Two runs repeat each other bit for bit only under magnitude allocation: device allocation follows the board's
# measured (noisy) per-layer times, so two runs that measure separately may cut differently (docs/method.md, Seeds).
REPRODUCIBLE = [*TINY, "--allocation", "magnitude"]
# What must be identical between an uninterrupted and a resumed run (timings are not).
DETERMINISTIC = ("generation", "parent", "attempt", "seed", "alpha", "synapses", "clusters", "params", "macs",
                 "accuracy", "precision", "recall", "val_accuracy", "model_sha256", "accepted", "reject_reason")
REQUIRED = ("generation", "synapses", "clusters", "params", "macs", "accuracy", "precision", "recall", "alpha",
            "fps", "latency_ms_p50", "latency_ms_p99", "onnx_path", "model_sha256", "accepted")


def _representable(t, number_format: str) -> bool:
    """Restricting `t` again changes nothing: it holds only values of the format."""
    return bool(torch.equal(restrict_tensor(t, number_format), t))


def _evolve(args, cwd, **kw):
    cmd = [sys.executable, "-m", "host_trainer.cli", "evolve", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)


def _run_dir(parent: Path) -> Path:
    (run,) = [p for p in parent.iterdir() if p.is_dir()]
    return run


def _rows(run: Path):
    return [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]


def _essential(rows):
    return [{k: r.get(k) for k in DETERMINISTIC} for r in rows]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 3-generation run, shared by several tests."""
    parent = tmp_path_factory.mktemp("ref")
    proc = _evolve([*REPRODUCIBLE, "--generations", "3", "--run-dir", str(parent)], cwd=parent, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return _run_dir(parent), proc


def test_tiny_run_writes_a_complete_run_directory(reference_run):
    run, proc = reference_run
    rows = _rows(run)
    accepted = [r for r in rows if r["accepted"]]
    assert [r["generation"] for r in accepted] == [0, 1, 2, 3]
    for row in accepted:
        assert all(k in row for k in REQUIRED)
        # Measured over real MQTT by the embedded broker's local daemon (the default without --broker).
        assert "mosquitto_sub -h 127.0.0.1 -p" in proc.stdout and "embedded broker: mqtt://127.0.0.1:" in proc.stdout
        assert row["fps"] > 0 and row["device_id"] == "local" and row["device_backend"] == "onnxruntime"
        assert row["device_status"] == "ok" and row["engine_build_s"] is not None and "power_reason" in row
        assert row["agreement_max_abs_error"] < 0.05 and row["agreement_top1"] >= 0.99
        folder = run / f"gen-{row['generation']:03d}"
        data = (run / row["onnx_path"]).read_bytes()
        onnx.checker.check_model(onnx.load_from_string(data))
        assert row["onnx_parity_ok"] and row["onnx_bytes"] == len(data)
        loaded = ckpt.read_checkpoint(folder)
        assert loaded.meta["generation"] == row["generation"] and loaded.meta["seed"] == row["seed"]
        assert all(_representable(p, "fp16") for p in loaded.model.state_dict().values() if p.is_floating_point())
    assert accepted[-1]["synapses"] < accepted[0]["synapses"]
    assert accepted[-1]["params"] < accepted[0]["params"]
    assert json.loads((run / "config.json").read_text())["model"] == "mlp"
    assert "synapses" in proc.stdout and "acc %" in proc.stdout  # the per-generation table
    assert all(r["schema"] == 2 for r in rows)
    # Signed end to end with run-local keys: every kept result verifies against the board key the run copied.
    verified = CliRunner().invoke(app, ["keys", "verify", str(run)])
    assert verified.exit_code == 0 and "results verified" in verified.output, verified.output
    assert all("signature" in json.loads(p.read_text()) for p in (run / "results").glob("*.json"))


def test_events_go_to_the_run_directory_and_as_json_to_stderr(reference_run):
    """Off a TTY: the table on stdout, every event as a JSON line on stderr and in events.jsonl."""
    run, proc = reference_run
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names.count("generation") == len(_rows(run)) and "run started" in names and "job_sent" in names
    assert all({"event", "level", "timestamp"} <= set(e) for e in events)
    stderr = [json.loads(line) for line in proc.stderr.strip().splitlines() if line.startswith("{")]
    assert [e["event"] for e in stderr] == names  # the same events, none left out at --log-level info
    assert not any(line.startswith("{") for line in proc.stdout.splitlines())  # stdout: notes and the table
    assert proc.stdout.strip().splitlines()[-1] == f"done: 4 generations recorded in {run}"


def test_every_epoch_is_one_event_off_a_tty_and_config_json_repeats_the_run(tmp_path, monkeypatch):
    """Under nohup or CI (stderr a pipe), every epoch of every training is one JSON event on stderr and in
    events.jsonl, so generation 0 is never silent for longer than an epoch; the run's config.json, given back
    as --config, resolves to the run's configuration."""
    proc = _evolve([*TINY, "--generations", "1", "--no-mqtt", "--run-dir", str(tmp_path / "runs")], cwd=tmp_path,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = _run_dir(tmp_path / "runs")
    shown = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    logged = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in logged if e["event"] == "epoch"]
    assert epochs == [e for e in shown if e["event"] == "epoch"]
    gen0 = [e for e in epochs if e["training"] == "gen0"]
    assert [(e["generation"], e["epoch"], e["epochs"]) for e in gen0] == [(0, 1, 3), (0, 2, 3), (0, 3, 3)]
    assert all(e[k] >= 0 for e in epochs for k in ("loss", "val_accuracy", "seconds"))
    assert all(e["val_accuracy"] <= 1 and e["level"] == "info" for e in epochs)
    names = [e["event"] for e in logged]
    assert names.index("epoch") < names.index("generation")  # during generation 0, not after it
    offspring = [e for e in epochs if e["training"] == "offspring"]
    assert offspring and all((e["generation"], e["attempt"], e["offspring"]) == (1, 0, 0) for e in offspring)
    assert 0 < offspring[-1]["epoch"] <= 1  # the recovery: a part of --epochs 1
    seen = {}
    monkeypatch.setattr(cli, "_run_evolve", lambda task, env_factor, given, *_: seen.update(
        cfg=cli.new_config(task, env_factor, given)))
    result = CliRunner().invoke(app, ["evolve", "--config", str(run / "config.json")])
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == EvolveConfig.from_dict(json.loads((run / "config.json").read_text()))


def test_quiet_prints_only_the_final_line(tmp_path):
    proc = _evolve([*TINY, "--generations", "1", "--no-mqtt", "--quiet", "--run-dir", str(tmp_path)], cwd=tmp_path,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = _run_dir(tmp_path)
    assert proc.stdout.strip().splitlines() == [f"done: 2 generations recorded in {run}"]
    assert not any('"level": "info"' in line for line in proc.stderr.splitlines())  # warnings and errors only
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["generation"] for e in events if e["event"] == "generation"] == [0, 1]  # the log is complete


def test_same_seed_gives_identical_offspring_and_metrics(reference_run, tmp_path):
    run, _ = reference_run
    proc = _evolve([*REPRODUCIBLE, "--generations", "3", "--run-dir", str(tmp_path)], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert _essential(_rows(_run_dir(tmp_path))) == _essential(_rows(run))


def test_resume_after_sigkill_matches_uninterrupted_run(reference_run, tmp_path):
    run_ref, _ = reference_run
    cmd = [sys.executable, "-m", "host_trainer.cli", "evolve", *REPRODUCIBLE, "--generations", "3", "--run-dir",
           str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill as soon as generation 1 has landed: generation 2 is in progress
        runs = [p for p in tmp_path.iterdir() if p.is_dir()]
        if runs and (runs[0] / "generations.jsonl").exists() and any(r["generation"] == 1 for r in _rows(runs[0])):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = _run_dir(tmp_path)
    assert max(r["generation"] for r in _rows(run)) < 3
    resumed = _evolve(["--resume", str(run)], cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert _essential(_rows(run)) == _essential(_rows(run_ref))
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("gen-")) == [f"gen-{g:03d}" for g in range(4)]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_sigterm_stops_the_run_and_its_embedded_broker_and_daemon(tmp_path):
    """systemd, a scheduler or `timeout` stop with SIGTERM: one error line, exit 143, nothing left running."""
    cmd = [sys.executable, "-m", "host_trainer.cli", "evolve", *TINY, "--generations", "5", "--run-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, pids = time.time() + 120, None
    while time.time() < deadline and pids is None:  # the embedded broker and daemon are up
        found = list(tmp_path.glob("*/embedded/pids.json"))
        pids = json.loads(found[0].read_text()) if found else None
        time.sleep(0.1)
    assert pids, "the embedded fleet did not start"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM")
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()


def test_resume_with_a_damaged_checkpoint_is_one_line(reference_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(reference_run[0], run)
    (run / "gen-003" / "weights.npz").write_bytes(b"not an npz")
    result = CliRunner().invoke(app, ["evolve", "--resume", str(run)])
    assert result.exit_code == 2
    assert "cannot read checkpoint" in result.output and "gen-003" in result.output


def _factory(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return f"{path}:make"


BAD_INPUTS = {
    "unknown model": (["--model", "no-such-net"], "unknown model"),
    "unknown dataset": (["--dataset", "no-such-data"], "unknown dataset"),
    "unreadable factory": (["--model", "/nonexistent/model.py:make"], "not found"),
    "factory returns no module": (["--model", "FACTORY_NOT_MODULE"], "not a torch.nn.Module"),
    "factory raises": (["--model", "FACTORY_BROKEN"], "failed"),
    "empty image folder": (["--dataset", "imagefolder:EMPTY"], "image"),
    "alpha not a number": (["--env-factor", "abc"], "--env-factor"),
    "alpha out of range": (["--env-factor", "1.5"], "--env-factor"),
    "resume of a non-run": (["--resume", "EMPTY"], "not a run directory"),
    "no host key": (["--broker", "mqtt://127.0.0.1:1", "--device", "b1", "--keys-dir", "EMPTY"], "no host key"),
    "tls key without cert": (["--broker", "mqtts://127.0.0.1:1", "--device", "b1", "--insecure", "--key-file", "x"],
                             "--cert-file and --key-file go together"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    args, expected = BAD_INPUTS[case]
    empty = tmp_path / "empty"
    (empty / "class_a").mkdir(parents=True)
    subs = {"FACTORY_NOT_MODULE": _factory(tmp_path, "returns_int", "def make():\n    return 42\n"),
            "FACTORY_BROKEN": _factory(tmp_path, "raises", "def make():\n    raise RuntimeError('boom')\n"),
            "imagefolder:EMPTY": f"imagefolder:{empty}", "EMPTY": str(empty)}
    args = [subs.get(a, a) for a in args]
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["evolve", "--run-dir", str(runs), "--model", "mlp", "--dataset", "digits", *args])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert not runs.exists()


def test_bad_input_as_subprocess(tmp_path):
    proc = _evolve(["--model", "nope", "--run-dir", str(tmp_path / "runs")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown model")
    assert not (tmp_path / "runs").exists()


def test_env_vars_set_options(tmp_path):
    env = {"HOST_TRAINER_MODEL": "no-such-from-env"}
    result = CliRunner().invoke(app, ["evolve", "--run-dir", str(tmp_path)], env=env)
    assert result.exit_code == 2 and "no-such-from-env" in result.output


def test_reinit_and_bf16_run(tmp_path):
    args = [*TINY, "--generations", "1", "--init", "reinit", "--precision", "bf16", "--run-dir", str(tmp_path)]
    proc = _evolve(args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = _run_dir(tmp_path)
    loaded = ckpt.read_checkpoint(run / "gen-001")
    assert all(_representable(p, "bf16") for p in loaded.model.state_dict().values() if p.is_floating_point())
    assert np.isfinite(_rows(run)[-1]["accuracy"])
    assert torch.count_nonzero(next(iter(loaded.masks.values()))) > 0


@pytest.mark.parametrize("args,expected", [
    (["evolve", "--bogus"], "No such option: --bogus"),
    (["evolve", "--epochs", "abc"], "--epochs"),
    (["report"], "Missing argument"),
])
def test_usage_errors_are_one_line_exit_2(args, expected, tmp_path):
    done = subprocess.run([sys.executable, "-m", "host_trainer.cli", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []
