"""The meter used when power is not measured: every reading is None, with the reason why.

Reporting 0 W would read as "this model costs nothing"; None plus a reason reads as "we could
not measure", which is the truth on a desktop, in a container, or with meter "none".
"""

from typing import Any, Dict, Optional

from .base import PowerMeter

DISABLED_REASON = "power measurement disabled (meter 'none')"


class NoneMeter(PowerMeter):
    name = "none"
    rail: Optional[str] = None

    def __init__(self, reason: str = DISABLED_REASON) -> None:
        self.reason = reason

    @classmethod
    def probe(cls, root: str = "/") -> "NoneMeter":
        return cls()

    def read_watts(self) -> Optional[float]:
        return None

    def read_energy_j(self) -> Optional[float]:
        return None

    def _details(self) -> Dict[str, Any]:
        return {"reason": self.reason}
