"""Power meters by name, and the choice of one for this board.

One meter per module behind ``base.PowerMeter``: ``jtop_meter.py`` (jetson-stats), ``ina3221.py`` (the
Jetson's power monitor through sysfs), ``nvml_meter.py`` (a desktop GPU), ``rapl.py`` (the CPU package),
``none_meter.py`` (no meter); ``sampler.py`` samples one during the timed window, ``sysfs.py`` reads sysfs
and procfs under a root that tests can replace.

Like the backend registry, meters are named by import path and imported on first use, so
``import edge_evolver.power`` touches neither jtop nor pynvml (each meter imports its library
inside ``probe``). Adding a meter = one module + one line in ``_REGISTRY``.
"""

import importlib
from typing import List, Tuple, Type

from ..errors import clip_line
from .base import MeterUnavailable, PowerMeter
from .sampler import PowerSampler, PowerSummary

__all__ = [
    "AUTO_ORDER",
    "MeterUnavailable",
    "PowerMeter",
    "PowerSampler",
    "PowerSummary",
    "known_meters",
    "meter_class",
    "resolve_meter",
]

# name -> "module:Class"; the module is imported on first use.
_REGISTRY = {
    "jtop": "edge_evolver.power.jtop_meter:JtopMeter",
    "ina3221": "edge_evolver.power.ina3221:Ina3221Meter",
    "nvml": "edge_evolver.power.nvml_meter:NvmlMeter",
    "rapl": "edge_evolver.power.rapl:RaplMeter",
    "none": "edge_evolver.power.none_meter:NoneMeter",
}

# Preference for "auto": the Jetson sources first (jtop, then the sensor it reads), then a
# desktop GPU, then the CPU package. "none" is never chosen by auto; it is the fallback.
AUTO_ORDER: List[str] = ["jtop", "ina3221", "nvml", "rapl"]


def known_meters() -> List[str]:
    return sorted(_REGISTRY)


def meter_class(name: str) -> Type[PowerMeter]:
    if name not in _REGISTRY:
        known = ", ".join(["auto"] + known_meters())
        raise ValueError(f"unknown power meter '{name}'; known: {known}")
    module_name, _, class_name = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def _none_meter(reason: str) -> PowerMeter:
    from .none_meter import NoneMeter

    return NoneMeter(reason)


def _try_probe(name: str, root: str) -> Tuple[object, str]:
    """(meter or None, why not) without raising: auto must survive a buggy probe too."""
    try:
        return meter_class(name).probe(root), ""
    except MeterUnavailable as exc:
        return None, exc.reason
    except Exception as exc:
        return None, f"probe failed unexpectedly: {type(exc).__name__}: {clip_line(exc)}"


def resolve_meter(name: str = "auto", root: str = "/") -> Tuple[PowerMeter, str]:
    """(meter, why this one) for a meter name, "auto" or "none".

    "auto" tries AUTO_ORDER and returns the first that probes, its reason listing the ones
    skipped; when none works it returns the "none" meter whose reason says why power will be
    null. An explicitly named meter that fails raises MeterUnavailable (the daemon reports it
    at start-up); an unknown name raises ValueError listing the known ones.
    """
    if name == "none":
        meter = _none_meter("power measurement disabled (meter 'none' requested)")
        return meter, "meter 'none' requested"
    if name != "auto":
        cls = meter_class(name)
        try:
            meter = cls.probe(root)
        except MeterUnavailable as exc:
            raise MeterUnavailable(f"power meter '{name}' is unavailable: {exc.reason}") from exc
        return meter, f"meter '{name}' requested (rail {meter.rail})"
    skipped: List[str] = []
    for candidate in AUTO_ORDER:
        found, why_not = _try_probe(candidate, root)
        if isinstance(found, PowerMeter):
            why = f"auto chose {candidate} (rail {found.rail})"
            return found, why + (" after skipping " + "; ".join(skipped) if skipped else "")
        skipped.append(f"{candidate}: {why_not}")
    reason = "no power meter found ({})".format("; ".join(skipped))
    return _none_meter(reason), reason
