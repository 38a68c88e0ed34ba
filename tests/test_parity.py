"""The reference implementation's recorded outputs, reproduced by this code."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import DATA

from fitv2.config import Runtime
from fitv2.parity import Fixture, run_fixture, run_forward

FIXTURE = DATA / "official_parity"


def test_all_public_parity_cases_pass():
    """Every recorded case within its tolerance: the recorded numbers came from another machine, whose GEMMs
    round differently (an AMD CPU without AMX differs from an Intel one with it by ~5e-7 here)."""
    lines = []
    passed, failed = run_fixture(FIXTURE, echo=lines.append)
    assert failed == 0, "\n".join(lines)
    assert passed == len(json.loads((FIXTURE / "manifest.json").read_text())["cases"]) == 21


def test_the_published_order_of_operations_is_deterministic_on_one_machine():
    """Bit for bit, but only between two runs here: the same model, inputs and runtime give the same bits."""
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    cases = [c for c in manifest["cases"] if c["call"] in ("forward", "forward_with_cfg")]
    assert len(cases) == 16
    for case in cases:
        first, second = (run_forward(Fixture(FIXTURE), case)["out"] for _ in range(2))
        assert torch.equal(first, second), case["name"]


def test_parity_cases_pass_unpadded_as_the_model_trains():
    lines = []
    passed, failed = run_fixture(FIXTURE, echo=lines.append, runtime=Runtime())
    assert failed == 0 and passed == 21, "\n".join(lines)


@pytest.mark.slow
def test_runner_reports_failures_and_exit_status(tmp_path):
    broken = tmp_path / "fixture"
    shutil.copytree(FIXTURE, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    # Compare the ODE case against the wrong tensor, and ask another case for an unknown method.
    ode = next(c for c in manifest["cases"] if c["name"] == "v2_ode_euler")
    ode["outputs"]["samples"] = "inputs/ode/z"
    normal = next(c for c in manifest["cases"] if c["name"] == "v2_normal")
    normal["constructor_overrides"]["custom_freqs"] = "no-such-method"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run(
        [sys.executable, "-m", "fitv2.parity", str(broken), "-k", "v2_"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    last = proc.stdout.strip().splitlines()[-1]
    assert last.endswith("2 failed"), proc.stdout
    assert "FAIL v2_normal" in proc.stdout and "FAIL v2_ode_euler " in proc.stdout
