"""What the host learns about one board: how a layer's time changes with its channel counts.

Two sources, both measured on the board:
- *profiles*: every measured offspring's per-layer times (host_trainer/latency/attribution.py), kept as
  observations (module → in/out channels, ms). The parent's own profile is the starting point of every
  prediction for its offspring.
- *probes* (host_trainer/latency/probes.py): one layer benchmarked alone at many output-channel counts, the
  way NetAdapt builds its tables. The curve's steps give the board's channel *alignment*.

The prediction rule (docs/method.md, "Device-aware allocation"): a layer measured at (i0, o0) channels taking
t0 ms takes t0 · cost(i, o) / cost(i0, o0) at (i, o), with cost(i, o) = u(i) · u(o) and u(c) = ⌈c/a⌉·a for the
board's alignment a (a depthwise convolution: u(o) alone). a = 1 is plain MAC-proportional time; a is chosen
by fit to what was measured (probes first, else profiles of the same layer at different widths), never
assumed. The file is JSON, one per device, in `<run>/latency/`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_evolver.files import atomic_write

ALIGNMENTS = (1, 2, 4, 8, 16, 32)
TIE = 1.05  # a larger alignment must fit at least 5% better than a smaller one to be preferred
SCHEMA = 1


@dataclass
class Shape:
    """A prunable layer as the board ran it: channels in and out, and its measured time."""

    inputs: int
    outputs: int
    ms: float
    depthwise: bool = False
    linear: bool = False


@dataclass
class Observation:
    """One measured network's attributed profile, keyed by its ONNX file's sha256."""

    model_sha256: str
    generation: int
    layers: dict[str, Shape]
    other_ms: float = 0.0


@dataclass
class Probe:
    """One layer alone, at several output-channel counts: median ms per count."""

    layer: str
    inputs: int
    counts: list[int]
    ms: list[float]


@dataclass
class LatencyModel:
    device: str
    alignment: int = 1
    alignment_source: str = "none"  # "probes", "profiles" or "none" (too little measured yet: a = 1)
    fit_error: dict[str, float] = field(default_factory=dict)  # alignment → error of its fit
    probes: list[Probe] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)

    # ---- learning ------------------------------------------------------------------------
    def observe(self, obs: Observation) -> None:
        """Add a measured network (once per model) and refit the alignment."""
        if any(o.model_sha256 == obs.model_sha256 for o in self.observations):
            return
        self.observations.append(obs)
        self.refit()

    def add_probe(self, probe: Probe) -> None:
        self.probes.append(probe)
        self.refit()

    def refit(self) -> None:
        """Choose the alignment that best explains what was measured: probes if any, else profiles."""
        errors = {a: _probe_error(self.probes, a) for a in ALIGNMENTS} if self.probes else {}
        source = "probes"
        if not errors or any(math.isnan(e) for e in errors.values()):
            errors, source = {a: _profile_error(self.observations, a) for a in ALIGNMENTS}, "profiles"
        if any(math.isnan(e) for e in errors.values()):
            self.alignment, self.alignment_source, self.fit_error = 1, "none", {}
            return
        self.alignment, self.alignment_source = pick_alignment(errors), source
        self.fit_error = {str(a): e for a, e in errors.items()}

    # ---- predicting ----------------------------------------------------------------------
    def observation(self, model_sha256: str | None) -> Observation | None:
        return next((o for o in self.observations if o.model_sha256 == model_sha256), None)

    def predict(self, shape: Shape, inputs: int, outputs: int) -> float:
        """ms of a layer measured as `shape`, at `inputs` → `outputs` channels."""
        before = cost(shape.inputs, shape.outputs, self.alignment, shape.depthwise)
        return shape.ms * cost(inputs, outputs, self.alignment, shape.depthwise) / before if before else 0.0

    # ---- storage -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(str(path), json.dumps(self.to_dict(), indent=1).encode(), mode=0o644)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        obs = [Observation(o["model_sha256"], int(o["generation"]),
                           {k: Shape(**v) for k, v in o["layers"].items()}, float(o.get("other_ms", 0.0)))
               for o in data.get("observations", [])]
        model = cls(device=str(data["device"]), probes=[Probe(**p) for p in data.get("probes", [])],
                    observations=obs)
        model.refit()
        return model


def load(path: Path, device: str | None = None) -> LatencyModel:
    """A stored model; raises ValueError with a one-line reason when the file is not one."""
    try:
        data = json.loads(Path(path).read_text())
        model = LatencyModel.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a latency model ({type(exc).__name__}: {exc})") from None
    if device is not None:
        model.device = device
    return model


def step(c: int, a: int) -> int:
    """u(c): the channel count the board effectively computes for c channels at alignment a."""
    return max(1, math.ceil(c / a)) * a


def cost(inputs: int, outputs: int, a: int, depthwise: bool = False) -> float:
    return float(step(outputs, a) if depthwise else step(inputs, a) * step(outputs, a))


def pick_alignment(errors: dict[int, float]) -> int:
    """The best-fitting alignment; a smaller one wins unless a larger one fits clearly (TIE) better."""
    best = min(ALIGNMENTS, key=lambda a: (errors[a], a))
    for a in ALIGNMENTS:
        if a < best and errors[a] <= errors[best] * TIE + 1e-12:
            return a
    return best


def _probe_error(probes: list[Probe], a: int) -> float:
    """Mean relative residual of t ≈ b + k·u(c) fitted by least squares to each probe curve."""
    errors = []
    for probe in probes:
        if len(set(probe.counts)) < 3:
            continue
        x = [float(step(c, a)) for c in probe.counts]
        errors.append(_linear_fit_error(x, probe.ms))
    return sum(errors) / len(errors) if errors else float("nan")


def _linear_fit_error(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((v - mx) ** 2 for v in x)
    k = sum((xv - mx) * (yv - my) for xv, yv in zip(x, y)) / sxx if sxx else 0.0
    b = my - k * mx
    scale = max(my, 1e-9)
    return math.sqrt(sum((yv - (b + k * xv)) ** 2 for xv, yv in zip(x, y)) / n) / scale


def _profile_error(observations: list[Observation], a: int) -> float:
    """Mean squared log error predicting each layer's later times from its first, at alignment a."""
    first: dict[str, Shape] = {}
    errors = []
    for obs in sorted(observations, key=lambda o: o.generation):
        for name, shape in obs.layers.items():
            base = first.setdefault(name, shape)
            if (base.inputs, base.outputs) == (shape.inputs, shape.outputs) or min(base.ms, shape.ms) <= 0:
                continue
            ratio = cost(shape.inputs, shape.outputs, a, shape.depthwise) / cost(
                base.inputs, base.outputs, a, base.depthwise)
            errors.append(math.log(base.ms * ratio / shape.ms) ** 2)
    return sum(errors) / len(errors) if errors else float("nan")
