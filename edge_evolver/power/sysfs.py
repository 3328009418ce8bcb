"""Small helpers for reading sysfs/procfs trees that may live under a test root.

Every path the power meters and ``devicefacts`` read is written as the absolute path seen on
a board ("/sys/bus/i2c/...") and joined onto ``root``, so tests point ``root`` at a fixture
tree shaped like a real TX1, Nano or Orin instead of monkeypatching ``open``.
"""

import glob
import os
import re
from typing import List


def under(root: str, path: str) -> str:
    """``path`` (absolute, as on the board) inside the tree rooted at ``root``."""
    return os.path.join(root, path.lstrip("/"))


def shown(root: str, path: str) -> str:
    """The board path of a file found under ``root``: what describe() reports, root stripped."""
    relative = os.path.relpath(path, root)
    return "/" + relative.replace(os.sep, "/")


def read_text(path: str) -> str:
    """Stripped file content; raises OSError when missing or unreadable (callers decide)."""
    with open(path, errors="replace") as handle:
        return handle.read().strip()


def read_int(path: str) -> int:
    """A sysfs integer. Some L4T nodes append a unit ("32760 ma"), so only the first word counts."""
    words = read_text(path).split()
    if not words:
        raise ValueError(f"{path} is empty")
    return int(words[0])


def natural_key(text: str) -> List[object]:
    """Sort key putting hwmon2 before hwmon10 and cpu9 before cpu10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def sorted_glob(root: str, pattern: str) -> List[str]:
    """Matches of a board-path glob under ``root``, in natural order."""
    return sorted(glob.glob(under(root, pattern)), key=natural_key)
