"""The Jetson's on-module INA3221 power monitor, read straight from sysfs.

Two kernel drivers expose it:

* JetPack 4 (L4T 32, e.g. TX1, Nano, Xavier): NVIDIA's iio driver ``ina3221x``,
  ``/sys/bus/i2c/drivers/ina3221x/<bus-addr>/iio:device<N>/`` with ``rail_name_<c>`` and
  ``in_power<c>_input`` (mW), ``in_current<c>_input`` (mA), ``in_voltage<c>_input`` (mV),
  channels numbered from 0.
* JetPack 5+ (L4T 34+, Orin): the mainline hwmon driver ``ina3221``,
  ``/sys/bus/i2c/drivers/ina3221/<bus-addr>/hwmon/hwmon<N>/`` with ``in<c>_label``,
  ``in<c>_input`` (mV) and ``curr<c>_input`` (mA), channels numbered from 1. ``in7_label`` is
  "sum of shunt voltages" (a virtual channel) and unused channels are labelled "NC".

Reads are plain open/read of small integers each time (sysfs regenerates the value on every
read); the paths are resolved once at probe.
"""

from typing import Any, Dict, List, NamedTuple, Optional

from .base import MeterUnavailable, PowerMeter, exception_text, pick_total_rails
from .sysfs import natural_key, read_int, read_text, shown, sorted_glob

IIO_GLOBS = ("/sys/bus/i2c/drivers/ina3221x/*/iio:device*", "/sys/bus/i2c/drivers/ina3221x/*/iio_device")
HWMON_GLOB = "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"


# One rail: either a power file in mW (iio driver), or a voltage (mV) and a current (mA) file.
class Channel(NamedTuple):
    label: str
    power_path: Optional[str]  # mW; iio driver only
    volt_path: str  # mV ("" when power_path is set)
    curr_path: str  # mA ("" when power_path is set)


def _exists(path: str) -> bool:
    try:
        read_text(path)
    except OSError:
        return False
    return True


def _usable_label(label: str) -> bool:
    # "NC" = not connected; "sum of shunt voltages" is the chip's summing channel, not a rail.
    return bool(label) and label.upper() != "NC" and not label.lower().startswith("sum of")


def _iio_channels(device: str) -> List[Channel]:
    channels = []
    for name_path in sorted_glob(device, "rail_name_*"):
        index = name_path.rsplit("_", 1)[-1]
        label = read_text(name_path)
        if not _usable_label(label):
            continue
        power = f"{device}/in_power{index}_input"
        volt, curr = f"{device}/in_voltage{index}_input", f"{device}/in_current{index}_input"
        if _exists(power):
            channels.append(Channel(label, power, "", ""))
        elif _exists(volt) and _exists(curr):
            channels.append(Channel(label, None, volt, curr))
    return channels


def _hwmon_channels(device: str) -> List[Channel]:
    channels = []
    for label_path in sorted_glob(device, "in*_label"):
        index = label_path.rsplit("/", 1)[-1][len("in") : -len("_label")]
        label = read_text(label_path)
        volt, curr = f"{device}/in{index}_input", f"{device}/curr{index}_input"
        # A voltage without a current channel (the shunt sum) cannot give watts either.
        if _usable_label(label) and _exists(volt) and _exists(curr):
            channels.append(Channel(label, None, volt, curr))
    return channels


def find_channels(root: str = "/") -> Dict[str, Any]:
    """{"driver": ..., "channels": [Channel, ...]} for the first driver that has labelled rails."""
    iio_devices = sorted({d for pattern in IIO_GLOBS for d in sorted_glob(root, pattern)}, key=natural_key)
    hwmon_devices = sorted_glob(root, HWMON_GLOB)
    for driver, reader, devices in (
        ("ina3221x (iio, JetPack 4)", _iio_channels, iio_devices),
        ("ina3221 (hwmon, JetPack 5+)", _hwmon_channels, hwmon_devices),
    ):
        channels = [channel for device in devices for channel in reader(device)]
        if channels:
            return {"driver": driver, "channels": channels}
    if iio_devices or hwmon_devices:
        raise MeterUnavailable("an INA3221 is present but exposes no labelled rail with readings")
    raise MeterUnavailable(
        "no INA3221 under /sys/bus/i2c/drivers/ina3221x or /sys/bus/i2c/drivers/ina3221 (not a Jetson?)"
    )


def channel_watts(channel: Channel) -> float:
    if channel.power_path is not None:
        return read_int(channel.power_path) / 1000.0
    return read_int(channel.volt_path) * read_int(channel.curr_path) / 1e6


class Ina3221Meter(PowerMeter):
    name = "ina3221"

    def __init__(self, root: str, driver: str, selected: List[Channel], available: List[str]) -> None:
        self.root = root
        self.driver = driver
        self.channels = selected
        self.available = available
        self.rail = pick_total_rails([channel.label for channel in selected])[1]

    @classmethod
    def probe(cls, root: str = "/") -> "Ina3221Meter":
        try:
            found = find_channels(root)
        except OSError as exc:
            raise MeterUnavailable(f"cannot list INA3221 rails: {exception_text(exc)}") from exc
        channels: List[Channel] = found["channels"]
        labels = [channel.label for channel in channels]
        wanted, _ = pick_total_rails(labels)
        selected = [channel for channel in channels if channel.label in wanted]
        meter = cls(root, found["driver"], selected, labels)
        try:
            meter.read_watts()
        except (OSError, ValueError) as exc:
            raise MeterUnavailable(f"INA3221 rail {meter.rail} is not readable: {exception_text(exc)}") from exc
        return meter

    def read_watts(self) -> Optional[float]:
        return sum(channel_watts(channel) for channel in self.channels)

    def _details(self) -> Dict[str, Any]:
        sources: List[str] = []
        for channel in self.channels:
            paths = [channel.power_path] if channel.power_path else [channel.volt_path, channel.curr_path]
            sources.extend(shown(self.root, path) for path in paths if path)
        unit = "mW from in_power" if self.channels[0].power_path else "mV x mA"
        return {"source": sources, "unit": f"W ({unit})", "driver": self.driver, "rails_available": self.available}
