"""`host-trainer report` on a hand-written run directory: no training, a second or two."""

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
import matplotlib  # noqa: E402

matplotlib.use("Agg")  # headless machines: never try a display
import matplotlib.pyplot as plt  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from host_trainer.cli import app  # noqa: E402
from host_trainer.errors import UserError  # noqa: E402
from host_trainer.report import writer  # noqa: E402
from host_trainer.report.writer import write_report  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONFIG = {"model": "lenet5", "dataset": "digits", "generations": 3, "precision": "fp16", "alpha_c": 0.85,
          "alpha_s": 0.9, "channel_multiple": 16, "seed": 7, "bench_threads": 1,
          "bench_backend": "onnxruntime", "max_accuracy_drop": 2.0}
REASON = "validation accuracy 0.5000 is more than 2.0 points below generation 0 (0.9500)"


def _row(gen: int, synapses: int, params: int, macs: int, acc: float, fps, **extra) -> dict:
    alpha = None if gen == 0 else [0.85, 0.9]
    row = {"generation": gen, "parent": None if gen == 0 else gen - 1, "attempt": 0, "seed": 100 + gen,
           "alpha": alpha, "alpha_c": alpha and alpha[0], "alpha_s": alpha and alpha[1],
           "synapses": synapses, "clusters": 200 - 10 * gen, "params": params, "macs": macs,
           "accuracy": acc, "precision": acc - 0.01, "recall": acc + 0.005, "val_accuracy": acc,
           "accuracy_before_restriction": acc, "train_loss": 0.3, "accepted": True, "reject_reason": None,
           "onnx_path": f"gen-{gen:03d}/model.onnx", "onnx_bytes": 2000 * synapses // 1000,
           "model_sha256": f"{gen:x}" * 64, "fps": fps, "latency_ms_mean": 1.0, "latency_ms_p50": 0.9,
           "latency_ms_p90": 1.1, "latency_ms_p99": 1.5, "latency_ms_min": 0.8, "latency_ms_max": 2.0,
           "bench_backend": "onnxruntime", "bench_threads": 1}
    row.update(extra)
    return row


def _rejected() -> dict:
    row = _row(2, 20000, 40000, 1500000, 0.5, None, attempt=0, accepted=False, reject_reason=REASON)
    measured = [k for k in row if k.startswith(("latency", "onnx", "fps", "model_sha"))]
    for key in measured:  # a rejected offspring is never exported nor measured
        row.pop(key)
    return row


# Generation 0 → 3: synapses 10×, params 4×, MACs 3×, fps 2.5×, accuracy −1.5 points. Gen 2 lost its fps.
ROWS = [_row(0, 100000, 120000, 3000000, 0.95, 1000.0), _row(1, 50000, 80000, 2000000, 0.945, 1500.0),
        _rejected(), _row(2, 25000, 50000, 1500000, 0.94, None, attempt=1),
        _row(3, 10000, 30000, 1000000, 0.935, 2500.0)]


def _write_run(folder: Path, rows=ROWS, config=CONFIG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return _write_run(tmp_path / "run")


@pytest.fixture
def report(run: Path) -> str:
    write_report(run)
    return (run / "report.md").read_text(encoding="utf-8")


def test_writes_every_output_and_no_temporary_file(run: Path) -> None:
    outputs = write_report(run)
    # The fixture's rows carry fps but no device: the Pareto figure, no per-device figure.
    assert outputs == [run / "synapses_fps.png", run / "precision_recall.png", run / "report.md", run / "pareto.png"]
    leftovers = sorted(p.name for p in run.iterdir())
    assert leftovers == ["config.json", "generations.jsonl", "pareto.png", "precision_recall.png", "report.md",
                         "synapses_fps.png"]  # no temporary files left behind


def test_a_failure_while_rendering_writes_nothing(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything is rendered before the first write: a crash in the last figure leaves the old report whole."""
    (run / "report.md").write_text("the report of yesterday")

    def broken(*_args: object) -> dict:
        raise RuntimeError("matplotlib crashed")

    monkeypatch.setattr(writer, "fleet_figures", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        write_report(run)
    assert (run / "report.md").read_text() == "the report of yesterday"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "generations.jsonl", "report.md"]


@pytest.mark.parametrize("name", ["synapses_fps.png", "precision_recall.png"])
def test_figures_are_real_pngs(run: Path, name: str) -> None:
    write_report(run)
    data = (run / name).read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    image = plt.imread(run / name)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500


def test_table_has_one_row_per_accepted_generation(report: str) -> None:
    rows = [line for line in report.splitlines() if re.match(r"^\| \d+\*? \| [\d.–]+ \| [\d,]+ \|", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "1", "2", "3"]
    gen3 = [c.strip() for c in rows[3].split("|")[1:-1]]
    assert gen3 == ["3", "0.850", "10,000", "170", "30,000", "1.000", "93.50", "92.50", "94.00", "2,500",
                    "0.900", "1.500", "20.0", "333333333333"]
    assert [c.strip() for c in rows[2].split("|")[1:-1]][9] == "–"  # the missing fps


def test_rejected_attempts_are_listed(report: str) -> None:
    assert "## Rejected attempts" in report
    assert f"| 2 | 0 | 0.850 | 50.00 % | {REASON} |" in report


def test_summary_ratios(report: str) -> None:
    for phrase in ("synapses reduced 10.00×", "parameters reduced 4.00×", "MACs reduced 3.00×",
                   "fps ratio 2.50×", "changed by -1.50 points", "not a same-process A/B"):
        assert phrase in report


def test_heading_and_image_links(report: str) -> None:
    assert report.startswith("# Evolution report: lenet5 on digits")
    assert "precision **fp16**" in report and "α_c = 0.85, α_s = 0.9" in report and "seed **7**" in report
    assert "(synapses_fps.png)" in report and "(precision_recall.png)" in report


def test_carried_over_and_missing_values(tmp_path: Path) -> None:
    carried = _row(2, 50000, 80000, 2000000, 0.945, 1400.0, carried_over=True, attempt=3)
    rows = [ROWS[0], ROWS[1], carried, _row(3, 40000, 70000, None, 0.9, None, accuracy=None, recall=None)]
    run = _write_run(tmp_path / "run", rows, {"model": "mlp", "dataset": "glyphs"})  # sparse config
    write_report(run)
    text = (run / "report.md").read_text(encoding="utf-8")
    assert "| 2* |" in text and "carried over" in text
    assert "MACs reduced –" in text and "No offspring was rejected." in text


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no generations.jsonl or config.json"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("{}")), "no generations.jsonl"),
    (lambda p: (_write_run(p), (p / "generations.jsonl").write_text("\n")), "is empty"),
    (lambda p: (_write_run(p), (p / "generations.jsonl").write_text(
        json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n{not json\n")), "line 3 is not valid JSON"),
    (lambda p: (_write_run(p), (p / "generations.jsonl").write_text("[1, 2]\n")),
     "line 1 is not a generation"),
    (lambda p: (_write_run(p), (p / "config.json").write_text("{oops")), "config.json cannot be read"),
    (lambda p: _write_run(p, [_rejected()]), "no accepted generation"),
])
def test_user_errors(tmp_path: Path, setup, message: str) -> None:
    path = tmp_path / "run"
    setup(path)
    with pytest.raises(UserError, match=re.escape(message)) as info:
        write_report(path)
    assert "\n" not in str(info.value)


def test_parent_folder_points_at_the_run(tmp_path: Path) -> None:
    inner = _write_run(tmp_path / "runs" / "20260101-000000-lenet5-digits-s0")
    with pytest.raises(UserError, match=f"did you mean {re.escape(str(inner))}"):
        write_report(tmp_path / "runs")


def test_cli_prints_the_paths(run: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(run / n) for n in ("synapses_fps.png", "precision_recall.png",
                                                            "report.md", "pareto.png")]


def test_cli_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0]


def test_run_without_any_fps_still_draws(tmp_path: Path) -> None:
    rows = [dict(r, fps=None) for r in ROWS if r.get("accepted")]
    run = _write_run(tmp_path / "run", rows)
    write_report(run)
    assert (run / "synapses_fps.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "fps ratio –" in (run / "report.md").read_text(encoding="utf-8")
