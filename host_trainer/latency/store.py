"""The run's latency models, one per device, in `<run>/latency/<device>.json`.

A resumed run reads them back; `--latency-model PATH` seeds a device that has none yet (its probes, and so
its alignment, carry over to the new run: the board is the same). Every measured offspring, accepted or
not, adds an observation: rejected networks were measured on the board too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from host_trainer.errors import UserError
from host_trainer.latency import model as latency_model
from host_trainer.latency.groups import observe
from host_trainer.latency.model import LatencyModel, Observation
from host_trainer.rundir import LATENCY


def file_name(device: str) -> str:
    """A file name for any device id (ids come from the boards: keep only safe characters)."""
    return (re.sub(r"[^A-Za-z0-9_.-]", "_", device).strip(".") or "device")[:100] + ".json"


class LatencyBook:
    def __init__(self, run_path: Path, start_from: str = "") -> None:
        self.folder = Path(run_path) / LATENCY
        self.start = None
        if start_from:
            try:
                self.start = latency_model.load(Path(start_from))
            except ValueError as exc:
                raise UserError(f"--latency-model: {exc}") from None
        self.models: dict[str, LatencyModel] = {}

    def for_device(self, device: str) -> LatencyModel:
        if device not in self.models:
            self.models[device] = self._open(device)
        return self.models[device]

    def _open(self, device: str) -> LatencyModel:
        path = self.folder / file_name(device)
        if path.exists():
            try:
                return latency_model.load(path, device)
            except ValueError:  # a damaged file: start afresh rather than stop the run (it is re-learnt)
                pass
        if self.start is not None:
            return LatencyModel.from_dict({**self.start.to_dict(), "device": device, "observations": []})
        return LatencyModel(device=device)

    def observe(self, device: str, model: nn.Module, profile: list[Any], sha: str, generation: int) -> Observation:
        """File one measured network (once per model file) and save the device's model; the observation."""
        latency = self.for_device(device)
        observed = latency.observation(sha)
        if observed is None:
            observed = observe(model, profile, sha, generation)
            latency.observe(observed)
            self.save(device)
        return observed

    def save(self, device: str) -> None:
        self.for_device(device).save(self.folder / file_name(device))
