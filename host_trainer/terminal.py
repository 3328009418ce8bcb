"""What `host-trainer evolve` shows while it runs (a `RunView`, host_trainer/progress.py).

- On a TTY: a live region drawn by rich, a progress bar for each long step (data generation, training
  with epoch, loss and batch accuracy, evaluation, export, waiting for a device with the job id and the
  seconds waited) and the generation table growing beneath it; notes and warnings print above it. When
  the run ends, the bars go and the whole table is printed once.
- Off a TTY (a pipe, CI): the notes and one plain table row per generation on stdout, nothing else, so
  `| tee` and CI logs stay readable; the structured events go to stderr as JSON (host_trainer/events.py).
- `--quiet`: only warnings, errors and the CLI's final line.
The table's columns are the generation record's (`record.COLUMNS`, `TERMINAL_COLUMNS`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, TextIO

from host_trainer.progress import Step
from host_trainer.record import COLUMNS, TERMINAL_COLUMNS, Column, GenerationRecord
from host_trainer.rundir import GENERATIONS

CARRIED = "(carried over: no offspring survived)"
FINAL = "(final fine-tune)"
REST = "(no offspring survived: the parent trained again, no cut)"
# Left out, in this order, when the terminal is too narrow for every column.
OPTIONAL = ("clusters", "latency_ms_p99", "recall", "precision")
# Plain-text widths, so that rows printed one at a time line up under the header.
WIDTHS = {"generation": 3, "alpha_c": 5, "synapses": 9, "clusters": 8, "params": 9, "macs": 8, "accuracy": 6,
          "precision": 6, "recall": 6, "fps": 8, "latency_ms_p50": 7, "latency_ms_p99": 7}


def plain_header(task: str | None, keys: tuple[str, ...] = TERMINAL_COLUMNS) -> str:
    return "  ".join(COLUMNS[k].title(task).rjust(_width(COLUMNS[k], task)) for k in keys)


def plain_row(record: GenerationRecord, keys: tuple[str, ...] = TERMINAL_COLUMNS) -> str:
    cells = [COLUMNS[k].text(record).rjust(_width(COLUMNS[k], record.task)) for k in keys]
    note = next((f"  {text}" for flag, text in ((record.carried_over, CARRIED), (record.final_tune, FINAL),
                                              (record.rest, REST)) if flag), "")
    return "  ".join(cells) + note


def _width(column: Column, task: str | None) -> int:
    return max(WIDTHS.get(column.key, 8), len(column.title(task)))


class _Bar:
    def __init__(self, bars: Any, task_id: Any) -> None:
        self.bars, self.task_id = bars, task_id

    def update(self, completed: float, total: float | None = None, info: str = "") -> None:
        self.bars.update(self.task_id, completed=completed, total=total, info=info)


class _NoBar:
    def update(self, completed: float, total: float | None = None, info: str = "") -> None:
        pass


class Terminal:
    """Use as a context manager: the live region starts on enter and ends, with the full table, on exit."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.forced = live is True  # drawn as on a terminal even when the stream is not one (tests, `script`)
        self.live = (self.stream.isatty() if live is None else live) and not quiet
        self.records: list[GenerationRecord] = []
        self._header_done = False
        self._lock = threading.RLock()
        self._console: Any = None
        self._bars: Any = None
        self._region: Any = None

    # ---- lifetime ----------------------------------------------------------------------------------
    def __enter__(self) -> Terminal:
        if self.live:
            from rich.console import Console
            from rich.live import Live
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._console = Console(file=self.stream, force_terminal=True if self.forced else None,
                                    width=160 if self.forced and not self.stream.isatty() else None)
            # markup=False: labels and info carry job ids and device states, which are no rich markup
            self._bars = Progress(TextColumn("{task.description}", markup=False), BarColumn(bar_width=24),
                                  _count_column(), TextColumn("{task.fields[info]}", markup=False),
                                  TimeElapsedColumn(), console=self._console)
            self._region = Live(console=self._console, get_renderable=self._render, refresh_per_second=4,
                                transient=True, redirect_stdout=False, redirect_stderr=False)
            self._region.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._region is not None:
            self._region.stop()
            self._region = None
            if self.records:
                self._console.print(self._table(self.records))

    # ---- RunView -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, label: str, total: float | None = None) -> Iterator[Step]:
        if self._bars is None:
            yield _NoBar()
            return
        task_id = self._bars.add_task(label, total=total, info="")
        try:
            yield _Bar(self._bars, task_id)
        finally:
            self._bars.remove_task(task_id)

    def note(self, text: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)  # paths stay whole
        else:
            self._line(text)

    def generation(self, record: GenerationRecord) -> None:
        with self._lock:
            self.records.append(record)
        if self.quiet or self._console is not None:
            return  # the live region draws it
        if not self._header_done:
            self._line(plain_header(record.task))
            self._header_done = True
        self._line(plain_row(record))

    def rejected(self, record: GenerationRecord) -> None:
        self.note(f"  gen {record.generation} attempt {record.attempt} rejected: {record.reject_reason}")

    def event(self, event: MutableMapping[str, Any], line: str) -> None:
        """A structured event the event log decided to show (host_trainer/events.py)."""
        if self._console is not None:
            self._console.print(human_event(event), markup=False, highlight=False, style=_style(event),
                                soft_wrap=True)
        elif sys.stderr.isatty():
            sys.stderr.write(human_event(event) + "\n")
        else:
            sys.stderr.write(line + "\n")

    # ---- drawing -----------------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _render(self) -> Any:
        from rich.console import Group

        with self._lock:
            records = list(self.records)
        if not records:
            return self._bars
        room = max(3, self._console.size.height - 6 - len(self._bars.tasks))
        return Group(self._bars, self._table(records[-room:], hidden=max(0, len(records) - room)))

    def _fitting_columns(self, task: str | None) -> tuple[str, ...]:
        """Every column when the terminal is wide enough; else without the optional ones, in order."""
        keys: tuple[str, ...] = TERMINAL_COLUMNS
        for key in OPTIONAL:
            if _columns_width(keys, task) <= self._console.size.width:
                break
            keys = tuple(k for k in keys if k != key)
        return keys

    def _table(self, records: list[GenerationRecord], hidden: int = 0) -> Any:
        from rich.table import Table
        from rich.text import Text

        task = records[-1].task
        keys = self._fitting_columns(task)
        caption = f"{hidden} earlier generations above the fold; all in {GENERATIONS}" if hidden else None
        table = Table(box=None, caption=caption, pad_edge=False, header_style="bold")
        for key in keys:
            table.add_column(COLUMNS[key].title(task), justify="right", no_wrap=True)
        for r in records:
            cells = [COLUMNS[k].text(r) for k in keys]
            cells[0] += "*" if r.carried_over else "+" if r.rest else ""
            table.add_row(*(Text(cell) for cell in cells))
        for mark, flag, text in (("*", "carried_over", CARRIED), ("+", "rest", REST)):
            if any(getattr(r, flag) for r in records):
                table.caption = (table.caption + "; " if table.caption else "") + f"{mark} {text}"
        return table


def _count_column() -> Any:
    """`241/376` for a step with a known size; nothing for one without (the bar pulses instead)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.completed:,.0f}/{task.total:,.0f}" if task.total else "")

    return Count()


def _columns_width(keys: tuple[str, ...], task: str | None) -> int:
    return sum(_width(COLUMNS[k], task) + 2 for k in keys)


def human_event(event: Mapping[str, Any]) -> str:
    """`warning: job_timeout job_id=… device=local`: one readable line of a structured event."""
    details = " ".join(f"{k}={v}" for k, v in sorted(event.items()) if k not in ("event", "level", "timestamp"))
    return f"{event.get('level', 'info')}: {event.get('event', '')}" + (f" {details}" if details else "")


def _style(event: Mapping[str, Any]) -> str:
    return "bold red" if event.get("level") in ("error", "critical", "exception") else "yellow"
