"""Reading a run directory for the report: its config and its records, with one-line errors.

Only generations.jsonl and config.json are read, so a run that is still going can be reported on too.
"""

from __future__ import annotations

from pathlib import Path

from host_trainer.errors import UserError
from host_trainer.record import GenerationRecord
from host_trainer.rundir import CONFIG, GENERATIONS, RunDir


def check_run_dir(run: Path) -> None:
    if not run.exists():
        raise UserError(f"{run} does not exist")
    if not run.is_dir():
        raise UserError(f"{run} is not a folder (expected a run directory made by `host-trainer evolve`)")
    missing = [name for name in (GENERATIONS, CONFIG) if not (run / name).is_file()]
    if missing:
        # `--run-dir` names the parent folder, so pointing at it is an easy mistake: say where the run is.
        inner = sorted(p.parent for p in run.glob(f"*/{GENERATIONS}"))
        hint = f"; did you mean {inner[0]}?" if len(inner) == 1 else ""
        raise UserError(f"{run} is not a run directory: no {' or '.join(missing)}{hint}")


def load_run(run: Path) -> tuple[dict, list[GenerationRecord]]:
    """(config, every record); a run without an accepted generation is a UserError."""
    check_run_dir(run)
    store = RunDir(run)
    config, records = store.read_config(), store.records()
    if not records:
        raise UserError(f"{run / GENERATIONS} is empty: the run has not finished generation 0 yet")
    if not any(r.accepted for r in records):
        raise UserError(f"{run / GENERATIONS} has no accepted generation")
    return config, records
