"""bench/evolve_ab.py's arms and verdict lines (the runs themselves are the benchmark, not a test)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import evolve_ab  # noqa: E402


def _arm(p50: float, accuracy: float, wall: float | None = 600.0) -> dict:
    return {"p50_us": p50, "accuracy": [0.95, accuracy], "wall_s": wall}


def test_an_arm_is_a_name_and_shell_split_options():
    assert evolve_ab.parse_arm('k2=--offspring 2 --seed "1"') == ("k2", ["--offspring", "2", "--seed", "1"])
    assert evolve_ab.parse_arm("bare=") == ("bare", [])
    for bad in ("--distill 0.5", "=--distill 0.5", "default=--offspring 2", "a/b=--offspring 2"):
        with pytest.raises(argparse.ArgumentTypeError):
            evolve_ab.parse_arm(bad)


def test_the_default_beats_an_arm_only_faster_and_at_equal_or_better_accuracy():
    arms = {"default": _arm(280, 0.9527), "magnitude": _arm(325, 0.9537), "distill": _arm(250, 0.955, 1200),
            "worse": _arm(300, 0.945, None)}
    assert evolve_ab.goal(arms, "magnitude", ["--allocation", "magnitude"]) == (
        "evolve_ab: the default beats --allocation magnitude: 1.16x its speed, -0.10 accuracy points, "
        "1.00x the default's wall time")
    assert evolve_ab.goal(arms, "distill", ["--distill", "0.5"]).startswith(
        "evolve_ab: the default does not beat --distill 0.5: 0.89x its speed, -0.23 accuracy points, 2.00x")
    assert evolve_ab.goal(arms, "worse", []).endswith("+0.77 accuracy points")  # no wall time: reused runs


def test_reuse_takes_one_run_per_arm_and_the_defaults(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["evolve_ab.py", "--reuse", "a", "--against", "k2=--offspring 2",
                                      "--against", "d=--distill 0.5"])
    with pytest.raises(SystemExit):
        evolve_ab.main()
    assert "--reuse takes 3 run directories: the default's, then k2, d" in capsys.readouterr().err
