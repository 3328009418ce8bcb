"""Power meters against fixture trees shaped like real boards, fake jtop/pynvml modules, the
meter registry, and the sampler's energy maths (fake clock, fake meters)."""

import ast
import json
import shutil
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from edge_evolver.power import AUTO_ORDER, MeterUnavailable, PowerSampler, known_meters, resolve_meter
from edge_evolver.power import rapl as rapl_module
from edge_evolver.power import sampler as sampler_module
from edge_evolver.power.base import PowerMeter, pick_total_rails
from edge_evolver.power.ina3221 import Ina3221Meter
from edge_evolver.power.jtop_meter import JtopMeter
from edge_evolver.power.none_meter import NoneMeter
from edge_evolver.power.nvml_meter import NvmlMeter
from edge_evolver.power.rapl import RaplMeter
from edge_evolver.power.sampler import PowerSummary, trapezoid

BOARDS = Path(__file__).resolve().parent / "fixtures" / "boards"
POWER_PACKAGE = Path(__file__).resolve().parent.parent / "edge_evolver" / "power"
AGX_ORIN_SUM = "sum(VDD_GPU_SOC,VDD_CPU_CV,VIN_SYS_5V0)"
RAPL_RANGE_UJ = 262143328850


def board(name: str) -> str:
    return str(BOARDS / name)


def copy_board(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(str(BOARDS / name), str(target))
    return target


@pytest.fixture(autouse=True)
def no_optional_libraries(monkeypatch):
    """Pretend jtop and pynvml are absent unless a test installs a fake (None blocks the import)."""
    monkeypatch.setitem(sys.modules, "jtop", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)


# ---------------------------------------------------------------- ina3221 (sysfs)


@pytest.mark.parametrize(
    "name, rail, watts, driver",
    [
        ("tx1", "VDD_IN", 3.122, "ina3221x"),  # in_power0_input, mW
        ("nano", "POM_5V_IN", 2.875, "ina3221x"),
        ("orin-nano", "VDD_IN", 5.072 * 1.184, "ina3221 "),  # in1_input mV x curr1_input mA
        ("agx-orin", AGX_ORIN_SUM, 19.2 * 0.160 + 19.2 * 0.072 + 4.968 * 0.980, "ina3221 "),
    ],
)
def test_ina3221_picks_the_board_rail(name, rail, watts, driver):
    meter = Ina3221Meter.probe(board(name))
    assert meter.rail == rail
    assert meter.read_watts() == pytest.approx(watts)
    described = meter.describe()
    assert described["meter"] == "ina3221" and described["rail"] == rail
    assert described["driver"].startswith(driver)
    assert all(path.startswith("/sys/bus/i2c/drivers/ina3221") for path in described["source"])
    json.dumps(described)


def test_ina3221_skips_nc_and_shunt_sum_channels():
    meter = Ina3221Meter.probe(board("agx-orin"))
    available = meter.describe()["rails_available"]
    assert available == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    # VDDQ_VDD2_1V8AO is fed by VIN_SYS_5V0: summing both would count the DDR twice.
    assert "VDDQ_VDD2_1V8AO" not in meter.rail


def test_ina3221_reads_the_file_each_time(tmp_path):
    root = copy_board(tmp_path, "orin-nano")
    meter = Ina3221Meter.probe(str(root))
    first = meter.read_watts()
    (root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/curr1_input").write_text("2000\n")
    assert meter.read_watts() == pytest.approx(5.072 * 2.0) != first


def test_ina3221_iio_without_power_node_multiplies_volts_and_amps(tmp_path):
    root = copy_board(tmp_path, "nano")
    device = root / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    (device / "in_power0_input").unlink()
    (device / "in_voltage0_input").write_text("5100\n")
    (device / "in_current0_input").write_text("600\n")
    assert Ina3221Meter.probe(str(root)).read_watts() == pytest.approx(3.06)


def test_ina3221_read_error_after_probe_raises(tmp_path):
    root = copy_board(tmp_path, "tx1")
    meter = Ina3221Meter.probe(str(root))
    (root / "sys/bus/i2c/drivers/ina3221x/1-0040/iio:device0/in_power0_input").unlink()
    with pytest.raises(OSError):
        meter.read_watts()


def test_ina3221_unavailable_off_a_jetson():
    with pytest.raises(MeterUnavailable, match="no INA3221"):
        Ina3221Meter.probe(board("x86-rapl"))


def test_total_rail_rule():
    assert pick_total_rails(["POM_5V_IN", "POM_5V_GPU"]) == (["POM_5V_IN"], "POM_5V_IN")
    assert pick_total_rails(["GPU", "CPU", "SOC"]) == (["GPU", "CPU", "SOC"], "sum(GPU,CPU,SOC)")
    assert pick_total_rails(["VDD_CPU"]) == (["VDD_CPU"], "VDD_CPU")


# ---------------------------------------------------------------- jtop (fake module)


class FakeJtopException(Exception):
    pass


def install_fake_jtop(monkeypatch, power: Any, start_error: Optional[Exception] = None) -> Dict[str, Any]:
    """A ``jtop`` module whose ``jtop().power`` returns ``state["power"]``; ``state`` records calls."""
    state: Dict[str, Any] = {"power": power, "closed": 0, "interval": None}

    class FakeJtop:
        def __init__(self, interval: float = 1.0) -> None:
            state["interval"] = interval

        def start(self) -> None:
            if start_error is not None:
                raise start_error

        def ok(self) -> bool:
            return True

        def close(self) -> None:
            state["closed"] += 1

        @property
        def power(self) -> Any:
            return state["power"]

    module = types.ModuleType("jtop")
    module.jtop = FakeJtop  # type: ignore[attr-defined]
    module.JtopException = FakeJtopException  # type: ignore[attr-defined]
    module.__version__ = "4.3.2"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "jtop", module)
    return state


def test_jtop_3x_tuple_shape(monkeypatch):
    rails = {"POM_5V_GPU": {"cur": 40, "avg": 38}, "POM_5V_CPU": {"cur": 700, "avg": 690}}
    install_fake_jtop(monkeypatch, ({"cur": 2875, "avg": 2800}, rails))
    meter = JtopMeter.probe()
    assert meter.read_watts() == pytest.approx(2.875)
    assert meter.describe()["shape"] == "3.x tuple"


def test_jtop_4x_dict_with_named_total(monkeypatch):
    power = {
        "rail": {"VDD_CPU_GPU_CV": {"volt": 5064, "curr": 344, "power": 1742, "online": True, "avg": 1700}},
        "tot": {"volt": 5072, "curr": 1184, "power": 6005, "online": True, "avg": 5900, "name": "VDD_IN"},
    }
    state = install_fake_jtop(monkeypatch, power)
    meter = JtopMeter.probe()
    assert (meter.rail, meter.read_watts()) == ("VDD_IN", pytest.approx(6.005))
    state["power"]["tot"]["power"] = 7000  # the service updated
    assert meter.read_watts() == pytest.approx(7.0)
    meter.close()
    meter.close()
    assert state["closed"] == 1


def test_jtop_4x_dict_without_input_rail_sums_like_ina3221(monkeypatch):
    def rail(mw: int, online: bool = True) -> Dict[str, Any]:
        return {"volt": 0, "curr": 0, "power": mw, "online": online, "avg": mw}

    rails = {
        "VDD_GPU_SOC": rail(3072),
        "VDD_CPU_CV": rail(1382),
        "VIN_SYS_5V0": rail(4868),
        "VDDQ_VDD2_1V8AO": rail(397),
        "VDD_OFF": rail(999, online=False),
    }
    # jtop's own total double counts VDDQ_VDD2_1V8AO; we do not use it.
    install_fake_jtop(monkeypatch, {"rail": rails, "tot": {"power": 9719, "avg": 9719}})
    meter = JtopMeter.probe()
    assert meter.rail == AGX_ORIN_SUM
    assert meter.read_watts() == pytest.approx((3072 + 1382 + 4868) / 1000.0)


def test_jtop_service_not_active_is_unavailable_with_one_line_reason(monkeypatch):
    error = FakeJtopException("The jtop.service is not active. Please run:\nsudo systemctl restart jtop.service")
    install_fake_jtop(monkeypatch, {}, start_error=error)
    with pytest.raises(MeterUnavailable) as info:
        JtopMeter.probe()
    assert "jtop.service is not active" in info.value.reason and "\n" not in info.value.reason


def test_jtop_without_power_figures_is_unavailable_and_closed(monkeypatch):
    state = install_fake_jtop(monkeypatch, {})
    with pytest.raises(MeterUnavailable, match="no board power"):
        JtopMeter.probe()
    assert state["closed"] == 1


def test_jtop_not_installed():
    with pytest.raises(MeterUnavailable, match="not installed"):
        JtopMeter.probe()


# ---------------------------------------------------------------- nvml (fake pynvml)


def install_fake_pynvml(monkeypatch, energy_supported=True, init_error=None, power_error=None) -> Dict[str, Any]:
    state = {"shutdown": 0}

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's own spelling
        pass

    def raise_or(error: Optional[Exception], value: Any) -> Any:
        if error is not None:
            raise error
        return value

    module = types.ModuleType("pynvml")
    module.__dict__.update(
        NVMLError=NVMLError,
        NVMLError_NotSupported=NVMLError_NotSupported,
        nvmlInit=lambda: raise_or(init_error, None),
        nvmlShutdown=lambda: state.__setitem__("shutdown", state["shutdown"] + 1),
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: ("handle", index),
        nvmlDeviceGetName=lambda handle: b"Tesla V100-SXM2-16GB",  # bytes, as older pynvml
        nvmlDeviceGetPowerUsage=lambda handle: raise_or(power_error, 123456),  # mW
        nvmlDeviceGetTotalEnergyConsumption=lambda handle: raise_or(
            None if energy_supported else NVMLError_NotSupported("Not Supported"), 5_000_000  # mJ
        ),
    )
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return state


def test_nvml_power_and_energy_counter(monkeypatch):
    state = install_fake_pynvml(monkeypatch)
    meter = NvmlMeter.probe()
    assert meter.rail == "Tesla V100-SXM2-16GB"
    assert meter.read_watts() == pytest.approx(123.456)
    assert meter.read_energy_j() == pytest.approx(5000.0)
    assert meter.describe()["energy_counter"] is True
    meter.close()
    meter.close()
    assert state["shutdown"] == 1


def test_nvml_without_energy_counter_falls_back_to_samples(monkeypatch):
    install_fake_pynvml(monkeypatch, energy_supported=False)
    meter = NvmlMeter.probe()
    assert meter.read_energy_j() is None and meter.describe()["energy_counter"] is False


def test_nvml_init_failure_is_unavailable(monkeypatch):
    install_fake_pynvml(monkeypatch, init_error=RuntimeError("NVML Shared Library Not Found"))
    with pytest.raises(MeterUnavailable, match="NVML did not initialise.*Shared Library Not Found"):
        NvmlMeter.probe()


def test_nvml_without_power_sensor_is_unavailable_and_shut_down(monkeypatch):
    state = install_fake_pynvml(monkeypatch, power_error=RuntimeError("Not Supported"))
    with pytest.raises(MeterUnavailable, match="cannot read GPU 0 power"):
        NvmlMeter.probe()
    assert state["shutdown"] == 1


def test_nvml_not_installed():
    with pytest.raises(MeterUnavailable, match="nvidia-ml-py"):
        NvmlMeter.probe()


# ---------------------------------------------------------------- rapl (powercap)


def test_rapl_reads_the_package_counter_only():
    meter = RaplMeter.probe(board("x86-rapl"))
    assert meter.rail == "package-0"
    assert meter.read_energy_j() == pytest.approx(123.456789)
    assert meter.describe()["source"] == ["/sys/class/powercap/intel-rapl:0/energy_uj"]


def test_rapl_counter_wraparound(tmp_path):
    root = copy_board(tmp_path, "x86-rapl")
    counter = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    meter = RaplMeter.probe(str(root))
    before = meter.read_energy_j()
    counter.write_text("1000\n")  # passed max_energy_range_uj and started again
    after = meter.read_energy_j()
    assert after - before == pytest.approx((RAPL_RANGE_UJ - 123456789 + 1000) / 1e6)


def test_rapl_watts_from_counter_deltas(tmp_path):
    root = copy_board(tmp_path, "x86-rapl")
    meter = RaplMeter.probe(str(root))
    clock = FakeClock(step=0.5)
    meter.clock = clock
    meter._prime()
    (root / "sys/class/powercap/intel-rapl:0/energy_uj").write_text(str(123456789 + 2_000_000))
    assert meter.read_watts() == pytest.approx(4.0)  # 2 J in 0.5 s


def test_rapl_permission_denied_reason(monkeypatch):
    real_read_int = rapl_module.read_int

    def denied(path: str) -> int:
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return real_read_int(path)

    monkeypatch.setattr(rapl_module, "read_int", denied)
    with pytest.raises(MeterUnavailable) as info:
        RaplMeter.probe(board("x86-rapl"))
    assert "/sys/class/powercap/intel-rapl:0/energy_uj is readable only by root" in info.value.reason


def test_rapl_unavailable_on_a_jetson():
    with pytest.raises(MeterUnavailable, match="no RAPL"):
        RaplMeter.probe(board("nano"))


# ---------------------------------------------------------------- registry


def test_registry_names():
    assert known_meters() == sorted(["jtop", "ina3221", "nvml", "rapl", "none"])
    assert AUTO_ORDER == ["jtop", "ina3221", "nvml", "rapl"]


def test_auto_takes_jtop_first_when_it_works(monkeypatch):
    install_fake_jtop(monkeypatch, ({"cur": 2875, "avg": 2800}, {}))
    meter, why = resolve_meter("auto", board("nano"))
    assert meter.name == "jtop" and why.startswith("auto chose jtop")


def test_auto_skips_what_fails_and_says_why(monkeypatch):
    install_fake_jtop(monkeypatch, {}, start_error=FakeJtopException("The jtop.service is not active."))
    meter, why = resolve_meter("auto", board("orin-nano"))
    assert (meter.name, meter.rail) == ("ina3221", "VDD_IN")
    assert "jtop: jtop did not start" in why and "not active" in why


def test_auto_on_an_x86_box_uses_rapl():
    meter, why = resolve_meter("auto", board("x86-rapl"))
    assert meter.name == "rapl"
    assert "ina3221: no INA3221" in why and "nvml: pynvml is not installed" in why


def test_auto_with_nothing_gives_the_none_meter_with_every_reason(tmp_path):
    meter, why = resolve_meter("auto", str(tmp_path))
    assert isinstance(meter, NoneMeter) and meter.read_watts() is None
    assert why.startswith("no power meter found (jtop: ")
    assert all(f"{name}: " in why for name in AUTO_ORDER)
    assert meter.describe() == {"meter": "none", "rail": None, "reason": why}


def test_auto_survives_a_buggy_probe(monkeypatch):
    def broken(cls, root="/"):
        raise KeyError("surprise")

    monkeypatch.setattr(Ina3221Meter, "probe", classmethod(broken))
    meter, why = resolve_meter("auto", board("orin-nano"))
    assert meter.name == "none" and "ina3221: probe failed unexpectedly: KeyError" in why


def test_none_by_name():
    meter, why = resolve_meter("none")
    assert meter.name == "none" and meter.read_energy_j() is None and "none" in why


def test_named_meter_that_fails_raises():
    with pytest.raises(MeterUnavailable, match="power meter 'rapl' is unavailable: no RAPL"):
        resolve_meter("rapl", board("orin-nano"))


def test_named_meter_that_works():
    meter, why = resolve_meter("ina3221", board("tx1"))
    assert meter.rail == "VDD_IN" and "requested" in why


def test_unknown_meter_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: auto, ina3221, jtop, none, nvml, rapl"):
        resolve_meter("tegrastats")


def test_optional_libraries_are_imported_inside_functions_only():
    offenders = []
    for path in sorted(POWER_PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:  # module level, where an import would run on package import
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("jtop", "pynvml")]
    assert not offenders


# ---------------------------------------------------------------- sampler


class FakeClock:
    """Each call advances time by ``step`` and returns the new time; ``t`` is "now"."""

    def __init__(self, step: float = 0.01) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class FakeMeter(PowerMeter):
    """``read_watts`` returns (or raises) what ``read()`` gives; the counter pops ``energy``."""

    name, rail = "fake", "FAKE_IN"

    def __init__(self, read: Callable[[], Any], energy: Optional[List[float]] = None) -> None:
        self.read, self.energy = read, energy

    @classmethod
    def probe(cls, root: str = "/") -> "FakeMeter":
        raise NotImplementedError

    def read_watts(self) -> Optional[float]:
        value = self.read()
        if isinstance(value, Exception):
            raise value
        return value

    def read_energy_j(self) -> Optional[float]:
        return None if self.energy is None else self.energy.pop(0)


def script(*values: Any) -> Callable[[], Any]:
    """Readings in order, the last one repeated."""
    queue = list(values)
    return lambda: queue.pop(0) if len(queue) > 1 else queue[0]


def window(meter: PowerMeter, step: float = 1.0) -> PowerSummary:
    """A window with only the start and stop samples, ``step`` fake seconds long."""
    sampler = PowerSampler(meter, interval_s=10.0, clock=FakeClock(step))
    sampler.start()
    return sampler.stop()


def test_trapezoid_helper():
    assert trapezoid([0.0, 1.0, 3.0], [2.0, 4.0, 4.0]) == (pytest.approx(11.0 / 3.0), 3.0)
    assert trapezoid([0.0], [5.0]) == (5.0, 0.0)
    assert trapezoid([], []) == (None, 0.0)


def test_sampler_integrates_a_known_power_curve():
    clock = FakeClock(step=0.01)
    sampler = PowerSampler(FakeMeter(lambda: 2.0 + 3.0 * clock.t), interval_s=0.001, clock=clock)
    sampler.start()
    time.sleep(0.03)
    summary = sampler.stop()
    span = summary.seconds
    assert summary.method == "trapezoid" and summary.samples >= 2
    assert summary.sample_t[0] == 0.0 and summary.sample_t[-1] == pytest.approx(span)
    # P(t) = 2 + 3t from the start time t0: E = 2T + 3(t0 T + T^2 / 2), exact for a linear curve.
    t0 = clock.t - span
    expected = 2.0 * span + 3.0 * (t0 * span + span * span / 2.0)
    assert summary.energy_j == pytest.approx(expected)
    assert summary.mean_w == pytest.approx(expected / span)
    assert sampler.latest_w == summary.samples_w[-1]


def test_sampler_short_real_window_still_has_two_samples():
    sampler = PowerSampler(FakeMeter(script(5.0)), interval_s=0.05)
    sampler.start()
    summary = sampler.stop()
    assert summary.samples >= 2 and summary.mean_w == 5.0 and summary.reason is None
    assert summary.energy_j == pytest.approx(5.0 * summary.seconds)


def test_sampler_prefers_the_hardware_counter():
    summary = window(FakeMeter(script(7.0), energy=[100.0, 112.5]), step=2.5)
    assert (summary.method, summary.energy_j, summary.seconds) == ("counter", 12.5, 2.5)
    assert summary.mean_w == pytest.approx(5.0) and summary.samples_w == [7.0, 7.0]


def test_sampler_counter_across_a_rapl_wrap(tmp_path):
    root = copy_board(tmp_path, "x86-rapl")
    sampler = PowerSampler(RaplMeter.probe(str(root)), interval_s=10.0, clock=FakeClock(1.0))
    sampler.start()
    (root / "sys/class/powercap/intel-rapl:0/energy_uj").write_text("1000\n")
    summary = sampler.stop()
    assert summary.method == "counter"
    assert summary.energy_j == pytest.approx((RAPL_RANGE_UJ - 123456789 + 1000) / 1e6)


def test_sampler_counter_reset_falls_back_to_samples():
    summary = window(FakeMeter(script(4.0), energy=[100.0, 50.0]))
    assert summary.method == "trapezoid" and summary.energy_j == pytest.approx(4.0)


def test_sampler_counts_failed_reads_and_uses_the_rest():
    summary = window(FakeMeter(script(OSError("EIO"), 6.0)))
    assert (summary.read_errors, summary.samples, summary.mean_w) == (1, 1, 6.0)
    assert summary.energy_j == pytest.approx(6.0)


def test_sampler_all_reads_failed_gives_none_with_reason():
    summary = window(FakeMeter(script(OSError("EIO"))))
    assert summary.mean_w is None and summary.energy_j is None and summary.method == "none"
    assert summary.reason == "all 2 power reads failed (fake): OSError: EIO"


def test_no_meter_never_reports_zero():
    meter = NoneMeter("no power meter found (jtop: not installed)")
    sampler = PowerSampler(meter, interval_s=0.01)
    sampler.start()
    time.sleep(0.02)
    out = sampler.stop().to_dict()
    assert out["mean_w"] is None and out["energy_j"] is None and out["samples"] == 0
    assert out["reason"] == meter.reason and out["method"] == "none" and out["read_errors"] == 0
    assert out["meter"] == "none" and out["rail"] is None
    assert json.loads(json.dumps(out)) == out


def test_sampler_stops_promptly_and_can_run_again():
    sampler = PowerSampler(FakeMeter(script(3.0)), interval_s=5.0)
    for _ in range(2):
        sampler.start()
        began = time.monotonic()
        summary = sampler.stop()
        assert time.monotonic() - began < 1.0 and summary.samples == 2


def test_sampler_misuse():
    with pytest.raises(RuntimeError):
        PowerSampler(FakeMeter(script(1.0))).stop()
    with pytest.raises(ValueError):
        PowerSampler(FakeMeter(script(1.0)), interval_s=0)


def test_summary_fields():
    assert set(window(FakeMeter(script(1.0))).to_dict()) == {
        "meter", "rail", "mean_w", "energy_j", "seconds", "samples", "method", "reason",
        "samples_w", "sample_t", "read_errors",
    }  # fmt: skip


def test_a_hung_read_does_not_block_stop(monkeypatch):
    monkeypatch.setattr(sampler_module, "JOIN_TIMEOUT_S", 0.05)
    release = threading.Event()

    def read() -> float:
        if threading.current_thread() is not threading.main_thread():
            release.wait(2.0)  # a jtop service that stopped answering
        return 1.0

    sampler = PowerSampler(FakeMeter(read), interval_s=0.001)
    sampler.start()
    time.sleep(0.02)
    began = time.monotonic()
    assert sampler.stop().samples == 2 and time.monotonic() - began < 1.0
    release.set()  # the abandoned thread finishes its read; it must not leak into the next window
    sampler.start()
    time.sleep(0.02)
    assert all(t >= 0 for t in sampler.stop().sample_t)
