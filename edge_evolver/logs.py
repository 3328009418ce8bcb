"""structlog configuration for the device side: the `edge-evolver` commands, the daemon's measuring child
and `host-trainer watch` set it up once.

Logs always go to stderr so stdout stays clean for ``--json`` output. Only APIs present in
structlog 21.5.0 (the newest on Python 3.6 / JetPack 4.6) and in 26.x are used.
"""

import logging
import sys
from typing import Any, List, Optional, TextIO, cast

import structlog

from .errors import EdgeError, ErrorCode

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _StderrProxy:
    """Resolves ``sys.stderr`` at every write instead of once at configure time.

    Test runners (click's CliRunner, pytest's capsys) swap sys.stderr and close the
    replacement afterwards; binding the object itself would later write to a closed file.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _level(level: str) -> int:
    try:
        return LEVELS[str(level).lower()]
    except KeyError:
        raise EdgeError(
            ErrorCode.BAD_INPUT, "unknown log level '{}'; use one of {}".format(level, ", ".join(LEVELS))
        ) from None


def configure_logging(level: str = "info", json: Optional[bool] = None) -> None:
    """Set up structlog: JSON lines when stderr is not a TTY (or json=True), else console.

    Safe to call repeatedly; the last call wins.
    """
    stream = _StderrProxy()
    use_json = (not stream.isatty()) if json is None else bool(json)
    processors: List[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    if use_json:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ]
    else:
        # ConsoleRenderer formats exceptions itself (since 21.2) and warns if
        # format_exc_info ran before it, so only the JSON chain has that step.
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, stream)),
        cache_logger_on_first_use=False,
    )
