"""Map a device's per-layer profile back to torch modules and coupling groups.

The classic ONNX exporter names every node after the scope of the module that made it, one path segment per
level: an attribute by its name, a container's child as `<container>.<key>`. So `/features/features.3/Conv` is
the Conv of module `features.3`, and `/layer2/layer2.0/shortcut/shortcut.0/Conv` that of `layer2.0.shortcut.0`.
A profile entry lists the original ONNX nodes it covers (a fused Conv+ReLU covers both); its time goes to
the Conv/Linear modules among them, split evenly when an entry covers several.
Entries that cover no Conv/Linear (pooling, reformatting, casts) are kept apart as `other_ms`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from host_trainer.method.compaction import ClusterGroup

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def module_of(node: str) -> str | None:
    """`/a/a.b/Conv` → `a.b` for a Conv/Gemm/MatMul node; None for any other node or an unscoped name."""
    parts = [p for p in str(node).split("/") if p]
    if len(parts) < 2 or parts[-1].split("_")[0] not in WEIGHTED_OPS:
        return None
    path, previous = parts[0], parts[0]
    for segment in parts[1:-1]:
        # a container's child repeats the container's name: `shortcut` then `shortcut.0`
        path += segment[len(previous):] if segment.startswith(previous + ".") else "." + segment
        previous = segment
    return path


@dataclass
class LayerProfile:
    """One measured profile, attributed: ms per prunable module, the rest, and what did not map."""

    layer_ms: dict[str, float] = field(default_factory=dict)
    other_ms: float = 0.0
    unmapped: list[str] = field(default_factory=list)  # entries naming weighted nodes of no known module

    @property
    def total_ms(self) -> float:
        return sum(self.layer_ms.values()) + self.other_ms


def attribute(profile: Iterable[Any], modules: Iterable[str]) -> LayerProfile:
    """Sum each entry's `ms` onto the prunable modules its `nodes` name (see the module docstring)."""
    known = set(modules)
    out = LayerProfile()
    for entry in profile:
        if not isinstance(entry, dict):
            continue
        ms = _number(entry.get("ms"))
        listed = entry.get("nodes")
        nodes: list[Any] = listed if isinstance(listed, list) else []
        owners = sorted({m for m in (module_of(n) for n in nodes) if m is not None})
        mapped = [m for m in owners if m in known]
        if owners and not mapped:
            out.unmapped.append(str(entry.get("name")))
        if not mapped:
            out.other_ms += ms
            continue
        for module in mapped:
            out.layer_ms[module] = out.layer_ms.get(module, 0.0) + ms / len(mapped)
    return out


def group_ms(profile: LayerProfile, groups: Iterable[ClusterGroup]) -> dict[str, float]:
    """Time of the layers whose output channels are each group's clusters, by group root."""
    return {g.root: sum(profile.layer_ms.get(m, 0.0) for m in g.members) for g in groups}


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if number >= 0.0 and number == number and number != float("inf") else 0.0
