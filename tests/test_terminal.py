"""What `evolve` shows: the live view a TTY gets, the plain lines a pipe gets, --quiet, and the event log."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import structlog

from host_trainer import events
from host_trainer.record import GenerationRecord
from host_trainer.terminal import Terminal, plain_header, plain_row

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _records() -> list[GenerationRecord]:
    first = GenerationRecord(generation=0, task="classify", synapses=674848, accuracy=0.8893, fps=2334.9)
    rejected = GenerationRecord(generation=1, task="classify", accepted=False, reject_reason="accuracy brake")
    carried = GenerationRecord(generation=1, task="classify", synapses=674848, accuracy=0.8893, carried_over=True)
    return [first, rejected, carried]


def _show(terminal: Terminal) -> None:
    first, rejected, carried = _records()
    terminal.note("run directory: runs/x")
    with terminal.step("gen 0: training", total=10) as bar:
        bar.update(5, 10, "epoch 0.50/1  loss 0.412  acc 87.5%")
    terminal.generation(first)
    terminal.rejected(rejected)
    terminal.generation(carried)


def test_a_tty_gets_bars_and_ends_with_the_whole_table() -> None:
    out = io.StringIO()
    with Terminal(out, live=True) as terminal:
        _show(terminal)
    text = ANSI.sub("", out.getvalue())
    assert "run directory: runs/x" in text and "gen 1 attempt 0 rejected: accuracy brake" in text
    final = text[text.rindex("acc %"):]  # the table printed once the bars are gone
    assert "674,848" in final and "88.93" in final and "2,335" in final and "1*" in final
    assert "carried over" in final


def test_a_pipe_gets_one_plain_line_per_generation() -> None:
    out = io.StringIO()
    with Terminal(out, live=False) as terminal:
        _show(terminal)
    first, _, carried = _records()
    assert out.getvalue().splitlines() == ["run directory: runs/x", plain_header("classify"), plain_row(first),
                                           "  gen 1 attempt 0 rejected: accuracy brake", plain_row(carried)]
    assert plain_row(carried).endswith("(carried over: no offspring survived)")
    assert "mAP@0.5 %" in plain_header("detect")


def test_quiet_shows_nothing_of_the_run() -> None:
    out = io.StringIO()
    with Terminal(out, quiet=True) as terminal:
        _show(terminal)
    assert out.getvalue() == ""


def test_events_go_to_the_run_log_and_to_the_terminal_by_level(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    shown: list[dict] = []
    events.configure("info", lambda event, line: shown.append(event), shown_from="warning")
    log = structlog.get_logger("test")
    try:
        log.info("before_the_run_directory", n=1)  # held until the run log opens
        events.attach_run_log(tmp_path / "events.jsonl")
        log.warning("job_timeout", job_id="j1")
        log.debug("not_logged_at_info")
    finally:
        events.close()
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines] == ["before_the_run_directory", "job_timeout"]
    assert lines[1]["level"] == "warning" and lines[1]["job_id"] == "j1" and "timestamp" in lines[1]
    assert [e["event"] for e in shown] == ["job_timeout"]  # only warnings and up reach the terminal
    with pytest.raises(ValueError, match="unknown log level"):
        events.configure("loud", None, "warning")


def test_an_event_off_a_tty_is_its_json_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    Terminal(io.StringIO(), live=False).event({"event": "job_retry", "level": "warning"}, '{"event": "job_retry"}')
    assert capsys.readouterr().err == '{"event": "job_retry"}\n'


def test_text_from_devices_is_never_read_as_markup() -> None:
    """A device state or job id like `[/x]` would be a rich markup error in a bar, a table or a warning."""
    out = io.StringIO()
    with Terminal(out, live=True) as terminal:
        with terminal.step("g001.a0.[/x]: waiting", total=10) as bar:
            bar.update(3, 10, "seen: d1=[/x]")
            terminal.event({"event": "waiting_for_device", "level": "warning", "seen": "d1=[/x]"}, "{}")
        terminal.generation(GenerationRecord(generation=0, task="[/x]", synapses=1))
    assert "seen: d1=[/x]" in ANSI.sub("", out.getvalue())


def test_log_levels_are_read_in_any_case(tmp_path: Path) -> None:
    events.configure("INFO", None, shown_from="WARNING")
    events.close()
