"""The packages stand in layers: a module imports its own package and the layers below it, never one above,
and no two packages import each other in a loop. Lazy imports (inside functions) count like any other.

The layers are stated once, here, as data; docs/architecture.md shows the same table, rendered from it
(`python -m tests.test_layering` prints it). A package is a subpackage (`host_trainer.loop`) or a top-level
module (`host_trainer.rundir`); the whole host stands above the whole board side, which never imports it.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("host_trainer", "edge_evolver")  # higher first

# Per side, its layers from the top down; each package with one line on what lives there.
LAYERS: dict[str, list[dict[str, str]]] = {
    "host_trainer": [
        {"__init__": "the version, and the Python API: `evolve`, `load` (docs/api.md), importing what they need lazily",
         "__main__": "`python -m host_trainer`",
         "options_doc": "docs/options.md's table of `evolve`'s options, generated from the command"},
        {"cli": "`host-trainer`: parses the options and calls one function per command"},
        {"run_cli": "`host-trainer report`, `export` and `watch`: the commands on a run directory or a broker"},
        {"keys_cli": "`host-trainer keys`: the host's signing key, enrolled board keys, checking a run's results",
         "report": "`host-trainer report`: a run's figures and report.md",
         "terminal": "what `evolve` shows while it runs: live progress and the generation table"},
        {"loop": "the run: start and resume, the generation loop, training, breeding, selection, checkpoints, "
                 "its result (final/)"},
        {"fleet": "measuring offspring: jobs over MQTT, the embedded broker and board, in-process measurement",
         "distributed": "training on several processes under torchrun: the world, typed orders, tensors, a rank's life",
         "latency": "the board's latency model: per-layer profiles mapped to coupling groups, probes",
         "deploy": "the deployable result: final/'s layout, preprocess.json, choosing a generation, `Deployed`"},
        {"tasks": "what a task (classify, detect) decides: labels, loss, metrics, parity checks"},
        {"data": "data sets: the built-in and procedural sets, the user's folders, streamed batches",
         "method": "the method, one step per module: masks, synthesis, compaction, restriction, export",
         "models": "the networks to evolve, by name or from the user's file"},
        {"rundir": "the run directory: every name in it, the records, resume bookkeeping",
         "progress": "how long steps report progress, without knowing who shows it",
         "torch_device": "where the host trains (`--train-device`), and the moves to and from that device",
         "config_file": "`evolve --config FILE`: options from a TOML file or a run's config.json"},
        {"config": "`EvolveConfig`: the one place the run's defaults and choices live",
         "events": "the structured event log (`<run>/events.jsonl`)",
         "record": "`GenerationRecord`: one offspring, the one type every reader of a run reads"},
        {"errors": "`UserError`: bad input, one line, exit 2",
         "cli_support": "what the command files share: an option's environment variable, the one-line failure",
         "files": "atomic writes of the host's files (run directories, fleet state, reports)",
         "version": "the package version"},
    ],
    "edge_evolver": [
        {"__main__": "`python -m edge_evolver`"},
        {"cli": "`edge-evolver`: info, bench, serve, monitor, pack, keys"},
        {"daemon": "`edge-evolver serve`: MQTT intake, the spool, the measuring child process, results"},
        {"job": "the framed job payload: built by the host, checked by the daemon"},
        {"measure": "measuring one model: model guard, engine cache, feeds, agreement, benchmark, profile",
         "devicefacts": "what the board is: power mode, clocks, temperatures"},
        {"backends": "the runtimes (ONNX Runtime, TensorRT) and what they speak: tensors, opset policy, profiling",
         "power": "power meters (jtop, INA3221, NVML, RAPL) and the sampler",
         "trust": "Ed25519 keys, signed jobs, the replay ledger, signed results",
         "mqtt": "paho-mqtt 1.6 and 2.x behind one connection",
         "local_broker": "a Mosquitto on a free loopback port"},
        {"protocol": "the MQTT wire protocol: topics, QoS, framing, payload fields",
         "onnxgraph": "an ONNX model's nodes read from its protobuf bytes, without onnx",
         "logs": "structlog set up once: JSON lines off a TTY, a console on one"},
        {"errors": "error codes and `EdgeError`",
         "files": "atomic file writes",
         "__init__": "the version"},
    ],
}


# ---- the import graph between packages ----------------------------------------------------------------------
def _module_name(path: Path, root: Path) -> str:
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def package_of(module: str) -> str:
    """The package a module belongs to: `a.b.c` -> `a.b`; `a.b` (a top-level module) -> `a.b`; `a` -> `a`."""
    return ".".join(module.split(".")[:2])


def _imported(node: ast.AST, package: str, modules: set[str]) -> list[str]:
    """The modules of `modules` that one import statement loads (relative imports resolved)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
        return []
    found = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def import_graph(root: Path, sides: tuple[str, ...]) -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> where (`path:line`), for every import between two packages."""
    files = {_module_name(p, root): p for side in sides for p in sorted((root / side).rglob("*.py"))}
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            for target in _imported(node, package, set(files)):
                edge = (package_of(module), package_of(target))
                if edge[0] != edge[1] and where not in edges[edge]:
                    edges[edge].append(where)
    return dict(edges)


def package_cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Every loop of packages (`[a, b, a]`), each found once, from its smallest member."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    cycles: set[tuple[str, ...]] = set()

    def visit(node: str, path: list[str], on_path: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == path[0]:
                cycles.add(tuple(path))
            elif nxt not in on_path and nxt > path[0]:  # each loop from its smallest package only
                visit(nxt, path + [nxt], on_path | {nxt})

    for start in sorted(graph):
        visit(start, [start], {start})
    return [list(c) + [c[0]] for c in sorted(cycles)]


def layer_index(layers: dict[str, list[dict[str, str]]], sides: tuple[str, ...]) -> dict[str, int]:
    """package -> its layer counted from the top, the sides stacked in order."""
    index, depth = {}, 0
    for side in sides:
        for layer in layers[side]:
            for name in layer:
                index[side if name == "__init__" else f"{side}.{name}"] = depth
            depth += 1
    return index


def upward_imports(edges: dict[tuple[str, str], list[str]], index: dict[str, int]) -> list[str]:
    """Each import of a package from one in its own layer or a layer below it, and each unplaced package."""
    unplaced = sorted({p for edge in edges for p in edge if p not in index})
    problems = [f"{p} is in no layer: add it to LAYERS in tests/test_layering.py and to docs/architecture.md"
                for p in unplaced]
    for (a, b), where in sorted(edges.items()):
        if a in index and b in index and index[b] <= index[a]:
            problems.append(f"{a} (layer {index[a] + 1}) imports {b} (layer {index[b] + 1}) at {', '.join(where)}")
    return problems


def _explain(cycle: list[str], edges: dict[tuple[str, str], list[str]]) -> str:
    return " -> ".join(cycle) + "  (" + "; ".join(
        f"{a} -> {b} at {', '.join(edges[(a, b)])}" for a, b in zip(cycle, cycle[1:])) + ")"


# ---- the rules --------------------------------------------------------------------------------------------------
GRAPH = import_graph(ROOT, SIDES)


def test_no_import_cycle_between_packages() -> None:
    assert [_explain(c, GRAPH) for c in package_cycles(GRAPH)] == []


def test_every_import_goes_down_the_layers() -> None:
    assert upward_imports(GRAPH, layer_index(LAYERS, SIDES)) == []


def test_every_package_is_placed_once() -> None:
    files = [p for side in SIDES for p in (ROOT / side).rglob("*.py")]
    packages = {package_of(_module_name(p, ROOT)) for p in files}
    placed = [side if name == "__init__" else f"{side}.{name}" for side in SIDES for layer in LAYERS[side]
              for name in layer]
    assert sorted(placed) == sorted(set(placed))
    assert set(placed) == packages


def layers_markdown(side: str) -> str:
    lines = ["| layer | package | what lives there |", "|---|---|---|"]
    for number, layer in enumerate(LAYERS[side], start=1):
        for name, what in layer.items():
            lines.append(f"| {number} | `{name}` | {what} |")
    return "\n".join(lines)


def test_the_architecture_doc_shows_the_layers() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for side in SIDES:
        assert layers_markdown(side) in text, "regenerate the tables: python -m tests.test_layering"


# ---- the checks find what they look for -------------------------------------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_planted_cycle_is_found(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "pkg/__init__.py": "", "pkg/low/__init__.py": "", "pkg/high/__init__.py": "", "pkg/base.py": "",
        "pkg/high/run.py": "from pkg.low.store import save\nfrom .. import base\n",
        "pkg/low/store.py": "import os\n\ndef save():\n    from ..high import run  # lazy and relative\n",
    })
    edges = import_graph(tmp_path, ("pkg",))
    assert package_cycles(edges) == [["pkg.high", "pkg.low", "pkg.high"]]
    assert edges[("pkg.low", "pkg.high")] == [str(Path("pkg/low/store.py")) + ":4"]
    assert ("pkg.high", "pkg.base") in edges


def test_an_import_up_the_layers_and_an_unplaced_package_are_found(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "pkg/__init__.py": "", "pkg/high.py": "", "pkg/extra.py": "",
        "pkg/low.py": "def f():\n    import pkg.high\n    from pkg import extra\n",
        "other/__init__.py": "", "other/tool.py": "from pkg import low\n",
    })
    layers = {"other": [{"tool": ""}, {"__init__": ""}], "pkg": [{"high": ""}, {"low": ""}, {"__init__": ""}]}
    problems = upward_imports(import_graph(tmp_path, ("other", "pkg")), layer_index(layers, ("other", "pkg")))
    assert problems[0].startswith("pkg.extra is in no layer")
    assert problems[1:] == [f"pkg.low (layer 4) imports pkg.high (layer 3) at {Path('pkg/low.py')}:2"]
    # the other way round, the lower side importing the higher one, is an upward import too
    problems = upward_imports(import_graph(tmp_path, ("other", "pkg")), layer_index(layers, ("pkg", "other")))
    assert "other.tool (layer 4) imports pkg.low (layer 2)" in " ".join(problems)


if __name__ == "__main__":
    sys.stdout.write("\n\n".join(f"{side}:\n\n{layers_markdown(side)}" for side in SIDES) + "\n")


def test_every_package_docstring_names_its_modules() -> None:
    """A package's docstring is its table of contents (the top-level packages point to docs/architecture.md)."""
    missing = []
    for side in SIDES:
        for init in sorted((ROOT / side).rglob("__init__.py")):
            folder = init.parent
            if folder == ROOT / side or "procedural" in folder.parts:
                continue
            text = init.read_text()
            doc = text.split('"""')[1] if text.count('"""') >= 2 else ""
            names = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
            names += [d.name for d in folder.iterdir() if d.is_dir() and (d / "__init__.py").exists()]
            missing += [f"{folder.relative_to(ROOT)}/{n}" for n in names if n not in doc]
    assert missing == [], f"add to the package docstring: {missing}"
