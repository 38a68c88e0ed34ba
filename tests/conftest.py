from pathlib import Path

import pytest
import torch

from fitv2.config import ModelConfig

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # The tests use tiny tensors: syncing intra-op threads costs more than it saves, and on a
    # shared CPU a second thread waiting for a busy core slows small ops down many times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> ModelConfig:
    """A FiTv2 block small enough for unit tests (head_dim 16)."""
    base = dict(name="tiny", hidden_size=64, depth=2, num_heads=4, num_classes=10, adaln_lora_dim=16,
                patch_size=2, in_channels=4, rope_train_len=8)
    return ModelConfig(**{**base, **overrides})


def randomize(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Replace the zero init so outputs are non-trivial."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model
