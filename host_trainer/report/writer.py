"""`host-trainer report RUN_DIR`: every figure and report.md, rendered first, then written atomically."""

from __future__ import annotations

from pathlib import Path

from host_trainer.files import atomic_write_bytes
from host_trainer.record import lineage as lineage_of
from host_trainer.report.figures import plot_precision_recall, plot_synapses_fps
from host_trainer.report.fleet_figures import fleet_figures
from host_trainer.report.markdown import render_markdown
from host_trainer.report.reading import load_run
from host_trainer.rundir import PRECISION_PNG, REPORT, SYNAPSES_PNG


def write_report(run: Path) -> list[Path]:
    """Write the figures and report.md into the run directory; return their paths."""
    run = Path(run)
    config, records = load_run(run)
    lineage, rejected = lineage_of(records), [r for r in records if not r.accepted]
    outputs = {
        run / SYNAPSES_PNG: plot_synapses_fps(config, lineage),
        run / PRECISION_PNG: plot_precision_recall(config, lineage, rejected),
        run / REPORT: render_markdown(config, lineage, rejected).encode("utf-8"),
    }
    outputs.update({run / name: png for name, png in fleet_figures(config, records, lineage).items()})
    # Everything is rendered before the first write, so a failure leaves no half-updated report behind.
    for path, data in outputs.items():
        atomic_write_bytes(path, data)
    return list(outputs)
