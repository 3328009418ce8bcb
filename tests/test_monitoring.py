"""The Prometheus exporter configs in deploy/monitoring/, against the real exporter (Debian's
prometheus-mqtt-exporter, i.e. mqtt2prometheus) and a real Mosquitto on loopback."""

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from edge_evolver.protocol import dumps

from .mqtt_support import Broker, Collector, free_port, wait_port

EXPORTER = shutil.which("prometheus-mqtt-exporter")
CONFIGS = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
SAMPLES = {
    "mqtt-exporter-telemetry.yaml": ("edge-evolver/devices/tx1-01/telemetry", "tx1-01",
                                     {"fps": 412.5, "latency_ms_p50": 2.4, "power_w": 5.1, "queue": 1,
                                      "iterations": 900, "activity": "benchmarking", "job_id": "j1"},
                                     {"edge_evolver_live_fps": 412.5, "edge_evolver_power_watts": 5.1}),
    "mqtt-exporter-results.yaml": ("edge-evolver/devices/nano-2/results", "nano-2",
                                   {"job_id": "j2", "status": "ok", "fps": 880.0, "latency_ms_p50": 1.1,
                                    "latency_ms_p99": 1.9, "power_w_mean": 4.2, "energy_mj_per_inference": 4.77,
                                    "engine_build_s": 31.5},
                                   {"edge_evolver_result_fps": 880.0, "edge_evolver_result_energy_mj": 4.77}),
    "mqtt-exporter-runs.yaml": ("edge-evolver/runs/run-7/generations", "run-7",
                                {"generation": 5, "synapses": 12345, "params": 20000, "accuracy": 0.91,
                                 "alpha_c": 0.8, "fps": 990.0},
                                {"edge_evolver_run_generation": 5, "edge_evolver_run_accuracy": 0.91}),
}


@pytest.mark.skipif(EXPORTER is None, reason="prometheus-mqtt-exporter is not installed (make test installs it)")
@pytest.mark.parametrize("config", sorted(SAMPLES))
def test_exporter_config_turns_topics_into_metrics(config, tmp_path):
    topic, sensor, payload, expected = SAMPLES[config]
    broker = Broker(str(tmp_path / "broker")).start()
    port = free_port()
    text = (CONFIGS / config).read_text().replace("tcp://localhost:1883", f"tcp://127.0.0.1:{broker.port}")
    (tmp_path / config).write_text(text)
    # Retained, and published before the exporter starts: it gets the message with its subscription, whenever that
    # lands (no race with its start on a loaded machine).
    publisher = Collector(broker.url, [])
    publisher.conn.publish(topic, dumps(payload), qos=1, retain=True).wait_for_publish()
    publisher.close()
    exporter = subprocess.Popen([EXPORTER, "-config", str(tmp_path / config), "-listen-address", "127.0.0.1",
                                 "-listen-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60)
        metrics = ""
        deadline = time.monotonic() + 60  # a bound for a stuck exporter, not a timing
        while time.monotonic() < deadline and not all(name in metrics for name in expected):
            time.sleep(0.2)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for name, value in expected.items():
            line = next(x for x in metrics.splitlines() if x.startswith(name + "{"))
            assert f'sensor="{sensor}"' in line and float(line.split()[1]) == pytest.approx(value), line
    finally:
        exporter.kill()
        exporter.wait(5)
        broker.stop()


def test_every_exported_field_exists_in_the_protocol():
    """The exporter maps JSON field names; they must be fields the daemon and host really publish."""
    from edge_evolver.daemon.payloads import result_payload, telemetry_payload

    published = {
        "mqtt-exporter-telemetry.yaml": set(telemetry_payload("d", {}, 0, None, {})),
        "mqtt-exporter-results.yaml": set(result_payload("d", "j", {"status": "ok"}, {}, {})),
        # generation rows (README, "What you get") carry these, plus fps from the device
        "mqtt-exporter-runs.yaml": {"generation", "synapses", "params", "accuracy", "alpha_c", "fps"},
    }
    for config, fields in published.items():
        text = (CONFIGS / config).read_text()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("mqtt_name:")]
        assert names and set(names) <= fields, (config, set(names) - fields)
