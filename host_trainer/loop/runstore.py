"""Only for the bench/ scripts that still import `RunDir` from here: the run directory is host_trainer/rundir.py."""

from host_trainer.rundir import RunDir

__all__ = ["RunDir"]
