"""`edge-evolver keys`, `pack --signing-key` and the TLS and key options of `serve` (CliRunner, real processes)."""

import os
import stat
import subprocess
import sys

from typer.testing import CliRunner

from edge_evolver.cli.app import app
from edge_evolver.job import decode_job
from edge_evolver.trust.jobs import VerifyPolicy, open_job
from edge_evolver.trust.keys import TrustedKeys, generate_key, load_signing_key, parse_public_key, read_trusted

RUNNER = CliRunner()


def _run(*args, env=None):
    return RUNNER.invoke(app, list(args), env=env)


def _last_line(result):
    return result.stdout.strip().splitlines()[-1]


def _one_error(result):
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    return result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output


def test_board_key_is_made_once_and_shown(tmp_path):
    state = str(tmp_path / "s")
    made = _run("keys", "init", "--state-dir", state)
    assert made.exit_code == 0, made.output
    key = parse_public_key(_last_line(made))
    path = os.path.join(state, "keys", "board.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and load_signing_key(path).public == key
    assert _last_line(_run("keys", "init", "--state-dir", state)) == key.text  # never overwritten
    assert _last_line(_run("keys", "show", "--state-dir", state)) == key.text
    assert _last_line(_run("keys", "show", env={"EDGE_EVOLVER_STATE_DIR": state})) == key.text


def test_trust_untrust_and_list_host_keys(tmp_path):
    state = str(tmp_path / "s")
    first, second = generate_key().public, generate_key().public
    assert "trusted:" in _run("keys", "trust", first.text, "--name", "lab host", "--state-dir", state).stdout
    assert "already" in _run("keys", "trust", first.text, "--state-dir", state).stdout
    _run("keys", "trust", second.text, "--state-dir", state)  # rotation: both at once
    listed = _run("keys", "list", "--state-dir", state).stdout
    assert first.key_id in listed and second.key_id in listed and "lab host" in listed
    assert _run("keys", "untrust", first.key_id[:8], "--state-dir", state).exit_code == 0
    trusted = read_trusted(os.path.join(state, "keys", "trusted-hosts"))
    assert trusted.find(first.key_id) is None and trusted.find(second.key_id) is not None


def test_keys_bad_input_is_one_line(tmp_path):
    state = str(tmp_path / "s")
    (tmp_path / "bad.toml").write_text("bogus = 1\n")
    for args in (["keys", "trust", "ed25519:not-base64!", "--state-dir", state],
                 ["keys", "trust", "ssh-rsa AAAA", "--state-dir", state],
                 ["keys", "untrust", "0123456789abcdef", "--state-dir", state],
                 ["keys", "show", "--state-dir", str(tmp_path / "none")],
                 ["keys", "list", "--config", str(tmp_path / "bad.toml")]):
        assert _one_error(_run(*args)), (args, _run(*args).output)


def test_pack_signs_a_job_the_board_opens(tmp_path):
    host = generate_key()
    host.save(str(tmp_path / "host.key"))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not checked here")
    out = str(tmp_path / "job.bin")
    packed = _run("pack", str(model), "-o", out, "--job-id", "p1", "--signing-key", str(tmp_path / "host.key"),
                  "--device", "tx1-a")
    assert packed.exit_code == 0, packed.output
    with open(out, "rb") as handle:
        payload = handle.read()
    frame, auth = open_job(payload, VerifyPolicy(TrustedKeys([(host.public, "")]), "tx1-a"))
    assert decode_job(frame, 1 << 20).job_id == "p1" and auth.target == {"device": "tx1-a"}
    for args in (["--device", "tx1-a"], ["--signing-key", str(tmp_path / "host.key")],
                 ["--signing-key", str(tmp_path / "host.key"), "--device", "a", "--group", "g"],
                 ["--signing-key", str(tmp_path / "missing.key"), "--device", "a"]):
        assert _one_error(_run("pack", str(model), "-o", out, *args)), args


def test_serve_refuses_unusable_tls_and_key_settings_in_one_line(tmp_path):
    base = [sys.executable, "-m", "edge_evolver", "serve", "--state-dir", str(tmp_path / "s"), "--backend",
            "onnxruntime", "--power", "none"]
    cases = [
        (["--broker", "mqtts://127.0.0.1:1", "--ca-file", str(tmp_path / "missing-ca.pem")], "missing-ca.pem"),
        (["--broker", "mqtts://127.0.0.1:1", "--cert-file", str(tmp_path / "c.pem")], "go together"),
        (["--broker", "mqtt://127.0.0.1:1", "--ca-file", str(tmp_path / "x")], ""),
        (["--broker", "mqtt://127.0.0.1:1", "--trusted-keys", str(tmp_path / "bad-trust")], "bad-trust"),
    ]
    (tmp_path / "bad-trust").write_text("not a key\n")
    for extra, words in cases:
        proc = subprocess.run(base + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,  # noqa: UP021 (3.6)
                              timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and lines and lines[-1].startswith("error: ") and words in lines[-1], \
            (extra, proc.stderr[-800:])
