"""The loop's side of device-aware allocation: learn from every measurement, price every cut.

`observe` files each measured offspring's per-layer profile into the board's latency model
(host_trainer/latency/); `counts` turns the parent's profile into per-group cluster counts for one
offspring (host_trainer/method/allocation.py). Before the first device-aware offspring, a board whose
model has no probe curve yet gets probe jobs once, unless probing is off. Without a profile of the parent
(an older board, or profiling off), the offspring falls back to magnitude allocation and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import nn

from host_trainer.fleet.measurers import DeviceError, Measurer
from host_trainer.latency.groups import group_costs
from host_trainer.latency.model import LatencyModel
from host_trainer.latency.probes import probe_layer, run_probes
from host_trainer.latency.store import LatencyBook
from host_trainer.method.allocation import allocate
from host_trainer.method.compaction import ClusterGroup
from host_trainer.method.synthesis import cluster_strength
from host_trainer.progress import NULL, RunView
from host_trainer.record import GenerationRecord

SPREAD = 0.5  # offspring k > 0: per-group gains scaled by exp(0.5·z), z ~ N(0, 1) from the offspring's seed
LOCAL = "local"  # the device id of in-process measurements
log = structlog.get_logger("host_trainer")


@dataclass(frozen=True)
class Allocation:
    """How one offspring's cut is spread: counts per group root (None: magnitude), and why."""

    counts: dict[str, int] | None
    how: str  # "device" or "magnitude"
    alignment: int | None = None
    note: str = ""


class DeviceAllocator:
    def __init__(self, cfg: Any, run_path: Path, measurer: Measurer, example: torch.Tensor,
                 view: RunView = NULL) -> None:
        self.device_aware = getattr(cfg, "allocation", "device") == "device"
        self.probes = bool(getattr(cfg, "probes", True))
        self.book = LatencyBook(run_path, getattr(cfg, "latency_model", ""))
        self.measurer, self.example, self.view = measurer, example, view
        self.probed: set[str] = set()

    def observe(self, record: GenerationRecord, model: nn.Module, profile: list[dict]) -> dict[str, Any]:
        """File a measured network's profile; the record's summary of it (nothing when the board sent none)."""
        if not profile or not record.model_sha256:
            return {}
        observed = self.book.observe(device_of(record), model, profile, record.model_sha256, record.generation)
        total = sum(s.ms for s in observed.layers.values()) + observed.other_ms
        if total <= 0:
            return {}
        name, shape = max(observed.layers.items(), key=lambda item: item[1].ms)
        return {"slowest_layer": name, "slowest_layer_share": shape.ms / total}

    def counts(self, parent: GenerationRecord, model: nn.Module, groups: list[ClusterGroup], alpha_c: float,
               seed: int, k: int) -> Allocation:
        if not self.device_aware:
            return Allocation(None, "magnitude")
        latency = self.book.for_device(device_of(parent))
        observed = latency.observation(parent.model_sha256)
        if observed is None or not any(s.ms > 0 for s in observed.layers.values()):
            return Allocation(None, "magnitude", note="no per-layer profile of the parent from the board")
        self._probe_once(latency, model, {n: s.ms for n, s in observed.layers.items()})
        strengths = {g.root: cluster_strength(model, g) for g in groups}
        costs = group_costs(latency, observed, groups, strengths)
        rng = np.random.default_rng([seed, k, 1])
        counts = allocate(costs, alpha_c, latency.alignment, rng, SPREAD if k > 0 else 0.0)
        return Allocation(counts, "device", latency.alignment, f"alignment from {latency.alignment_source}")

    def _probe_once(self, latency: LatencyModel, model: nn.Module, layer_ms: dict[str, float]) -> None:
        if not self.probes or latency.probes or latency.device in self.probed:
            return
        self.probed.add(latency.device)  # one try per run: a board that cannot probe is not asked again
        layer = probe_layer(model, self.example, layer_ms)
        if layer is None:
            return
        self.view.note(f"probing {layer.name} on {latency.device} at several channel counts (once per board)")
        try:
            probe = run_probes(layer, self.measurer.probe, prefix=f"probe.{latency.device}")
        except DeviceError as exc:
            log.warning("probe_failed", device=latency.device, error=str(exc))
            return
        latency.add_probe(probe)
        self.book.save(latency.device)
        log.info("probed", device=latency.device, layer=layer.name, alignment=latency.alignment)


def device_of(record: GenerationRecord) -> str:
    return str(record.device_id or LOCAL)
