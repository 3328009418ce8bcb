"""Did two runs compute the same thing? `python bench/compare_runs.py RUN_A RUN_B`

Compares every generations.jsonl field that does not depend on timing (sizes, accuracies, losses, seeds,
α, accept/reject decisions, parity figures, the ONNX sha256), and the bytes of every generation's
model.onnx and weights.npz. Timing fields (fps, latencies, *_seconds, the device's engine and power
facts) differ between any two runs and are left out. Prints one line per difference and a summary;
exit status 1 when anything differs. Reads rows as plain JSON, so it also compares runs written by
older versions.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from host_trainer.rundir import GENERATION, GENERATIONS, MODEL, WEIGHTS  # noqa: E402

DETERMINISTIC = ("generation", "parent", "attempt", "offspring", "seed", "task", "accepted", "reject_reason",
                 "carried_over", "rest", "final_tune", "alpha", "alpha_c", "alpha_s", "speed_pressure", "target_gap",
                 "synapses", "clusters", "params", "macs", "accuracy", "precision", "recall", "map50", "loss",
                 "val_accuracy",
                 "accuracy_before_restriction", "train_loss", "precision_format", "onnx_path", "onnx_bytes",
                 "model_sha256", "onnx_max_abs_err", "onnx_top1_agreement", "onnx_box_agreement",
                 "onnx_parity_samples", "onnx_parity_ok", "agreement_top1", "agreement_boxes")


# What an absent key means in rows written before every field was always present.
ABSENT = {"carried_over": False, "rest": False, "final_tune": False, "attempt": 0, "accepted": True}


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / GENERATIONS).read_text().splitlines() if line.strip()]


def files(run: Path) -> dict[str, str]:
    found = sorted(run.glob(f"{GENERATION}*/{MODEL}")) + sorted(run.glob(f"{GENERATION}*/{WEIGHTS}"))
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in found}


def differences(a: Path, b: Path) -> list[str]:
    out = []
    rows_a, rows_b = rows(a), rows(b)
    if len(rows_a) != len(rows_b):
        out.append(f"{len(rows_a)} rows against {len(rows_b)}")
    for n, (ra, rb) in enumerate(zip(rows_a, rows_b), start=1):
        for key in DETERMINISTIC:
            va, vb = ra.get(key, ABSENT.get(key)), rb.get(key, ABSENT.get(key))
            if va != vb:
                out.append(f"row {n} (generation {ra.get('generation')}): {key} {va!r} != {vb!r}")
    fa, fb = files(a), files(b)
    for name in sorted(set(fa) | set(fb)):
        if fa.get(name) != fb.get(name):
            out.append(f"{name}: {fa.get(name, 'missing')[:12]} != {fb.get(name, 'missing')[:12]}")
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    found = differences(a, b)
    for line in found:
        print(line)
    n_rows, n_files = len(rows(a)), len(files(a))
    print(f"{'DIFFERENT' if found else 'identical'}: {n_rows} rows x {len(DETERMINISTIC)} fields, "
          f"{n_files} model and weight files ({len(found)} differences)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
