"""The generation record: JSON round trips, rows of older versions, hostile rows, and the columns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from host_trainer.cli import app
from host_trainer.errors import UserError
from host_trainer.record import COLUMNS, FIELDS, SCHEMA_VERSION, GenerationRecord, lineage, sanitized
from host_trainer.rundir import RunDir, read_records

OLD_RUN = Path(__file__).parent / "fixtures" / "run-v0.1"


def test_json_round_trip_keeps_every_field() -> None:
    record = GenerationRecord(generation=3, parent=2, alpha=[0.8, 0.95], fps=1234.5, devices={"a": {"fps": 1.0}},
                              power_mode={"id": 0, "name": "MAXN"}, carried_over=True)
    data = record.to_json()
    assert set(data) == {f.name for f in FIELDS} and data["schema"] == SCHEMA_VERSION
    assert GenerationRecord.from_json(json.loads(json.dumps(data))) == record


def test_a_row_of_version_0_1_reads_and_writes_back_unchanged() -> None:
    rows = [json.loads(line) for line in (OLD_RUN / "generations.jsonl").read_text().splitlines()]
    assert all("schema" not in r for r in rows)
    records = [GenerationRecord.from_json(r) for r in rows]
    assert [r.schema for r in records] == [1, 1] and [r.generation for r in records] == [0, 1]
    assert records[1].device_id == "local" and records[1].carried_over is False  # absent then: the default
    for row, record in zip(rows, records):
        written = record.to_json()
        assert {k: written[k] for k in row} == row  # nothing a 0.1 row said is changed or lost


def test_unknown_keys_are_kept_and_written_back() -> None:
    record = GenerationRecord.from_json({"generation": 1, "schema": 2, "from_the_future": {"x": 1}})
    assert record.extra == {"from_the_future": {"x": 1}} and record.to_json()["from_the_future"] == {"x": 1}


@pytest.mark.parametrize("row, fragment", [
    ([1, 2], "not a JSON object"),
    ({"synapses": 5}, "generation"),
    ({"generation": "3"}, "generation"),
    ({"generation": True}, "generation"),
    ({"generation": 1, "fps": "fast"}, "'fps' must be a number"),
    ({"generation": 1, "accepted": "yes"}, "'accepted' must be true or false"),
    ({"generation": 1, "synapses": 1.5}, "'synapses' must be an integer"),
    ({"generation": 1, "alpha": "0.8"}, "'alpha' must be a list"),
])
def test_a_hostile_row_is_refused_with_the_field_named(row: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        GenerationRecord.from_json(row)


def test_reading_a_run_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "generations.jsonl"
    path.write_text('{"generation": 0}\n{"generation": 1, "fps": "fast"}\n')
    with pytest.raises(UserError, match="line 2 is not a generation record: 'fps'"):
        read_records(path)
    path.write_text('{"generation": 0}\n{"generation": 1\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        read_records(path)
    path.write_text(json.dumps({"generation": 0, "schema": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(UserError, match="update it"):
        read_records(path)
    assert read_records(tmp_path / "absent.jsonl") == []


def test_update_refuses_a_name_that_is_no_field() -> None:
    record = GenerationRecord(generation=0)
    assert record.update({"fps": 10.0}).fps == 10.0
    with pytest.raises(KeyError, match="fsp"):
        record.update({"fsp": 10.0})


def test_columns_format_once_for_every_view() -> None:
    record = GenerationRecord(generation=2, macs=4_000_000, accuracy=0.9277, fps=12345.6, synapses=16961)
    assert [COLUMNS[k].text(record) for k in ("generation", "macs", "accuracy", "fps", "synapses", "recall")] == \
        ["2", "4.000", "92.77", "12,346", "16,961", "-"]
    assert COLUMNS["accuracy"].title("detect") == "mAP@0.5 %" and COLUMNS["accuracy"].title("classify") == "acc %"
    assert COLUMNS["fps"].text({"fps": float("nan")}) == "-"  # a mapping (a watched row) works too


def test_lineage_takes_the_last_accepted_record_of_each_generation() -> None:
    records = [GenerationRecord(generation=0), GenerationRecord(generation=1, accepted=False, attempt=0),
               GenerationRecord(generation=1, attempt=1), GenerationRecord(generation=1, attempt=2)]
    assert [(r.generation, r.attempt) for r in lineage(records)] == [(0, 0), (1, 2)]


def test_report_reads_a_run_of_version_0_1(tmp_path: Path) -> None:
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    report = (run / "report.md").read_text()
    assert "precision **fp16**" in report and "| 1 | 0.600 | 12,058 |" in report


@pytest.mark.slow
def test_resume_continues_a_run_of_version_0_1(tmp_path: Path) -> None:
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    before = RunDir(run).records()
    result = CliRunner().invoke(app, ["evolve", "--resume", str(run), "--generations", "2"])
    assert result.exit_code == 0, result.output
    after = RunDir(run).records()
    assert [r.generation for r in after] == [0, 1, 2]
    assert after[:2] == before and [r.schema for r in after] == [1, 1, SCHEMA_VERSION]
    assert after[2].parent == 1 and after[2].fps and after[2].device_id == "local"
    config = json.loads((run / "config.json").read_text())  # rewritten for the new --generations, in today's keys
    assert config["precision_format"] == "fp16" and config["generations"] == 2 and "precision" not in config


def test_a_device_value_of_the_wrong_type_is_recorded_as_null() -> None:
    fit, refused = sanitized({"engine_bytes": 12.0, "clocks_locked": "unknown", "fps": 99.5, "device_id": None})
    assert fit == {"engine_bytes": 12, "clocks_locked": None, "fps": 99.5, "device_id": None}
    assert refused == {"clocks_locked": "unknown"}
    record = GenerationRecord(generation=1).update(fit)
    assert GenerationRecord.from_json(record.to_json()) == record  # what it holds, it reads back
    with pytest.raises(ValueError, match="'engine_bytes' must be an integer"):
        GenerationRecord(generation=1).update({"engine_bytes": 12.5})


def test_absent_or_null_bookkeeping_fields_read_safely() -> None:
    record = GenerationRecord.from_json({"generation": 2, "schema": None, "attempt": None, "carried_over": None})
    assert (record.schema, record.attempt, record.accepted, record.carried_over) == (1, 0, False, False)
    assert GenerationRecord.from_json({"generation": 2, "accepted": True}).accepted


def test_an_integer_too_large_for_a_float_shows_as_missing() -> None:
    record = GenerationRecord(generation=1, macs=10 ** 400)
    assert COLUMNS["macs"].text(record) == "-"


def test_a_config_json_of_the_wrong_types_is_one_line(tmp_path: Path) -> None:
    from host_trainer.config import EvolveConfig

    for bad in ({"generations": "ten"}, {"alpha_c": None}, {"devices": "tx1"}, {"no_mqtt": 1}):
        with pytest.raises(UserError, match=repr(next(iter(bad)))):
            EvolveConfig.from_dict(bad)
