"""The code passes the linter configured in pyproject.toml (ruff comes with the dev extra)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff not installed (pip install -e .[dev])")
def test_ruff_check():
    # Through this interpreter, so the venv's ruff is found without an activated PATH.
    paths = [p for p in ("src", "tests", "benchmarks", "scripts") if (ROOT / p).exists()]
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
