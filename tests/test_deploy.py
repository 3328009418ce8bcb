"""Deployment files: the systemd unit, the Jetson installer with its config and requirements, the broker.

Offline: only pytest, the standard library and tomllib/tomli. The installer runs with --dry-run (no root side
effects), and for real with --root in a throwaway root, where stand-ins replace systemctl, useradd and pip and
the venv gets this test's dependencies; the broker tests start the real mosquitto on a free loopback port when it is
installed and skip otherwise.
"""

import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

try:
    import tomllib  # novermin - Python 3.11+
except ImportError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-evolver.service"
INSTALL = ROOT / "deploy" / "jetson" / "install.sh"
CONFIG = ROOT / "deploy" / "jetson" / "config.toml"
REQUIREMENTS_PY36 = ROOT / "deploy" / "jetson" / "requirements-py36.txt"
REQUIREMENTS = ROOT / "deploy" / "jetson" / "requirements.txt"
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
ACL_EXAMPLE = ROOT / "deploy" / "mosquitto" / "acl.example"

CONFIG_DEFAULTS = {
    "broker": "mqtt://localhost:1883",
    "device_id": "",
    "group": "",
    "prefix": "edge-evolver",
    "backend": "auto",
    "power": "auto",
    "cache_dir": "/var/cache/edge-evolver/engines",
    "state_dir": "/var/lib/edge-evolver",
    "max_payload_mb": 64,
    "job_timeout_s": 900,
    "max_queue": 64,
    "telemetry_interval_s": 1.0,
    "idle_telemetry_interval_s": 10.0,
    "mqtt_version": "5",
    "username": "",
    "password_file": "",
    "threads": 1,
    "log_level": "info",
    "ca_file": "",
    "cert_file": "",
    "key_file": "",
    "keys_dir": "",
    "trusted_keys": "/etc/edge-evolver/trusted-hosts",
    "allow_unsigned": False,
    "max_job_age_s": 604800.0,
    "clock_skew_s": 300.0,
    "max_results": 5000,
    "max_results_mb": 256.0,
    "cache_max_mb": 2048.0,
    "child_memory_mb": 0.0,
}
PY36_PINS = {
    "numpy": "1.19.5",
    "paho-mqtt": "1.6.1",
    "typer": "0.10.0",
    "click": "8.0.4",
    "structlog": "21.5.0",
    "tomli": "1.2.3",
    "jetson-stats": "4.3.2",
    "pycuda": "2022.1",
}
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
MAX_PACKET = 64 * 1024 * 1024 + 64 * 1024


# --------------------------------------------------------------------------------------------------
# systemd unit
# --------------------------------------------------------------------------------------------------
def parse_unit(text: str) -> Dict[str, Dict[str, List[str]]]:
    """systemd's INI dialect: [Section], Key=Value, '#'/';' comments, keys that may repeat."""
    sections: Dict[str, Dict[str, List[str]]] = {}
    current = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):  # continuation: joined with a space, as systemd does
            logical += line[:-1] + " "
            continue
        line, logical = (logical + line).strip(), ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a Key=Value line inside a section: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> Dict[str, Dict[str, List[str]]]:
    return parse_unit(UNIT.read_text())


def test_unit_has_its_sections_and_single_valued_keys_once(unit):
    assert set(unit) == {"Unit", "Service", "Install"}
    for key in ("Type", "User", "Group", "ExecStart", "Restart", "RestartSec", "KillSignal", "TimeoutStopSec"):
        assert len(unit["Service"].get(key, [])) == 1, key
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_runs_as_a_dedicated_user_never_root(unit):
    service = unit["Service"]
    assert service["User"] == ["edge-evolver"]
    assert service["Group"] == ["edge-evolver"]
    assert "root" not in service["User"] + service["Group"]
    assert "DynamicUser" not in service
    # A group missing from /etc/group (jtop without jetson-stats) fails every start: groups come
    # from the user's membership, set by the installer.
    assert "SupplementaryGroups" not in service


def test_unit_restarts_on_failure_after_the_network_and_jtop(unit):
    service, section = unit["Service"], unit["Unit"]
    assert service["Restart"] == ["on-failure"]
    assert int(service["RestartSec"][0]) > 0
    after = " ".join(section["After"]).split()
    assert "network-online.target" in after and "jtop.service" in after
    assert "network-online.target" in " ".join(section["Wants"]).split()
    # jtop.service may be missing: only ordered after, never required.
    for key in ("Requires", "Wants", "BindsTo", "Requisite"):
        assert "jtop.service" not in " ".join(section.get(key, [])), key


def _installer_default(name: str) -> str:
    """A variable's default as install.sh sets it (`NAME=value` at the start of a line)."""
    found = re.findall(rf"^{name}=(\S+)$", INSTALL.read_text(), re.M)
    assert found, name
    return found[0]


def test_unit_runs_the_installed_command_with_the_installed_config(unit):
    """ExecStart names what install.sh creates: its wrapper under the default prefix, and its config file."""
    (exec_start,) = unit["Service"]["ExecStart"]
    program, *args = shlex.split(exec_start)
    venv = _installer_default("VENV").replace("$PREFIX", _installer_default("PREFIX"))
    assert program == _installer_default("WRAPPER").replace("$VENV", venv)
    config = _installer_default("CONFIG_FILE").replace("$CONFIG_DIR", _installer_default("CONFIG_DIR"))
    assert args == ["serve", "--config", config]
    from typer.testing import CliRunner

    from edge_evolver.cli.app import app

    assert "--config" in CliRunner().invoke(app, ["serve", "--help"]).output  # and the command takes it


def test_unit_passes_the_password_as_a_credential_and_owns_its_directories(unit):
    service = unit["Service"]
    assert service["LoadCredential"] == ["broker-password:/etc/edge-evolver/broker-password"]
    assert service["StateDirectory"] == ["edge-evolver"]
    assert service["CacheDirectory"] == ["edge-evolver"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert int(service["TimeoutStopSec"][0]) > 0
    # The daemon treats exit 2 as a configuration error: restarting cannot fix it.
    assert service["RestartPreventExitStatus"] == ["2"]


def test_unit_hardening_keeps_the_gpu_reachable(unit):
    service = unit["Service"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]  # writable: the state and cache directories only
    assert service["ReadWritePaths"] == ["-/var/lib/edge-evolver -/var/cache/edge-evolver"]
    assert service["ProtectHome"] == ["yes"]
    assert service["PrivateTmp"] == ["yes"]
    # PrivateDevices or a closed device policy would hide /dev/nvhost-*, /dev/nvmap, /dev/nvidia*;
    # ProtectClock implies DeviceAllow=char-rtc on systemd 245-252, which closes the policy too.
    assert service.get("PrivateDevices", ["no"]) == ["no"]
    assert not set(service.get("DevicePolicy", [])) & {"closed", "strict"}
    assert "DeviceAllow" not in service and "ProtectClock" not in service


def test_unit_verifies_with_systemd_analyze(tmp_path):
    analyze = shutil.which("systemd-analyze")
    true = shutil.which("true")
    if analyze is None or true is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart's program exists; everything else is the unit as shipped.
    copy = tmp_path / "edge-evolver.service"
    copy.write_text(UNIT.read_text().replace("/opt/edge-evolver/venv/bin/edge-evolver", true))
    run = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    if run.returncode != 0 and "edge-evolver.service" not in output:
        pytest.skip(f"systemd-analyze cannot verify units here: {output.strip()[:200]}")
    assert run.returncode == 0, output
    assert not re.search(r"Unknown (key|lvalue|section)|Failed to parse|Invalid", output), output


# --------------------------------------------------------------------------------------------------
# Jetson installer
# --------------------------------------------------------------------------------------------------
def _install(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), *args], cwd=str(cwd), capture_output=True, text=True, timeout=120)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _system_state() -> Dict[str, bool]:
    return {
        "config_dir": os.path.exists("/etc/edge-evolver"),
        "unit": os.path.exists("/etc/systemd/system/edge-evolver.service"),
        "state_dir": os.path.exists("/var/lib/edge-evolver"),
        "cache_dir": os.path.exists("/var/cache/edge-evolver"),
        "user": _user_exists("edge-evolver"),
    }


def test_install_script_is_valid_bash():
    run = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert INSTALL.read_text().splitlines()[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in INSTALL.read_text()
    assert os.access(str(INSTALL), os.X_OK), "install.sh must be executable"


def test_install_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    run = subprocess.run([shellcheck, str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def _written_block(output: str, path: str) -> str:
    """The content --dry-run shows for `+ write PATH (...)`: the following lines prefixed '|   '."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"+ write {path} "))
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            break
        block.append(line[4:])
    return "\n".join(block) + "\n"


def test_install_dry_run_changes_nothing_and_explains_clock_locking(tmp_path):
    prefix = tmp_path / "opt" / "edge-evolver"
    before = _system_state()
    run = _install("--dry-run", "--force", "--prefix", str(prefix), "--broker", "mqtt://10.1.2.3:1883",
                   "--device-id", "board-7", "--group", "nano", cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert _system_state() == before, "--dry-run changed the system"
    assert not (tmp_path / "opt").exists(), "--dry-run created the prefix"

    # The steps, printed instead of run.
    assert "--system-site-packages" in output
    assert "--no-build-isolation pycuda" in output
    assert re.search(r"requirements(-py36)?\.txt", output)
    assert f"{prefix}/venv/bin/python\" -I -u -m edge_evolver \"$@\"" in output
    assert f"ExecStart={prefix}/venv/bin/edge-evolver serve --config /etc/edge-evolver/config.toml" in output
    assert f"ln -sfn {prefix}/venv/bin/edge-evolver /usr/local/bin/edge-evolver" in output  # on every PATH
    assert "systemctl daemon-reload" in output and "edge-evolver.service" in output
    assert "edge-evolver info" in output
    if not before["user"]:
        assert "useradd --system" in output
    # The clock-locking advice.
    for text in ("nvpmodel -q", "nvpmodel -m 0", "sudo jetson_clocks", "jetson_clocks --show",
                 "jetson_clocks --store", "jetson_clocks --restore", "idle power", "power mode"):
        assert text in output, text

    if not before["config_dir"]:  # a fresh install renders the config from the template
        config = tomllib.loads(_written_block(output, "/etc/edge-evolver/config.toml"))
        assert set(config) == set(CONFIG_DEFAULTS)
        assert (config["broker"], config["device_id"], config["group"]) == ("mqtt://10.1.2.3:1883", "board-7", "nano")
        assert config["password_file"] in ("", "/etc/edge-evolver/broker-password")


def test_install_dry_run_without_service_skips_systemctl(tmp_path):
    run = _install("--dry-run", "--force", "--no-service", "--prefix", str(tmp_path / "p"), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "systemctl enable" not in run.stdout
    assert "jetson_clocks" in run.stdout


@pytest.mark.parametrize("args", [
    ["--bogus"],
    ["--prefix", "relative/path"],
    ["--broker", "http://host:1883"],
    ["--device-id", "a/b"],
    ["--group", "g+"],
    ["--prefix"],
])
def test_install_rejects_bad_options_with_exit_2(tmp_path, args):
    run = _install("--dry-run", "--force", *args, cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.startswith("error: ")


def test_install_help(tmp_path):
    run = _install("-h", cwd=tmp_path)
    assert run.returncode == 0
    for option in ("--prefix", "--broker", "--device-id", "--group", "--no-service", "--dry-run", "--force"):
        assert option in run.stdout


def test_install_refuses_a_machine_that_is_not_a_jetson_without_force(tmp_path):
    if os.path.exists("/etc/nv_tegra_release"):
        pytest.skip("this is a Jetson")
    run = _install("--dry-run", "--prefix", str(tmp_path / "p"), cwd=tmp_path)
    assert run.returncode == 1
    assert "--force" in run.stderr


# --------------------------------------------------------------------------------------------------
# The installer for real, in a throwaway root
# --------------------------------------------------------------------------------------------------
# Stand-ins for what would change the machine or fetch from the network. Every one logs its arguments.
FAKE_TOOLS = {
    "systemctl": 'case "$1" in --version) echo "systemd 249 (249.11)";; is-active) exit 3;; esac',
    "getent": "exit 2",  # no such user or group: useradd and usermod below are called
    "groupadd": "", "useradd": "", "usermod": "", "apt-get": "", "chown": "",
    # The service user is whoever runs the test: run the command after `--` as it is.
    "runuser": 'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"',
    # Ownership needs root and the service user: the modes and paths stay real.
    "install": 'args=""; while [ $# -gt 0 ]; do case "$1" in -o|-g) shift 2;; *) args="$args \'$1\'"; shift;; esac; '
               'done; eval exec {install} "$args"',
}
# `python3 -m venv` makes a real venv without pip; the venv's python answers `-m pip` without installing (the
# dependencies come from this test's environment through a .pth file) and runs everything else.
FAKE_PYTHON = '''#!{python}
import os, subprocess, sys
args = sys.argv[1:]
if args[:2] != ["-m", "venv"]:
    os.execv({python!r}, [{python!r}] + args)
venv = args[-1]
subprocess.run([{python!r}, "-m", "venv", "--without-pip"] + args[2:], check=True)
bin_dir = os.path.join(venv, "bin")
os.rename(os.path.join(bin_dir, "python"), os.path.join(bin_dir, "python-real"))
with open(os.path.join(bin_dir, "python"), "w") as out:
    out.write('#!/bin/sh\\nif [ "$1 $2" = "-m pip" ]; then echo "fake pip: $*" >> {log}; exit 0; fi\\n'
              'exec "$(dirname "$0")/python-real" "$@"\\n')
os.chmod(os.path.join(bin_dir, "python"), 0o755)
purelib = subprocess.run([os.path.join(bin_dir, "python-real"), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
with open(os.path.join(purelib, "test-dependencies.pth"), "w") as out:
    out.write("\\n".join({deps!r}) + "\\n")
'''


def _fake_tools(directory: Path, log: Path) -> None:
    directory.mkdir()
    for name, body in FAKE_TOOLS.items():
        script = directory / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n' + body.format(install=shutil.which("install"))
                          + "\n")
        script.chmod(0o755)
    deps = [p for p in sys.path if p.endswith("site-packages")]
    python = directory / "python3"
    python.write_text(FAKE_PYTHON.format(python=sys.executable, log=log, deps=deps))
    python.chmod(0o755)


def _clean_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_EVOLVER_", "PYTHON"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Dict[str, Path]:
    """install.sh --root run once: a fake Jetson with systemd running, nothing outside the root touched."""
    base = tmp_path_factory.mktemp("install")
    root, log = base / "root", base / "tools.log"
    for directory in ("etc/systemd/system", "run/systemd/system", "proc/device-tree"):
        (root / directory).mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref\n")
    (root / "proc/device-tree/model").write_text("NVIDIA Jetson Nano Developer Kit\0")
    _fake_tools(base / "bin", log)
    before = (_system_state(), os.path.lexists("/usr/local/bin/edge-evolver"))
    run = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--broker", "mqtt://10.1.2.3:1883",
                          "--device-id", "nano-01"], cwd=str(base), capture_output=True, text=True, timeout=600,
                         env=_clean_env(PATH=f"{base / 'bin'}:{os.environ['PATH']}"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert (_system_state(), os.path.lexists("/usr/local/bin/edge-evolver")) == before, "install.sh left its root"
    return {"root": root, "log": log}


def test_install_puts_the_command_on_path(installed):
    root = installed["root"]
    link, wrapper = root / "usr/local/bin/edge-evolver", root / "opt/edge-evolver/venv/bin/edge-evolver"
    assert link.is_symlink() and os.readlink(str(link)) == str(wrapper)
    assert os.access(str(wrapper), os.X_OK)
    where = subprocess.run([str(wrapper.parent / "python"), "-I", "-c", "import edge_evolver as e; print(e.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd="/", env=_clean_env())
    assert where.stdout.startswith(str(wrapper.parent.parent / "lib")), where.stdout + where.stderr  # the copy
    run = subprocess.run(["edge-evolver", "--help"], capture_output=True, text=True, timeout=120, cwd="/",
                         env=_clean_env(PATH=f"{link.parent}:/usr/bin:/bin"))
    assert run.returncode == 0 and "keys" in run.stdout, run.stdout + run.stderr


def test_install_writes_the_unit_and_starts_it(installed):
    root = installed["root"]
    unit = parse_unit((root / "etc/systemd/system/edge-evolver.service").read_text())
    (exec_start,) = unit["Service"]["ExecStart"]
    assert shlex.split(exec_start) == [str(root / "opt/edge-evolver/venv/bin/edge-evolver"), "serve", "--config",
                                       str(root / "etc/edge-evolver/config.toml")]
    calls = installed["log"].read_text().splitlines()
    assert "systemctl daemon-reload" in calls and "systemctl enable --now edge-evolver.service" in calls
    assert any(call.startswith("useradd --system") for call in calls)


def test_install_writes_a_config_the_daemon_loads(installed):
    root = installed["root"]
    path = root / "etc/edge-evolver/config.toml"
    config = tomllib.loads(path.read_text())
    assert set(config) == set(CONFIG_DEFAULTS)
    assert (config["broker"], config["device_id"]) == ("mqtt://10.1.2.3:1883", "nano-01")
    assert config["trusted_keys"] == str(root / "etc/edge-evolver/trusted-hosts")
    assert config["state_dir"] == str(root / "var/lib/edge-evolver")
    assert (root / "etc/edge-evolver/trusted-hosts").read_text() == ""
    assert (root / "var/lib/edge-evolver/keys/board.key").exists()  # `keys init` ran through the installed command


def test_keys_trust_on_path_writes_the_file_the_service_reads(installed):
    """`sudo edge-evolver keys trust KEY`, as the installer and the docs say: no --config needed."""
    from edge_evolver.daemon.config import build_config
    from edge_evolver.trust.keys import generate_key, read_trusted

    root = installed["root"]
    host = generate_key().public
    env = _clean_env(PATH=f"{root / 'usr/local/bin'}:/usr/bin:/bin",
                     EDGE_EVOLVER_SYSTEM_CONFIG=str(root / "etc/edge-evolver/config.toml"))
    run = subprocess.run(["edge-evolver", "keys", "trust", host.text, "--name", "lab"], capture_output=True,
                         text=True, timeout=120, cwd="/", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    unit = parse_unit((root / "etc/systemd/system/edge-evolver.service").read_text())
    service_config = shlex.split(unit["Service"]["ExecStart"][0])[3]
    served = build_config(service_config, {}).resolved_trusted_keys()
    assert served in run.stdout and host in read_trusted(served)


# --------------------------------------------------------------------------------------------------
# Config and requirements
# --------------------------------------------------------------------------------------------------
def test_example_config_has_exactly_the_daemon_keys():
    config = tomllib.loads(CONFIG.read_text())
    assert config == CONFIG_DEFAULTS
    for key, value in CONFIG_DEFAULTS.items():
        assert type(config[key]) is type(value), key
    # Every key carries a comment right above it.
    lines = CONFIG.read_text().splitlines()
    for key in CONFIG_DEFAULTS:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
        assert lines[index - 1].startswith("#"), f"{key} has no comment"


def test_example_config_loads_in_the_daemon():
    daemon_config = pytest.importorskip("edge_evolver.daemon.config")
    assert set(daemon_config.ServeConfig.__dataclass_fields__) == set(CONFIG_DEFAULTS)
    config = daemon_config.build_config(str(CONFIG), {})
    assert config.state_dir == "/var/lib/edge-evolver"


def _requirements(path: Path) -> Dict[str, str]:
    """name (lower case) -> the requirement line without its comment."""
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~;\s\[]", line, maxsplit=1)[0].lower()
            assert name not in found, f"{name} listed twice in {path.name}"
            found[name] = line
    return found


def test_python36_requirements_pin_the_jetpack46_set():
    found = _requirements(REQUIREMENTS_PY36)
    for name, version in PY36_PINS.items():
        assert found.get(name) == f"{name}=={version}", name
    assert "dataclasses" in found and "typing-extensions" in found
    for line in found.values():
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][0-9A-Za-z.]*", line), f"not an exact pin: {line}"
    assert "tensorrt" not in found  # JetPack's, seen through --system-site-packages


def test_requirements_for_newer_pythons():
    found = _requirements(REQUIREMENTS)
    assert found["paho-mqtt"].replace(" ", "") == "paho-mqtt>=1.6.1,<3"
    assert found["typer"] == "typer>=0.10"
    assert found["click"] == "click>=8.0.4"
    assert found["structlog"] == "structlog>=21.5"
    assert re.fullmatch(r"tomli[^;]*;\s*python_version\s*<\s*[\"']3\.11[\"']", found["tomli"])
    for name in ("numpy", "jetson-stats", "pycuda"):
        assert name in found
    assert "tensorrt" not in found
    assert "cuda-python" in REQUIREMENTS.read_text()  # the JetPack 6 note next to pycuda


# --------------------------------------------------------------------------------------------------
# Mosquitto
# --------------------------------------------------------------------------------------------------
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install mosquitto-clients)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _broker_config(tmp_path: Path, port: int, secured: bool = False) -> Path:
    """The shipped config with the listener on a loopback port and persistence under tmp_path."""
    text = MOSQUITTO_CONF.read_text()
    assert re.search(r"^listener 1883$", text, re.M) and re.search(r"^persistence_location ", text, re.M)
    text = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^persistence_location .*$", f"persistence_location {tmp_path}/", text, flags=re.M)
    text = re.sub(r"^(pid_file|include_dir|log_dest file) .*$", "", text, flags=re.M)
    if secured:
        text = re.sub(r"^allow_anonymous true$", "", text, flags=re.M)
        text = re.sub(r"^#allow_anonymous false$", "allow_anonymous false", text, flags=re.M)
        text = re.sub(r"^#password_file .*$", f"password_file {tmp_path}/passwd", text, flags=re.M)
        text = re.sub(r"^#acl_file .*$", f"acl_file {tmp_path}/acl", text, flags=re.M)
        assert f"acl_file {tmp_path}/acl" in text and not re.search(r"^allow_anonymous true", text, re.M)
    # Run as whoever runs the tests (mosquitto started as root would switch to user "mosquitto",
    # which cannot write to tmp_path).
    text += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
    path = tmp_path / "mosquitto.conf"
    path.write_text(text)
    return path


class Broker:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.process = None

    def start(self) -> "Broker":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60  # a bound for a stuck broker, not a timing
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"mosquitto exited: {self.log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def broker_factory(tmp_path) -> Iterator:
    started: List[Broker] = []

    def make(secured: bool = False) -> Broker:
        port = _free_port()
        broker = Broker(_broker_config(tmp_path, port, secured), port, tmp_path / "mosquitto.log")
        started.append(broker)
        return broker.start()

    yield make
    for broker in started:
        broker.stop()


def _mqtt(tool: str, broker: Broker, *args: str, user: str = "", timeout: float = 90) -> subprocess.CompletedProcess:
    command = [_tool(tool), "-p", str(broker.port), "-h", "127.0.0.1", *args]
    if user:
        command += ["-u", user, "-P", "pw-" + user]
    return subprocess.run(command, capture_output=True, timeout=timeout)


@needs_mosquitto
def test_mosquitto_loads_the_shipped_config(broker_factory):
    broker = broker_factory()
    assert broker.process.poll() is None
    assert broker.stop() == 0
    log = broker.log.read_text()
    assert "running" in log
    assert not re.search(r"^\d+: Error", log, re.M), log


@needs_mosquitto
def test_mosquitto_keeps_a_job_for_an_offline_board_across_a_broker_restart(broker_factory, tmp_path):
    broker = broker_factory()
    topic, client = "edge-evolver/devices/board-1/jobs", "edge-evolver-board-1"
    # The board subscribes with a persistent session, then goes offline (reboot).
    run = _mqtt("mosquitto_sub", broker, "-c", "-i", client, "-q", "1", "-t", topic, "-E")
    assert run.returncode == 0, run.stderr
    model = tmp_path / "model.onnx"
    model.write_bytes(os.urandom(2 * 1024 * 1024))
    run = _mqtt("mosquitto_pub", broker, "-q", "1", "-t", topic, "-f", str(model))
    assert run.returncode == 0, run.stderr
    assert broker.stop() == 0  # saves the queued job to the persistence file
    broker.start()
    run = _mqtt("mosquitto_sub", broker, "-c", "-i", client, "-q", "1", "-t", topic, "-C", "1", "-W", "60", "-N")
    assert run.returncode == 0, run.stderr
    assert run.stdout == model.read_bytes()


@needs_mosquitto
def test_mosquitto_takes_a_64_mib_model_and_refuses_a_larger_packet(broker_factory, tmp_path):
    broker = broker_factory()
    fits = tmp_path / "fits.bin"
    fits.write_bytes(b"\0" * (64 * 1024 * 1024))
    run = _mqtt("mosquitto_pub", broker, "-q", "1", "-t", "edge-evolver/devices/b/jobs", "-f", str(fits))
    assert run.returncode == 0, run.stderr
    too_big = tmp_path / "too_big.bin"
    too_big.write_bytes(b"\0" * (MAX_PACKET + 1))
    run = _mqtt("mosquitto_pub", broker, "-q", "1", "-t", "edge-evolver/devices/b/jobs", "-f", str(too_big))
    assert run.returncode != 0


@needs_mosquitto
def test_mosquitto_acl_example_confines_each_user(broker_factory, tmp_path):
    passwd = _tool("mosquitto_passwd")
    (tmp_path / "passwd").write_text("")
    for user in ("host-trainer", "jetson-nano-01", "jetson-nano-02"):
        subprocess.run([passwd, "-b", str(tmp_path / "passwd"), user, "pw-" + user], check=True, timeout=30)
    shutil.copy(str(ACL_EXAMPLE), str(tmp_path / "acl"))
    broker = broker_factory(secured=True)

    # Anonymous clients are refused.
    assert _mqtt("mosquitto_pub", broker, "-t", "edge-evolver/jobs", "-m", "x").returncode != 0

    # Persistent sessions, so that what each one is sent is queued deterministically.
    board, host = "jetson-nano-01", "host-trainer"
    run = _mqtt("mosquitto_sub", broker, "-c", "-i", "b1", "-q", "1", "-t", "edge-evolver/devices/+/jobs",
                "-t", "$share/nano/edge-evolver/jobs", "-E", user=board)
    assert run.returncode == 0, run.stderr
    run = _mqtt("mosquitto_sub", broker, "-c", "-i", "h", "-q", "1", "-t", "edge-evolver/devices/+/results",
                "-E", user=host)
    assert run.returncode == 0, run.stderr

    def publish(user: str, topic: str, message: str) -> None:
        _mqtt("mosquitto_pub", broker, "-q", "1", "-t", topic, "-m", message, user=user)

    publish(host, "edge-evolver/devices/jetson-nano-02/jobs", "not-yours")  # another board's job
    publish(board, "edge-evolver/devices/jetson-nano-01/jobs", "self-made")  # boards cannot send jobs
    publish(host, "edge-evolver/jobs", "group-job")
    publish(host, "edge-evolver/devices/jetson-nano-01/jobs", "own-job")
    publish(board, "edge-evolver/devices/jetson-nano-02/results", "forged")  # another board's results
    publish(board, "edge-evolver/devices/jetson-nano-01/results", "real")
    publish(board, "edge-evolver/runs/r1/generations", "forged-progress")  # only the host reports runs
    _mqtt("mosquitto_pub", broker, "-q", "1", "-r", "-t", "edge-evolver/runs/r1/generations", "-m", "gen-3",
          user=host)

    run = _mqtt("mosquitto_sub", broker, "-c", "-i", "b1", "-q", "1", "-t", "edge-evolver/devices/+/jobs",
                "-t", "$share/nano/edge-evolver/jobs", "-C", "2", "-W", "60", "-v", user=board)
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.decode().split("\n")[:2]) == [
        "edge-evolver/devices/jetson-nano-01/jobs own-job", "edge-evolver/jobs group-job"]
    run = _mqtt("mosquitto_sub", broker, "-c", "-i", "h", "-q", "1", "-t", "edge-evolver/devices/+/results",
                "-C", "1", "-W", "60", "-v", user=host)
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().strip() == "edge-evolver/devices/jetson-nano-01/results real"
    run = _mqtt("mosquitto_sub", broker, "-q", "1", "-t", "edge-evolver/runs/#", "-C", "1", "-W", "60", "-v",
                user=host)  # the retained progress, as `host-trainer watch` reads it
    assert run.stdout.decode().strip() == "edge-evolver/runs/r1/generations gen-3", run.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
