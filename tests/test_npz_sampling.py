"""fitv2 sample --npz: one ADM-format file, split over torchrun ranks, resumable, equal to a plain run."""

import os
import subprocess
import sys

import numpy as np
import pytest

from fitv2.cli import main
from fitv2.sampling import Sampler


@pytest.fixture(scope="module")
def ckpt(cli_run):
    return cli_run / "run" / "checkpoints" / "step_0000006"


def _args(ckpt, out, *extra):
    return [
        "sample",
        str(ckpt),
        "--sizes",
        "16x32",
        "--num",
        "5",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--cfg-scale",
        "2",
        "--seed",
        "3",
        "--no-progress",
        "--npz",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def one_process(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("npz") / "one.npz"
    assert main(_args(ckpt, out)) == 0
    return np.load(out)


def test_npz_equals_a_plain_sample_run(ckpt, one_process, tmp_path):
    images, labels = one_process["arr_0"], one_process["arr_1"]
    assert images.shape == (5, 16, 32, 3) and images.dtype == np.uint8 and labels.shape == (5,)
    plain = ["sample", str(ckpt), "--sizes", "16x32", "--num", "5", "--steps", "2", "--cfg-scale", "2", "--seed", "3"]
    assert main([*plain, "--no-progress", "--out", str(tmp_path / "plain")]) == 0
    reference = np.load(tmp_path / "plain" / "16x32.npz")
    assert np.array_equal(reference["arr_1"], labels)
    assert np.abs(reference["arr_0"].astype(int) - images.astype(int)).max() <= 1
    assert not (tmp_path / "one.npz.parts").exists()


def test_an_interrupted_run_resumes_where_it_stopped(ckpt, one_process, tmp_path, monkeypatch, capsys):
    out = tmp_path / "resumed.npz"
    calls = []
    generate = Sampler.generate

    def interrupted(self, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(kwargs["start"])
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(Sampler, "generate", interrupted)
    assert main(_args(ckpt, out)) == 130
    parts = tmp_path / "resumed.npz.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["chunk_000000.npz", "run.json"] and not out.exists()

    assert main(_args(ckpt, out, "--seed", "4")) == 2  # other settings are not mixed in
    assert "other settings (seed)" in capsys.readouterr().err

    calls.clear()

    def counted(self, *args, **kwargs):
        calls.append(kwargs["start"])
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(Sampler, "generate", counted)
    assert main([a for a in _args(ckpt, out) if a != "--no-progress"]) == 0
    assert calls == [2, 4]  # chunk 0 was kept
    assert "1 of 3 chunks already sampled" in capsys.readouterr().out
    resumed = np.load(out)
    assert np.array_equal(resumed["arr_0"], one_process["arr_0"])
    assert np.array_equal(resumed["arr_1"], one_process["arr_1"])
    assert main(_args(ckpt, out)) == 2  # the finished file is never overwritten
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [(["--sizes", "16x16,16x32"], "one size"), (["--npz", "out.png"], "must name a .npz")],
)
def test_npz_misuse(ckpt, tmp_path, capsys, extra, message):
    assert main([*_args(ckpt, tmp_path / "x.npz"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_torchrun_without_npz_is_refused(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["sample", str(ckpt), "--out", str(tmp_path / "s")]) == 2
    assert "--npz" in capsys.readouterr().err


@pytest.mark.slow
def test_two_gloo_processes_equal_one(ckpt, one_process, tmp_path):
    out = tmp_path / "two.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "fitv2.cli",
    ]
    args = ["--num-images" if a == "--num" else a for a in _args(ckpt, out)]  # torchrun's --numa-binding takes --num
    proc = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = np.load(out)
    assert np.array_equal(two["arr_1"], one_process["arr_1"])
    assert np.abs(two["arr_0"].astype(int) - one_process["arr_0"].astype(int)).max() <= 1
    assert "5 images at 16x32" in proc.stdout and "2 process(es)" in proc.stdout
