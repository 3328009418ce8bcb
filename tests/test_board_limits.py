"""The host never gives up on a job before its board would (host_trainer/fleet/jobs.py `job_timeout_for`).

A board's retained status carries its `job_timeout_s`; the host waits at least that plus a margin for the
board's queue and the transfer. Status is unsigned: it may lengthen a wait (at most to 4 h), never shorten it.
"""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from edge_evolver.daemon.config import ServeConfig
from edge_evolver.protocol import dumps
from host_trainer.config import EvolveConfig
from host_trainer.fleet import jobs
from host_trainer.fleet.binding import ANY
from host_trainer.fleet.jobs import BOARD_LIMIT_MARGIN_S, BOARD_LIMIT_MAX_WAIT_S, Fleet, FleetConfig


class _Bar:
    def update(self, *args, **kwargs):
        pass


def _fleet(job_timeout_s: float = 1200.0, devices=("tx1-a",)) -> Fleet:
    return Fleet(FleetConfig(broker="mqtt://127.0.0.1:1", devices=list(devices), job_timeout_s=job_timeout_s), "run1")


def _status(fleet: Fleet, device: str, **fields) -> None:
    """A retained status, delivered as paho hands it over."""
    fleet._on_message(fleet.topics.status(device), dumps(dict({"state": "online", "device_id": device}, **fields)))


def test_the_defaults_agree():
    assert EvolveConfig().job_timeout_s >= ServeConfig().job_timeout_s + BOARD_LIMIT_MARGIN_S
    assert FleetConfig(broker="mqtt://h").job_timeout_s == EvolveConfig().job_timeout_s


def test_without_a_board_limit_the_host_setting_holds():
    fleet = _fleet()
    assert fleet.job_timeout_for("tx1-a") == 1200.0
    _status(fleet, "tx1-a")  # an older daemon: no job_timeout_s in its status
    assert fleet.job_timeout_for("tx1-a") == 1200.0


def test_a_longer_board_limit_lengthens_the_wait_and_warns_once():
    fleet = _fleet()
    _status(fleet, "tx1-a", job_timeout_s=900.0)  # the board's default: the host's already covers it
    with capture_logs() as logs:
        assert fleet.job_timeout_for("tx1-a") == 1200.0
    assert logs == []
    _status(fleet, "tx1-a", job_timeout_s=3600)
    with capture_logs() as logs:
        assert fleet.job_timeout_for("tx1-a") == 3600 + BOARD_LIMIT_MARGIN_S
        assert fleet.job_timeout_for("tx1-a") == 3600 + BOARD_LIMIT_MARGIN_S
    (warning,) = logs
    assert warning["event"] == "board_job_limit_longer" and warning["log_level"] == "warning"
    assert (warning["device"], warning["board_job_timeout_s"], warning["job_timeout_s"]) == ("tx1-a", 3600, 1200.0)


@pytest.mark.parametrize("limit", [1.0, 0, -5, "3600", True, None, [3600], float("nan")])
def test_status_never_shortens_the_wait(limit):
    fleet = _fleet()
    _status(fleet, "tx1-a", job_timeout_s=limit)
    assert fleet.job_timeout_for("tx1-a") == 1200.0


def test_status_lengthens_the_wait_only_up_to_a_bound():
    fleet = _fleet()
    _status(fleet, "tx1-a", job_timeout_s=1e12)
    assert fleet.job_timeout_for("tx1-a") == BOARD_LIMIT_MAX_WAIT_S == 4 * 3600
    assert _fleet(job_timeout_s=5 * 3600).job_timeout_for("tx1-a") == 5 * 3600  # the host's own choice stands


def test_a_group_job_waits_for_the_slowest_board_that_may_answer_it():
    fleet = _fleet(devices=("tx1-a", "tx1-b"))
    _status(fleet, "tx1-a", job_timeout_s=900)
    _status(fleet, "tx1-b", job_timeout_s=2000)
    _status(fleet, "evil", job_timeout_s=10000)  # not one of the run's boards: its answers are never taken
    assert fleet.job_timeout_for(ANY) == 2000 + BOARD_LIMIT_MARGIN_S
    assert fleet.job_timeout_for("tx1-a") == 1200.0


def test_wait_gives_the_board_its_limit(monkeypatch):
    """_wait itself: host 0.2 s, the board 1 s (no margin here, to keep the test short)."""
    monkeypatch.setattr(jobs, "BOARD_LIMIT_MARGIN_S", 0.0)
    fleet = _fleet(job_timeout_s=0.2)
    _status(fleet, "tx1-a", job_timeout_s=1.0)
    started = time.monotonic()
    assert fleet._wait("run1.g001.a0.tx1-a", "tx1-a", _Bar()) is None
    assert time.monotonic() - started >= 1.0


def test_the_queue_margin_is_a_quarter_of_the_board_limit_within_bounds():
    fleet = _fleet(job_timeout_s=20.0)
    _status(fleet, "tx1-a", job_timeout_s=20.0)
    assert fleet.job_timeout_for("tx1-a") == 30.0  # 20 s plus the 10 s floor
    _status(fleet, "tx1-a", job_timeout_s=400.0)
    assert fleet.job_timeout_for("tx1-a") == 500.0  # a quarter of 400
