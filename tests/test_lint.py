"""The code passes the linter configured in pyproject.toml (when ruff is installed)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install -e .[dev])")
def test_ruff_check():
    paths = [p for p in ("src", "tests", "benchmarks", "scripts") if (ROOT / p).exists()]
    proc = subprocess.run(["ruff", "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
