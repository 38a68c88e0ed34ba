import contextlib
import socket
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


def free_port() -> int:
    """A loopback TCP port nothing listens on (for process groups and servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def tiny_run(data, out, **overrides):
    """The TrainConfig of a quick run of FiTv2-Micro/4 on ``data`` into ``out`` (no label dropout, no
    progress bar), with ``overrides``."""
    from fitv2.training import TrainConfig

    base = dict(
        data=str(data),
        out=str(out),
        preset="FiTv2-Micro/4",
        batch_size=8,
        lr=3e-3,
        log_every=5,
        ckpt_every=1000,
        progress=False,
        precision="fp32",  # not measured: runs that tests compare must not differ by a timing
        model=dict(class_dropout_prob=0.0),
    )
    return TrainConfig(**{**base, **overrides})


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


def make_tiny_clip(folder: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised CLIP text model and a character-level CLIP tokenizer, saved as
    transformers saves CLIP-L (``clip:FOLDER`` loads it)."""
    import json

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # GPT-2's byte-to-unicode table: every byte a printable character, as CLIP's BPE expects.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    CLIPTextModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random CLIP text model folder (32-d, 2 layers), loadable as ``clip:PATH``."""
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "clip")


@pytest.fixture(scope="session")
def tiny_clip_model(tiny_clip, tmp_path_factory) -> Path:
    """A tiny random CLIP model with both towers (32x32 images) and the tiny tokenizer: a ``--clip`` folder."""
    import shutil

    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("tiny_clip_model") / "clip"
    shutil.copytree(tiny_clip, folder)
    text = CLIPModel.config_class.sub_configs["text_config"].from_pretrained(tiny_clip)
    config = CLIPConfig(
        text_config=text.to_dict(),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(folder)
    return folder
