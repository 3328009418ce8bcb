"""Agreement of an engine's outputs with reference outputs sent along with a job.

The host computes references with the model it exported; the device runs the same inputs on
its engine (TensorRT in fp16, perhaps with different kernels), so the difference says whether
the engine still computes the network the host evolved. Classifier outputs ([N, C] with
C > 1) also get top-1 agreement, which is what matters for accuracy. A job whose header
carries a detect `check` also gets `box_agreement`: both outputs are decoded with the one
shared function (edge_evolver/measure/detection.py) and the reference's confident boxes are matched.
"""

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import EdgeError, ErrorCode
from .detection import decode, detection_agreement

MAX_PER_OUTPUT = 32  # entries of per_output a result carries (the summary covers every output)
MAX_NAME = 256


def _is_classifier(output: np.ndarray) -> bool:
    return output.ndim == 2 and output.shape[1] > 1


def compare_outputs(
    outputs: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    names: Sequence[str],
    check: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """max |engine - reference| over every output, and top-1 agreement over classifier outputs.

    Raises EdgeError(BAD_INPUT) when the reference does not match the engine's outputs in count
    or shape: that is a malformed job, not a disagreement.
    """
    if len(outputs) != len(reference):
        raise EdgeError(
            ErrorCode.BAD_INPUT,
            f"job has {len(reference)} reference output(s) but the model has {len(outputs)}",
        )
    compared = [_compare_one(name, got, want) for name, got, want in zip(names, outputs, reference)]
    per_output = [entry for entry, _same, _rows in compared]
    worst = 0.0
    for entry in per_output:
        if not math.isnan(worst) and not entry["max_abs_error"] <= worst:  # a NaN, once seen, stays the answer
            worst = entry["max_abs_error"]
    agree, total = sum(same for _e, same, _r in compared), sum(rows for _e, _s, rows in compared)
    result = {
        "max_abs_error": worst,
        "nonfinite": sum(e["nonfinite"] for e in per_output),
        "top1_agreement": (agree / total) if total else None,
        "outputs_compared": len(per_output),
        # A model may have any number of outputs, with names of any length: the result stays bounded.
        "per_output": [dict(e, name=str(e.get("name", ""))[:MAX_NAME]) for e in per_output[:MAX_PER_OUTPUT]],
    }
    if len(per_output) > MAX_PER_OUTPUT:
        result["per_output_truncated"] = True
    if check is not None and check.get("kind") == "detect" and outputs:
        result["box_agreement"] = box_agreement(outputs[0], reference[0], check)
    return result


def _compare_one(name: str, got_raw: np.ndarray, want_raw: np.ndarray) -> Tuple[Dict[str, Any], int, int]:
    """One output against its reference: (its entry, rows classified alike, rows compared for top-1)."""
    got = np.asarray(got_raw, dtype=np.float64)
    want = np.asarray(want_raw, dtype=np.float64)
    if got.shape != want.shape:
        raise EdgeError(
            ErrorCode.BAD_INPUT,
            f"reference for output '{name}' has shape {list(want.shape)}, the engine gives {list(got.shape)}",
        )
    # fp16 engines can overflow to inf/NaN: count those and let NaN win the maximum
    # (Python's max() would quietly drop it), so a broken engine never looks perfect.
    nonfinite = int(np.sum(~np.isfinite(got)))
    error = float(np.max(np.abs(got - want))) if got.size else 0.0
    if nonfinite and math.isfinite(error):
        error = float("nan")
    entry: Dict[str, Any] = {"name": name, "max_abs_error": error, "nonfinite": nonfinite}
    if not _is_classifier(got):
        return entry, 0, 0
    same = int(np.sum(np.argmax(got, axis=1) == np.argmax(want, axis=1)))
    entry["top1_agreement"] = same / got.shape[0]
    return entry, same, got.shape[0]


def box_agreement(got: np.ndarray, want: np.ndarray, check: Dict[str, Any]) -> Optional[float]:
    """Fraction of the reference's confident boxes that the engine's output also yields (None: no boxes)."""
    try:
        k, stride = int(check["num_classes"]), int(check["stride"])
        return detection_agreement(decode(np.asarray(got, np.float32), k, stride),
                                   decode(np.asarray(want, np.float32), k, stride))
    except ValueError as exc:  # the output does not have the layout the check announced
        raise EdgeError(ErrorCode.BAD_INPUT, f"detect check does not fit the model's output: {exc}") from None
