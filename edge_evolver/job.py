"""Jobs: building and reading the framed payload that protocol.py defines.

``encode_job`` is what the host (and ``edge-evolver pack``) sends; ``decode_job`` is the daemon's
intake check. Every way a payload can be wrong becomes a FrameError with a code, so the daemon
answers it with an error result instead of crashing or storing it.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .backends.onnxruntime_backend import check_threads
from .backends.tensors import MAX_ELEMENTS
from .errors import EdgeError, ErrorCode, printable
from .measure.benchmark import BenchSettings
from .protocol import (
    BENCH_FIELDS,
    CHECK_KINDS,
    OPTION_FIELDS,
    PROTOCOL_VERSION,
    FrameError,
    encode_frame,
    sha256_hex,
    split_frame,
    valid_job_id,
)
from .trust.jobs import unwrap  # the inner frame of a signed job (also imported from here)

TENSOR_ROLES = ("input", "reference")
# The free-form meta object travels back in every result and is stored with it: keep it small.
MAX_META_BYTES = 16 * 1024
_NUMERIC_KINDS = "fiub"


@dataclass
class Job:
    job_id: str
    model: bytes
    model_sha256: str
    settings: BenchSettings
    inputs: Optional[Dict[str, np.ndarray]] = None
    reference: Optional[List[np.ndarray]] = None
    reply_to: Optional[str] = None
    run_id: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    timeout_s: Optional[float] = None
    include_samples: bool = False
    seed: int = 0
    meta: Dict[str, Any] = field(default_factory=dict)
    check: Optional[Dict[str, Any]] = None


def _tensor_entry(role: str, name: str, array: np.ndarray) -> Tuple[Dict[str, Any], bytes]:
    array = np.ascontiguousarray(array)
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return {"role": role, "name": name, "dtype": array.dtype.name, "shape": list(array.shape), "size": len(data)}, data


def encode_job(
    job_id: str,
    model: bytes,
    bench: Optional[Mapping[str, Any]] = None,
    inputs: Optional[Mapping[str, np.ndarray]] = None,
    reference: Optional[Sequence[np.ndarray]] = None,
    signer: Any = None,
    target: Optional[Dict[str, str]] = None,
    **extra: Any,
) -> bytes:
    """One framed job. ``extra`` sets the optional header fields (reply_to, options, meta, ...).

    With ``signer`` (a trust.jobs.JobSigner) the job is signed for ``target`` ({"device": id} or
    {"group": name or "*"}).
    """
    if not valid_job_id(job_id):
        raise ValueError(f"invalid job_id {job_id!r}: 1-128 chars of [A-Za-z0-9._:-], starting alphanumeric")
    header: Dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "job_id": job_id,
        "model": {"size": len(model), "sha256": sha256_hex(model)},
        "bench": dict(bench or {}),
        "tensors": [],
    }
    header.update({k: v for k, v in extra.items() if v is not None})
    parts = [bytes(model)]
    tensors = [("input", n, a) for n, a in (inputs or {}).items()]
    tensors += [("reference", f"output{i}", a) for i, a in enumerate(reference or [])]
    for role, name, array in tensors:
        entry, data = _tensor_entry(role, name, np.asarray(array))
        header["tensors"].append(entry)
        parts.append(data)
    if signer is not None:
        if not target:
            raise ValueError("a signed job needs a target: {'device': id} or {'group': name}")
        return bytes(signer.seal(header, parts, target))
    return encode_frame(header, parts)


def _require(condition: bool, message: str, job_id: Optional[str], code: str = ErrorCode.INVALID_FRAME) -> None:
    if not condition:
        raise FrameError(code, message, job_id)


def _settings(header: Dict[str, Any], job_id: str) -> BenchSettings:
    bench = header.get("bench") or {}
    _require(isinstance(bench, dict), "'bench' must be a JSON object", job_id)
    unknown = sorted(set(bench) - set(BENCH_FIELDS))
    _require(not unknown, f"unknown bench setting(s) {unknown}; known: {list(BENCH_FIELDS)}", job_id,
             ErrorCode.BAD_INPUT)
    settings = BenchSettings(**bench)
    try:
        settings.validate()
    except EdgeError as exc:
        raise FrameError(exc.code, exc.message, job_id) from None
    return settings


def _tensor(entry: Any, body: memoryview, offset: int, job_id: str) -> Tuple[str, str, np.ndarray, int]:
    _require(isinstance(entry, dict), "each entry of 'tensors' must be an object", job_id)
    role, name, dtype_name = entry.get("role"), entry.get("name"), entry.get("dtype")
    shape, size = entry.get("shape"), entry.get("size")
    _require(role in TENSOR_ROLES and isinstance(name, str), f"tensor needs role {TENSOR_ROLES} and a name", job_id)
    shown = printable(name)  # the header's text, one line and short, for the messages below
    try:
        dtype = np.dtype(str(dtype_name))
    except TypeError:
        dtype = np.dtype("O")
    _require(dtype.kind in _NUMERIC_KINDS, f"tensor '{shown}' has unsupported dtype {dtype_name!r}", job_id)
    _require(isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape),
             f"tensor '{shown}' needs a shape of non-negative ints", job_id)
    count = 1
    for dim in shape:  # Python ints: no overflow, whatever the header claims
        count *= dim
    _require(count <= MAX_ELEMENTS, f"tensor '{shown}' has {count} elements, above {MAX_ELEMENTS}", job_id,
             ErrorCode.BAD_SHAPE)
    expected = count * dtype.itemsize
    _require(size == expected, f"tensor '{shown}' size {size!r} != {expected} for {dtype.name}{shape}", job_id)
    _require(offset + size <= len(body), f"tensor '{shown}' runs past the end of the payload", job_id)
    raw = body[offset:offset + size]
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    return str(role), name, array, offset + size


def _model(header: Dict[str, Any], body: memoryview, job_id: str) -> Tuple[bytes, str]:
    model: Dict[str, Any] = header.get("model") or {}
    _require(isinstance(model, dict) and bool(model), "'model' must be an object with size and sha256", job_id)
    size: Any = model.get("size")
    digest: Any = model.get("sha256")
    _require(isinstance(size, int) and size >= 0 and isinstance(digest, str), "model needs size and sha256", job_id)
    _require(size <= len(body), f"model size {size} is larger than the {len(body)}-byte body", job_id)
    data = bytes(body[:size])
    actual = sha256_hex(data)
    _require(actual == digest.lower(), f"model sha256 is {actual}, the job announced {printable(digest)}", job_id,
             ErrorCode.SHA_MISMATCH)
    return data, actual


def decode_job(payload: bytes, max_bytes: int) -> Job:
    """Validate and unpack a framed job; raises FrameError with an ErrorCode (and never anything else).

    A signed payload must have been verified (trust.jobs.open_job) before: this only unwraps it.
    """
    header, body = split_frame(unwrap(payload), max_bytes)
    try:
        return _decode(header, body)
    except FrameError as exc:
        exc.reply_to = header.get("reply_to") if isinstance(header.get("reply_to"), str) else None
        exc.run_id = header.get("run_id") if valid_job_id(header.get("run_id")) else None
        raise
    except Exception as exc:  # a header no check anticipated must still get a coded answer
        job_id = header.get("job_id") if valid_job_id(header.get("job_id")) else None
        message = f"unusable job header ({type(exc).__name__}: {exc})"
        raise FrameError(ErrorCode.INVALID_FRAME, message, job_id) from None


def _decode(header: Dict[str, Any], body: memoryview) -> Job:
    raw_id = header.get("job_id")
    _require(valid_job_id(raw_id), f"missing or invalid job_id {raw_id!r}", None)
    job_id = str(raw_id)
    _require(header.get("protocol") == PROTOCOL_VERSION,
             f"protocol {header.get('protocol')!r} is not supported (this daemon speaks {PROTOCOL_VERSION})", job_id)
    model, digest = _model(header, body, job_id)
    settings = _settings(header, job_id)
    inputs: Dict[str, np.ndarray] = {}
    reference: List[np.ndarray] = []
    offset = len(model)
    tensors = header.get("tensors") or []
    _require(isinstance(tensors, list), "'tensors' must be a list", job_id)
    for entry in tensors:
        role, name, array, offset = _tensor(entry, body, offset, job_id)
        if role == "input":
            inputs[name] = array
        else:
            reference.append(array)
    _require(offset == len(body), f"body has {len(body) - offset} bytes beyond the declared model and tensors", job_id)
    return _job(header, job_id, model, digest, settings, inputs, reference)


def _options(header: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    options = header.get("options") or {}
    _require(isinstance(options, dict), "'options' must be an object", job_id)
    unknown = sorted(set(options) - set(OPTION_FIELDS))
    _require(not unknown, f"unknown option(s) {unknown}; known: {list(OPTION_FIELDS)}", job_id, ErrorCode.BAD_INPUT)
    _require(options.get("profile") is None or isinstance(options.get("profile"), bool),
             f"option 'profile' must be true or false (got {options.get('profile')!r})", job_id, ErrorCode.BAD_INPUT)
    if options.get("threads") is not None:  # refused at intake: it would only fail later in the measuring process
        try:
            check_threads(options["threads"])
        except EdgeError as exc:
            raise FrameError(exc.code, exc.message, job_id) from None
    return dict(options)


def _job(header: Dict[str, Any], job_id: str, model: bytes, digest: str, settings: BenchSettings,
         inputs: Dict[str, np.ndarray], reference: List[np.ndarray]) -> Job:
    options = _options(header, job_id)
    timeout = header.get("timeout_s")
    _require(timeout is None or (isinstance(timeout, (int, float)) and timeout > 0), "timeout_s must be > 0", job_id)
    reply_to = header.get("reply_to")
    _require(reply_to is None or isinstance(reply_to, str), "reply_to must be a topic string", job_id)
    run_id = header.get("run_id")
    _require(run_id is None or valid_job_id(run_id), "run_id must be 1-128 chars of [A-Za-z0-9._:-]", job_id)
    meta = header.get("meta") or {}
    _require(isinstance(meta, dict), "'meta' must be an object", job_id)
    meta_bytes = len(json.dumps(meta, separators=(",", ":")))
    _require(meta_bytes <= MAX_META_BYTES, f"'meta' is {meta_bytes} bytes of JSON, above {MAX_META_BYTES}", job_id,
             ErrorCode.OVERSIZE)
    seed = header.get("seed", 0)
    _require(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2 ** 32,
             "seed must be a uint32", job_id)
    return Job(job_id=job_id, model=model, model_sha256=digest, settings=settings, inputs=inputs or None,
               reference=reference or None, reply_to=reply_to, run_id=run_id, options=options, timeout_s=timeout,
               include_samples=bool(header.get("include_samples", False)), seed=seed, meta=meta,
               check=_check(header.get("check"), job_id))


def _small_int(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limit


def _check(check: Any, job_id: str) -> Optional[Dict[str, Any]]:
    """The optional output check: {"kind": "detect", "num_classes": K, "stride": s}."""
    if check is None:
        return None
    _require(isinstance(check, dict), "'check' must be an object", job_id, ErrorCode.BAD_INPUT)
    _require(check.get("kind") in CHECK_KINDS, "check kind {!r} is not one of {}".format(
        check.get("kind"), list(CHECK_KINDS)), job_id, ErrorCode.BAD_INPUT)
    _require(_small_int(check.get("num_classes"), 100000) and _small_int(check.get("stride"), 4096),
             "a detect check needs integer num_classes (1-100000) and stride (1-4096)", job_id, ErrorCode.BAD_INPUT)
    return {"kind": check["kind"], "num_classes": check["num_classes"], "stride": check["stride"]}
