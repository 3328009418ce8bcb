"""ONNX checker, when the onnx package is installed.

The backends' own parsers reject garbage too, but ``onnx.checker`` names the broken node or
attribute, which is the message a user needs. It is optional: on JetPack 4.6 (Python 3.6,
aarch64) there is no onnx wheel, and TensorRT's parser does the checking there.
"""


from ..errors import EdgeError, ErrorCode, clip_line

# Protobuf's own limit for a message parsed in one piece; larger models need external data,
# which a self-contained job cannot carry.
PROTOBUF_LIMIT = 2 * 1024 ** 3


def check_size(model_bytes: bytes) -> None:
    """Raise for an empty model (INVALID_MODEL) or one protobuf cannot parse in one piece (OVERSIZE)."""
    if not model_bytes:
        raise EdgeError(ErrorCode.INVALID_MODEL, "model is empty (0 bytes)")
    if len(model_bytes) >= PROTOBUF_LIMIT:
        raise EdgeError(ErrorCode.OVERSIZE, "model is 2 GiB or larger; ONNX protobufs cannot be parsed in one piece")


def check_onnx(model_bytes: bytes) -> bool:
    """Raise EdgeError(INVALID_MODEL) when the bytes are not a valid ONNX model.

    A second opinion after measure/model_guard.py, which runs first and everywhere (the checker
    itself would look for external data files). Returns True when the checker ran, False when
    onnx is not installed (nothing checked).
    """
    check_size(model_bytes)
    try:
        import onnx
    except Exception:
        return False
    try:
        model = onnx.load_from_string(bytes(model_bytes))
    except Exception as exc:
        raise EdgeError(ErrorCode.INVALID_MODEL, "not an ONNX model: " + clip_line(str(exc))) from None
    if not model.graph.node and not model.graph.output:
        # Arbitrary bytes sometimes decode as an empty protobuf message instead of failing.
        raise EdgeError(ErrorCode.INVALID_MODEL, "not an ONNX model: no graph found in the bytes")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        text = clip_line(str(exc))
        # An operator the installed opset does not define is unsupported, not corrupt.
        code = ErrorCode.UNSUPPORTED_OP if "no op registered" in text.lower() else ErrorCode.INVALID_MODEL
        raise EdgeError(code, "ONNX checker: " + text) from None
    return True
