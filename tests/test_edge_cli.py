"""`edge-evolver` through typer's CliRunner and once as a real subprocess."""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_evolver.backends.onnxruntime_backend import usable_cores
from edge_evolver.cli import app as cli
from edge_evolver.measure.benchmark import RESULT_KEYS

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

QUICK = ["--min-iterations", "5", "--min-seconds", "0", "--warmup-s", "0"]


def _runner() -> CliRunner:
    # click < 8.2 mixes stderr into stdout unless told not to; 8.2+ always separates them.
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


@pytest.fixture
def tiny_model(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    path = tmp_path / "tiny.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _error_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_bench_json(tiny_model):
    result = _runner().invoke(cli.app, ["bench", str(tiny_model), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "ok" and data["backend"] == "onnxruntime" and data["threads"] == 1
    assert data["iterations"] >= 5 and data["fps"] > 0
    assert set(RESULT_KEYS) <= set(data)


def test_bench_table_and_env_vars(tiny_model):
    threads = min(2, usable_cores())  # the env var must reach the option; more than the cores is refused
    env = {"EDGE_EVOLVER_MIN_ITERATIONS": "7", "EDGE_EVOLVER_THREADS": str(threads), "EDGE_EVOLVER_JSON": "1"}
    result = _runner().invoke(
        cli.app, ["bench", str(tiny_model), "--min-seconds", "0", "--warmup-s", "0"], env=env
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["iterations"] >= 7 and data["threads"] == threads
    table = _runner().invoke(cli.app, ["bench", str(tiny_model), *QUICK])
    assert table.exit_code == 0
    assert "throughput" in table.stdout and "p99" in table.stdout


def test_bench_profile_table_and_json(tiny_model):
    table = _runner().invoke(cli.app, ["bench", str(tiny_model), "--profile", *QUICK])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith("profile ")]
    assert start and "mean of" in lines[start[0]] and "separate pass after the timed window" in lines[start[0]]
    assert lines[start[0] + 1].split() == ["ms", "share", "op", "name", "first", "ONNX", "node"]
    row = lines[start[0] + 2].split()  # ONNX Runtime calls the unnamed MatMul "MatMul_0"; it is listed by its output
    # >= 0: ONNX Runtime 1.10's trace counts whole microseconds, and a tiny MatMul may take under one
    assert row[1:] == ["100.0%", "MatMul", "MatMul_0", "y"] and float(row[0]) >= 0
    data = json.loads(_runner().invoke(cli.app, ["bench", str(tiny_model), "--profile", "--json", *QUICK]).stdout)
    assert data["profile_runs"] >= 20 and [(e["op"], e["nodes"], e["share"]) for e in data["profile"]] == [
        ("MatMul", ["y"], 1.0)]
    plain = json.loads(_runner().invoke(cli.app, ["bench", str(tiny_model), "--json", *QUICK]).stdout)
    assert not {"profile", "profile_runs", "profile_error"} & set(plain)  # bench profiles when asked to
    assert "first ONNX node" not in _runner().invoke(cli.app, ["bench", str(tiny_model), *QUICK]).stdout


def test_bench_missing_file_is_one_line_exit_2(tmp_path):
    result = _runner().invoke(cli.app, ["bench", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == _error_lines(result.stderr)
    assert len(_error_lines(result.stderr)) == 1
    assert _error_lines(result.stderr)[0].startswith("error: BAD_INPUT: cannot read model file")


def test_bench_invalid_model_still_prints_json(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    result = _runner().invoke(cli.app, ["bench", str(bad), "--json", *QUICK])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["code"] == "INVALID_MODEL"
    assert _error_lines(result.stderr)[0].startswith("error: INVALID_MODEL: ")


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "boards")


def test_info_json_on_a_tx1_tree():
    result = _runner().invoke(cli.app, ["info", "--json", "--root", os.path.join(FIXTURES, "tx1")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["python"] == platform.python_version()
    assert data["board"].startswith("NVIDIA Jetson TX1") and data["l4t"].startswith("32.")
    assert data["jetpack"].startswith("4.")
    assert data["backends"]["onnxruntime"]["available"] is True
    assert data["auto_backend"] == "onnxruntime" and data["cpu_count"] >= 1
    assert data["meters"]["ina3221"]["available"] is True and "VDD_IN" in data["meters"]["ina3221"]["detail"]
    assert data["auto_meter"] in ("jtop", "ina3221")
    human = _runner().invoke(cli.app, ["info"])
    assert human.exit_code == 0 and "onnxruntime: available" in human.stdout and "meter" in human.stdout


def _run(cmd):
    # PIPE + universal_newlines rather than capture_output/text: these tests also run on the
    # board's Python 3.6.
    return subprocess.run(  # noqa: UP022
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,  # noqa: UP021
        timeout=120,
    )


def test_subprocess_bench_json(tiny_model, tmp_path):
    base = [sys.executable, "-m", "edge_evolver", "bench"]
    done = _run(base + [str(tiny_model), "--json", *QUICK])
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1
    assert json.loads(done.stdout)["status"] == "ok"
    # Not a TTY, so the job's summary log line on stderr is JSON.
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [entry["event"] for entry in logs] == ["bench"] and logs[0]["status"] == "ok"
    profiled = _run(base + [str(tiny_model), "--json", "--profile", *QUICK])
    assert profiled.returncode == 0 and len(profiled.stdout.strip().splitlines()) == 1, profiled.stderr
    assert json.loads(profiled.stdout)["profile"][0]["nodes"] == ["y"]
    table = _run(base + [str(tiny_model), "--profile", *QUICK])
    assert table.returncode == 0 and "first ONNX node" in table.stdout and "MatMul_0" in table.stdout
    missing = _run(base + [str(tmp_path / "nope.onnx")])
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().startswith("error: BAD_INPUT: ")
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,expected", [
    (["bench", "--bogus"], "No such option: --bogus"),
    (["bench", "m.onnx", "--threads", "many"], "--threads"),
    (["bench"], "Missing argument"),
])
def test_usage_errors_are_one_line_exit_2(args, expected):
    done = _run([sys.executable, "-m", "edge_evolver"] + args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr


def test_serve_takes_the_log_level_of_the_config_unless_the_option_says_otherwise(tmp_path, monkeypatch):
    from edge_evolver.cli import mqtt_commands
    from edge_evolver.errors import EdgeError, ErrorCode

    levels = []
    monkeypatch.setattr(mqtt_commands, "configure_logging", levels.append)

    def stop_before_serving(config):
        raise EdgeError(ErrorCode.BACKEND_UNAVAILABLE, "stopped by the test")

    monkeypatch.setattr(mqtt_commands, "daemon_facts", stop_before_serving)
    config = tmp_path / "config.toml"
    config.write_text('log_level = "debug"\nstate_dir = "{}"\n'.format(tmp_path / "state"))
    serve = ["serve", "--config", str(config)]
    assert _runner().invoke(cli.app, serve).exit_code == 2 and levels == ["debug"]
    levels.clear()
    assert _runner().invoke(cli.app, ["--log-level", "warning"] + serve).exit_code == 2 and levels == []
    result = _runner().invoke(cli.app, serve, env={"EDGE_EVOLVER_LOG_LEVEL": "error"})
    assert result.exit_code == 2 and levels == []  # the variable is the option too


# typer names the shell to complete for after the nearest shell among the command's parents; under `make test` that
# is make's /bin/sh, which it does not support. A user runs it from their own bash, as these do (two commands: bash
# then stays the parent instead of replacing itself with the command).
IN_BASH = ["bash", "-c", '"$@"; exit $?', "bash"]


def test_version_and_shell_completion():
    from edge_evolver import __version__

    result = _runner().invoke(cli.app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"edge-evolver {__version__}"
    # "bash": older typer (the oldest library set) takes the shell as the option's value; newer ones ignore it
    script = _run(IN_BASH + [sys.executable, "-m", "edge_evolver", "--show-completion", "bash"])
    assert script.returncode == 0 and "_EDGE_EVOLVER_COMPLETE=complete_bash" in script.stdout, script.stderr
