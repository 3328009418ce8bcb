"""A model's inputs and outputs as a runtime declares them (``Engine.inputs``, ``Engine.outputs``), the
concrete shape of each input, and the check of caller-supplied feeds.
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
