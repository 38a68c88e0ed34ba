"""torchrun-style multi-process training on CPU (gloo) equals one process with the same global batch."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port

from fitv2.checkpoint import read_state_dict
from fitv2.training import TrainConfig, train

pytestmark = pytest.mark.slow  # each test spawns two processes


def _worker(rank: int, world: int, port: int, cfg: dict) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    train(TrainConfig(**cfg))


def run_ranks(world: int, cfg: dict) -> None:
    if world == 1:
        train(TrainConfig(**cfg))
    else:
        mp.spawn(_worker, args=(world, free_port(), cfg), nprocs=world, join=True)


@pytest.fixture(scope="module")
def dataset(token_dataset):
    """2 classes x 4 images, 64 tokens at most (tests/conftest.py)."""
    return token_dataset


def _cfg(data, out, **kw):
    base = dict(
        data=str(data),
        out=str(out),
        preset="FiTv2-Micro/4",
        batch_size=8,
        lr=3e-3,
        steps=3,
        log_every=1,
        ckpt_every=3,
        progress=False,
        precision="fp32",  # one process and two must not choose differently by a timing
        model=dict(class_dropout_prob=0.2),
    )
    return {**base, **kw}


def _weights(out, step=3):
    return read_state_dict(out / "checkpoints" / f"step_{step:07d}" / "model.safetensors")


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").open()]


def _assert_same(a, b, atol=1e-5):
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


@pytest.mark.parametrize(
    "extra", [{}, {"batching": "pack", "row_length": 64}, {"fsdp": True}], ids=["ddp", "ddp-packed", "fsdp"]
)
def test_two_processes_equal_one(dataset, tmp_path, extra):
    one, two = tmp_path / "one", tmp_path / "two"
    single = {k: v for k, v in extra.items() if k != "fsdp"}
    run_ranks(1, _cfg(dataset, one, **single))
    run_ranks(2, _cfg(dataset, two, **extra))
    torch.testing.assert_close(torch.tensor(_losses(one)), torch.tensor(_losses(two)), atol=1e-5, rtol=1e-4)
    _assert_same(_weights(one), _weights(two))


def test_resume_with_a_different_number_of_ranks(dataset, tmp_path):
    straight, mixed = tmp_path / "straight", tmp_path / "mixed"
    run_ranks(1, _cfg(dataset, straight, steps=6))
    run_ranks(2, _cfg(dataset, mixed, steps=3))
    run_ranks(1, _cfg(dataset, mixed, steps=6, resume="latest"))
    _assert_same(_weights(straight, 6), _weights(mixed, 6))
