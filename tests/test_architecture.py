"""The floor plan holds: no import cycles, edge_evolver never needs the host, one source of defaults and
choices, documents that agree with the code, and no citation of documents outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from host_trainer import config, record
from host_trainer.cli import app
from host_trainer.config import DETECT_DEFAULTS, PRECISION_FORMATS, PROBABILITY_MODELS, TASKS, EvolveConfig

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path, root: Path = ROOT) -> str:
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _imports(path: Path, modules: set[str], root: Path) -> set[str]:
    """Every module of the package that `path` imports, at any depth (lazy imports count too)."""
    me = _module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` imports the module pkg.sub (as tests/test_layering.py reads it), not pkg's
            # __init__ besides: that runs before any module of pkg anyway, whatever the import says
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:  # a package __init__ importing its submodules counts too
                found.add(name)
    return found


def _cycles(package: str, root: Path = ROOT) -> list[list[str]]:
    files = {_module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph = {m: _imports(p, set(files), root) for m, p in files.items()}
    cycles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    return cycles


@pytest.mark.parametrize("package", ["host_trainer", "edge_evolver"])
def test_no_import_cycles(package: str) -> None:
    assert _cycles(package) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")  # a lazy import closes the loop
    assert _cycles("pkg", tmp_path) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_edge_evolver_needs_neither_torch_nor_the_host() -> None:
    for path in (ROOT / "edge_evolver").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not [n for n in names if n.split(".")[0] in ("torch", "host_trainer")], path


def test_no_citation_of_documents_outside_the_repository() -> None:
    texts = [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "deploy").rglob("*.md"),
             *(ROOT / "host_trainer").rglob("*.py"), *(ROOT / "edge_evolver").rglob("*.py"),
             *(ROOT / "bench").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    pattern = re.compile(r"FACTS\.md|METHOD\.md|shared/")
    cited = [str(p.relative_to(ROOT)) for p in texts if p != Path(__file__) and pattern.search(p.read_text())]
    assert cited == []


# ---- one source of defaults and choices -------------------------------------------------------------------
def _documented_options() -> dict[str, str]:
    """`--option` -> its default cell, from docs/options.md's table."""
    rows = re.findall(r"^\| `(--[a-z0-9-]+)`[^|]* \| [^|]* \| ([^|]*) \|", (ROOT / "docs" / "options.md").read_text(),
                      re.M)
    return {option: cell.strip() for option, cell in rows}


OPTION_FIELDS = {"--task": "task", "--model": "model", "--dataset": "dataset", "--image-size": "image_size",
                 "--generations": "generations", "--epochs": "epochs", "--gen0-epochs": "gen0_epochs",
                 "--precision": "precision_format", "--env-factor": "env_factor",
                 "--probability-model": "probability_model", "--tau": "tau", "--channel-multiple": "channel_multiple",
                 "--init": "init", "--max-accuracy-drop": "max_accuracy_drop", "--seed": "seed",
                 "--offspring": "offspring", "--hold": "hold", "--target-fps": "target_fps",
                 "--target-latency-ms": "target_latency_ms", "--max-power-w": "max_power_w",
                 "--distill": "distill", "--train-subset": "train_subset", "--job-timeout-s": "job_timeout_s",
                 "--job-retries": "job_retries", "--device-timeout": "device_timeout_s",
                 "--bench-threads": "bench_threads", "--bench-min-seconds": "bench_min_seconds",
                 "--bench-min-iterations": "bench_min_iterations", "--prefix": "prefix", "--broker": "broker",
                 "--weights": "weights", "--final-epochs": "final_epochs", "--allocation": "allocation",
                 "--latency-model": "latency_model", "--keys-dir": "keys_dir", "--ca-file": "ca_file",
                 "--cert-file": "cert_file", "--key-file": "key_file", "--split": "split", "--mean": "mean",
                 "--std": "std"}


def test_option_table_shows_the_config_defaults() -> None:
    table = _documented_options()
    assert set(OPTION_FIELDS) <= set(table), sorted(set(OPTION_FIELDS) - set(table))
    for option, name in OPTION_FIELDS.items():
        assert table[option] == config.default_text(name), option


def test_cli_help_shows_the_config_defaults() -> None:
    result = CliRunner().invoke(app, ["evolve", "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    text = " ".join(result.output.split())
    for option, name in OPTION_FIELDS.items():
        assert f"[default: {config.default_text(name)}]" in text, option


def test_method_doc_defaults_agree() -> None:
    rows = re.findall(r"^\| `(--[a-z0-9-]+)` \| ([^|]*) \|", (ROOT / "docs" / "method.md").read_text(), re.M)
    assert rows
    for option, cell in rows:
        assert cell.strip() == config.default_text(OPTION_FIELDS[option]), option


def test_a_cli_run_config_equals_the_dataclass_defaults() -> None:
    assert EvolveConfig.for_task("classify") == EvolveConfig()
    detect = EvolveConfig.for_task("detect")
    assert {k: getattr(detect, k) for k in DETECT_DEFAULTS} == DETECT_DEFAULTS
    assert EvolveConfig.for_task("detect", epochs=3.0, model=None).epochs == 3.0  # None: not given


def test_every_choice_is_implemented() -> None:
    from host_trainer.method.restriction import DTYPES
    from host_trainer.method.synthesis import keep_probability
    from host_trainer.tasks import registry

    assert tuple(DTYPES) == PRECISION_FORMATS
    import numpy as np

    for model in PROBABILITY_MODELS:
        assert keep_probability(np.array([1.0, 2.0]), 0.5, 0.1, model).shape == (2,)
    assert tuple(registry.KINDS) == TASKS


def test_generations_doc_lists_every_record_field() -> None:
    text = (ROOT / "docs" / "generations.md").read_text()
    assert record.fields_markdown() in text, "regenerate: python -c 'from host_trainer.record import " \
                                             "fields_markdown; print(fields_markdown())'"


def test_options_doc_lists_every_evolve_option() -> None:
    from host_trainer.options_doc import options_markdown

    text = options_markdown()
    assert "`--batch-size`" in text and "`--config`" in text and "One of `device`, `magnitude`." in text
    assert text in (ROOT / "docs" / "options.md").read_text(), "regenerate: make docs (host_trainer/options_doc.py)"
