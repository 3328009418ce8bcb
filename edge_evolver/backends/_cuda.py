"""CUDA memory for the TensorRT backend, through pycuda or cuda-python behind one small class.

JetPack 4/5 boards ship (or ``pip install``) pycuda; newer images and x86 hosts often have
cuda-python instead. The engine code needs five things from either: pinned host arrays,
device buffers, host<->device copies on one stream, a stream handle for TensorRT, and a
sync. Both flavours are written here once, so the engine code is written once too.

Threading: pycuda needs a current context, so :func:`open_cuda` pushes the device's primary
context (the one the CUDA runtime, and so TensorRT, uses) onto the *calling* thread and
``close()`` pops it. Everything done with one :class:`CudaMemory` must therefore happen on
the thread that opened it; the daemon runs all jobs on one dedicated thread. cuda-python's
runtime API uses the primary context implicitly, with no push or pop.

``pycuda`` and ``cuda`` are imported inside functions: a board without them can still list
backends, and ``import pycuda.autoinit`` (which creates a context at import) is never used.
"""

import contextlib
import ctypes
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import EdgeError, ErrorCode

INSTALL_HINT = "on a Jetson: pip install pycuda (JetPack provides CUDA); elsewhere: pip install cuda-python"


class DeviceInfo(NamedTuple):
    api: str  # "pycuda" or "cuda-python"
    name: str
    major: int
    minor: int

    @property
    def label(self) -> str:
        """GPU name and compute capability: a TensorRT plan is only valid on the GPU it was built for."""
        return f"{self.name} (compute {self.major}.{self.minor})"


_DEVICE: List[DeviceInfo] = []  # memo: the device does not change while the process runs


def _import_cudart() -> Any:
    try:  # cuda-python >= 12.6 (the old path is gone in 13)
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def import_flavour() -> Tuple[str, Any]:
    """("pycuda", pycuda.driver) or ("cuda-python", cudart); pycuda is preferred (JetPack's choice)."""
    reasons = []
    try:
        import pycuda.driver as driver

        return "pycuda", driver
    except Exception as exc:  # ImportError, or OSError when libcuda is missing
        reasons.append(f"pycuda: {exc}")
    try:
        return "cuda-python", _import_cudart()
    except Exception as exc:
        reasons.append(f"cuda-python: {exc}")
    raise EdgeError(
        ErrorCode.BACKEND_UNAVAILABLE,
        "neither pycuda nor cuda-python is usable ({}); {}".format("; ".join(reasons), INSTALL_HINT),
    )


def cudart_call(cudart: Any, result: Sequence[Any], what: str) -> Any:
    """cuda-python returns (error, *values): raise on error, return the single value or None."""
    err, values = result[0], tuple(result[1:])
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError("{} failed: {}".format(what, getattr(err, "name", err)))
    return values[0] if len(values) == 1 else None


def _pycuda_info(driver: Any) -> DeviceInfo:
    driver.init()
    if driver.Device.count() < 1:
        raise RuntimeError("no CUDA device found")
    device = driver.Device(0)
    major, minor = device.compute_capability()
    return DeviceInfo("pycuda", str(device.name()), int(major), int(minor))


def _cudart_info(cudart: Any) -> DeviceInfo:
    if cudart_call(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount") < 1:
        raise RuntimeError("no CUDA device found")
    props = cudart_call(cudart, cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name.decode("utf-8", "replace") if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo("cuda-python", name.strip("\x00 "), int(props.major), int(props.minor))


def device_info() -> DeviceInfo:
    """CUDA flavour, name and compute capability of device 0; cheap (no context is created)."""
    if _DEVICE:
        return _DEVICE[0]
    flavour, module = import_flavour()
    try:
        info = _pycuda_info(module) if flavour == "pycuda" else _cudart_info(module)
    except Exception as exc:
        raise EdgeError(ErrorCode.BACKEND_UNAVAILABLE, f"no usable CUDA device ({flavour}: {exc})") from None
    _DEVICE[:] = [info]
    return info


def _quietly(release: Optional[Any]) -> None:
    """Run a release call during cleanup; a failure there must not hide the original error."""
    if release is not None:
        with contextlib.suppress(Exception):
            release()


class CudaMemory:
    """Buffers and one stream on device 0. Use from the opening thread only; ``close`` is idempotent."""

    api = "none"

    def host_empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A pinned (page-locked) host array, for fast asynchronous copies."""
        raise NotImplementedError

    def alloc(self, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` (never 0); its address as an int."""
        raise NotImplementedError

    def htod(self, device: int, host: np.ndarray) -> None:
        raise NotImplementedError

    def dtoh(self, host: np.ndarray, device: int) -> None:
        raise NotImplementedError

    @property
    def stream_handle(self) -> int:
        raise NotImplementedError

    def sync(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PycudaMemory(CudaMemory):
    api = "pycuda"

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self._device: Dict[int, Any] = {}
        self._host: List[np.ndarray] = []
        self._stream: Any = None
        driver.init()
        self._context: Optional[Any] = driver.Device(0).retain_primary_context()
        self._context.push()
        try:
            self._stream = driver.Stream()
        except BaseException:
            self.close()
            raise

    def host_empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        array = self._driver.pagelocked_empty(shape, dtype)
        self._host.append(array)
        return array

    def alloc(self, nbytes: int) -> int:
        allocation = self._driver.mem_alloc(max(int(nbytes), 1))
        self._device[int(allocation)] = allocation
        return int(allocation)

    def htod(self, device: int, host: np.ndarray) -> None:
        self._driver.memcpy_htod_async(self._device[device], host, self._stream)

    def dtoh(self, host: np.ndarray, device: int) -> None:
        self._driver.memcpy_dtoh_async(host, self._device[device], self._stream)

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def sync(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        if self._context is None:
            return
        try:
            if self._stream is not None:
                self._stream.synchronize()
        finally:  # free what we can even when the device is in a bad state
            for allocation in self._device.values():
                _quietly(allocation.free)
            for array in self._host:
                _quietly(getattr(array.base, "free", None))
            self._device, self._host, self._stream = {}, [], None
            context, self._context = self._context, None
            context.pop()


class CudaPythonMemory(CudaMemory):
    api = "cuda-python"

    def __init__(self, cudart: Any) -> None:
        self._rt = cudart
        self._device: List[int] = []
        self._host: List[int] = []
        cudart_call(cudart, cudart.cudaSetDevice(0), "cudaSetDevice")
        self._stream: Any = cudart_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _call(self, result: Sequence[Any], what: str) -> Any:
        return cudart_call(self._rt, result, what)

    def host_empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        pointer = int(self._call(self._rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        self._host.append(pointer)
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(pointer))
        return raw[:nbytes].view(dtype).reshape(shape)

    def alloc(self, nbytes: int) -> int:
        pointer = int(self._call(self._rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self._device.append(pointer)
        return pointer

    def htod(self, device: int, host: np.ndarray) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        result = self._rt.cudaMemcpyAsync(device, host.ctypes.data, host.nbytes, kind, self._stream)
        self._call(result, "cudaMemcpyAsync")

    def dtoh(self, host: np.ndarray, device: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        result = self._rt.cudaMemcpyAsync(host.ctypes.data, device, host.nbytes, kind, self._stream)
        self._call(result, "cudaMemcpyAsync")

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def sync(self) -> None:
        self._call(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is None:
            return
        stream, self._stream = self._stream, None
        rt = self._rt
        try:
            self._call(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        finally:  # free what we can even when the device is in a bad state
            for pointer in self._device:
                _quietly(lambda p=pointer: rt.cudaFree(p))
            for pointer in self._host:
                _quietly(lambda p=pointer: rt.cudaFreeHost(p))
            _quietly(lambda: rt.cudaStreamDestroy(stream))
            self._device, self._host = [], []


def open_cuda() -> CudaMemory:
    """Memory on device 0 with the first usable flavour; BACKEND_UNAVAILABLE when there is none."""
    flavour, module = import_flavour()
    try:
        return PycudaMemory(module) if flavour == "pycuda" else CudaPythonMemory(module)
    except Exception as exc:
        raise EdgeError(ErrorCode.BACKEND_UNAVAILABLE, f"could not set up CUDA ({flavour}): {exc}") from None
