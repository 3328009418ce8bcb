"""Power meters against fixture trees shaped like real boards, fake jtop/pynvml modules, and the
meter registry. The sampler's tests are in ``test_power_sampler``."""

import ast
import json
import sys
import types
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from edge_evolver.power import AUTO_ORDER, MeterUnavailable, known_meters, resolve_meter
from edge_evolver.power import rapl as rapl_module
from edge_evolver.power.base import pick_total_rails
from edge_evolver.power.ina3221 import Ina3221Meter
from edge_evolver.power.jtop_meter import JtopMeter
from edge_evolver.power.none_meter import NoneMeter
from edge_evolver.power.nvml_meter import NvmlMeter
from edge_evolver.power.rapl import RaplMeter

from .power_support import RAPL_RANGE_UJ, FakeClock, board, copy_board

POWER_PACKAGE = Path(__file__).resolve().parent.parent / "edge_evolver" / "power"
AGX_ORIN_SUM = "sum(VDD_GPU_SOC,VDD_CPU_CV,VIN_SYS_5V0)"


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
