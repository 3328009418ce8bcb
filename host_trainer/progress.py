"""How long steps report progress, without knowing who shows it.

Data generation, training, export and waiting for a device take seconds to minutes. They report through a
`Progress`: `with progress.step("training", total=steps) as step: step.update(done, info="loss 0.41")`,
and `progress.note(text)` for a line the user should see (the run directory, the embedded broker's port).
A `RunView` also shows each generation's record as it lands (the table) and each rejection.
The terminal (host_trainer/terminal.py) draws bars on a TTY and plain lines elsewhere; `NULL` shows
nothing, for library use and tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from host_trainer.record import GenerationRecord


class Step(Protocol):
    def update(self, completed: float, total: float | None = None, info: str = "") -> None: ...


class Progress(Protocol):
    def step(self, label: str, total: float | None = None) -> contextlib.AbstractContextManager[Step]: ...
    def note(self, text: str) -> None: ...


class RunView(Progress, Protocol):
    def generation(self, record: GenerationRecord) -> None: ...
    def rejected(self, record: GenerationRecord) -> None: ...


class _NullStep:
    def update(self, completed: float, total: float | None = None, info: str = "") -> None:
        pass


class NullProgress:
    """Shows nothing."""

    @contextlib.contextmanager
    def step(self, label: str, total: float | None = None) -> Iterator[Step]:
        yield _NullStep()

    def note(self, text: str) -> None:
        pass

    def generation(self, record: GenerationRecord) -> None:
        pass

    def rejected(self, record: GenerationRecord) -> None:
        pass


NULL = NullProgress()
