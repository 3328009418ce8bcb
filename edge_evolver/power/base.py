"""The interface every power meter implements, and the rule for which rails make "the board".

A meter is probed once (``probe`` returns a working meter or raises MeterUnavailable with a
one-line reason), then read many times from the sampler thread. Meters that wrap an optional
library (jtop, pynvml) import it inside ``probe`` so that importing this package never fails
on a board where the library is missing.
"""

import abc
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import clip_line

# Rails that measure the whole module input. When one exists it is the total, and the other
# rails are parts of it (adding them would double count): NVIDIA's forum and jetson-stats both
# say POM_5V_IN / VDD_IN is the overall input. Xavier NX docs call its input 5V_IN.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "5V_IN")

# Boards without an input rail (AGX Xavier, AGX Orin) are summed, minus rails that sit behind
# another measured rail: on AGX Orin VIN_SYS_5V0 feeds VDDQ_VDD2_1V8AO, so counting both would
# count the DDR power twice (NVIDIA forum "Jetson AGX Orin INA3221 power monitor layout").
DOWNSTREAM_RAILS = {"VDDQ_VDD2_1V8AO": "VIN_SYS_5V0"}


class MeterUnavailable(Exception):
    """A meter cannot be used here; ``reason`` is one line for logs and the daemon's status."""

    def __init__(self, reason: str) -> None:
        # Library messages often span lines (jtop's "...Please run:\nsudo systemctl ...").
        reason = clip_line(reason)
        super().__init__(reason)
        self.reason = reason


def exception_text(exc: BaseException) -> str:
    """``ExcType: message`` on one line, for reasons built from a library's exception."""
    message = clip_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def pick_total_rails(labels: Sequence[str]) -> Tuple[List[str], str]:
    """(rails to add up, rail name to report) for the whole-board power.

    An input rail wins alone; otherwise every rail is summed except those fed by another rail
    in the list, and the name says so, e.g. "sum(VDD_GPU_SOC,VDD_CPU_CV,VIN_SYS_5V0)".
    """
    for total in TOTAL_RAILS:
        if total in labels:
            return [total], total
    chosen = [label for label in labels if DOWNSTREAM_RAILS.get(label) not in labels]
    if len(chosen) == 1:
        return chosen, chosen[0]
    return chosen, "sum({})".format(",".join(chosen))


class PowerMeter(abc.ABC):
    """One source of power readings. Subclasses set ``name`` and, at probe time, ``rail``."""

    name = "base"
    rail: Optional[str] = None

    @classmethod
    @abc.abstractmethod
    def probe(cls, root: str = "/") -> "PowerMeter":
        """A working meter, or raise MeterUnavailable(reason).

        ``root`` is where sysfs-based meters look for /sys (tests pass a fixture tree);
        library-based meters (jtop, nvml) ignore it.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def read_watts(self) -> Optional[float]:
        """Instantaneous power in W. Raises on a failed read (the sampler counts it)."""
        raise NotImplementedError

    def read_energy_j(self) -> Optional[float]:
        """Cumulative energy counter in J, monotonic while the meter is open; None without one."""
        return None

    def describe(self) -> Dict[str, Any]:
        """JSON-ready: which meter, which rail, where the numbers come from."""
        out: Dict[str, Any] = {"meter": self.name, "rail": self.rail}
        out.update(self._details())
        return out

    def _details(self) -> Dict[str, Any]:
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook: sysfs meters hold nothing open
        """Release the library/session behind the meter; safe to call twice."""

    def __enter__(self) -> "PowerMeter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
