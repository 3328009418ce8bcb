"""The configuration of one evolution run: one dataclass, and the one place its defaults live.

`EvolveConfig`'s field defaults are the classification defaults; `DETECT_DEFAULTS` overrides the few that
differ for `--task detect`. The CLI's help texts are rendered from here (`default_text`), docs/options.md is
generated from the CLI, and a test checks docs/options.md and docs/method.md against it.
docs/method.md says why each default was chosen.
This module imports nothing heavy, so `host-trainer --help` does not load torch.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from host_trainer.errors import UserError

# The choices each option offers; the modules that implement them accept exactly these names.
TASKS = ("classify", "detect")
PRECISION_FORMATS = ("fp16", "bf16", "fp32")  # what the weights are restricted to (fp32: no restriction)
PROBABILITY_MODELS = ("calibrated", "darwin")
INITS = ("inherit", "reinit")
ALLOCATIONS = ("device", "magnitude")  # how the cut is spread over layers (--allocation)
# Where training runs (--train-device; host_trainer/torch_device.py resolves it). Names of torch devices given
# to --device (which names a board) are refused with a pointer to --train-device.
TRAIN_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
TRAIN_DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
TORCH_DEVICE_NAME = re.compile(r"cpu|mps|cuda(:\d+)?")
AUTO = "auto"  # --gen0-epochs auto: train until validation accuracy stops improving (docs/method.md, "Training")
# Detection's budget was measured on shapes-det (docs/detection.md, bench/detect.py): 12 epochs bring the dense
# det-small to 66% mAP@0.5 at an operating point (score >= 0.3) its offspring keep; 24 epochs reach 74% but move
# that point (precision 72%, recall 70%), which short offspring training then does not hold; `auto` took 32 epochs
# there and moved it the same way (docs/method.md, "Generation 0, auto, measured"), so detection keeps 12.
WATCH_BROKER = "mqtt://localhost:1883"  # `host-trainer watch` without --broker (a run's own broker is printed)
# Detection cuts by magnitude: measured against Torch-Pruning on shapes-det, the device-aware rule lost to its own
# ablation there (2.1x fewer MACs at 50.41% mAP against 1.4x at 48.32%; docs/results.md, section 7).
DETECT_DEFAULTS: dict[str, Any] = {"model": "det-small", "dataset": "shapes-det", "image_size": 128, "epochs": 1.5,
                                   "gen0_epochs": 12.0, "batch_size": 64, "allocation": "magnitude"}
# With --weights, generation 0 is the user's trained model as given (restricted, evaluated, measured).
WEIGHTS_DEFAULTS: dict[str, Any] = {"gen0_epochs": 0.0}
# How the run is launched (docs/distributed.md), not part of config.json: --nproc-per-node N re-runs the command
# under torchrun with N processes (1 = no torchrun); --dist-timeout-s bounds every wait of one rank for another.
LAUNCH_DEFAULTS: dict[str, Any] = {"nproc_per_node": 1, "dist_timeout_s": 300.0}
# What config.json records about a run that is no option of `evolve`: `--config config.json` ignores these keys
# (host_trainer/config_file.py); every other field is an option's. The weights' sha256 and the world size are
# measured when the run starts, the in-process benchmark's runtime is fixed.
RECORDED = ("weights_sha256", "world_size", "bench_backend")


@dataclass
class EvolveConfig:
    task: str = "classify"        # or "detect" (docs/detection.md)
    model: str = "vgg-small"
    dataset: str = "glyphs"
    image_size: int = 32          # input side in pixels (0 in configs written before 0.2: the task's default)
    generations: int = 13
    epochs: float = 0.75          # per offspring generation (fractions of an epoch allowed)
    gen0_epochs: float | str = AUTO  # the dense ancestor: epochs, or "auto" (until validation stops improving)
    weights: str = ""             # generation 0 starts from these trained weights (a state_dict file)
    weights_sha256: str = ""      # the sha256 of that file when the run started (a resumed run checks it)
    final_epochs: float = 3.0     # a final fine-tune of the last accepted generation (0 = none)
    precision_format: str = "fp16"  # `--precision`: the number format weights are restricted to
    alpha_c: float = 0.8
    alpha_s: float = 1.0  # no synapse-level masking: zeros inside a dense layer buy no time on the board
    probability_model: str = "calibrated"
    tau: float = 0.1
    channel_multiple: int = 16    # 16 suits ONNX Runtime on x86, 8 TensorRT fp16 (docs/findings.md)
    init: str = "inherit"
    seed: int = 0
    max_accuracy_drop: float = 2.0  # percentage points of validation accuracy vs generation 0
    max_attempts: int = 3
    distill: float = 0.0
    batch_size: int = 128
    lr: float = 0.05
    train_subset: int = 0         # use only this many training images (0 = all); for quick runs
    # The data's split and normalisation (docs/data.md), resolved when the run starts and kept by --resume; the
    # export reads mean/std. split: "" = the set's own train/val/test when it has one, else 70/15/15 ("70/15/15"
    # in configs without it: every set was re-split). mean/std: per channel, for pixels in [0, 1]; [] = computed
    # on the training split. config.json records the values used ([] there: a run from before per-channel
    # statistics, which resumes with its one mean/std for every channel; loop/session.py).
    split: str = ""
    mean: list = field(default_factory=list)
    std: list = field(default_factory=list)
    bench_backend: str = "onnxruntime"
    bench_threads: int = 1
    bench_min_seconds: float = 1.0
    bench_min_iterations: int = 200
    # The closed loop (docs/method.md, docs/protocol.md). broker "" = an embedded Mosquitto + local daemon.
    broker: str = ""
    devices: list = field(default_factory=list)
    any_device: bool = False
    prefix: str = "edge-evolver"
    no_mqtt: bool = False  # measure in-process instead (debugging; no devices, no power)
    # The board's default job_timeout_s (900 s) plus 300 s for its queue and the transfer: never shorter than
    # what the board allows a job (a board reporting a longer limit in its status is waited for longer).
    job_timeout_s: float = 1200.0
    job_retries: int = 2
    device_timeout_s: float = 300.0
    target_fps: float = 0.0
    target_latency_ms: float = 0.0
    max_power_w: float = 0.0
    hold: int = 2  # stop early once the targets are met for this many generations in a row
    patience: int = 3  # stop early once this many generations in a row cut nothing (0 = never)
    offspring: int = 1  # K offspring per generation, measured in parallel; the fittest becomes the parent
    allocation: str = "device"  # how the cut is spread over layers: by the board's per-layer latency, or magnitude
    latency_model: str = ""     # a board latency model (JSON) to start from; "" = the run directory's own
    probes: bool = True         # probe jobs once per board: one layer at many channel counts (docs/latency.md)
    # Trust (docs/security.md): the host's signing key and enrolled board keys; TLS to the broker.
    keys_dir: str = ""          # "" = ~/.config/edge-evolver/host; the embedded default makes run-local keys
    insecure: bool = False      # unsigned jobs, unchecked results: only for boards run with --allow-unsigned
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    world_size: int = 1         # processes that trained the run (torchrun's WORLD_SIZE; docs/distributed.md)
    train_device: str = "auto"  # where training runs: auto (CUDA when torch sees it), cpu, cuda or cuda:N

    @classmethod
    def for_task(cls, task: str = "classify", **given: Any) -> EvolveConfig:
        """A config with the task's defaults for every option not given (None counts as not given)."""
        chosen = {k: v for k, v in given.items() if v is not None}
        defaults = {**(DETECT_DEFAULTS if task == "detect" else {}),
                    **(WEIGHTS_DEFAULTS if chosen.get("weights") else {})}
        return cls(task=task, **{**defaults, **chosen})

    def validate(self) -> EvolveConfig:
        for ok, message in self._checks():
            if not ok:
                raise UserError(message)
        return self

    def _device_checks(self) -> list[tuple[bool, str]]:
        torch_named = next((d for d in self.devices if TORCH_DEVICE_NAME.fullmatch(str(d).strip().lower())), None)
        return [
            (torch_named is None, f"--device {torch_named} names a board to measure on, not where to train: "
                                  f"use --train-device ({TRAIN_DEVICE_CHOICES})"),
            (bool(TRAIN_DEVICE.fullmatch(str(self.train_device).strip().lower())),
             f"--train-device must be {TRAIN_DEVICE_CHOICES}, got {self.train_device!r}"),
        ]

    def _checks(self) -> list[tuple[bool, str]]:
        return self._device_checks() + [
            (self.task in TASKS, f"--task must be one of {', '.join(TASKS)}"),
            (self.image_size >= 0, "--image-size must be >= 0"),
            (not (self.task == "detect" and self.distill), "--distill is implemented for classification only"),
            (self.generations >= 0, "--generations must be >= 0"),
            (self.epochs > 0, "--epochs must be > 0"),
            (self.gen0_epochs == AUTO or _number(self.gen0_epochs) and self.gen0_epochs >= 0,  # type: ignore[operator]
             "--gen0-epochs must be a number >= 0 or auto"),
            (self.gen0_epochs != 0 or bool(self.weights), "--gen0-epochs 0 needs --weights (else generation 0 "
                                                          "would be untrained)"),
            (_number(self.final_epochs) and self.final_epochs >= 0, "--final-epochs must be >= 0"),
            (self.allocation in ALLOCATIONS, f"--allocation must be one of {', '.join(ALLOCATIONS)}"),
            (self.precision_format in PRECISION_FORMATS, f"--precision must be one of {', '.join(PRECISION_FORMATS)}"),
            (0 < self.alpha_c <= 1 and 0 < self.alpha_s <= 1, "--env-factor values must lie in (0, 1]"),
            (self.probability_model in PROBABILITY_MODELS,
             f"--probability-model must be one of {', '.join(PROBABILITY_MODELS)}"),
            (self.tau > 0, "--tau must be > 0"),
            (self.channel_multiple >= 1, "--channel-multiple must be >= 1"),
            (self.init in INITS, f"--init must be one of {', '.join(INITS)}"),
            (self.max_accuracy_drop >= 0, "--max-accuracy-drop must be >= 0"),
            (self.max_attempts >= 1, "--max-attempts must be >= 1"),
            (self.batch_size >= 1 and self.lr > 0, "--batch-size must be >= 1 and --lr > 0"),
            (0 <= self.distill < 1, "--distill must lie in [0, 1)"),
            (not (self.target_fps and self.target_latency_ms), "give --target-fps or --target-latency-ms, not both"),
            (min(self.target_fps, self.target_latency_ms, self.max_power_w) >= 0, "targets must be >= 0"),
            (self.job_timeout_s > 0 and self.device_timeout_s > 0, "timeouts must be > 0"),
            (self.job_retries >= 0 and self.hold >= 1, "--job-retries must be >= 0 and --hold >= 1"),
            (self.offspring >= 1 and self.patience >= 0, "--offspring must be >= 1 and --patience >= 0"),
            (not (self.devices and self.any_device), "give --device or --any-device, not both"),
            (not (self.broker and not self.devices and not self.any_device) or self.no_mqtt,
             "with --broker, say which boards measure: --device ID (repeatable) or --any-device"),
            (not (self.any_device and not self.broker) or self.no_mqtt,
             "--any-device needs --broker (the embedded default has one local device)"),
            (bool(self.cert_file) == bool(self.key_file), "--cert-file and --key-file go together"),
        ]

    def to_dict(self) -> dict:
        return asdict(self)

    def input_size(self) -> int:
        detect = self.task == "detect"
        return self.image_size or int(DETECT_DEFAULTS["image_size"] if detect else _FIELD_DEFAULTS["image_size"])

    @classmethod
    def from_dict(cls, data: dict, source: str = "the run's configuration") -> EvolveConfig:
        """A run's configuration as written by any version (0.1 said `precision` for `precision_format`; older
        ones have no `final_epochs`); a value of the wrong type is a one-line UserError naming it and `source`
        (where it was read), unknown keys are ignored."""
        data = dict(data)
        # A run from before --train-device trained on the CPU: resumed, it stays there (CUDA is not bit-identical).
        data.setdefault("train_device", "cpu")
        if "precision" in data and "precision_format" not in data:
            data["precision_format"] = data.pop("precision")
        data.setdefault("final_epochs", 0.0)  # a run from before --final-epochs had none: resumed, it still has none
        data.setdefault("split", "70/15/15")  # a run from before --split: its set was re-split, whatever its folders
        known = {k: v for k, v in data.items() if k in _FIELD_DEFAULTS}
        for key, value in known.items():
            if key == "gen0_epochs":  # a number (every version), or "auto"
                if value != AUTO and not _number(value):
                    raise UserError(f"{source}: 'gen0_epochs' must be a number or {AUTO!r}, got {value!r}")
            elif key in ("mean", "std"):  # numbers, one per channel
                if not isinstance(value, list) or not all(_number(v) for v in value):
                    raise UserError(f"{source}: {key!r} must be a list of numbers, got {value!r}")
            elif not _same_kind(value, _FIELD_DEFAULTS[key]):
                raise UserError(f"{source}: {key!r} must be {type(_FIELD_DEFAULTS[key]).__name__}, got {value!r}")
        return cls(**known)


_FIELD_DEFAULTS = {f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc,operator]
                   for f in fields(EvolveConfig)}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, type(default))


def default_of(name: str, task: str = "classify") -> Any:
    """One option's default for a task."""
    if task == "detect" and name in DETECT_DEFAULTS:
        return DETECT_DEFAULTS[name]
    return LAUNCH_DEFAULTS[name] if name in LAUNCH_DEFAULTS else _FIELD_DEFAULTS[name]


def default_text(name: str) -> str:
    """How the CLI help and docs/options.md show a default: `0.75`, or `0.75; detect: 1.5`."""
    if name == "env_factor":
        return f"{_show(_FIELD_DEFAULTS['alpha_c'])},{_show(_FIELD_DEFAULTS['alpha_s'])}"
    text = _show(default_of(name))
    if name in DETECT_DEFAULTS:
        text += f"; detect: {_show(DETECT_DEFAULTS[name])}"
    if name in WEIGHTS_DEFAULTS:
        text += f"; with --weights: {_show(WEIGHTS_DEFAULTS[name])}"
    return text


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "off" if not value else "on"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if value not in ("", []) else "none"


def parse_epochs(text: str, option: str = "--gen0-epochs") -> float | str:
    """`auto` or a number of epochs (>= 0); anything else is a one-line UserError."""
    if str(text).strip().lower() == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{option} takes a number of epochs or {AUTO!r}, got {text!r}") from None
    if not value >= 0:
        raise UserError(f"{option} must be >= 0 or {AUTO!r}, got {text!r}")
    return value


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
