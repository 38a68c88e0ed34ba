"""The README's code paths, run on the small reference weights."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA

from fitv2.checkpoint import load_model
from fitv2.model import rope_scaling
from fitv2.sampling import Guidance, SolverConfig, sample_tokens
from fitv2.tokens import unpatchify

README = Path(__file__).parents[1] / "README.md"


def test_released_checkpoint_recipe_on_fixture_weights():
    # The fixture's FiTv2 is a small model with the released key layout; only its size differs.
    model = load_model(
        DATA / "official_parity" / "weights_fitv2.safetensors",
        preset="FiTv2-XL/2",
        hidden_size=128,
        depth=3,
        num_heads=4,
        adaln_lora_dim=32,
        num_classes=10,
    )
    h, w = 20, 20
    tokens = sample_tokens(
        model,
        h,
        w,
        torch.tensor([1, 7]),
        solver=SolverConfig("dopri5"),
        guidance=Guidance(scale=1.5, channels="reference"),
        rope=rope_scaling("vision-ntk+attn-scale"),
        generator=torch.Generator().manual_seed(0),
    )
    latents = unpatchify(tokens, h, w, patch_size=2) / 0.18215
    assert latents.shape == (2, 4, 40, 40) and torch.isfinite(latents).all()


@pytest.mark.slow
def test_models_table_in_readme_is_what_the_command_prints():
    out = subprocess.run([sys.executable, "-m", "fitv2.cli", "models"], capture_output=True, text=True, check=True)
    table = next(block for block in README.read_text().split("```") if block.strip().startswith("preset"))
    for line in table.strip().splitlines()[1:]:
        name = line.split()[0]
        printed = next(row for row in out.stdout.splitlines() if row.startswith(name + " "))
        assert re.sub(r"\s+", " ", printed) == re.sub(r"\s+", " ", line)


def test_every_cli_command_has_an_example_in_the_readme():
    import argparse

    from fitv2.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    blocks = README.read_text().split("```")[1::2]  # the fenced code blocks
    examples = {m.group(1) for block in blocks for m in re.finditer(r"^\s*fitv2 ([a-z-]+)", block, re.M)}
    assert set(sub.choices) <= examples, f"commands without a README example: {set(sub.choices) - examples}"


def test_ci_runs_the_readme_test_command():
    block = README.read_text().split("## Quick start", 1)[1].split("```", 2)[1]
    command = [line for line in block.splitlines() if "pytest" in line]
    assert len(command) == 1
    ci = (README.parent / ".ci" / "run").read_text()
    assert command[0].strip() in [line.strip() for line in ci.splitlines()]
