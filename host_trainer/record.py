"""The generation record: one line of `generations.jsonl`, one offspring (accepted or rejected).

Every part of the host that reads a run reads this type: the loop fills it, the run directory (rundir.py) writes it,
`report`, `watch`, the terminal table and the bench scripts read it. Each field carries its unit and
meaning (`FIELDS`; docs/generations.md is generated from them and checked by a test). The JSON keys
are the field names; keys this version does not know are kept in `extra` and written back, so a
resumed run never drops what an older or newer host wrote.

Schema versions: 1 = rows written before this type existed (no `schema` key; same keys, absent ones
read as null); 2 = every field present, `schema` = 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 2
_NUMBER = (int, float)


def _f(kind: str, unit: str, meaning: str, default: Any = None) -> Any:
    """A record field: `kind` is what from_json accepts (int, float, str, bool, list, dict, any)."""
    return field(default=default, metadata={"kind": kind, "unit": unit, "meaning": meaning})


@dataclass
class GenerationRecord:
    # ---- lineage -------------------------------------------------------------------------------------
    generation: int = field(metadata={"kind": "int", "unit": "", "meaning": "generation number (0: the dense one)"})
    schema: int = _f("int", "", "version of this record's layout (see above)", SCHEMA_VERSION)
    parent: int | None = _f("int", "", "generation of the parent; null for generation 0")
    attempt: int = _f("int", "", "synthesis attempt within the generation (0 first; retried after a rejection)", 0)
    offspring: int | None = _f("int", "", "index k of this offspring among the K of its attempt")
    seed: int | None = _f("int", "", "the seed this offspring was synthesised and trained with")
    task: str | None = _f("str", "", "classify or detect")
    accepted: bool = _f("bool", "", "true when this offspring became its generation's member", True)
    reject_reason: str | None = _f("str", "", "why it was not accepted (accuracy brake, device error, not the fittest)")
    carried_over: bool = _f("bool", "", "no offspring survived: the parent lives on as this generation", False)
    final_tune: bool = _f("bool", "", "the final fine-tune of the last accepted generation (--final-epochs)", False)
    rest: bool = _f("bool", "", "no offspring survived: the parent trained once more without a cut (--epochs)", False)
    epochs_trained: float | None = _f("float", "epochs", "epochs this network trained: generation 0 (with "
                                                         "--gen0-epochs auto: until validation stopped improving), "
                                                         "an offspring's recovery, or the final fine-tune")
    weights_sha256: str | None = _f("str", "hex", "generation 0: sha256 of the --weights file it started from")
    # ---- synthesis -----------------------------------------------------------------------------------
    alpha: list | None = _f("list", "", "[α_c, α_s] as used")
    alpha_c: float | None = _f("float", "fraction", "environmental factor for clusters (fraction inherited)")
    alpha_s: float | None = _f("float", "fraction", "environmental factor for synapses")
    speed_pressure: float | None = _f("float", "", "the controller's speed factor s (1 without targets)")
    target_gap: float | None = _f("float", "ratio", "how far the parent was from the goals (> 1: short by it)")
    allocation: str | None = _f("str", "", "how the cut was spread over layers: device (the board's latency model) "
                                         "or magnitude")
    alignment: int | None = _f("int", "channels", "device allocation: the board's channel step it snapped counts to")
    parent_sha256: str | None = _f("str", "hex", "sha256 of the parent's ONNX model (what the cut was made from)")
    cut: dict | None = _f("dict", "clusters", "device allocation: clusters kept per coupling group (root module); 0 "
                                              "where the residual block holding the group was removed whole")
    removed_blocks: list | None = _f("list", "", "device allocation: residual blocks removed whole (module names)")
    cut_target_ms: float | None = _f("float", "ms", "device allocation: the predicted board time the generation "
                                                    "was to remove, ΔT = (1 − α_c) · the parent's predicted time")
    predicted_ms: float | None = _f("float", "ms", "device allocation: this offspring's time in the board's "
                                                   "latency model")
    predicted_parent_ms: float | None = _f("float", "ms", "device allocation: the parent's time in that model")
    importance_lost: float | None = _f("float", "fraction", "share of the parent's Taylor importance in the clusters "
                                                            "this offspring dropped (sets its recovery)")
    time_target_ms: float | None = _f("float", "ms", "the generation's time target, α_c × the parent's measured "
                                                     "p50: among K offspring, those at or under it compete on "
                                                     "accuracy")
    # ---- size ----------------------------------------------------------------------------------------
    synapses: int | None = _f("int", "count", "non-zero weights of Conv/Linear layers")
    clusters: int | None = _f("int", "count", "filters plus neurons that exist")
    params: int | None = _f("int", "count", "every stored parameter of the physical, compacted network")
    macs: int | None = _f("int", "count", "multiply-accumulates of one batch-1 forward pass")
    # ---- quality (held-out test split unless said) ---------------------------------------------------
    accuracy: float | None = _f("float", "fraction", "top-1 accuracy; mAP@0.5 for detection (what the brake uses)")
    precision: float | None = _f("float", "fraction", "macro precision; detection: at IoU 0.5 and score >= 0.3")
    recall: float | None = _f("float", "fraction", "macro recall; detection: at IoU 0.5 and score >= 0.3")
    map50: float | None = _f("float", "fraction", "detection: COCO's mAP at IoU 0.5")
    loss: float | None = _f("float", "", "the task's loss on the test split")
    val_accuracy: float | None = _f("float", "fraction", "accuracy (or mAP@0.5) on the validation split")
    accuracy_before_restriction: float | None = _f("float", "fraction", "test accuracy before the fp16 rounding")
    train_loss: float | None = _f("float", "", "loss of the last training step")
    precision_format: str | None = _f("str", "", "number format the weights were restricted to (fp16, bf16, fp32)")
    # ---- export --------------------------------------------------------------------------------------
    onnx_path: str | None = _f("str", "path", "the exported model, relative to the run directory")
    onnx_bytes: int | None = _f("int", "bytes", "size of the ONNX file")
    model_sha256: str | None = _f("str", "hex", "sha256 of the ONNX file")
    onnx_max_abs_err: float | None = _f("float", "", "largest absolute output difference, ONNX Runtime vs torch")
    onnx_top1_agreement: float | None = _f("float", "fraction", "classification: same class, ONNX vs torch")
    onnx_box_agreement: float | None = _f("float", "fraction", "detection: same boxes, ONNX vs torch")
    onnx_parity_samples: int | None = _f("int", "count", "held-out images the parity check used")
    onnx_parity_ok: bool | None = _f("bool", "", "the parity check passed")
    export_seconds: float | None = _f("float", "s", "export and parity check, wall time")
    # ---- speed (the first device, or the in-process benchmark) ---------------------------------------
    fps: float | None = _f("float", "1/s", "inferences per second at batch 1")
    latency_ms_mean: float | None = _f("float", "ms", "mean latency of one inference")
    latency_ms_p50: float | None = _f("float", "ms", "median latency")
    latency_ms_p90: float | None = _f("float", "ms", "90th percentile latency")
    latency_ms_p99: float | None = _f("float", "ms", "99th percentile latency")
    latency_ms_min: float | None = _f("float", "ms", "fastest inference")
    latency_ms_max: float | None = _f("float", "ms", "slowest inference")
    measure_seconds: float | None = _f("float", "s", "publish to result (or the local benchmark), wall time")
    slowest_layer: str | None = _f("str", "", "the module that took the most time in the board's per-layer profile")
    slowest_layer_share: float | None = _f("float", "fraction", "its share of the profiled time")
    measure_batch_seconds: float | None = _f("float", "s", "measuring all K offspring of the attempt, wall time")
    # ---- the in-process benchmark (--no-mqtt) --------------------------------------------------------
    bench_backend: str | None = _f("str", "", "runtime of the in-process benchmark")
    bench_backend_version: str | None = _f("str", "", "its version")
    bench_threads: int | None = _f("int", "count", "its intra-op threads")
    bench_iterations: int | None = _f("int", "count", "timed inferences")
    bench_seconds: float | None = _f("float", "s", "timed window")
    bench_status: str | None = _f("str", "", "ok or error")
    bench_code: str | None = _f("str", "", "error code when not ok")
    bench_message: str | None = _f("str", "", "error message when not ok")
    # ---- the device (the first one; `devices` holds every device's) ----------------------------------
    device_id: str | None = _f("str", "", "the board that measured")
    device_job_id: str | None = _f("str", "", "the MQTT job id")
    device_backend: str | None = _f("str", "", "the board's runtime (tensorrt, onnxruntime)")
    device_backend_version: str | None = _f("str", "", "its version")
    device_precision: str | None = _f("str", "", "the engine's number format on the board")
    engine_build_s: float | None = _f("float", "s", "engine build time, or its load time on a cache hit")
    engine_bytes: int | None = _f("int", "bytes", "serialized engine size")
    cache_hit: bool | None = _f("bool", "", "the engine came from the board's engine cache")
    power_w_mean: float | None = _f("float", "W", "mean power over the timed window; null without a meter")
    energy_mj_per_inference: float | None = _f("float", "mJ", "energy of one inference; null without a meter")
    power_meter: str | None = _f("str", "", "the meter used (jtop, ina3221, nvml, rapl, none)")
    power_rail: str | None = _f("str", "", "what the meter measures")
    power_reason: str | None = _f("str", "", "why this meter, or why none")
    power_mode: Any = _f("any", "", "nvpmodel mode {id, name} when the job started")
    clocks_locked: bool | None = _f("bool", "", "jetson_clocks pinned the clocks")
    device_iterations: int | None = _f("int", "count", "timed inferences on the board")
    device_seconds: float | None = _f("float", "s", "timed window on the board")
    device_status: str | None = _f("str", "", "ok or error")
    device_code: str | None = _f("str", "", "error code when not ok")
    device_message: str | None = _f("str", "", "error message when not ok")
    agreement_max_abs_error: float | None = _f("float", "", "largest absolute output difference, engine vs exported "
                                                             "model, on the 8 samples")
    agreement_top1: float | None = _f("float", "fraction", "classification: same class on the samples")
    agreement_boxes: float | None = _f("float", "fraction", "detection: same boxes on the samples")
    devices: dict | None = _f("dict", "", "with several devices: {device: its speed, power and engine fields}")
    # Keys of other versions, kept as read and written back (not a JSON key itself).
    extra: dict = field(default_factory=dict, metadata={"kind": "internal", "unit": "", "meaning": ""})

    # ---- JSON ----------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **out}

    @classmethod
    def from_json(cls, data: Any) -> GenerationRecord:
        """Read one row; a wrong type in a known field is a ValueError naming the field.

        Absent or null: `schema` reads as 1 (rows from before this type carry none), `attempt` as 0,
        `accepted` and `carried_over` as false (a row that does not say it was accepted was not)."""
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        if not _accepts("int", data.get("generation")) or data.get("generation") is None:
            raise ValueError("no integer 'generation'")
        known: dict[str, Any] = dict(READ_DEFAULTS)
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key not in KINDS:
                extra[key] = value
            elif value is not None or key not in READ_DEFAULTS:
                check(key, value)
                known[key] = value
        return cls(**known, extra=extra)

    def update(self, values: Mapping[str, Any]) -> GenerationRecord:
        """Set fields by name (a measurer's or metric's dict). An unknown name is a KeyError, a value of the
        wrong type a ValueError: what a record holds, it can always read back (`sanitized` cleans input)."""
        unknown = sorted(set(values) - set(KINDS))
        if unknown:
            raise KeyError(f"not generation record fields: {', '.join(unknown)}")
        for key, value in values.items():
            check(key, value)
            setattr(self, key, value)
        return self


def check(key: str, value: Any) -> None:
    """A ValueError naming the field when `value` (None allowed) is not of the field's kind."""
    if value is not None and not _accepts(KINDS[key], value):
        raise ValueError(f"{key!r} must be {_ARTICLE[KINDS[key]]}, got {value!r}")


def sanitized(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(values fit for the record, values refused) for input from outside (a device's result): an integral
    float in an int field becomes an int; any other value of the wrong type is refused (and None kept)."""
    fit, refused = {}, {}
    for key, value in values.items():
        if KINDS.get(key) == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        try:
            check(key, value)
            fit[key] = value
        except ValueError:
            fit[key], refused[key] = None, value
    return fit, refused


def _accepts(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":  # JSON has no float/int split: 3 is a float too (NaN: a loss that diverged)
        return isinstance(value, _NUMBER) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    if kind == "dict":
        return isinstance(value, dict)
    return True


_ARTICLE = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "list": "a list", "dict": "an object", "any": "anything"}
FIELDS = tuple(f for f in fields(GenerationRecord) if f.name != "extra")
KINDS = {f.name: f.metadata["kind"] for f in FIELDS}
READ_DEFAULTS = {"schema": 1, "attempt": 0, "accepted": False, "carried_over": False, "final_tune": False,
                 "rest": False}


def lineage(records: Iterable[GenerationRecord]) -> list[GenerationRecord]:
    """The accepted record of each generation, in order; a later one wins (a --resume that redid one)."""
    by_generation = {r.generation: r for r in records if r.accepted}
    return [by_generation[g] for g in sorted(by_generation)]


def fields_markdown() -> str:
    """The field table of docs/generations.md, from the metadata above (`make docs` writes it there)."""
    lines = ["| field | unit | meaning |", "|---|---|---|"]
    lines += [f"| `{f.name}` | {f.metadata['unit']} | {f.metadata['meaning']} |" for f in FIELDS]
    return "\n".join(lines) + "\n"


def write_fields_doc(path: str) -> None:
    """Replace the table between the `<!-- fields -->` markers of `path` with `fields_markdown()`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, _, rest = text.partition("-->\n")
    _, marker, tail = rest.partition("<!-- /fields -->")
    if "<!-- fields" not in head or not marker:
        raise ValueError(f"{path} has no <!-- fields --> ... <!-- /fields --> markers")
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + "-->\n" + fields_markdown() + marker + tail)


# ---- table columns: defined once, picked by each view ---------------------------------------------------
@dataclass(frozen=True)
class Column:
    key: str
    header: str
    spec: str = ""
    scale: float = 1.0
    detect_header: str = ""  # the header in a detection run, when it differs

    def title(self, task: str | None) -> str:
        return self.detect_header if task == "detect" and self.detect_header else self.header

    def text(self, record: GenerationRecord | Mapping[str, Any], missing: str = "-") -> str:
        value = record.get(self.key) if isinstance(record, Mapping) else getattr(record, self.key, None)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return missing
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, _NUMBER):
            try:
                return format(value * self.scale if self.scale != 1.0 else value, self.spec)
            except (OverflowError, ValueError):  # an integer too large for a float, from a hand-edited file
                return missing
        return str(value)


COLUMNS = {c.key: c for c in (
    Column("generation", "gen", "d"),
    Column("alpha_c", "α_c", ".3f"),
    Column("synapses", "synapses", ","),
    Column("clusters", "clusters", ","),
    Column("params", "params", ","),
    Column("macs", "MMACs", ".3f", 1e-6),
    Column("accuracy", "acc %", ".2f", 100.0, detect_header="mAP@0.5 %"),
    Column("precision", "prec %", ".2f", 100.0),
    Column("recall", "rec %", ".2f", 100.0),
    Column("fps", "fps", ",.0f"),
    Column("latency_ms_p50", "p50 ms", ".3f"),
    Column("latency_ms_p99", "p99 ms", ".3f"),
    Column("onnx_bytes", "ONNX KB", ".1f", 1e-3),
    Column("device_id", "device"),
    Column("power_w_mean", "power W", ".2f"),
)}
TERMINAL_COLUMNS = ("generation", "alpha_c", "synapses", "clusters", "params", "macs", "accuracy", "precision",
                    "recall", "fps", "latency_ms_p50", "latency_ms_p99")
REPORT_COLUMNS = TERMINAL_COLUMNS + ("onnx_bytes",)
WATCH_COLUMNS = ("generation", "synapses", "alpha_c", "accuracy", "fps", "device_id", "power_w_mean")
