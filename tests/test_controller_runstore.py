"""The accuracy brake, the environmental-factor parser and the atomic run directory."""

import json
import math
import os

import pytest

from host_trainer.config import EvolveConfig, parse_env_factor
from host_trainer.errors import UserError
from host_trainer.files import atomic_write_json
from host_trainer.loop.controller import MIN_PRESSURE, Controller
from host_trainer.record import GenerationRecord
from host_trainer.rundir import RunDir


def test_pressure_is_users_alpha_with_full_headroom():
    c = Controller(0.85, 0.9, tolerance=0.02)
    assert c.alpha(baseline=0.9, parent=0.9, attempt=0) == pytest.approx((0.85, 0.9))
    assert c.alpha(baseline=0.9, parent=0.95, attempt=0) == pytest.approx((0.85, 0.9))  # better than gen 0


def test_brake_eases_pressure_as_tolerance_is_used():
    c = Controller(0.8, 0.8, tolerance=0.02)
    half = c.alpha(baseline=0.9, parent=0.89, attempt=0)[0]
    assert half == pytest.approx(1 - 0.2 * 0.5)
    floor = c.alpha(baseline=0.9, parent=0.85, attempt=0)[0]
    assert floor == pytest.approx(1 - 0.2 * MIN_PRESSURE)


def test_retries_halve_pressure():
    c = Controller(0.8, 0.8, tolerance=0.02)
    alphas = [c.alpha(0.9, 0.9, attempt)[0] for attempt in range(3)]
    assert alphas == pytest.approx([0.8, 0.9, 0.95])


def test_verdict():
    c = Controller(0.8, 0.8, tolerance=0.02)
    assert c.verdict(0.9, 0.885, 0.5) is None
    assert "below generation 0" in c.verdict(0.9, 0.87, 0.5)
    assert "not finite" in c.verdict(0.9, 0.95, math.nan)


@pytest.mark.parametrize("text,expected", [("0.9", (0.9, 0.9)), ("0.8,0.95", (0.8, 0.95)), (" 1 , 0.5 ", (1.0, 0.5))])
def test_parse_env_factor(text, expected):
    assert parse_env_factor(text) == expected


@pytest.mark.parametrize("text", ["abc", "0.5,x", "0", "1.2", "0.1,0.2,0.3", ""])
def test_parse_env_factor_rejects(text):
    with pytest.raises(UserError, match="--env-factor"):
        parse_env_factor(text)


def test_config_validation_and_roundtrip():
    cfg = EvolveConfig()
    assert EvolveConfig.from_dict({**cfg.to_dict(), "unknown_future_key": 1}) == cfg
    with pytest.raises(UserError, match="--precision"):
        EvolveConfig(precision_format="fp8").validate()
    old = {k: v for k, v in cfg.to_dict().items() if k != "precision_format"}
    assert EvolveConfig.from_dict({**old, "precision": "bf16"}).precision_format == "bf16"  # a config.json of 0.1
    with pytest.raises(UserError, match="--channel-multiple"):
        EvolveConfig(channel_multiple=0).validate()


def test_atomic_write_leaves_no_temporary_and_is_readable(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]
    assert (tmp_path / "x.json").stat().st_mode & 0o044  # group/other can read


def test_commit_generation_is_all_or_nothing(tmp_path):
    run = RunDir(tmp_path)

    def broken(folder):
        (folder / "weights.npz").write_bytes(b"half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        run.commit_generation(1, broken)
    assert os.listdir(tmp_path) == []
    run.commit_generation(1, lambda folder: (folder / "model.onnx").write_bytes(b"x"))
    assert (tmp_path / "gen-001" / "model.onnx").read_bytes() == b"x"


def test_completed_records_and_clean_partial(tmp_path):
    run = RunDir(tmp_path)
    for g in (0, 1, 2):
        (tmp_path / f"gen-{g:03d}").mkdir()
    (tmp_path / ".gen-003.tmp").mkdir()
    (tmp_path / ".tmp-x1y2").write_bytes(b"half a file")  # an atomic write cut short
    (tmp_path / "gen-notes").mkdir()  # not a generation folder: left alone
    records = [GenerationRecord(generation=g, accepted=a)
               for g, a in ((0, True), (1, True), (2, False), (2, True), (3, False))]  # generation 3 cut short
    run.write_records(records)
    (tmp_path / "gen-002").rmdir()  # as if killed between rows and folder: gen 2 does not count
    done = run.completed_records()
    assert [(r.generation, r.accepted) for r in done] == [(0, True), (1, True)]
    (tmp_path / "gen-002").mkdir()
    run.clean_partial(last_generation=1)
    assert sorted(os.listdir(tmp_path)) == ["gen-000", "gen-001", "gen-notes", "generations.jsonl"]
