"""TensorRT tensor I/O for the backend: dtypes, the two execution APIs, and engine buffers.

TensorRT 8.5+ addresses I/O by tensor name (``set_tensor_address`` + ``execute_async_v3``,
the only API left in 10); older releases by binding index (``execute_async_v2`` with a
bindings list, deprecated in 8.5, removed in 10). :class:`TensorAddressIo` and
:class:`BindingsIo` give ``tensorrt_backend`` one interface over both, and
:func:`select_io_api` picks by feature, never by version string. :func:`allocate` makes one
pinned host array and one device buffer per I/O tensor through ``_cuda``; :func:`stage`
copies a feed into its buffer.
"""

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import EdgeError, ErrorCode
from . import _cuda

# DataType name -> numpy dtype. trt.nptype is only a fallback: TensorRT 8.x builds its table
# with np.bool, which numpy >= 1.24 removed, so there it raises for every type.
_NP_TYPES = {
    "FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32",
    "INT64": "int64", "BOOL": "bool", "UINT8": "uint8",
}


def np_dtype(trt: Any, trt_type: Any) -> Optional[np.dtype]:
    """The numpy dtype of a ``trt.DataType``, or None where numpy has none."""
    name = getattr(trt_type, "name", None) or str(trt_type).rsplit(".", 1)[-1]
    if name in _NP_TYPES:
        return np.dtype(_NP_TYPES[name])
    try:
        return np.dtype(trt.nptype(trt_type))
    except Exception:  # BF16, FP8, INT4...: no numpy equivalent
        return None


# ---- I/O: named tensors (8.5+) or bindings (8.2-8.6) ----
class IoTensor(NamedTuple):
    name: str
    position: int  # binding index (8.x) or I/O tensor index
    is_input: bool
    dtype: Any  # a trt.DataType
    shape: Tuple[int, ...]  # -1 where the size is set at run time


def _dims(dims: Any) -> Tuple[int, ...]:
    return tuple(int(d) for d in dims)


class TensorAddressIo:
    """TensorRT 8.5+ (the only API in 10): tensor names, set_tensor_address, execute_async_v3."""

    name = "tensor_address_v3"

    def __init__(self, engine: Any, context: Any) -> None:
        self.engine, self.context = engine, context

    def tensors(self, trt: Any) -> List[IoTensor]:
        out = []
        for index in range(int(self.engine.num_io_tensors)):
            name = self.engine.get_tensor_name(index)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = _dims(self.engine.get_tensor_shape(name))
            out.append(IoTensor(str(name), index, is_input, self.engine.get_tensor_dtype(name), shape))
        return out

    def profile_shape(self, tensor: IoTensor) -> Tuple[int, ...]:
        return _dims(self.engine.get_tensor_profile_shape(tensor.name, 0)[1])  # (min, opt, max)

    def set_input_shape(self, tensor: IoTensor, shape: Tuple[int, ...]) -> bool:
        return bool(self.context.set_input_shape(tensor.name, shape))

    def context_shape(self, tensor: IoTensor) -> Tuple[int, ...]:
        return _dims(self.context.get_tensor_shape(tensor.name))

    def bind(self, addresses: Sequence[Tuple[IoTensor, int]]) -> bool:
        return all([bool(self.context.set_tensor_address(t.name, address)) for t, address in addresses])

    def execute(self, stream_handle: int) -> bool:
        return bool(self.context.execute_async_v3(stream_handle))


class BindingsIo(TensorAddressIo):
    """TensorRT 8.2-8.4 (deprecated in 8.5, removed in 10): binding indices, execute_async_v2."""

    name = "bindings_v2"

    def __init__(self, engine: Any, context: Any) -> None:
        super().__init__(engine, context)
        self._bindings: List[int] = []

    def tensors(self, trt: Any) -> List[IoTensor]:
        engine = self.engine
        return [
            IoTensor(
                str(engine.get_binding_name(i)), i, bool(engine.binding_is_input(i)),
                engine.get_binding_dtype(i), _dims(engine.get_binding_shape(i)),
            )
            for i in range(int(engine.num_bindings))
        ]

    def profile_shape(self, tensor: IoTensor) -> Tuple[int, ...]:
        return _dims(self.engine.get_profile_shape(0, tensor.position)[1])

    def set_input_shape(self, tensor: IoTensor, shape: Tuple[int, ...]) -> bool:
        return bool(self.context.set_binding_shape(tensor.position, shape))

    def context_shape(self, tensor: IoTensor) -> Tuple[int, ...]:
        return _dims(self.context.get_binding_shape(tensor.position))

    def bind(self, addresses: Sequence[Tuple[IoTensor, int]]) -> bool:
        self._bindings = [0] * int(self.engine.num_bindings)
        for tensor, address in addresses:
            self._bindings[tensor.position] = address
        return True

    def execute(self, stream_handle: int) -> bool:
        return bool(self.context.execute_async_v2(bindings=self._bindings, stream_handle=stream_handle))


def select_io_api(engine: Any, context: Any) -> TensorAddressIo:
    """The tensor API where the engine and context have it, else bindings."""
    if hasattr(context, "execute_async_v3") and hasattr(engine, "num_io_tensors"):
        return TensorAddressIo(engine, context)
    if hasattr(context, "execute_async_v2") and hasattr(engine, "num_bindings"):
        return BindingsIo(engine, context)
    raise EdgeError(ErrorCode.BACKEND_UNAVAILABLE, "this TensorRT has neither execute_async_v3 nor execute_async_v2")


# ---- buffers: one pinned host array and one device buffer per I/O tensor ----
class Buffer(NamedTuple):
    tensor: IoTensor
    host: np.ndarray  # pinned
    device: int


def allocate(trt: Any, cuda: _cuda.CudaMemory, io: TensorAddressIo, tensor: IoTensor) -> Buffer:
    """Buffers at the context's shape (set every input shape first)."""
    kind = "input" if tensor.is_input else "output"
    shape = io.context_shape(tensor)
    if min(shape, default=0) < 0:
        raise EdgeError(ErrorCode.UNSUPPORTED_OP, f"{kind} '{tensor.name}' has a data-dependent shape {list(shape)}")
    dtype = np_dtype(trt, tensor.dtype)
    if dtype is None:
        raise EdgeError(ErrorCode.UNSUPPORTED_OP, f"{kind} '{tensor.name}' has type {tensor.dtype}, unknown to numpy")
    host = cuda.host_empty(shape, dtype)
    return Buffer(tensor, host, cuda.alloc(host.nbytes))


def stage(buffer: Buffer, array: np.ndarray) -> None:
    """Copy a feed into its pinned buffer, cast to the engine's dtype (same kind only)."""
    name = buffer.tensor.name
    if tuple(array.shape) != buffer.host.shape:
        raise EdgeError(
            ErrorCode.BAD_SHAPE,
            f"input '{name}' has shape {list(array.shape)}; the engine was built for {list(buffer.host.shape)}",
        )
    try:
        np.copyto(buffer.host, array, casting="same_kind")
    except TypeError:
        raise EdgeError(
            ErrorCode.BAD_INPUT, f"input '{name}' has dtype {array.dtype}; the engine takes {buffer.host.dtype}"
        ) from None
