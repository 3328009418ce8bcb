"""Shared by the power tests: the fixture board trees and a fake clock."""

import shutil
from pathlib import Path

BOARDS = Path(__file__).resolve().parent / "fixtures" / "boards"
RAPL_RANGE_UJ = 262143328850  # max_energy_range_uj of the x86-rapl fixture


def board(name: str) -> str:
    return str(BOARDS / name)


def copy_board(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(str(BOARDS / name), str(target))
    return target


class FakeClock:
    """Each call advances time by ``step`` and returns the new time; ``t`` is "now"."""

    def __init__(self, step: float = 0.01) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t
