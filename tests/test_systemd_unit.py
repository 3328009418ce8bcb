"""The shipped unit's hardening, scored by `systemd-analyze security --offline=true` (systemd >= 250).

The score is a regression bound: systemd/README.md records 8.5 before the hardening and 1.8 after.
The forbidden settings would break the GPU on a Jetson (README: why each).
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_deploy import parse_unit

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-evolver.service"
MAX_EXPOSURE = 1.8
STATE_DIR = "/var/lib/edge-evolver"
# PrivateDevices hides /dev/nvhost-*, /dev/nvmap; MemoryDenyWriteExecute breaks CUDA's JIT and libffi;
# ProtectClock implies DeviceAllow=char-rtc on systemd 245-252, which closes the device policy.
FORBIDDEN = ("PrivateDevices", "MemoryDenyWriteExecute", "ProtectClock", "DeviceAllow")


def _analyze():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian/Ubuntu package: systemd)")
    help_text = subprocess.run([analyze, "security", "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, encoding="utf-8", timeout=60).stdout
    if "--offline" not in help_text:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250): it cannot score a unit file")
    return analyze


def test_exposure_stays_at_or_below_the_recorded_level(tmp_path):
    analyze = _analyze()
    # Offline mode reads the unit as a file; the ExecStart program need not exist for the score.
    run = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, encoding="utf-8", timeout=120, cwd=str(tmp_path))
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", run.stdout)
    assert found, run.stdout[-2000:]
    assert float(found.group(1)) <= MAX_EXPOSURE, run.stdout[-4000:]


def test_working_directory_is_the_state_directory():
    service = parse_unit(UNIT.read_text())["Service"]
    assert service["WorkingDirectory"] == [STATE_DIR]
    assert service["StateDirectory"] == ["edge-evolver"]  # which systemd creates as /var/lib/edge-evolver


def test_no_setting_that_hides_the_gpu_or_breaks_cuda():
    service = parse_unit(UNIT.read_text())["Service"]
    for key in FORBIDDEN:
        assert key not in service, key
    assert service["ProtectSystem"] == ["strict"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    # The measuring process sets its own memory rlimit: setrlimit (@resources) must stay allowed.
    assert "@resources" not in " ".join(service["SystemCallFilter"])
