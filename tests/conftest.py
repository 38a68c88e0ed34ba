import contextlib
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
    base = dict(
        name="tiny",
        hidden_size=64,
        depth=2,
        num_heads=4,
        num_classes=10,
        adaln_lora_dim=16,
        patch_size=2,
        in_channels=4,
        rope_train_len=8,
    )
    return ModelConfig(**{**base, **overrides})


def randomize(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Replace the zero init so outputs are non-trivial."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


# Shared data, built once per session. They are read-only: a test that changes one copies it first
# (shutil.copytree into tmp_path), so no test sees another's changes.


@pytest.fixture(scope="session")
def class_images(tmp_path_factory) -> Path:
    """Eight generated images, 2 classes x 4 (``class_0/``, ``class_1/``), six sizes and aspect ratios."""
    from imagegen import make_class_folder

    images = make_class_folder(tmp_path_factory.mktemp("class_images") / "images", classes=2, per_class=4)
    with _unchanged(images):
        yield images


@pytest.fixture(scope="session")
def token_dataset(class_images, tmp_path_factory) -> Path:
    """``class_images`` prepared in pixel space: 4x4-pixel patches, a 32x32-pixel budget (64 tokens)."""
    from fitv2.data.prepare import prepare

    out = tmp_path_factory.mktemp("token_dataset") / "tokens"
    prepare(class_images, out, patch_size=4, budget=32, workers=1, progress=False)
    with _unchanged(out):
        yield out


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory) -> Path:
    """A folder with ``images/`` (3 classes x 4), ``tokens/`` and ``run/`` made by ``fitv2 prepare`` and
    ``fitv2 train`` (FiTv2-Micro/4 with one block, 6 steps of 4 images, logged every 2 steps):
    its checkpoint is ``run/checkpoints/step_0000006``."""
    from imagegen import make_class_folder

    from fitv2.cli import main

    root = tmp_path_factory.mktemp("cli_run")
    make_class_folder(root / "images", classes=3, per_class=4)
    assert main(["prepare", str(root / "images"), str(root / "tokens"), "--workers", "1"]) == 0
    assert (
        main(
            [
                "train",
                "--data",
                str(root / "tokens"),
                "--out",
                str(root / "run"),
                "--preset",
                "FiTv2-Micro/4",
                "--batch-size",
                "4",
                "--steps",
                "6",
                "--log-every",
                "2",
                "--no-progress",
                "--model",
                "depth=1",
            ]
        )
        == 0
    )
    with _unchanged(root):
        yield root


@contextlib.contextmanager
def _unchanged(root: Path):
    """Fails the session if a test changed a shared folder instead of copying it."""

    def listing():
        return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))

    before = listing()
    yield
    assert listing() == before, f"a test changed the shared folder {root}: copy it (shutil.copytree) first"
