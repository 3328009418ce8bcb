"""One configuration on an installed board: without --config, `edge-evolver keys …` and `serve` both read the
installed service's config (/etc/edge-evolver/config.toml; EDGE_EVOLVER_SYSTEM_CONFIG moves it for tests)."""

import os

import pytest
from typer.testing import CliRunner

from edge_evolver.cli import keys as keys_cli
from edge_evolver.cli import mqtt_commands
from edge_evolver.cli.app import app
from edge_evolver.daemon import config as daemon_config
from edge_evolver.daemon.config import SYSTEM_CONFIG, default_config_file
from edge_evolver.trust.keys import generate_key, read_trusted

RUNNER = CliRunner()


def _one_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def board(tmp_path):
    """An installed board's config under tmp_path, and the environment that makes it the default."""
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "config.toml"
    config.write_text(f'device_id = "nano-01"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'trusted_keys = "{etc / "trusted-hosts"}"\n')
    return {"config": config, "trusted": etc / "trusted-hosts", "env": {"EDGE_EVOLVER_SYSTEM_CONFIG": str(config)}}


def test_default_is_the_installed_config_when_there_is_one(tmp_path):
    present, absent = tmp_path / "config.toml", tmp_path / "absent.toml"
    present.write_text("")
    assert SYSTEM_CONFIG == "/etc/edge-evolver/config.toml"
    assert default_config_file(None, {"EDGE_EVOLVER_SYSTEM_CONFIG": str(present)}) == str(present)
    assert default_config_file(None, {"EDGE_EVOLVER_SYSTEM_CONFIG": str(absent)}) is None  # a plain machine
    assert default_config_file("mine.toml", {"EDGE_EVOLVER_SYSTEM_CONFIG": str(present)}) == "mine.toml"
    assert default_config_file("", {"EDGE_EVOLVER_SYSTEM_CONFIG": str(present)}) == ""  # --config '': none


def test_default_names_a_config_this_user_may_not_even_see(monkeypatch):
    """/etc/edge-evolver is 0750 root:edge-evolver: a plain user's stat fails, and the file must still count."""
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(daemon_config.os, "stat", denied)
    assert default_config_file(None, {}) == SYSTEM_CONFIG


def test_keys_trust_and_serve_use_the_installed_config(board, monkeypatch):
    host = generate_key().public
    trusted = RUNNER.invoke(app, ["keys", "trust", host.text], env=board["env"])
    assert trusted.exit_code == 0, trusted.output
    assert str(board["trusted"]) in trusted.output and host in read_trusted(str(board["trusted"]))

    seen = {}

    class Daemon:  # stands in for EdgeDaemon: records what `serve` would run with
        def __init__(self, config, *args):
            seen["config"], seen["args"] = config, args
            self.gate = None

        def stop(self, *args):
            pass

        def run(self):
            return 0

    monkeypatch.setattr("edge_evolver.daemon.service.EdgeDaemon", Daemon)
    monkeypatch.setattr(mqtt_commands, "daemon_facts", lambda config: {"facts": {}, "meter": None})
    monkeypatch.setattr(mqtt_commands.signal, "signal", lambda *args: None)
    served = RUNNER.invoke(app, ["serve"], env=board["env"])
    assert served.exit_code == 0, served.output
    assert seen["config"].device_id == "nano-01"
    assert seen["config"].resolved_trusted_keys() == str(board["trusted"])
    assert seen["args"][-1] is mqtt_commands._gauges  # telemetry's GPU load and memory (tests/test_board_gauges.py)


def test_serve_reports_the_installed_config_it_read(board):
    board["config"].write_text("bogus = 1\n")
    assert str(board["config"]) in _one_error(RUNNER.invoke(app, ["serve"], env=board["env"]))
    # --config '' opts out: the built-in defaults, which reach the broker check instead of the file.
    assert "bogus" not in RUNNER.invoke(app, ["serve", "--config", "", "--broker", "http://x"], env=board["env"]).output


def test_keys_trust_without_permission_says_sudo_in_one_line(board, monkeypatch):
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("edge_evolver.trust.keys.add_trusted", denied)
    line = _one_error(RUNNER.invoke(app, ["keys", "trust", generate_key().public.text], env=board["env"]))
    assert "sudo" in line and str(board["trusted"]) in line


def test_keys_with_an_unreadable_config_says_sudo_in_one_line(board, monkeypatch):
    real_open = open

    def guarded(path, *args, **kwargs):
        if os.fspath(path) == str(board["config"]):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(keys_cli, "open", guarded, raising=False)
    line = _one_error(RUNNER.invoke(app, ["keys", "list"], env=board["env"]))
    assert "sudo" in line and str(board["config"]) in line


def test_the_keys_commands_still_take_their_own_config(board, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(f'trusted_keys = "{tmp_path / "elsewhere"}"\n')
    key = generate_key().public
    result = RUNNER.invoke(app, ["keys", "trust", key.text, "--config", str(other)], env=board["env"])
    assert result.exit_code == 0, result.output
    assert key in read_trusted(str(tmp_path / "elsewhere")) and not board["trusted"].exists()
