"""Synthetic input data for a model's inputs.

Latency does not depend on input values for the networks we evolve, so inputs are random
but deterministic (seeded): two devices measuring the same model feed the same tensors,
which also lets the host compare their outputs.
"""

from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from ..backends.tensors import ShapeOverrides, TensorSpec, resolve_shape
from ..errors import EdgeError, ErrorCode

# Integer inputs are usually indices (Gather, Embedding, one-hot): keep them tiny so they are
# valid for any table with at least this many rows.
INT_HIGH = 4


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
