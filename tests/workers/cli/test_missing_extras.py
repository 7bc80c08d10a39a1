"""Fleet commands without the ``fleet`` extra say which extra to install, in one line, instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# The fleet's packages made unimportable, as in an install without the extra.
HIDE = "import sys\nfor name in ('celery', 'kombu', 'redis'):\n    sys.modules[name] = None\n"


@pytest.mark.parametrize("command", [["status"], ["worker"], ["status", "--json"]])
def test_a_fleet_command_without_the_fleet_extra_names_it(command: list[str], tmp_path: Path) -> None:
    code = HIDE + f"from workers.cli import app\napp({command!r}, prog_name='shelftally')\n"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELFTALLY_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "missing_dependency" in text and "shelftally[fleet]" in text
    assert "Traceback" not in text
