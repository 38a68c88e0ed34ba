"""The fitv2 command line end to end on a generated folder: prepare, train, sample, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def run(*args):
    return subprocess.run([sys.executable, "-m", "fitv2.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained(cli_run):
    """``fitv2 prepare`` and ``fitv2 train`` on 3 classes x 4 images, 6 steps (tests/conftest.py)."""
    return cli_run


def test_train_writes_checkpoint_log_and_plot(trained):
    run_dir = trained / "run"
    ckpt = run_dir / "checkpoints" / "step_0000006"
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "ema.safetensors", "config.json", "train_state.pt"}
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model"]["depth"] == 1 and config["model"]["num_classes"] == 3
    assert config["dataset"]["class_names"] == ["class_0", "class_1", "class_2"]
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 3
    assert Image.open(run_dir / "loss.png").size == (640, 360)


@pytest.mark.slow
def test_sample_sizes_aspect_ratios_and_outputs(trained, tmp_path):
    ckpt = trained / "run" / "checkpoints" / "step_0000006"
    sizes = ["32x32", "16x48", "48x16", "20x28"]
    proc = run(
        "sample",
        str(ckpt),
        "--sizes",
        ",".join(sizes),
        "--labels",
        "0,2",
        "--steps",
        "2",
        "--cfg-scale",
        "2",
        "--rope",
        "vision-ntk+attn-scale",
        "--out",
        str(tmp_path / "s"),
    )
    assert proc.returncode == 0, proc.stderr
    for size in sizes:
        h, w = map(int, size.split("x"))
        arr = np.load(tmp_path / "s" / f"{size}.npz")
        assert arr["arr_0"].shape == (2, h, w, 3) and arr["arr_0"].dtype == np.uint8
        assert arr["arr_1"].tolist() == [0, 2]
        pngs = sorted((tmp_path / "s" / size).glob("*.png"))
        assert [Image.open(p).size for p in pngs] == [(w, h)] * 2
    assert (tmp_path / "s" / "grid.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--sizes", "30x32"], "size 30x32 is not possible: height and width must be positive multiples of 4 px"),
        (["--sizes", "32by32"], "is not HEIGHTxWIDTH"),
        (["--labels", "7"], "out of range 0..2"),
        (["--rope", "warp"], "invalid choice: 'warp'"),
    ],
)
def test_bad_requests_exit_2_with_one_line(trained, tmp_path, args, message):
    ckpt = trained / "run" / "checkpoints" / "step_0000006"
    proc = run("sample", str(ckpt), "--out", str(tmp_path / "x"), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


@pytest.mark.slow
def test_missing_inputs_exit_2(tmp_path):
    proc = run("sample", str(tmp_path / "nope"), "--preset", "FiTv2-B/2")
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = run("train", "--data", str(tmp_path))
    assert proc.returncode == 2 and "not a token dataset" in proc.stderr
    proc = run("sample", str(tmp_path / "w.safetensors"))
    assert proc.returncode == 2
