"""Checkpoint loading (reference files and this project's folders) with strict checks."""

import pickle

import pytest
import torch
from conftest import DATA, randomize, tiny_config
from safetensors.torch import save_file

from fitv2.checkpoint import CheckpointError, load_model, load_weights, read_state_dict, save_model_dir
from fitv2.model import FiT
from fitv2.parity import Fixture, model_config_from_reference
from fitv2.tokens import pad_sequences

FIXTURE = DATA / "official_parity"


def _forward(model):
    torch.manual_seed(3)
    dim = model.config.token_dim
    batch = pad_sequences([(torch.randn(12, dim), 3, 4), (torch.randn(6, dim), 2, 3)])
    return model(batch.x, torch.tensor([0.3, 0.6]), torch.tensor([1, 2]), batch.layout)


def test_reference_weights_load_strictly():
    fx = Fixture(FIXTURE)
    cfg = model_config_from_reference(fx.manifest["models"]["fitv2"]["config"])
    model = FiT(cfg)
    state = read_state_dict(FIXTURE / "weights_fitv2.safetensors")
    assert all(v.dtype == torch.float16 for v in state.values())
    load_weights(model, state)
    assert next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == fx.manifest["models"]["fitv2"]["num_params"]


def test_mismatch_names_missing_unexpected_and_wrong_shape_keys():
    state = read_state_dict(FIXTURE / "weights_fitv2.safetensors")
    model = FiT(tiny_config(hidden_size=128, depth=2, num_heads=4, adaln_lora_dim=64))
    with pytest.raises(CheckpointError) as err:
        load_weights(model, state, source="weights_fitv2")
    msg = str(err.value)
    assert "unexpected keys" in msg and "blocks.2." in msg
    assert "wrong shapes" in msg and "adaLN_modulation.1.weight (32, 128) vs model (64, 128)" in msg
    state.pop("final_layer.linear.bias")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): final_layer.linear.bias"):
        load_weights(FiT(model_config_from_reference(Fixture(FIXTURE).manifest["models"]["fitv2"]["config"])), state)


def test_bare_file_with_preset_and_folder_roundtrip(tmp_path):
    cfg = tiny_config()
    model = randomize(FiT(cfg)).eval()
    ema = randomize(FiT(cfg)).eval()
    save_model_dir(tmp_path / "ckpt", cfg, model.state_dict(), ema.state_dict())
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "ema.safetensors", "model.safetensors"]
    torch.testing.assert_close(_forward(load_model(tmp_path / "ckpt")), _forward(ema))
    torch.testing.assert_close(_forward(load_model(tmp_path / "ckpt", weights="model")), _forward(model))
    with pytest.raises(CheckpointError, match="name its preset"):
        load_model(tmp_path / "ckpt" / "model.safetensors")


def test_pickles_are_read_weights_only(tmp_path):
    model = randomize(FiT(tiny_config()))
    torch.save({"ema": model.state_dict(), "step": 3}, tmp_path / "ok.pt")
    state = read_state_dict(tmp_path / "ok.pt")
    load_weights(FiT(tiny_config()), state)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="code or Python objects beyond tensors") as err:
        read_state_dict(tmp_path / "evil.bin")
    assert "will not be unpickled" in str(err.value) and "safetensors" in str(err.value)
    assert "weights_only" not in str(err.value)  # torch's advice to turn the check off is not passed on


def test_prefixes_are_stripped_and_unknown_formats_rejected(tmp_path):
    model = FiT(tiny_config())
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "ddp.safetensors")
    load_weights(FiT(tiny_config()), read_state_dict(tmp_path / "ddp.safetensors"))
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_state_dict(tmp_path / "w.npz")
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.safetensors")
