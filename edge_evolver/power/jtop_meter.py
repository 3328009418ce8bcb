"""Board power through jtop (jetson-stats), the client of the jtop.service daemon.

``jetson.power`` changed shape between releases, all values in mW:

* 3.x: a tuple ``(total, rails)``, ``total = {"cur": mW, "avg": mW}`` and
  ``rails = {NAME: {"cur", "avg"}}`` (jtop already removed the input rail from ``rails``).
* 4.x+: a dict ``{"rail": {NAME: {"volt", "curr", "power", "online", "avg", ...}},
  "tot": {"power", "avg", "name"?}}``; ``tot`` carries ``name`` when it is a real input rail
  (VDD_IN / POM_5V_IN), otherwise jtop summed every rail itself.

Without a named total we sum the rails with the same rule as the INA3221 meter (jtop's own sum
double counts VDDQ_VDD2_1V8AO on AGX Orin). jtop refreshes at its service interval, so sampling
faster than that repeats values; the ina3221 meter reads the sensor directly.
"""

import contextlib
from typing import Any, Dict, List, Optional, Tuple

from .base import MeterUnavailable, PowerMeter, exception_text, pick_total_rails

# Requested refresh (s); a jtop.service already running for another client may keep its own.
JTOP_INTERVAL_S = 0.25


def _online_rails(rails: Dict[str, Any]) -> List[str]:
    return [name for name, values in rails.items() if isinstance(values, dict) and values.get("online", True)]


def plan_reading(power: Any) -> Tuple[str, str, List[str]]:
    """(shape, rail name, rails to sum) for one ``jetson.power`` value; ValueError when unusable."""
    if isinstance(power, tuple) and len(power) == 2 and isinstance(power[0], dict) and "cur" in power[0]:
        return "3.x tuple", "jtop total", []
    if isinstance(power, dict) and isinstance(power.get("tot"), dict) and "power" in power["tot"]:
        if power["tot"].get("name"):
            return "4.x dict", str(power["tot"]["name"]), []
        wanted, rail = pick_total_rails(_online_rails(power.get("rail") or {}))
        if wanted:
            return "4.x dict", rail, wanted
    raise ValueError(f"jtop reports no usable power figure (got {type(power).__name__} {str(power)[:80]})")


def watts_from(power: Any, shape: str, rails: List[str]) -> float:
    """Board power in W from one ``jetson.power`` value, read the way ``plan_reading`` chose."""
    if shape == "3.x tuple":
        return float(power[0]["cur"]) / 1000.0
    if not rails:
        return float(power["tot"]["power"]) / 1000.0
    return sum(float(power["rail"][name]["power"]) for name in rails) / 1000.0


class JtopMeter(PowerMeter):
    name = "jtop"

    def __init__(self, client: Any, shape: str, rail: str, rails: List[str], version: str) -> None:
        self._client = client
        self.shape = shape
        self.rail = rail
        self._rails = rails
        self.version = version
        self._open = True

    @classmethod
    def probe(cls, root: str = "/") -> "JtopMeter":
        try:
            import jtop as jtop_lib
        except ImportError as exc:
            raise MeterUnavailable("jtop is not installed (pip install jetson-stats)") from exc
        try:
            client = jtop_lib.jtop(interval=JTOP_INTERVAL_S)
            # jetson-stats 4.3.2 off a Jetson, or with the service stopped, raises JtopException
            # "The jtop.service is not active..." here.
            client.start()
        except Exception as exc:
            raise MeterUnavailable(f"jtop did not start: {exception_text(exc)}") from exc
        try:
            client.ok()  # waits for the first update from the service, so .power is filled
            shape, rail, rails = plan_reading(client.power)
        except Exception as exc:
            _close_quietly(client)
            raise MeterUnavailable(f"jtop gives no board power: {exception_text(exc)}") from exc
        return cls(client, shape, rail, rails, str(getattr(jtop_lib, "__version__", "unknown")))

    def read_watts(self) -> Optional[float]:
        return watts_from(self._client.power, self.shape, self._rails)

    def _details(self) -> Dict[str, Any]:
        return {
            "source": f"jtop (jetson-stats {self.version})",
            "shape": self.shape,
            "unit": "W from jetson.power (mW)",
            "interval_s": JTOP_INTERVAL_S,
        }

    def close(self) -> None:
        if self._open:
            self._open = False
            _close_quietly(self._client)


def _close_quietly(client: Any) -> None:
    # The service may already be gone; there is nothing left to release then.
    with contextlib.suppress(Exception):
        client.close()
