"""edge_evolver runs on the Jetson's Python 3.6 and never imports torch."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edge_evolver"
# Runtimes that may be missing on a board: imported only inside functions.
LAZY_MODULES = ("onnxruntime", "tensorrt", "pycuda")


def _vermin() -> str:
    beside_python = Path(sys.executable).parent / "vermin"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("vermin")
    if found is None:
        pytest.skip("vermin is not installed (pip install vermin)")
    return found


def _imports(tree: ast.AST) -> Iterator[Tuple[ast.AST, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, node.module


def _import_time_imports(node: ast.AST) -> Iterator[Tuple[ast.AST, str]]:
    """Imports executed when the module is imported: everything outside function bodies."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield from _imports(node)
        return
    for child in ast.iter_child_nodes(node):
        yield from _import_time_imports(child)


def _sources() -> List[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, f"no sources found under {PACKAGE}"
    return files


def test_vermin_python36_compatible():
    cmd = [_vermin(), "-q", "--no-tips", "--violations", "-t=3.6-", "--backport", "dataclasses", str(PACKAGE)]
    done = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,  # noqa: UP021 - also runs on the board's Python 3.6
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout


def test_no_torch_imports():
    offenders = []
    for path in _sources():
        for node, name in _imports(ast.parse(path.read_text(), str(path))):
            if name.split(".")[0] == "torch":
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {name}")
    assert not offenders, offenders


def test_runtimes_are_imported_lazily():
    offenders = []
    for path in _sources():
        for node, name in _import_time_imports(ast.parse(path.read_text(), str(path))):
            if name.split(".")[0] in LAZY_MODULES:
                offenders.append(f"{os.path.relpath(str(path))}:{node.lineno} imports {name}")
    assert not offenders, offenders
