"""Board facts read from fixture trees shaped like a TX1, a Nano, an Orin Nano, an AGX Orin and
an x86 box: model, L4T/JetPack, nvpmodel mode, jetson_clocks state and temperatures."""

import json
import subprocess
from pathlib import Path
from typing import Any, List

import pytest

from edge_evolver import devicefacts
from edge_evolver.devicefacts import (
    board_model,
    clocks_locked,
    collect_facts,
    cpu_count,
    jetpack_for_l4t,
    l4t_release,
    power_mode,
    temperatures,
)

from .power_support import board, copy_board

FACT_KEYS = {"board", "l4t", "jetpack", "power_mode", "clocks_locked", "temperatures", "cpu_count", "machine", "python"}


def lock_clocks(root: Path, gpu: bool = True) -> None:
    """What jetson_clocks does: every CPU's and the GPU's minimum frequency raised to the maximum."""
    for max_path in root.glob("sys/devices/system/cpu/cpu*/cpufreq/scaling_max_freq"):
        (max_path.parent / "scaling_min_freq").write_text(max_path.read_text())
    if gpu:
        for max_path in root.glob("sys/devices/**/devfreq/*/max_freq"):
            (max_path.parent / "min_freq").write_text(max_path.read_text())


class FakeRun:
    """Stands in for subprocess.run: returns ``stdout``/``returncode`` or raises ``error``."""

    def __init__(self, stdout: str = "", returncode: int = 0, error: Any = None) -> None:
        self.stdout, self.returncode, self.error = stdout, returncode, error
        self.calls: List[Any] = []

    def __call__(self, args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return subprocess.CompletedProcess(args, self.returncode, stdout=self.stdout, stderr="")


# ---------------------------------------------------------------- model and releases


@pytest.mark.parametrize(
    "name, model, l4t, jetpack",
    [
        ("tx1", "NVIDIA Jetson TX1 Developer Kit", "32.6.1", "4.6"),
        ("nano", "NVIDIA Jetson Nano Developer Kit", "32.7.1", "4.6.1"),
        ("orin-nano", "NVIDIA Jetson Orin Nano Developer Kit", "35.4.1", "5.1.2"),
        ("agx-orin", "NVIDIA Jetson AGX Orin Developer Kit", "36.4.3", "6.2"),
        ("x86-rapl", None, None, None),
    ],
)
def test_model_and_release(name, model, l4t, jetpack):
    assert board_model(board(name)) == model  # the trailing NUL is gone
    assert l4t_release(board(name)) == l4t
    assert jetpack_for_l4t(l4t) == jetpack


def test_jetpack_table_edges():
    assert jetpack_for_l4t("32.5") == "4.5"  # two-part releases mean ".0"
    assert jetpack_for_l4t("99.1.0") is None  # unknown: None, not a guess
    assert jetpack_for_l4t(None) is None
    assert all(key.count(".") == 2 for key in devicefacts.JETPACK_FOR_L4T)


# ---------------------------------------------------------------- nvpmodel


def test_power_mode_from_nvpmodel_query():
    run = FakeRun("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n")
    assert power_mode(board("nano"), run=run) == {"id": 0, "name": "MAXN"}
    args, kwargs = run.calls[0]
    assert args == ["nvpmodel", "-q"] and kwargs["timeout"] > 0


def test_power_mode_name_only_output_takes_the_id_from_the_conf():
    assert power_mode(board("orin-nano"), run=FakeRun("NV Power Mode: 7W\n")) == {"id": 1, "name": "7W"}


@pytest.mark.parametrize(
    "run",
    [
        FakeRun(error=FileNotFoundError(2, "No such file or directory", "nvpmodel")),
        FakeRun(error=subprocess.TimeoutExpired(["nvpmodel", "-q"], 5)),
        FakeRun("", returncode=255),
    ],
)
def test_power_mode_falls_back_to_status_and_conf(run):
    assert power_mode(board("nano"), run=run) == {"id": 1, "name": "5W"}  # pmode:0001 fmode:quiet


def test_power_mode_under_a_root_reads_files_without_running_anything():
    assert power_mode(board("agx-orin")) == {"id": 3, "name": "MODE_50W"}
    assert power_mode(board("orin-nano")) == {"id": 0, "name": "15W"}


def test_power_mode_absent():
    assert power_mode(board("tx1")) is None  # the TX1 has no nvpmodel
    assert power_mode(board("x86-rapl"), run=FakeRun(error=FileNotFoundError())) is None


# ---------------------------------------------------------------- jetson_clocks


@pytest.mark.parametrize("name", ["tx1", "nano", "orin-nano", "agx-orin", "x86-rapl"])
def test_clocks_not_locked_by_default(name):
    assert clocks_locked(board(name)) is False


@pytest.mark.parametrize("name", ["tx1", "nano", "orin-nano", "agx-orin"])
def test_clocks_locked_after_jetson_clocks(tmp_path, name):
    root = copy_board(tmp_path, name)
    lock_clocks(root)
    assert clocks_locked(str(root)) is True


def test_clocks_unlocked_gpu_is_not_locked(tmp_path):
    root = copy_board(tmp_path, "nano")
    lock_clocks(root, gpu=False)
    assert clocks_locked(str(root)) is False


def test_offline_cpus_do_not_count(tmp_path):
    root = copy_board(tmp_path, "agx-orin")
    lock_clocks(root)
    cpu3 = root / "sys/devices/system/cpu/cpu3"
    assert (cpu3 / "online").read_text().strip() == "0"
    (cpu3 / "cpufreq/scaling_min_freq").write_text("115200\n")  # stale values of an offline core
    assert clocks_locked(str(root)) is True


def test_clocks_unknown_without_cpufreq(tmp_path):
    assert clocks_locked(str(tmp_path)) is None


# ---------------------------------------------------------------- temperatures and the rest


def test_temperatures_skip_bogus_and_unreadable_zones():
    temps = temperatures(board("agx-orin"))
    assert temps["cpu-thermal"] == pytest.approx(51.187)
    assert not any(name.startswith("cv") for name in temps)  # -256 C: the DLA zones are off
    assert "tboard-thermal" not in temps  # no readable temp
    assert temperatures(board("nano"))["PMIC-Die"] == 100.0


def test_temperatures_keep_duplicate_zone_types_apart(tmp_path):
    for index, millidegrees in enumerate(("41000", "43500", "-40000", "151000")):
        zone = tmp_path / "sys/class/thermal" / f"thermal_zone{index}"
        zone.mkdir(parents=True)
        (zone / "type").write_text("soc-thermal\n")
        (zone / "temp").write_text(millidegrees + "\n")
    assert temperatures(str(tmp_path)) == {"soc-thermal": 41.0, "soc-thermal@thermal_zone1": 43.5}


def test_cpu_count_from_present(tmp_path):
    present = tmp_path / "sys/devices/system/cpu/present"
    present.parent.mkdir(parents=True)
    present.write_text("0-3,5\n")
    assert cpu_count(str(tmp_path)) == 5
    assert cpu_count(board("orin-nano")) == 6
    assert cpu_count(str(tmp_path / "nothing")) is None


def test_collect_facts_on_an_orin_nano():
    facts = collect_facts(board("orin-nano"))
    assert set(facts) == FACT_KEYS
    assert facts["board"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert (facts["l4t"], facts["jetpack"]) == ("35.4.1", "5.1.2")
    assert facts["power_mode"] == {"id": 0, "name": "15W"}
    assert facts["clocks_locked"] is False and facts["cpu_count"] == 6
    assert facts["temperatures"]["tj-therm"] == pytest.approx(47.031)
    json.dumps(facts)


def test_collect_facts_on_nothing(tmp_path):
    facts = collect_facts(str(tmp_path))
    assert set(facts) == FACT_KEYS
    assert facts["board"] is None and facts["clocks_locked"] is None and facts["temperatures"] == {}
    assert facts["machine"] and facts["python"]


def test_collect_facts_never_raises(monkeypatch):
    def broken(root: str = "/") -> None:
        raise RuntimeError("surprise")

    monkeypatch.setattr(devicefacts, "temperatures", broken)
    assert collect_facts(board("nano"))["temperatures"] == {}
