"""Fuzzing the board's job intake without MQTT: every payload is a Job or a coded, one-line FrameError.

``intake`` below is the daemon's decision (EdgeDaemon._intake) minus the broker and the disk: the
size limit and open_job (signature, expiry, target: Gate.open), then decode_job, then the reply_to
rule, and job_id_hint for the refusal. It runs twice per payload: with a policy that trusts one test
host key and requires signatures, and with allow_unsigned=True so unsigned frames reach the inner
decoder too. Any other exception, a code outside ErrorCode.all(), a message over one line or a
payload that takes seconds is a failure.

Strategies: random bytes behind the EEJ1/EES1 magics; valid signed and unsigned jobs mutated byte by
byte; header fields (auth's included) replaced by arbitrary JSON and signed again, so the mutation
passes the signature and reaches the decoder; arbitrary signature blocks; raw headers with extreme
numbers, deep nesting and invalid UTF-8. Then check_model_safety on mutated ONNX models.

The run is derandomized (the same cases in every CI run): about 10,000 payloads and 2,000 models.
EDGE_EVOLVER_FUZZ_EXAMPLES=100000 scales the payload count (models: a fifth of it) for a longer run.
Runs on the JetPack 4.6 library set and Python 3.6 (hypothesis 6.31) too.
"""

import base64
import json
import os
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_evolver.daemon.gate import job_id_hint
from edge_evolver.errors import EdgeError, ErrorCode
from edge_evolver.job import Job, decode_job, encode_job, unwrap
from edge_evolver.protocol import MAGIC, FrameError, Topics, encode_frame, sha256_hex, valid_job_id
from edge_evolver.trust.jobs import JOB_CONTEXT, SIGNED_MAGIC, JobSigner, VerifyPolicy, open_job
from edge_evolver.trust.keys import TrustedKeys, generate_key
from edge_evolver.trust.replay import ReplayLedger

TOTAL = int(os.environ.get("EDGE_EVOLVER_FUZZ_EXAMPLES", "10000"))
CODES = set(ErrorCode.all())
HOST, STRANGER = generate_key(), generate_key()
DEVICE, GROUP = "fuzz-1", "lab"
NOW = 1800000000.0
MAX_BYTES = 256 * 1024
TOPICS = Topics()
SIGNED_ONLY = VerifyPolicy(TrustedKeys([(HOST.public, "fuzz host")]), DEVICE, GROUP)
OPEN = VerifyPolicy(TrustedKeys([(HOST.public, "fuzz host")]), DEVICE, GROUP, allow_unsigned=True)
LEDGER_DIR = tempfile.TemporaryDirectory(prefix="fuzz-ledger-")  # removed when the interpreter exits
LEDGER = ReplayLedger(LEDGER_DIR.name)


def _examples(share):
    """This test's part of the run's TOTAL payloads (at least 50)."""
    return max(50, int(TOTAL * share))


def fuzz_settings(share):
    return settings(max_examples=_examples(share), derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ------------------------------------------------------------------ the decision under test
def intake(payload, policy):
    """The daemon's intake decision for one payload: a Job, or FrameError."""
    if len(payload) > MAX_BYTES:  # Gate.open, before any work on it
        raise FrameError(ErrorCode.OVERSIZE, f"job is {len(payload)} bytes, above the limit of {MAX_BYTES}")
    frame, auth = open_job(payload, policy, now=NOW)
    job = decode_job(frame, MAX_BYTES)
    if job.reply_to is not None:
        TOPICS.reply_allowed(job.reply_to, DEVICE, job.run_id)
    if auth is not None and not LEDGER.record(auth.key_id, auth.seq, auth.expires_at):  # Gate.remember
        raise FrameError(ErrorCode.REPLAYED, "accepted before")
    return job


def check(payload):
    """Both policies: a Job or a coded one-line FrameError, never anything else (a hang is the suite's timeout)."""
    payload = bytes(payload)
    outcomes = []
    for policy in (SIGNED_ONLY, OPEN):
        try:
            job = intake(payload, policy)
        except FrameError as exc:
            assert exc.code in CODES, exc.code
            assert isinstance(exc.message, str) and exc.message, exc
            assert "\n" not in exc.message and "\r" not in exc.message, exc.message[:300]
            assert exc.job_id is None or valid_job_id(exc.job_id), exc.job_id
            assert exc.reply_to is None or isinstance(exc.reply_to, str)
            if exc.reply_to is not None:
                TOPICS.reply_allowed(exc.reply_to, DEVICE, exc.run_id)  # the daemon's choice of topic
            hint = job_id_hint(payload)  # what the refusal is labelled with
            assert hint is None or valid_job_id(hint), hint
            outcomes.append(exc.code)
        else:
            assert isinstance(job, Job) and valid_job_id(job.job_id)
            assert isinstance(job.model, bytes) and sha256_hex(job.model) == job.model_sha256
            assert isinstance(job.meta, dict) and isinstance(job.options, dict)
            job.settings.validate()
            outcomes.append("ok")
    return outcomes


# ------------------------------------------------------------------ valid jobs to start from
SIGNER = JobSigner(HOST, ttl_s=3600.0, clock=lambda: NOW)
MODEL = bytes(range(256)) * 3  # decode_job checks the digest, not the ONNX (the measuring child does)
X = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
REF = [np.ones((1, 4), np.float16)]


def _base_header(job_id="fz-1"):
    payload = encode_job(job_id, MODEL, {"batch": 1, "min_iterations": 20, "min_seconds": 0.0},
                         inputs={"x": X}, reference=REF, options={"threads": 1, "profile": False},
                         meta={"generation": 3, "genome": "g-7"}, timeout_s=30, seed=5,
                         reply_to=TOPICS.run_results("run-1"), run_id="run-1",
                         check={"kind": "detect", "num_classes": 3, "stride": 8})
    (size,) = struct.unpack(">I", payload[4:8])
    return json.loads(payload[8:8 + size].decode("utf-8")), payload[8 + size:]


HEADER, BODY = _base_header()
AUTH = {"body_sha256": sha256_hex(BODY), "target": {"device": DEVICE}, "issued_at": NOW,
        "expires_at": NOW + 3600.0, "seq": 1}


def seal_raw(head, body, key=HOST, block=None):
    """A signed job around header bytes exactly as given (not necessarily JSON, not necessarily UTF-8)."""
    frame = MAGIC + struct.pack(">I", len(head)) + head + body
    if block is None:
        block = json.dumps({"alg": "ed25519", "key_id": key.key_id,
                            "sig": base64.b64encode(key.sign(JOB_CONTEXT + head)).decode("ascii")}).encode("utf-8")
    return SIGNED_MAGIC + struct.pack(">H", len(block)) + block + frame


def plain_raw(head, body):
    return MAGIC + struct.pack(">I", len(head)) + head + body


def _dump(header):
    return json.dumps(header, separators=(",", ":")).encode("utf-8")


BASES = [
    encode_job("fz-plain", MODEL),
    encode_job("fz-full", MODEL, {"batch": 2}, inputs={"x": X}, reference=REF, meta={"a": [1, 2]}),
    encode_job("fz-s1", MODEL, {"batch": 1}, signer=SIGNER, target={"device": DEVICE}),
    encode_job("fz-s2", MODEL, {"batch": 1}, inputs={"x": X}, reference=REF, signer=SIGNER, target={"group": "*"},
               reply_to=TOPICS.results(DEVICE)),
    seal_raw(_dump(dict(HEADER, auth=AUTH)), BODY),
]


def test_the_starting_jobs_are_accepted():
    fresh = [encode_job("fz-s3", MODEL, signer=SIGNER, target={"device": DEVICE}) for _ in range(2)]
    assert check(fresh[0]) == ["ok", ErrorCode.REPLAYED]  # the ledger: once per signed job, whatever the policy
    assert check(fresh[1])[0] == "ok"
    for payload in BASES:
        assert check(payload)[1] in ("ok", ErrorCode.REPLAYED)
    assert check(BASES[0]) == [ErrorCode.UNSIGNED, "ok"]


@pytest.mark.parametrize("field", ["issued_at", "expires_at", "seq"])
@pytest.mark.parametrize("literal", ["1" * 400, "1e308", "-1e308", "Infinity", "-Infinity", "NaN", "true", "1e15",
                                     "18446744073709551616"])
def test_absurd_auth_numbers_are_refused(field, literal):
    """Signed (a host bug, not an attacker) yet absurd: refused with a code, never an OverflowError."""
    head = _dump(dict(HEADER, auth=dict(AUTH, **{field: 0}))).replace(
        f'"{field}":0'.encode(), f'"{field}":{literal}'.encode())
    assert check(seal_raw(head, BODY)) == [ErrorCode.INVALID_FRAME] * 2


# ------------------------------------------------------------------ strategies
LINE_BREAKS = ["a\nb", "\r\n", "x\u2028y", "\x00\x1b[2J", "\ud800"]  # what must not reach a message raw
texts = st.text(max_size=20) | st.sampled_from(LINE_BREAKS)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | texts,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)
extreme_numbers = st.one_of(
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 32, 2 ** 63, 2 ** 64,
                                                                          -(2 ** 63), 10 ** 30, True, False]),
    st.floats(), st.sampled_from([1e308, -1e308, 5e-324, 0.5, -0.0, 1e-9]))
HEADER_FIELDS = ["protocol", "job_id", "model", "bench", "tensors", "options", "meta", "check", "timeout_s", "seed",
                 "reply_to", "run_id", "include_samples", "auth"]
AUTH_FIELDS = ["body_sha256", "target", "issued_at", "expires_at", "seq"]
NESTED = {"model": ["size", "sha256"], "bench": ["batch", "min_iterations", "min_seconds", "warmup_s", "max_seconds"],
          "options": ["fp16", "threads", "workspace_mb", "shape_overrides", "profile"],
          "check": ["kind", "num_classes", "stride"], "tensors.0": ["role", "name", "dtype", "shape", "size"],
          "tensors.1": ["role", "name", "dtype", "shape", "size"], "auth.target": ["device", "group"]}


@st.composite
def random_framed(draw):
    """Random bytes behind a magic, often with a length field that roughly fits."""
    magic = draw(st.sampled_from([MAGIC, SIGNED_MAGIC, b"", b"EEJ", b"EES1EEJ1"]))
    rest = draw(st.binary(max_size=300))
    if magic == MAGIC and draw(st.booleans()):
        rest = struct.pack(">I", draw(st.integers(0, len(rest) + 8))) + rest
    elif magic == SIGNED_MAGIC and draw(st.booleans()):
        rest = struct.pack(">H", draw(st.integers(0, len(rest) + 8))) + rest
    return magic + rest


@st.composite
def mutated(draw):
    """A valid job with a few byte-level edits: flips, overwrites, insertions, deletions, truncation;
    (the job it came from, the edited bytes)."""
    base = draw(st.sampled_from(BASES))
    data = _edit(bytearray(base), draw, [0, 0x22, 0x5c, 0x7b, 0x7d, 0x80, 0xff, 0x30, 0x2d], 16, ())
    return base, bytes(data)


@st.composite
def replaced_fields(draw):
    """A valid header with fields (nested ones and auth's too) replaced by arbitrary JSON or removed;
    signed again (so it reaches the decoder) or sent unsigned."""
    header = json.loads(json.dumps(dict(HEADER, auth=AUTH)))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(HEADER_FIELDS + ["auth." + f for f in AUTH_FIELDS]
                                    + [f"{k}.{f}" for k, fs in NESTED.items() for f in fs]
                                    + ["tensors.0", "tensors.1"]))
        value = draw(st.one_of(json_values, extreme_numbers)) if draw(st.integers(0, 9)) else None
        parent, _, leaf = name.rpartition(".")
        target = header
        for part in parent.split(".") if parent else []:
            if isinstance(target, list):
                target = target[int(part)] if part.isdigit() and int(part) < len(target) else None
            else:
                target = target.get(part)
            if not isinstance(target, (dict, list)):
                break
        else:
            if isinstance(target, list):
                if leaf.isdigit() and int(leaf) < len(target):
                    target[int(leaf)] = value
            elif value is None and draw(st.booleans()):
                target.pop(leaf, None)
            else:
                target[leaf] = value
    head = json.dumps(header, separators=(",", ":"), allow_nan=True).encode("utf-8")
    how = draw(st.sampled_from(["signed", "signed", "unsigned", "stranger"]))
    if how == "unsigned":
        return plain_raw(head, BODY)
    return seal_raw(head, BODY, STRANGER if how == "stranger" else HOST)


@st.composite
def signature_blocks(draw):
    """Arbitrary signature blocks in front of a valid frame: any JSON, or the right shape with wrong values."""
    frame = plain_raw(_dump(dict(HEADER, auth=AUTH)), BODY)
    kind = draw(st.integers(0, 3))
    if kind == 0:
        block = json.dumps(draw(json_values)).encode("utf-8")
    elif kind == 1:
        block = draw(st.binary(max_size=120))
    else:
        key_id = draw(st.sampled_from([HOST.key_id, STRANGER.key_id]) | texts) if kind == 3 else HOST.key_id
        fields = {"alg": "ed25519", "key_id": key_id,
                  "sig": base64.b64encode(draw(st.binary(min_size=64, max_size=64))).decode("ascii")}
        for name in draw(st.lists(st.sampled_from(["alg", "key_id", "sig", "extra"]), max_size=3)):
            fields[name] = draw(json_values)
        block = json.dumps(fields).encode("utf-8")
    size = len(block) if draw(st.integers(0, 4)) else draw(st.integers(0, 65535))
    return SIGNED_MAGIC + struct.pack(">H", size) + block[:1024 * 64] + frame


def _number_text(draw):
    return draw(st.one_of(
        st.integers(-(10 ** 40), 10 ** 40).map(str), st.floats().map(repr).map(lambda s: s.replace("inf", "Infinity")),
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 500, "-0", "0.0", "true", "false",
                         "null", "1E400", "4294967296", "18446744073709551616", "-9223372036854775809"])))


@st.composite
def hostile_headers(draw):
    """Raw header text: extreme number literals in numeric fields, deep nesting, duplicate keys, bad UTF-8."""
    kind = draw(st.integers(0, 4))
    fields = dict(HEADER, auth=AUTH)
    if kind == 0:  # a numeric field given as an extreme literal
        text = _dump(fields).decode("utf-8")
        for name in draw(st.lists(st.sampled_from(["timeout_s", "seed", "protocol", "batch", "min_iterations",
                                                   "min_seconds", "max_seconds", "warmup_s", "size", "seq",
                                                   "issued_at", "expires_at", "num_classes", "stride", "threads"]),
                                  min_size=1, max_size=4)):
            key = f'"{name}":'
            at = text.find(key)
            if at < 0:
                text = text[:-1] + f',"{name}":{_number_text(draw)}' + "}"
            else:
                end = at + len(key)
                stop = min(i for i in (text.find(",", end), text.find("}", end)) if i >= 0)
                text = text[:end] + _number_text(draw) + text[stop:]
        head = text.encode("utf-8")
    elif kind == 1:  # deep nesting, in the header or one of its fields
        depth = draw(st.sampled_from([10, 100, 990, 1000, 5000, 100000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        nest = opener * depth + "1" + closer * draw(st.sampled_from([depth, 0, depth // 2]))
        if draw(st.booleans()):
            head = nest.encode("utf-8")
        else:
            field = draw(st.sampled_from(["meta", "options", "bench", "tensors", "check", "auth", "model", "job_id"]))
            head = _dump(dict(fields, **{field: 0})).replace(f'"{field}":0'.encode(),
                                                             f'"{field}":{nest}'.encode())
    elif kind == 2:  # invalid UTF-8 somewhere in the header
        head = bytearray(_dump(fields))
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(head)))
            head[at:at] = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00",
                                                b"\\ud800", b"\xc0\xaf"]))
        head = bytes(head)
    elif kind == 3:  # duplicate keys: the last wins in Python's json; the signature covers the bytes anyway
        name = draw(st.sampled_from(HEADER_FIELDS))
        head = _dump(fields)[:-1] + f',"{name}":{json.dumps(draw(json_values))}}}'.encode()
    else:  # big strings and long lists where short ones belong
        field = draw(st.sampled_from(["job_id", "reply_to", "run_id", "meta", "tensors", "model"]))
        size = draw(st.sampled_from([129, 1000, 20000, 200000]))
        value = "a" * size if draw(st.booleans()) else [{"role": "input", "name": "x"}] * (size // 20)
        head = _dump(dict(fields, **{field: value}))
    body = BODY if draw(st.integers(0, 5)) else draw(st.binary(max_size=64))
    return seal_raw(head, body) if draw(st.booleans()) else plain_raw(head, body)


# ------------------------------------------------------------------ the payload tests (~10,000 cases)
@fuzz_settings(0.2)
@given(random_framed())
def test_random_bytes_behind_the_magics(payload):
    check(payload)


@fuzz_settings(0.3)
@given(mutated())
def test_mutated_valid_jobs(case):
    base, payload = case
    if check(payload)[0] == "ok":  # accepted signed: only the unsigned signature block may differ (JSON spacing)
        assert unwrap(payload) == unwrap(base)


@fuzz_settings(0.25)
@given(replaced_fields())
def test_header_fields_replaced_by_any_json(payload):
    check(payload)


@fuzz_settings(0.1)
@given(signature_blocks())
def test_arbitrary_signature_blocks(payload):
    assert "ok" not in check(payload)  # no signature made by the fuzzer verifies


@fuzz_settings(0.15)
@given(hostile_headers())
def test_hostile_header_text(payload):
    check(payload)


@pytest.mark.parametrize("text", LINE_BREAKS)
def test_header_text_never_breaks_the_one_line_message(text):
    """Strings a sender controls (tensor names, the model digest, key ids, ids) reach messages one line long."""
    header = json.loads(json.dumps(dict(HEADER, auth=AUTH)))
    header["tensors"][0].update(name=text, size=3)
    codes = check(seal_raw(_dump(header), BODY))
    assert codes == [ErrorCode.INVALID_FRAME] * 2
    header["tensors"][0].update(name="x", size=text)  # a size that is a string, quoted back in the refusal
    assert check(seal_raw(_dump(header), BODY)) == [ErrorCode.INVALID_FRAME] * 2
    header = dict(HEADER, auth=AUTH, model={"size": len(MODEL), "sha256": text})
    assert check(seal_raw(_dump(header), BODY)) == [ErrorCode.SHA_MISMATCH] * 2
    block = json.dumps({"alg": "ed25519", "key_id": text, "sig": base64.b64encode(b"s" * 64).decode()}).encode()
    assert check(seal_raw(_dump(dict(HEADER, auth=AUTH)), BODY, block=block)) == [ErrorCode.UNKNOWN_KEY] * 2
    for field in ("job_id", "reply_to", "run_id", "protocol"):
        check(seal_raw(_dump(dict(HEADER, auth=AUTH, **{field: text})), BODY))
    check(seal_raw(_dump(dict(HEADER, auth=dict(AUTH, target={"device": text}))), BODY))
    check(seal_raw(_dump(dict(HEADER, auth=dict(AUTH, target={"group": text}))), BODY))


def test_a_flipped_signed_byte_is_never_accepted():
    """Exhaustive over one signed job: every single-bit flip in its header or body is refused."""
    payload = BASES[3]
    frame_at = 6 + struct.unpack(">H", payload[4:6])[0]
    for at in range(frame_at, len(payload)):
        data = bytearray(payload)
        data[at] ^= 0x01
        assert check(bytes(data))[0] != "ok", at


# ------------------------------------------------------------------ the model safety check
def _models():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.RandomState(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.arange(6, dtype=np.int64), "shape")])
    branch = helper.make_graph([helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
        np.ones(3, np.float32), "kv"))], "branch", [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, [3])])
    cond = helper.make_graph(
        [helper.make_node("If", ["b"], ["y"], then_branch=branch, else_branch=branch)], "cond",
        [helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    models = []
    for graph in (conv, cond):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 7
        models.append(model.SerializeToString())
    del onnx
    return models


@pytest.fixture(scope="module")
def models():
    return _models()


def _edit(data, draw, bytes_to_set, longest, extra_ops):
    """A few byte-level edits of `data` in place: flips, overwrites (with one of `bytes_to_set`), insertions
    and deletions of up to `longest` bytes, truncation; `extra_ops` are (name, edit(data, at, draw)) too."""
    extra = dict(extra_ops)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", *extra]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from(bytes_to_set))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=longest))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, longest))]
        elif op == "truncate":
            del data[at:]
        elif op in extra:
            extra[op](data, at, draw)
    return data


def _insert_field(data, at, draw):
    """A whole protobuf field: a key (field number, wire type) and a payload of some length."""
    key = draw(st.integers(1, 30)) << 3 | draw(st.sampled_from([0, 1, 2, 5]))
    payload = draw(st.binary(max_size=12))
    data[at:at] = bytes([key & 0x7f | (0x80 if key > 0x7f else 0)] + ([key >> 7] if key > 0x7f else [])
                        + [len(payload)]) + payload


def _mutate_model(data, draw):
    return bytes(_edit(bytearray(data), draw, [0x00, 0x01, 0x08, 0x0a, 0x12, 0x3a, 0x7f, 0x80, 0xff], 12,
                       [("field", _insert_field)]))


@settings(max_examples=max(50, TOTAL // 5), derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_model_safety_check_on_mutated_models(models, data):
    from edge_evolver.backends.onnxruntime_backend import OnnxRuntimeBackend
    from edge_evolver.measure.model_guard import check_model_safety

    model = _mutate_model(data.draw(st.sampled_from(models)), data.draw)
    try:
        check_model_safety(model, OnnxRuntimeBackend.model_policy)
    except EdgeError as exc:
        assert exc.code in CODES and exc.message and "\n" not in exc.message, exc


def test_the_starting_models_pass_the_safety_check(models):
    from edge_evolver.backends.onnxruntime_backend import OnnxRuntimeBackend
    from edge_evolver.measure.model_guard import check_model_safety

    for model in models:
        check_model_safety(model, OnnxRuntimeBackend.model_policy)


def test_a_signed_frame_of_anything_still_needs_the_inner_checks():
    """A trusted signature over a frame that is not a job (the inner decoder must still refuse it)."""
    assert check(seal_raw(b"[]", b""))[0] == ErrorCode.INVALID_FRAME
    assert check(seal_raw(b"\xff", b""))[0] == ErrorCode.INVALID_FRAME
    assert check(encode_frame({"protocol": 1}, [])) == [ErrorCode.UNSIGNED, ErrorCode.INVALID_FRAME]
