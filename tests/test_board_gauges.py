"""Telemetry carries temperatures, GPU load and memory, and `edge-evolver monitor` shows them; the retained
status carries the board's job limit."""

import pytest

from edge_evolver import devicefacts
from edge_evolver.cli.monitor import MonitorState, render_table, row_cells, row_json, row_line
from edge_evolver.daemon.payloads import telemetry_payload
from edge_evolver.protocol import Topics, dumps

MEMINFO = "MemTotal:        4051032 kB\nMemFree:          512000 kB\nMemAvailable:    2229452 kB\n"


def _nano(tmp_path, load: str = "376\n"):
    """A Nano's GPU devfreq node with its device's load file (tenths of a percent), and /proc/meminfo."""
    node = tmp_path / "sys/devices/gpu.0/devfreq/57000000.gpu"
    node.mkdir(parents=True)
    (node / "min_freq").write_text("76800000\n")
    (node / "max_freq").write_text("921600000\n")
    (tmp_path / "sys/devices/gpu.0/load").write_text(load)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(MEMINFO)
    return str(tmp_path)


def test_gauges_read_gpu_load_and_memory(tmp_path):
    gauges = devicefacts.gauges(_nano(tmp_path))
    assert gauges == {"gpu_load_pct": 37.6, "memory_used_mb": pytest.approx((4051032 - 2229452) / 1024, abs=0.1),
                      "memory_total_mb": pytest.approx(4051032 / 1024, abs=0.1)}


def test_gauges_unknown_off_a_jetson(tmp_path):
    assert devicefacts.gauges(str(tmp_path)) == {"gpu_load_pct": None, "memory_used_mb": None,
                                                 "memory_total_mb": None}
    assert devicefacts.gpu_load(_nano(tmp_path / "junk", load="busy\n")) is None


def test_telemetry_always_has_the_gauge_fields():
    idle = telemetry_payload("nano-1", {"activity": "idle"}, 0, None, {"CPU-therm": 40.5})
    assert (idle["gpu_load_pct"], idle["memory_used_mb"], idle["memory_total_mb"]) == (None, None, None)
    full = telemetry_payload("nano-1", {"activity": "idle"}, 0, None, {}, {"gpu_load_pct": 37.6,
                                                                          "memory_used_mb": 1779.0,
                                                                          "memory_total_mb": 3956.1})
    assert (full["gpu_load_pct"], full["memory_used_mb"], full["memory_total_mb"]) == (37.6, 1779.0, 3956.1)


def _row(telemetry):
    state = MonitorState(Topics())
    state.apply("edge-evolver/devices/nano-1/status", dumps({"state": "online", "backend": "tensorrt"}))
    state.apply("edge-evolver/devices/nano-1/telemetry", dumps(telemetry))
    return state.snapshot()[0]


def test_monitor_shows_temperature_gpu_load_and_memory():
    row = _row({"activity": "benchmarking", "power_w": 5.1, "gpu_load_pct": 37.6, "memory_used_mb": 1779.0,
                "memory_total_mb": 3956.1,
                # PMIC-Die is a constant 100 C on a Nano: not the board's hottest part.
                "temperatures": {"CPU-therm": 41.5, "GPU-therm": 43.0, "PMIC-Die": 100.0}})
    table = render_table([row])
    header = table.splitlines()[0]
    assert "temp C" in header and "gpu load" in header and "memory" in header
    cells = row_cells(row)
    assert cells[7:10] == ["43.0", "38%", "1779/3956 MiB"]
    assert "100.0" not in table
    assert 'temp_C=43.0 gpu_load=38% memory="1779/3956 MiB"' in row_line(row)
    data = row_json(row)
    assert data["gpu_load_pct"] == 37.6 and data["memory_used_mb"] == 1779.0 and data["temperatures"]["GPU-therm"] == 43


def test_monitor_shows_a_dash_for_what_telemetry_lacks():
    row = _row({"activity": "idle", "temperatures": {}, "gpu_load_pct": "junk", "memory_used_mb": None})
    assert row_cells(row)[7:10] == ["-", "-", "-"]
    assert row_cells(_row({"activity": "idle", "temperatures": [1, 2]}))[7:10] == ["-", "-", "-"]  # never a crash


def test_status_carries_the_board_job_limit():
    pytest.importorskip("onnxruntime")
    from edge_evolver.cli.mqtt_commands import daemon_facts
    from edge_evolver.daemon.config import build_config

    config = build_config(None, {"job_timeout_s": 1234.0, "backend": "onnxruntime", "power": "none",
                                 "device_id": "nano-1"})
    assert daemon_facts(config)["facts"]["job_timeout_s"] == 1234.0
