"""Input tensor descriptions, shape resolution and synthetic input data.

Latency does not depend on input values for the networks we evolve, so inputs are random
but deterministic (seeded): two devices measuring the same model feed the same tensors,
which also lets the host compare their outputs.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np

from ..errors import EdgeError, ErrorCode

Dim = Union[int, str, None]
# Overrides map a symbolic dim name (e.g. "seq_len") to a size, or an input name to its
# full concrete shape (the only way to set dims that have neither a value nor a name).
ShapeOverrides = Mapping[str, Union[int, Sequence[int]]]

# Refuse anything above 256M elements (1 GiB of float32): on a 4 GiB Jetson such an input
# is a corrupt shape, not a model we could benchmark.
MAX_ELEMENTS = 256 * 1024 * 1024
# Integer inputs are usually indices (Gather, Embedding, one-hot): keep them tiny so they are
# valid for any table with at least this many rows.
INT_HIGH = 4


@dataclass
class TensorSpec:
    """One model input or output. ``shape`` holds ints, symbolic names or None (unknown)."""

    name: str
    shape: Tuple[Dim, ...]
    dtype: str  # a numpy dtype name ("float32", "int64", "bool") or the runtime's own word

    def to_dict(self) -> Dict[str, object]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def _is_static(dim: Dim) -> bool:
    # Some exporters write -1 for "unknown"; treat any negative int like a missing value.
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and int(dim) >= 0


def _full_override(spec: TensorSpec, value: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        raise EdgeError(
            ErrorCode.BAD_SHAPE, f"override for input '{spec.name}' must be a full shape, not {value!r}"
        )
    shape = tuple(int(d) for d in value)
    if len(shape) != len(spec.shape):
        raise EdgeError(
            ErrorCode.BAD_SHAPE,
            f"override for input '{spec.name}' has rank {len(shape)} but the model declares "
            f"rank {len(spec.shape)} {list(spec.shape)}",
        )
    return shape


def _resolve_dim(spec: TensorSpec, axis: int, dim: Dim, batch: int, overrides: ShapeOverrides) -> int:
    if _is_static(dim):
        return int(cast(int, dim))
    if axis == 0:
        return batch
    if isinstance(dim, str) and dim in overrides:
        size = overrides[dim]
        if not isinstance(size, (int, np.integer)):
            raise EdgeError(
                ErrorCode.BAD_SHAPE, f"override for dimension '{dim}' must be an int, not {size!r}"
            )
        return int(size)
    label = f"'{dim}'" if isinstance(dim, str) and dim else "unknown"
    raise EdgeError(
        ErrorCode.BAD_SHAPE,
        f"input '{spec.name}' has a dynamic dimension {label} at axis {axis} "
        f"(shape {list(spec.shape)}); give its size as an override",
    )


def _check_sane(spec: TensorSpec, shape: Tuple[int, ...]) -> None:
    if any(d <= 0 for d in shape):
        raise EdgeError(
            ErrorCode.BAD_SHAPE, f"input '{spec.name}' resolves to shape {list(shape)} with a dimension <= 0"
        )
    total = 1
    for d in shape:
        total *= d
    if total > MAX_ELEMENTS:
        raise EdgeError(
            ErrorCode.BAD_SHAPE,
            f"input '{spec.name}' resolves to shape {list(shape)} = {total} elements, "
            f"above the limit of {MAX_ELEMENTS}",
        )


def resolve_shape(
    spec: TensorSpec, batch: int, overrides: Optional[ShapeOverrides] = None
) -> Tuple[int, ...]:
    """Concrete shape for ``spec`` at ``batch``.

    A symbolic or unknown first dim becomes ``batch``. A static first dim must equal
    ``batch``: otherwise throughput (iterations * batch / s) would be misreported. Other
    dynamic dims come from ``overrides`` (by dim name, or the input's name for the whole
    shape) or raise EdgeError(BAD_SHAPE) naming the input and axis.
    """
    overrides = overrides or {}
    if isinstance(batch, bool) or int(batch) != batch or batch < 1:
        raise EdgeError(ErrorCode.BAD_SHAPE, f"batch must be an integer >= 1 (got {batch!r})")
    if spec.name in overrides:
        shape = _full_override(spec, overrides[spec.name])
    else:
        shape = tuple(_resolve_dim(spec, i, d, int(batch), overrides) for i, d in enumerate(spec.shape))
        if shape and _is_static(spec.shape[0]) and shape[0] != batch:
            raise EdgeError(
                ErrorCode.BAD_SHAPE,
                f"input '{spec.name}' has a fixed batch dimension of {shape[0]} "
                f"(shape {list(spec.shape)}); measure it with batch={shape[0]}",
            )
    _check_sane(spec, shape)
    return shape


def _random_tensor(rng: np.random.RandomState, spec: TensorSpec, shape: Tuple[int, ...]) -> np.ndarray:
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "fiub":
        raise EdgeError(
            ErrorCode.BAD_INPUT,
            f"cannot synthesize input '{spec.name}' of type {spec.dtype}; pass the inputs explicitly",
        )
    if dtype.kind == "f":
        # np.asarray: old numpy returns a Python scalar, not a 0-d array, for shape ().
        return np.asarray(rng.standard_normal(shape)).astype(dtype)
    if dtype.kind == "b":
        return np.asarray(rng.randint(0, 2, size=shape)).astype(np.bool_)
    return np.asarray(rng.randint(0, INT_HIGH, size=shape)).astype(dtype)


def synthesize_inputs(
    specs: Iterable[TensorSpec], batch: int, seed: int = 0, overrides: Optional[ShapeOverrides] = None
) -> Dict[str, np.ndarray]:
    """Deterministic random feeds for ``specs``: name -> array of the declared dtype.

    Uses the legacy ``np.random.RandomState`` because its stream is frozen across numpy
    versions, so a Jetson on numpy 1.19 and the host on numpy 2.x produce identical data.
    Floats are standard normal, ints are in [0, INT_HIGH), bools are fair coin flips.
    """
    specs = list(specs)
    shapes = [resolve_shape(spec, batch, overrides) for spec in specs]  # fail before allocating
    rng = np.random.RandomState(seed)
    return {spec.name: _random_tensor(rng, spec, shape) for spec, shape in zip(specs, shapes)}


def check_feeds(specs: Iterable[TensorSpec], feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Validate caller-supplied feeds against the model's inputs (names must match exactly)."""
    expected = [spec.name for spec in specs]
    missing = [name for name in expected if name not in feeds]
    extra = sorted(name for name in feeds if name not in expected)
    if missing or extra:
        raise EdgeError(
            ErrorCode.BAD_INPUT,
            f"inputs do not match the model: missing {missing}, unexpected {extra}; "
            f"model inputs are {expected}",
        )
    return {name: np.asarray(feeds[name]) for name in expected}
