"""benchmarks/vs_reference.py: its published-code constructor arguments describe the same model."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import vs_reference

from fitv2.config import model_config
from fitv2.parity import model_config_from_reference


@pytest.mark.parametrize("preset", ["FiTv2-B/2", "FiTv2-XL/2", "FiT-B/2"])
def test_reference_arguments_map_back_to_the_preset(preset):
    cfg = model_config(preset)
    back = model_config_from_reference({**vs_reference.reference_kwargs(cfg), "ori_max_pe_len": cfg.rope_train_len})
    for field in ("hidden_size", "depth", "num_heads", "mlp", "adaln", "adaln_lora_dim", "qk_norm", "learn_sigma"):
        assert getattr(back, field) == getattr(cfg, field), field
    assert back.token_dim == cfg.token_dim and back.mlp_hidden == cfg.mlp_hidden


def test_a_folder_without_the_published_code_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="not a checkout of the published code"):
        vs_reference.load_reference(str(tmp_path))
