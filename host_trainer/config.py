"""The configuration of one evolution run, as one dataclass (no globals).

Defaults are chosen by measurement; docs/method.md says why for each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from host_trainer.errors import UserError
from host_trainer.precision import PRECISIONS
from host_trainer.synthesis import PROBABILITY_MODELS

# Surviving channel counts are rounded to these multiples by default (FACTS.md): ONNX Runtime on
# x86 prefers blocks of 16, TensorRT fp16 tensor cores prefer multiples of 8.
CHANNEL_MULTIPLE_BY_BACKEND = {"onnxruntime": 16, "tensorrt": 8}
INITS = ("inherit", "reinit")
TASKS = ("classify", "detect")
# What --model/--dataset/--image-size mean when not given, per task.
# Detection's budget was measured on shapes-det (docs/detection.md, bench/detect.py): 12 epochs bring the dense
# det-small to 66% mAP@0.5 at an operating point (score >= 0.3) its offspring keep; 24 epochs reach 74% but move
# that point (precision 72%, recall 70%), which short offspring training then does not hold.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classify": {"model": "vgg-small", "dataset": "glyphs", "image_size": 32, "epochs": 0.75, "gen0_epochs": 4.0,
                 "batch_size": 128},
    "detect": {"model": "det-small", "dataset": "shapes-det", "image_size": 128, "epochs": 1.5, "gen0_epochs": 12.0,
               "batch_size": 64},
}


@dataclass
class EvolveConfig:
    model: str = "vgg-small"
    dataset: str = "glyphs"
    task: str = "classify"        # or "detect" (docs/detection.md)
    image_size: int = 0           # input side in pixels; 0 = the task's default (32, or 128 for detect)
    generations: int = 13
    epochs: float = 0.75          # per offspring generation (fractions of an epoch allowed)
    gen0_epochs: float = 4.0      # the dense ancestor
    precision: str = "fp16"
    alpha_c: float = 0.8
    alpha_s: float = 0.95
    probability_model: str = "calibrated"
    tau: float = 0.1
    channel_multiple: int = 16
    init: str = "inherit"
    seed: int = 0
    max_accuracy_drop: float = 2.0  # percentage points of validation accuracy vs generation 0
    max_attempts: int = 3
    distill: float = 0.0
    batch_size: int = 128
    lr: float = 0.05
    train_subset: int = 0         # use only this many training images (0 = all); for quick runs
    bench_backend: str = "onnxruntime"
    bench_threads: int = 1
    bench_min_seconds: float = 1.0
    bench_min_iterations: int = 200
    # The closed loop (docs/method.md, docs/protocol.md). broker "" = embedded Mosquitto + local daemon.
    broker: str = ""
    devices: list = field(default_factory=list)
    any_device: bool = False
    prefix: str = "edge-evolver"
    no_mqtt: bool = False  # measure in-process instead (debugging; no devices, no power)
    job_timeout_s: float = 600.0
    job_retries: int = 2
    device_timeout_s: float = 300.0
    target_fps: float = 0.0
    target_latency_ms: float = 0.0
    max_power_w: float = 0.0
    hold: int = 2  # stop early once the targets are met for this many generations in a row
    offspring: int = 1  # K offspring per generation, measured in parallel; the fittest becomes the parent

    def validate(self) -> EvolveConfig:
        checks = [
            (self.task in TASKS, f"--task must be one of {', '.join(TASKS)}"),
            (self.image_size >= 0, "--image-size must be >= 0"),
            (not (self.task == "detect" and self.distill), "--distill is implemented for classification only"),
            (self.generations >= 0, "--generations must be >= 0"),
            (self.epochs > 0 and self.gen0_epochs > 0, "--epochs and --gen0-epochs must be > 0"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (0 < self.alpha_c <= 1 and 0 < self.alpha_s <= 1, "--env-factor values must lie in (0, 1]"),
            (self.probability_model in PROBABILITY_MODELS,
             f"--probability-model must be one of {', '.join(PROBABILITY_MODELS)}"),
            (self.tau > 0, "--tau must be > 0"),
            (self.channel_multiple >= 1, "--channel-multiple must be >= 1"),
            (self.init in INITS, f"--init must be one of {', '.join(INITS)}"),
            (self.max_accuracy_drop >= 0, "--max-accuracy-drop must be >= 0"),
            (self.max_attempts >= 1, "--max-attempts must be >= 1"),
            (0 <= self.distill < 1, "--distill must lie in [0, 1)"),
            (not (self.target_fps and self.target_latency_ms), "give --target-fps or --target-latency-ms, not both"),
            (min(self.target_fps, self.target_latency_ms, self.max_power_w) >= 0, "targets must be >= 0"),
            (self.job_timeout_s > 0 and self.device_timeout_s > 0, "timeouts must be > 0"),
            (self.job_retries >= 0 and self.hold >= 1, "--job-retries must be >= 0 and --hold >= 1"),
            (self.offspring >= 1, "--offspring must be >= 1"),
            (not (self.devices and self.any_device), "give --device or --any-device, not both"),
            (not (self.broker and not self.devices and not self.any_device) or self.no_mqtt,
             "with --broker, say which boards measure: --device ID (repeatable) or --any-device"),
            (not (self.any_device and not self.broker) or self.no_mqtt,
             "--any-device needs --broker (the embedded default has one local device)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def input_size(self) -> int:
        return self.image_size or int(TASK_DEFAULTS.get(self.task, TASK_DEFAULTS["classify"])["image_size"])

    @classmethod
    def from_dict(cls, data: dict) -> EvolveConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def parse_env_factor(text: str) -> tuple[float, float]:
    """`α` or `α_c,α_s` → (α_c, α_s); anything else is a one-line UserError."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) not in (1, 2):
        raise UserError(f"--env-factor takes α or α_c,α_s, got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"--env-factor must be a number or two numbers 'α_c,α_s', got {text!r}") from None
    if not all(0 < v <= 1 for v in values):
        raise UserError(f"--env-factor values must lie in (0, 1], got {text!r}")
    return (values[0], values[-1])
