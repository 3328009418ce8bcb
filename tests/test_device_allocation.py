"""The closed loop with device-aware allocation: profiles arrive from the board, are kept in the run
directory, and decide how many clusters each layer keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--model", "mlp", "--dataset", "digits", "--epochs", "1", "--gen0-epochs", "3", "--env-factor", "0.7",
        "--max-accuracy-drop", "100", "--bench-min-seconds", "0.1", "--bench-min-iterations", "20", "--quiet"]


def _evolve(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "host_trainer", "evolve", *args]
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=600)


def _run(parent: Path) -> tuple[Path, list[dict]]:
    (run,) = [p for p in parent.iterdir() if p.is_dir()]
    return run, [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]


def _widths(run: Path, generation: int) -> dict:
    return json.loads((run / f"gen-{generation:03d}" / "checkpoint.json").read_text())["architecture"]["widths"]


@pytest.mark.skipif(not Path("/usr/sbin/mosquitto").exists(), reason="needs Debian's mosquitto (make broker)")
def test_profiles_from_the_embedded_board_are_kept_and_change_the_allocation(tmp_path):
    proc = _evolve([*TINY, "--generations", "2", "--run-dir", str(tmp_path / "device")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run, rows = _run(tmp_path / "device")
    (stored,) = (run / "latency").glob("*.json")
    latency = json.loads(stored.read_text())
    measured = {r["model_sha256"] for r in rows if r.get("fps")}
    assert {o["model_sha256"] for o in latency["observations"]} == measured
    assert all(o["layers"]["fc1"]["ms"] > 0 for o in latency["observations"])
    assert all(r["slowest_layer"] in ("fc1", "fc2", "fc3") and 0 < r["slowest_layer_share"] <= 1 for r in rows)
    offspring = [r for r in rows if r["generation"] > 0 and not r.get("final_tune")]
    assert offspring and all(r["allocation"] == "device" and r["alignment"] >= 1 for r in offspring)
    proc = _evolve([*TINY, "--generations", "1", "--no-mqtt", "--allocation", "magnitude",
                    "--run-dir", str(tmp_path / "magnitude")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain, plain_rows = _run(tmp_path / "magnitude")
    assert plain_rows[1]["allocation"] == "magnitude"
    assert _widths(run, 0) == _widths(plain, 0)  # the same generation 0 ...
    assert _widths(run, 1) != _widths(plain, 1)  # ... cut differently once the board's profile decides


def test_a_bad_latency_model_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model.json"
    bad.write_text("{not json")
    proc = _evolve([*TINY, "--generations", "1", "--no-mqtt", "--latency-model", str(bad),
                    "--run-dir", str(tmp_path / "runs")], tmp_path)
    assert proc.returncode == 2
    assert "--latency-model" in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
