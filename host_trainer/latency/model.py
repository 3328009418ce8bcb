"""What the host learns about one board: how a layer's time changes with its channel counts.

Two sources, both measured on the board:
- *profiles*: every measured offspring's per-layer times (host_trainer/latency/attribution.py), kept as
  observations (module → in/out channels, ms). The parent's own profile is the starting point of every
  prediction for its offspring.
- *probes* (host_trainer/latency/probes.py): one layer benchmarked alone, once at many output-channel counts
  and once at many input-channel counts, the way NetAdapt builds its tables. Each sweep's steps give that
  axis's channel *alignment*; both together give the board's fixed cost per layer.

The prediction rule (docs/latency.md, "The latency model"): a layer measured at (i0, o0) channels taking t0 ms
takes b + (t0 − b) · cost(i, o) / cost(i0, o0) at (i, o), where b is the board's fixed cost per layer (capped
at t0) and cost(i, o) = w_in(i) · w_out(o) (a depthwise convolution: w_out(o) alone). w(c) = ⌈c/a⌉·a for the
axis's alignment a, except below a where a probe measured c: there the probe's measured shape. Everything is
fitted to what was measured, never assumed. The file is JSON, one per device, in `<run>/latency/`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_evolver.files import atomic_write

ALIGNMENTS = (1, 2, 4, 8, 16, 32)
TIE = 1.2  # alignments whose fit errors are within this factor of the best one cannot be told apart
LADDER_MARGIN = 0.05  # a count below the alignment joins a ladder only if its probe was this much faster
NOISE_MARGIN = 2.0  # ... and at least this many times the sweep's own scatter faster (a busy board's noise)
MIN_WIDTH = 0.01  # share of a: floor of a measured effective width (a zero width would divide by zero)
OUTPUT, INPUT = "output", "input"  # probe axes
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
    """One layer alone, at several channel counts of one axis: median ms per count.

    axis "output": `counts` are output channels, the inputs fixed at `inputs` (the layer's own).
    axis "input": `counts` are input channels, the outputs fixed at `outputs` (the layer's own).
    Records without `axis` (written before input sweeps existed) are output sweeps.
    """

    layer: str
    inputs: int
    counts: list[int]
    ms: list[float]
    axis: str = OUTPUT
    outputs: int = 0

    def __post_init__(self) -> None:
        if self.axis not in (OUTPUT, INPUT) or len(self.counts) != len(self.ms):
            raise ValueError(f"probe {self.layer!r}: axis {self.axis!r}, {len(self.counts)} counts, "
                             f"{len(self.ms)} times")

    def channels(self, count: int) -> tuple[int, int]:
        """(inputs, outputs) of the probed layer at one of its counts."""
        return (self.inputs, count) if self.axis == OUTPUT else (count, self.outputs)

    def times(self) -> dict[int, float]:
        return dict(zip((int(c) for c in self.counts), (float(t) for t in self.ms)))


@dataclass
class LatencyModel:
    device: str
    alignment: int = 1  # a_out: the output-channel alignment
    alignment_source: str = "none"  # "probes", "profiles" or "none" (too little measured yet: a = 1)
    fit_error: dict[str, float] = field(default_factory=dict)  # alignment → error of its fit (outputs)
    input_alignment: int = 1  # a_in
    input_alignment_source: str = "none"  # "probes" (input sweeps), else "output alignment" (a_in = a_out)
    input_fit_error: dict[str, float] = field(default_factory=dict)
    fixed_ms: float = 0.0  # b: the board's fixed cost per layer
    fixed_ms_source: str = "none"  # "probes", or "none" (no probe curve: b = 0, time ∝ cost)
    probes: list[Probe] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)

    # ---- learning ------------------------------------------------------------------------
    def observe(self, obs: Observation) -> None:
        """Add a measured network (once per model) and refit."""
        if any(o.model_sha256 == obs.model_sha256 for o in self.observations):
            return
        self.observations.append(obs)
        self.refit()

    def add_probe(self, probe: Probe) -> None:
        self.add_probes([probe])

    def add_probes(self, probes: Iterable[Probe]) -> None:
        """File probe sweeps (`run_probes` returns both of one layer's) and refit."""
        added = list(probes)
        if not all(isinstance(p, Probe) for p in added):  # a list passed to add_probe: fail here, not in refit
            raise TypeError("add_probe takes one Probe, add_probes an iterable of them")
        self.probes.extend(added)
        self.refit()

    def refit(self) -> None:
        """Alignments from the probe sweeps (outputs, else profiles; inputs, else a_out), then b."""
        out = _fit_axis(self.probes, OUTPUT)
        if out is not None:
            (self.alignment, self.fit_error), self.alignment_source = out, "probes"
        else:
            errors = {a: _profile_error(self.observations, a) for a in ALIGNMENTS}
            if any(math.isnan(e) for e in errors.values()):
                self.alignment, self.alignment_source, self.fit_error = 1, "none", {}
            else:
                self.alignment, self.alignment_source = pick_alignment(errors), "profiles"
                self.fit_error = {str(a): e for a, e in errors.items()}
        inp = _fit_axis(self.probes, INPUT)
        if inp is not None:
            (self.input_alignment, self.input_fit_error), self.input_alignment_source = inp, "probes"
        else:
            self.input_alignment, self.input_fit_error = self.alignment, {}
            self.input_alignment_source = "output alignment"
        fixed = _fit_fixed(self.probes, self.input_alignment, self.alignment)
        self.fixed_ms, self.fixed_ms_source = (fixed, "probes") if fixed is not None else (0.0, "none")

    # ---- predicting ----------------------------------------------------------------------
    def observation(self, model_sha256: str | None) -> Observation | None:
        return next((o for o in self.observations if o.model_sha256 == model_sha256), None)

    def predict(self, shape: Shape, inputs: int, outputs: int) -> float:
        """ms of a layer measured as `shape`, at `inputs` → `outputs` channels.

        The fixed part is capped at the layer's own time, so a layer is predicted at exactly its measured
        time at its measured shape, however fast it is.
        """
        fixed = min(self.fixed_ms, shape.ms)
        before = self.cost(shape.inputs, shape.outputs, shape.depthwise)
        if before <= 0:
            return shape.ms
        return fixed + (shape.ms - fixed) * self.cost(inputs, outputs, shape.depthwise) / before

    def cost(self, inputs: int, outputs: int, depthwise: bool = False) -> float:
        """cost(i, o) = w_in(i) · w_out(o); a depthwise convolution's work follows its outputs alone."""
        out = self.width(outputs, OUTPUT)
        return out if depthwise else self.width(inputs, INPUT) * out

    def width(self, count: int, axis: str = OUTPUT) -> float:
        """w(c): the channels the board effectively computes for c. u(c) = ⌈c/a⌉·a, except below a where a
        probe of this axis measured c: a · (t(c) − b) / (t(a) − b), the probe's own shape there."""
        a = self.alignment if axis == OUTPUT else self.input_alignment
        if count < a:
            ratio = _mean([(t[count] - self.fixed_ms) / (t[a] - self.fixed_ms)
                           for t in _sweeps(self.probes, axis) if count in t and a in t
                           and t[a] - self.fixed_ms > 1e-12])
            if ratio is not None:
                return a * max(ratio, MIN_WIDTH)
        return float(step(count, a))

    def ladder(self, size: int) -> tuple[int, ...]:
        """Counts a group of `size` clusters may keep, largest (= size) first.

        The size, the multiples of a_out below it, and the counts below a_out where an output probe measured
        a saving (see `measured_below`). Below a_out the board otherwise computes a full step anyway, so
        cutting there saves nothing; a group smaller than a_out with no probe below a_out: every count.
        """
        a = max(1, self.alignment)
        if size <= 1:
            return (max(size, 0),)
        if size < a and not any(a in t and min(t) < a for t in _sweeps(self.probes, OUTPUT)):
            return tuple(range(size, 0, -1))
        counts = {size} | set(range(a, size, a)) | set(self.measured_below(size))
        return tuple(sorted(counts, reverse=True))

    def measured_below(self, size: int) -> list[int]:
        """Probed output counts c < min(size, a_out), largest first, whose measured time is lower by more than
        LADDER_MARGIN, and by more than NOISE_MARGIN times the sweeps' scatter, than the time at a_out and than every
        larger count already taken (and than `size`'s own when that is below a_out and probed): the steps the
        board really takes below its alignment, not a lucky sample on a busy board."""
        a = self.alignment
        ratios: dict[int, list[float]] = {}
        for t in _sweeps(self.probes, OUTPUT):
            if t.get(a, 0.0) > 0:
                for c, ms in t.items():
                    ratios.setdefault(c, []).append(ms / t[a])
        curve = {c: sum(r) / len(r) for c, r in ratios.items()}
        reference = min(1.0, curve.get(size, 1.0)) if size < a else 1.0
        margin = max(LADDER_MARGIN, NOISE_MARGIN * self.scatter())
        taken = []
        for c in sorted((c for c in curve if c < min(size, a)), reverse=True):
            if curve[c] < reference * (1 - margin):
                taken.append(c)
                reference = curve[c]
        return taken

    def scatter(self) -> float:
        """The output sweeps' relative scatter about their fit at and above a_out, where the model must hold:
        how much a probe's time moves for reasons other than its channels (0 without such a sweep)."""
        a = self.alignment
        errors = []
        for t in _sweeps(self.probes, OUTPUT):
            above = sorted(c for c in t if c >= a)
            if len(above) >= 3 and len({step(c, a) for c in above}) >= 2:
                errors.append(_linear_fit_error([float(step(c, a)) for c in above], [t[c] for c in above]))
        return max(errors) if errors else 0.0

    # ---- storage -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(str(path), json.dumps(self.to_dict(), indent=1).encode(), mode=0o644)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        """The stored measurements; every fitted field (alignments, b) is refitted from them, so a file written
        before a field existed reads the same way as a new one."""
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
    """u(i)·u(o) at one alignment for both axes (the profile fit's rule)."""
    return float(step(outputs, a) if depthwise else step(inputs, a) * step(outputs, a))


def pick_alignment(errors: dict[int, float]) -> int:
    """The largest alignment that fits as well as the best one (within TIE).

    The risk is one-sided. Keeping channels on multiples of a larger alignment than the board's costs at most
    a few channels of granularity; assuming a smaller one than the board's leaves widths such as 15 or 47 that
    it computes as 16 or 48, and lets the solver chase savings that do not exist. On a busy board every
    alignment fits about equally badly: then this keeps the steps, where preferring the smallest gave a = 1.
    """
    best = min(errors.values())
    return max(a for a in ALIGNMENTS if errors[a] <= best * TIE + 1e-12)


def _sweeps(probes: list[Probe], axis: str) -> list[dict[int, float]]:
    return [p.times() for p in probes if p.axis == axis]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fit_axis(probes: list[Probe], axis: str) -> tuple[int, dict[str, float]] | None:
    """(alignment, error per alignment) from one axis's sweeps; None when none has 3 distinct counts."""
    sweeps = [p for p in probes if p.axis == axis]
    errors = {a: _probe_error(sweeps, a) for a in ALIGNMENTS}
    if not sweeps or any(math.isnan(e) for e in errors.values()):
        return None
    return pick_alignment(errors), {str(a): e for a, e in errors.items()}


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


def _fit_fixed(probes: list[Probe], a_in: int, a_out: int) -> float | None:
    """b of t ≈ b + k_L · u_in(i) · u_out(o) by least squares over every probe point, one slope k_L per probed
    layer (layers differ in kernel and input size) and one b for the board, clipped to [0, fastest probe].
    None without enough points to tell b from the slopes."""
    layers: dict[tuple[str, int], int] = {}
    rows, times = [], []
    for probe in probes:
        column = layers.setdefault((probe.layer, probe.inputs), len(layers))
        for count, ms in zip(probe.counts, probe.ms):
            i, o = probe.channels(int(count))
            rows.append((column, float(step(i, a_in) * step(o, a_out))))
            times.append(float(ms))
    if not rows:
        return None
    design = np.zeros((len(rows), len(layers) + 1))
    design[:, 0] = 1.0
    for r, (column, x) in enumerate(rows):
        design[r, column + 1] = x
    solution, _, rank, _ = np.linalg.lstsq(design, np.asarray(times), rcond=None)
    if rank < design.shape[1]:  # some layer probed at one cost only: its slope and b cannot be told apart
        return None
    return float(min(max(solution[0], 0.0), min(times)))


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
