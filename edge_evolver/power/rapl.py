"""Intel/AMD RAPL package energy via the Linux powercap interface (x86 development boxes).

``/sys/class/powercap/intel-rapl:<N>/`` holds ``name`` ("package-0"), ``energy_uj`` (a µJ
counter) and ``max_energy_range_uj`` (where that counter wraps back to 0). Since the 2020
Platypus side channel (CVE-2020-8694) kernels make ``energy_uj`` readable by root only, so a
non-root daemon gets "unavailable" with that reason rather than an error.

RAPL has no instantaneous power register: ``read_watts`` is the energy delta since the
previous read divided by the elapsed time.
"""

import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .base import MeterUnavailable, PowerMeter, exception_text
from .sysfs import read_int, read_text, shown, sorted_glob

# Top-level zones only: intel-rapl:0:0 ("core", "uncore", "dram") are parts of the package.
ZONE_GLOB = "/sys/class/powercap/intel-rapl:[0-9]*"


class _Zone:
    """One package counter, unwrapped: ``wraps`` counts how often it passed max_energy_range_uj."""

    def __init__(self, name: str, energy_path: str, range_uj: int) -> None:
        self.name = name
        self.energy_path = energy_path
        self.range_uj = range_uj
        self.last_raw: Optional[int] = None
        self.wraps = 0

    def unwrapped_uj(self) -> int:
        raw = read_int(self.energy_path)
        # A smaller value than last time means the counter wrapped (RAPL never counts down).
        # Correct as long as reads are less than one wrap period apart (~45 min at 100 W).
        if self.last_raw is not None and raw < self.last_raw:
            self.wraps += 1
        self.last_raw = raw
        return raw + self.wraps * self.range_uj


def _package_zones(root: str) -> List[_Zone]:
    zones = []
    for zone_dir in sorted_glob(root, ZONE_GLOB):
        if ":" in zone_dir.rsplit("intel-rapl:", 1)[-1]:
            continue  # a subzone such as intel-rapl:0:0
        try:
            name = read_text(zone_dir + "/name")
            range_uj = read_int(zone_dir + "/max_energy_range_uj")
        except (OSError, ValueError):
            continue
        if name.startswith("package"):
            zones.append(_Zone(name, zone_dir + "/energy_uj", range_uj))
    return zones


class RaplMeter(PowerMeter):
    name = "rapl"

    def __init__(self, root: str, zones: List[_Zone]) -> None:
        self.root = root
        # Real time for read_watts' deltas; a test may replace it on the instance.
        self.clock: Callable[[], float] = time.monotonic
        self.zones = zones
        names = [zone.name for zone in zones]
        self.rail = names[0] if len(names) == 1 else "sum({})".format(",".join(names))
        # The sampler thread (read_watts) and the caller (read_energy_j) share the counters.
        self._lock = threading.Lock()
        self._previous: Optional[List[float]] = None  # [energy_uj, time] at the last read_watts
        self._last_w: Optional[float] = None

    @classmethod
    def probe(cls, root: str = "/") -> "RaplMeter":
        zones = _package_zones(root)
        if not zones:
            raise MeterUnavailable("no RAPL package zone under /sys/class/powercap (not an x86 CPU with powercap)")
        meter = cls(root, zones)
        try:
            meter._prime()
        except PermissionError as exc:
            where = shown(root, zones[0].energy_path)
            raise MeterUnavailable(
                f"{where} is readable only by root on this kernel (CVE-2020-8694 mitigation); "
                "run as root or grant read access to it"
            ) from exc
        except (OSError, ValueError) as exc:
            raise MeterUnavailable(f"RAPL energy counter not readable: {exception_text(exc)}") from exc
        return meter

    def _prime(self) -> None:
        with self._lock:
            self._previous = [float(self._total_uj()), self.clock()]

    def _total_uj(self) -> int:
        return sum(zone.unwrapped_uj() for zone in self.zones)

    def read_energy_j(self) -> Optional[float]:
        with self._lock:
            return self._total_uj() / 1e6

    def read_watts(self) -> Optional[float]:
        with self._lock:
            energy, now = float(self._total_uj()), self.clock()
            previous = self._previous
            self._previous = [energy, now]
            if previous is None or now <= previous[1]:
                # Two reads at the same instant carry no rate; repeat the last one.
                if self._last_w is None:
                    raise ValueError("RAPL needs two reads at different times to give a power")
                return self._last_w
            self._last_w = (energy - previous[0]) / 1e6 / (now - previous[1])
            return self._last_w

    def _details(self) -> Dict[str, Any]:
        return {
            "source": [shown(self.root, zone.energy_path) for zone in self.zones],
            "unit": "J from energy_uj (uJ counter, wrap-around unwrapped); W from counter deltas",
            "wrap_j": [zone.range_uj / 1e6 for zone in self.zones],
        }
