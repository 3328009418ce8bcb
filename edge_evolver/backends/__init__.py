"""The runtimes, by name, and what the measuring code and a runtime speak: ``base.py`` (``Backend``,
``Engine``), ``tensors.py`` (input and output descriptions, shapes, feeds), ``model_policy.py`` (the opset
domains and versions each backend allows) and ``profiling.py`` (the per-layer profiling pass).
One backend per file: ``onnxruntime_backend.py`` (with ``_ort_profile.py``, its profiling session) and
``tensorrt_backend.py`` (with ``_trt_io.py``, tensor I/O for either execution API, ``_trt_profile.py``, its
per-layer profiler, and ``_cuda.py``, CUDA memory through pycuda or cuda-python).

Backends are named by import path, not imported here, so ``import edge_evolver.backends``
never touches onnxruntime or tensorrt (a Jetson may lack one, and importing tensorrt
initialises CUDA, which takes seconds). Adding a backend = one line in ``_REGISTRY``.
"""

import importlib
from typing import Dict, List, Tuple, Type

from ..errors import EdgeError, ErrorCode
from .base import Backend, Engine

__all__ = [
    "AUTO_ORDER",
    "Backend",
    "Engine",
    "available_backends",
    "get_backend",
    "known_backends",
    "resolve_backend",
]

# name -> "module:Class"; the module is imported on first use.
_REGISTRY: Dict[str, str] = {
    "onnxruntime": "edge_evolver.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "edge_evolver.backends.tensorrt_backend:TensorRTBackend",
}

# Preference for backend="auto": fastest first. Names not in _REGISTRY are skipped.
AUTO_ORDER: List[str] = ["tensorrt", "onnxruntime"]


def known_backends() -> List[str]:
    return sorted(_REGISTRY)


def _backend_class(name: str) -> Type[Backend]:
    if name not in _REGISTRY:
        raise EdgeError(
            ErrorCode.BAD_INPUT,
            "unknown backend '{}'; known: {}".format(name, ", ".join(["auto"] + known_backends())),
        )
    module_name, _, class_name = _REGISTRY[name].partition(":")
    # The backend module itself imports its runtime lazily, so this import is cheap and safe.
    module = importlib.import_module(module_name)
    return getattr(module, class_name)


def get_backend(name: str) -> Backend:
    """A fresh instance of the named backend (whether or not its runtime is installed)."""
    return _backend_class(name)()


def available_backends() -> Dict[str, Tuple[bool, str]]:
    """name -> (available, version text or the reason it is not)."""
    return {name: _backend_class(name).available() for name in known_backends()}


def resolve_backend(name: str = "auto") -> Backend:
    """The named backend if usable, or for "auto" the first usable one in AUTO_ORDER.

    Raises EdgeError(BAD_INPUT) for an unknown name and EdgeError(BACKEND_UNAVAILABLE),
    with every reason, when nothing usable is found.
    """
    if name != "auto":
        ok, reason = _backend_class(name).available()
        if not ok:
            raise EdgeError(ErrorCode.BACKEND_UNAVAILABLE, f"backend '{name}' is unavailable: {reason}")
        return get_backend(name)
    reasons = []
    for candidate in AUTO_ORDER:
        if candidate not in _REGISTRY:
            continue
        ok, reason = _backend_class(candidate).available()
        if ok:
            return get_backend(candidate)
        reasons.append(f"{candidate}: {reason}")
    raise EdgeError(
        ErrorCode.BACKEND_UNAVAILABLE,
        "no usable backend ({})".format("; ".join(reasons) or "none registered"),
    )
