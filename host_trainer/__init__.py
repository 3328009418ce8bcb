"""host-trainer: evolutionary synthesis with synaptic precision restriction (workstation side).

The Python API (docs/api.md says what is stable):

- `evolve(config, run_dir="runs")`: run an evolution with an `EvolveConfig` (host_trainer/config.py); the new run
  directory, with its deployable result in `final/`;
- `load(path, generation=None)`: a run's generation (the last accepted by default), or an exported folder, as a
  `Deployed` (host_trainer/deploy/loading.py): the compact network, fp32, in eval mode, and its preprocessing.

`import host_trainer` stays light: torch and the rest load when one of these is first called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from host_trainer.config import EvolveConfig
    from host_trainer.deploy.loading import Deployed

from host_trainer.version import __version__

__all__ = ["__version__", "evolve", "load"]


def load(path: Union[str, Path], generation: int | None = None) -> Deployed:
    """The generation of a run directory `path` (the last accepted one unless `generation` is given), or the
    exported folder `path` (a run's final/, or `host-trainer export`'s --out), as a `Deployed`: `.model` (the
    compact nn.Module, fp32, eval mode, on the CPU), `.preprocess` (preprocess.json's content), `.generation`,
    `.classes` and `.prepare(image)`. Bad input raises `host_trainer.errors.UserError` (one line)."""
    from host_trainer.loop.result import load as load_result

    return load_result(Path(path), generation)


def evolve(config: EvolveConfig, run_dir: Union[str, Path] = "runs") -> Path:
    """Run an evolution as `host-trainer evolve` does, in this process (one process: torchrun is the CLI's), and
    return its run directory, made under `run_dir`; when it returns, the directory holds `final/`. `config` is not
    changed. Events go to the run's events.jsonl, warnings also to stderr. Bad input raises `UserError` before
    anything is written; Ctrl-C stops the run, which `host-trainer evolve --resume` continues."""
    import dataclasses
    import sys

    from host_trainer import events
    from host_trainer.loop.session import start_run
    from host_trainer.rundir import run_name

    def warn(_event: object, line: str) -> None:
        sys.stderr.write(line + "\n")

    cfg = dataclasses.replace(config).validate()
    events.configure("info", warn, shown_from="warning")
    try:
        return start_run(cfg, Path(run_dir), run_name(cfg.model, cfg.dataset, cfg.seed)).path
    finally:
        events.close()
