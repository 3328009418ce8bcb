"""The host's structured event log, configured once, in the CLI.

Every event (`structlog.get_logger(...).info("job_sent", job_id=…)`) is one JSON object per line in
`<run>/events.jsonl`, always; events from before the run directory exists (loading the data) are held
in memory and written first. What the terminal shows of them depends on where it writes
(host_trainer/terminal.py): on a TTY, or with --quiet, only warnings and errors; off a TTY, every event
at or above --log-level, as the same JSON line on stderr.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
EARLY_EVENTS = 1000  # held before the run directory exists; more than a data load ever logs
Show = Callable[[MutableMapping[str, Any], str], None]


class EventLog:
    """A structlog processor: writes the event, hands it to the terminal when it should show, drops it."""

    def __init__(self, show: Show | None = None, shown_from: str = "warning") -> None:
        self.show, self.shown_from = show, LEVELS[shown_from]
        self._file: Any = None
        self._early: list[str] = []
        self._lock = threading.Lock()

    def attach(self, path: Path) -> None:
        """Append every event from now on (and the ones held so far) to `path`."""
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open until the run ends)
            for line in self._early:
                self._file.write(line + "\n")
            self._early = []
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        line = json.dumps(event, sort_keys=True, default=str)
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")  # one write per line: a kill leaves at most one partial line
                self._file.flush()
            elif len(self._early) < EARLY_EVENTS:
                self._early.append(line)
        if self.show is not None and LEVELS.get(str(event.get("level")), logging.ERROR) >= self.shown_from:
            self.show(event, line)
        raise structlog.DropEvent


_current: EventLog | None = None


def configure(level: str, show: Show | None, shown_from: str) -> EventLog:
    """Route every host event through one EventLog; `level` filters what is logged at all."""
    global _current
    level, shown_from = str(level).lower(), str(shown_from).lower()
    for name in (level, shown_from):
        if name not in LEVELS:
            raise ValueError(f"unknown log level {name!r}; use one of {', '.join(LEVELS)}")
    close()
    _current = EventLog(show, shown_from)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.format_exc_info, _current],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(),  # never reached: the EventLog drops every event
        cache_logger_on_first_use=False,
    )
    return _current


def attach_run_log(path: Path) -> None:
    """From now on, events go to `path` too (a no-op when the CLI did not configure the log)."""
    if _current is not None:
        _current.attach(path)


def close() -> None:
    """End the run's log: the file is closed and structlog goes back to its defaults (nothing is held)."""
    global _current
    if _current is not None:
        _current.close()
        _current = None
        structlog.reset_defaults()
