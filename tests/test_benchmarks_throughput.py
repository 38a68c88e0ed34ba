"""Smoke test of benchmarks/throughput.py: its --smoke mode runs in seconds and writes a report."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fitv2.config import model_config
from fitv2.model.flops import attention_macs

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"


def load_script():
    spec = importlib.util.spec_from_file_location("throughput_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_throughput_smoke(tmp_path):
    out, raw = tmp_path / "throughput.md", tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--json", str(raw)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "padded" in proc.stdout and "packed" in proc.stdout  # one progress line per configuration
    text = out.read_text()
    for heading in ("## Length distributions", "## Training steps", "## Packed over padded", "## Sampling"):
        assert heading in text
    data = json.loads(raw.read_text())
    modes = {r["mode"]: r for r in data["results"]}
    assert set(modes) == {"padded", "packed"}
    for r in data["results"]:
        assert r["valid"] <= r["computed"] and 0 <= r["pad"] < 1
        assert r["tok_s"] > 0 and r["mfu"] > 0 and r["useful_mfu"] <= r["mfu"] * (1 + 1e-9)
    # Same images both ways; packing never needs more rows than padding.
    assert modes["packed"]["valid"] == modes["padded"]["valid"]
    assert modes["packed"]["rows"] <= modes["padded"]["rows"]
    assert data["samples"] and data["samples"][0]["img_s"] > 0


def test_length_distributions():
    throughput = load_script()
    # ImageNet 500×375 under the 256-token budget: 288×208 px = 18×13 tokens; crop-eligible.
    dist = throughput.length_distribution("imagenet-256")
    assert dist[0] == ((13, 18), True, 0.35, (500, 375)) and dist[1] == ((18, 13), True, 0.15, (375, 500))
    assert ((7, 7), False, 0.02, (120, 120)) in dist  # 120×120 keeps its size: 112×112 px
    shapes = throughput.sample_shapes("imagenet-1024", 64, seed=0)
    assert all(h * w <= 1024 for h, w in shapes)
    assert shapes == throughput.sample_shapes("imagenet-1024", 64, seed=0)  # seeded
    clip = throughput.sample_shapes("clipart", 32, seed=1)
    assert all(16 <= h * w <= 256 for h, w in clip)


def test_step_macs_conventions():
    throughput = load_script()
    cfg = model_config("FiTv2-Micro/4")
    n, rows = [40, 24, 64], [[2], [0, 1]]  # a packed batch: rows of 64 tokens
    dense, useful = throughput.step_macs(cfg, n, rows, 64, "sdpa")
    sparse, useful2 = throughput.step_macs(cfg, n, rows, 64, "flex")
    assert useful == useful2
    # SDPA computes the whole 64² of each row; block-sparse kernels only the images' own n².
    assert dense - useful == 2 * attention_macs(cfg, 64) - sum(attention_macs(cfg, k) for k in n)
    assert sparse == useful  # both rows are full: no padding segment
    # a padded row: flex also attends padding to padding, the varlen kernels do not
    flex, _ = throughput.step_macs(cfg, [40], [[0]], 64, "flex")
    varlen, useful3 = throughput.step_macs(cfg, [40], [[0]], 64, "sdpa-varlen")
    assert varlen == useful3 and flex - varlen == attention_macs(cfg, 24)
