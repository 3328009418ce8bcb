"""The interface every inference runtime implements (ONNX Runtime, TensorRT).

Kept deliberately small: the benchmark only needs to load bytes, learn the inputs, and call
``infer`` in a loop. Backend modules import their runtime lazily, inside methods, so that
listing or probing backends never fails on a board where a runtime is missing.
"""

import abc
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import EdgeError, ErrorCode
from .model_policy import MAX_ONNX_OPSET, ModelPolicy
from .profiling import ProfileSettings, RawProfile
from .tensors import TensorSpec


class Engine(abc.ABC):
    """A loaded model ready to run. Subclasses set these attributes in ``__init__``."""

    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    # What the runtime actually used for this engine (threads, providers, precision...);
    # recorded with every measurement because it changes the numbers.
    info: Dict[str, Any]

    @abc.abstractmethod
    def infer(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """One forward pass; raise EdgeError(INFERENCE_FAILED) on failure."""
        raise NotImplementedError

    def profile(self, feeds: Dict[str, np.ndarray], settings: ProfileSettings) -> RawProfile:
        """The per-layer profiling pass on ``feeds`` (backends/profiling.py), after the timed window.

        Runtimes without a per-layer profiler keep this default; the measurement still succeeds.
        """
        raise EdgeError(ErrorCode.BACKEND_UNAVAILABLE, f"{type(self).__name__} has no per-layer profiler")

    def close(self) -> None:  # noqa: B027 - optional hook: most runtimes free on GC
        """Release runtime resources; safe to call twice."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class Backend(abc.ABC):
    """A runtime that can turn ONNX bytes into an Engine."""

    name = "base"
    # The opset domains and versions this runtime accepts, checked on the model bytes before
    # ``build`` sees them (measure/model_guard.py, docs/model-safety.md). A backend that does
    # not declare its own gets the default ONNX domain only: an unknown domain is refused.
    model_policy = ModelPolicy("base", {"": (1, MAX_ONNX_OPSET)})

    @classmethod
    @abc.abstractmethod
    def available(cls) -> Tuple[bool, str]:
        """(True, version text) or (False, why not); must never raise."""
        raise NotImplementedError

    @abc.abstractmethod
    def version(self) -> str:
        """Runtime version; raise EdgeError(BACKEND_UNAVAILABLE) when it is missing."""
        raise NotImplementedError

    def cache_key(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Everything besides the model bytes that decides whether a built engine can be reused.

        JSON-ready: backend name and version, the device it was built for, precision and build
        flags. The engine cache hashes it together with the model's sha256.
        """
        return {"backend": self.name, "version": self.version()}

    @abc.abstractmethod
    def build(self, model_bytes: bytes, options: Optional[Dict[str, Any]] = None) -> Tuple[Engine, Optional[bytes]]:
        """Parse and compile: (engine ready to run, serialized engine for the cache or None).

        Raises EdgeError(INVALID_MODEL / UNSUPPORTED_OP / BAD_SHAPE / BUILD_FAILED).
        """
        raise NotImplementedError

    @abc.abstractmethod
    def load_plan(self, plan: bytes, options: Optional[Dict[str, Any]] = None) -> Engine:
        """An engine from bytes that ``build`` returned earlier with the same cache key.

        Raises EdgeError(BUILD_FAILED) when the plan is stale or damaged; the cache then rebuilds.
        """
        raise NotImplementedError

    def load(self, model_bytes: bytes, options: Optional[Dict[str, Any]] = None) -> Engine:
        """Build without caching."""
        return self.build(model_bytes, options)[0]

    @abc.abstractmethod
    def describe(self) -> Dict[str, Any]:
        """Name, version and device facts (providers, threads...), JSON-ready."""
        raise NotImplementedError
