"""Every command's misuse: one ``error:`` line (at most 3 lines on stderr), exit status 2, no traceback.

Each case is (command line, text the message must contain). Paths in {braces} are filled
from the fixture: a prepared dataset, a trained checkpoint, a file, a missing path.
"""

import argparse
import json
import os

import pytest

from fitv2.cli import main


@pytest.fixture(scope="module")
def paths(cli_run, tmp_path_factory):
    """The shared dataset and run made by the command line (tests/conftest.py checks that no case writes
    there), and this module's own odd files and output folder."""
    root = tmp_path_factory.mktemp("misuse")
    (root / "file.txt").write_text("not a folder")
    (root / "junk.safetensors").write_bytes(os.urandom(256))
    (root / "bad.json").write_text("{not json")
    (root / "unknown.json").write_text(json.dumps({"data": str(cli_run / "tokens"), "learning_rate": 1}))
    (root / "empty").mkdir()
    (root / "plain").mkdir()
    (root / "plain" / "a.png").write_bytes(b"")
    return {
        "data": cli_run / "tokens",
        "ckpt": cli_run / "run" / "checkpoints" / "step_0000006",
        "file": root / "file.txt",
        "missing": root / "missing",
        "junk": root / "junk.safetensors",
        "bad_json": root / "bad.json",
        "unknown_json": root / "unknown.json",
        "images": cli_run / "images",
        "empty": root / "empty",
        "plain": root / "plain",
        "out": root / "out",
        "run": cli_run / "run",
    }


CASES = [
    # models
    ("models --tokens -1", "--tokens must be at least 1"),
    ("models --tokens x", "invalid int value"),
    # prepare
    ("prepare {images} {out} --budget 0", "--budget must be at least 1"),
    ("prepare {images} {out} --patch-size 0", "--patch-size must be at least 1"),
    ("prepare {images} {out} --min-tokens 0", "--min-tokens must be at least 1"),
    ("prepare {images} {out} --workers 0", "--workers must be at least 1"),
    ("prepare {missing} {out}", "not found"),
    ("prepare {images} {file}", "is a file"),
    ("prepare {images} {out} --autoencoder {missing}", "VAE folder not found"),
    ("prepare {images} {out} --scaling-factor 0.13", "needs a VAE"),
    ("prepare {images} {out} --budget 30", "multiple of"),
    ("prepare {empty} {out}", "no class sub-folders"),
    ("prepare {images} {data}", "already holds a token dataset"),
    ("prepare {images} {out} --device cuda", "--device cuda"),
    ("prepare {images} {out} --device gpu0", "--device must be"),
    ("prepare {images} {out} --text-encoder bert", "--text-encoder must be 'minilm' or 'clip:PATH'"),
    ("prepare {images} {out} --text-encoder clip:{missing}", "CLIP text model folder not found"),
    ("prepare {images} {out} --captions words", "invalid choice"),
    ("prepare {images} {out} --keep-small", "--keep-small is for released latents"),
    ("prepare {images} {out} --dtype int8", "invalid choice"),
    ("prepare {images} {out} --shard-images 0", "--shard-images must be at least 1"),
    ("sample {ckpt} --prompt a", "class-conditional"),
    ("sample {ckpt} --prompts-file {missing}", "prompts file not found"),
    ("sample {ckpt} --prompt a --text-encoder t5", "--text-encoder must be"),
    ("sample {ckpt} --prompt a --per-class 2", "do not go together"),
    ("evaluate {file} --reference {file} --clip {missing}", "CLIP model folder not found"),
    ("convert {missing} {out}", "checkpoint not found"),
    ("convert {junk} {out}", "name its preset"),
    ("convert {ckpt} {file}", "is a file"),
    # train
    ("train --data {data} --out {out} --batch-size 0", "--batch-size must be at least 1"),
    ("train --data {data} --out {out} --ckpt-every 0", "--ckpt-every must be at least 1"),
    ("train --data {data} --out {out} --log-every 0", "--log-every must be at least 1"),
    ("train --data {data} --out {out} --max-minutes -1", "--max-minutes must be greater than 0"),
    ("train --data {data} --out {out} --steps -5", "--steps must be at least 1"),
    ("train --data {data} --out {out} --ema-decay 2", "--ema-decay must be at most 1"),
    ("train --data {data} --out {out} --warmup-steps -10", "--warmup-steps must be at least 0"),
    ("train --data {data} --out {out} --keep-checkpoints 0", "--keep-checkpoints must be at least 1"),
    ("train --data {data} --out {out} --lr 0", "--lr must be greater than 0"),
    ("train --data {data} --out {out} --grad-clip -1", "--grad-clip must be at least 0"),
    ("train --data {data} --out {out} --betas 0.9 1.5", "--betas must be less than 1"),
    ("train --data {data} --out {out} --precision fp16", "invalid choice: 'fp16'"),
    ("train --data {data} --out {out} --preset FiTv2-Huge/2", "invalid choice"),
    ("train --data {data} --out {out} --model depth=abc", "model depth must be a whole number"),
    ("train --data {data} --out {out} --model width=3", "unknown model config field(s): width"),
    ("train --data {data} --out {out} --model depth", "KEY=VALUE"),
    ("train --data {data} --out {out} --model num_heads=5", "divisible"),
    ("train --data {data} --out {out} --batch-size 64", "exceeds the dataset"),
    (
        "train --data {data} --out {out} --batch-size 4 --batching pack --row-length 10",
        "rows must hold the dataset's longest sequence",
    ),
    ("train --data {data} --out {out} --row-length 64", "--row-length is the row of --batching pack"),
    ("train --data {data} --out {out} --batching ragged", "invalid choice: 'ragged'"),
    ("train --data {data} --out {out} --attention fast", "invalid choice: 'fast'"),
    ("train --data {data} --out {out} --attention torch-varlen", "--attention torch-varlen"),
    ("sample {ckpt} --attention flash-varlen", "--attention flash-varlen"),
    ("train --data {data} --out {out} --device cuda", "--device cuda"),
    ("train --data {data} --out {file}", "is a file"),
    ("train --out {out}", "no dataset"),
    ("train --data {missing} --out {out}", "dataset folder not found"),
    ("train --data {images} --out {out}", "not a token dataset"),
    ("train --config {missing}", "--config file not found"),
    ("train --config {bad_json}", "is not valid JSON"),
    ("train --config {unknown_json}", "unknown option(s) in --config: learning_rate"),
    ("train --data {data} --out {out} --fsdp", "torchrun"),
    ("train --data {data} --out {out} --reinit-unfrozen", "--reinit-unfrozen needs"),
    ("train --data {data} --out {out} --resume latest --overwrite", "contradict"),
    ("train --data {data} --out {out} --init-from {missing}", "--init-from weights not found"),
    ("train --data {data} --out {out} --finetune half", "invalid choice"),
    # sample
    ("sample {missing} --preset FiTv2-B/2", "checkpoint not found"),
    ("sample {ckpt} --num -3", "--num must be at least 1"),
    ("sample {ckpt} --num 0", "--num must be at least 1"),
    ("sample {ckpt} --steps 0", "--steps must be at least 1"),
    ("sample {ckpt} --per-class 0", "--per-class must be at least 1"),
    ("sample {ckpt} --guidance-interval 1", "--guidance-interval must be two numbers"),
    ("sample {ckpt} --guidance-interval 0.8,0.2", "0 <= LO < HI <= 1"),
    ("sample {ckpt} --sizes 30x32", "size 30x32 is not possible"),
    ("sample {ckpt} --sizes 32by32", "is not HEIGHTxWIDTH"),
    ("sample {ckpt} --sizes 0x32", "must be positive"),
    ("sample {ckpt} --labels a,b", "--labels must be comma-separated class ids"),
    ("sample {ckpt} --labels 7", "out of range 0..2"),
    ("sample {ckpt} --rope warp", "invalid choice: 'warp'"),
    ("sample {ckpt} --solver rk45", "--solver must be one of"),
    ("sample {ckpt} --solver ddpm", "does not fit this rectified-flow model"),
    ("sample {ckpt} --batch-size 0", "--batch-size must be at least 1"),
    ("sample {ckpt} --cfg-scale -1", "--cfg-scale must be at least 0"),
    ("sample {ckpt} --device cuda", "--device cuda"),
    ("sample {ckpt} --out {file}", "is a file"),
    ("sample {ckpt} --weights best", "invalid choice: 'best'"),
    ("sample {ckpt} --diffusion-form wide", "invalid choice: 'wide'"),
    ("sample {junk} --preset FiTv2-Micro/4", "junk.safetensors"),
    ("sample {file}", "preset"),
    # evaluate
    ("sample {ckpt} --time-shift 0", "--time-shift must be none, auto or a positive number"),
    ("sample {ckpt} --time-shift fast", "--time-shift must be none, auto or a positive number"),
    ("sample {ckpt} --cache taylor", "invalid choice: 'taylor'"),
    ("sample {ckpt} --cache first-block --cache-threshold -1", "--cache-threshold must be at least 0"),
    ("sample {ckpt} --solver sde --time-shift 2", "a time shift moves the ODE solvers' grid"),
    ("evaluate {missing} --reference {images}", "generated images not found"),
    ("evaluate {images} --reference {missing}", "reference not found"),
    ("evaluate {images}", "--reference is required"),
    ("evaluate {images} --reference {images} --batch-size 0", "--batch-size must be at least 1"),
    ("evaluate {images} --reference {images} --reference-budget 0", "--reference-budget must be at least 1"),
    ("evaluate {images} --reference {images} --features clip", "invalid choice: 'clip'"),
    ("evaluate {file} --reference {images}", "expected an image folder, an .npz/.npy sample batch or a .jsonl"),
    ("evaluate {images} --reference {file}", "expected an image folder, an .npz/.npy sample batch or a .jsonl"),
    ("evaluate {images} --reference {images} --classifier {empty}", "is not a classifier folder"),
    ("evaluate {images} --reference {images} --classifier {plain}", "is not a classifier folder"),
    # train-classifier
    ("train-classifier {images} --out {out} --epochs 0", "--epochs must be at least 1"),
    ("train-classifier {images} --out {out} --budget 8", "--budget must be at least 16"),
    ("train-classifier {images} --out {out} --max-minutes 0", "--max-minutes must be greater than 0"),
    ("train-classifier {images}", "--out is required"),
    ("train-classifier {missing} --out {out}", "not found"),
    # serve
    ("serve {ckpt} --port 0", "--port must be at least 1"),
    ("serve {ckpt} --port 65536", "--port must be at most 65535"),
    ("serve {ckpt} --max-tokens 0", "--max-tokens must be at least 1"),
    ("serve {ckpt} --max-steps 0", "--max-steps must be at least 1"),
    ("serve {ckpt} --workers 0", "--workers must be at least 1"),
    ("serve {missing}", "not found"),
    ("serve {junk}", "bare weights file"),
    # sample --npz, train --log-to
    ("sample {ckpt} --npz {out}/x.png", "--npz must name a .npz file"),
    ("sample {ckpt} --npz {out}/x.npz --sizes 32x32,16x16", "--npz holds images of one size"),
    ("sample {ckpt} --npz {file}/x.npz", "is a file"),
    ("sample {ckpt} --mixed stacked", "invalid choice: 'stacked'"),
    ("train --data {data} --out {out} --log-to mlflow", "--log-to takes a comma-separated list"),
    # demo
    ("demo --minutes 0", "--minutes must be greater than 0"),
    ("demo --preset FiTv2-Huge/2", "invalid choice"),
    ("demo --data {missing}", "dataset folder not found"),
    ("demo --data {empty}", "has no metadata.jsonl"),
    ("demo --classifier {missing}", "classifier folder not found"),
    ("demo --out {file}", "is a file"),
    # no command at all
    ("", "required"),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    return code, capsys.readouterr().err


def test_enough_cases():
    assert len(CASES) >= 40
    assert len({c for c, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("command,message", CASES, ids=[c or "<none>" for c, _ in CASES])
def test_misuse_is_one_error_line_and_exit_2(paths, capsys, command, message):
    argv = [part.format(**paths) for part in command.split()]
    code, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert 1 <= len(lines) <= 3 and lines[0].startswith("error: "), err
    assert message in err, err


def test_bugs_keep_their_traceback(paths, monkeypatch):
    """An exception that is not the user's fault is not turned into an error line."""
    import fitv2.cli.models

    def broken(args):
        raise ValueError("a bug")

    monkeypatch.setattr(fitv2.cli.models, "run", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["models"])


def test_help_shows_every_default(capsys):
    from fitv2.schema import flag_name
    from fitv2.training import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("batch_size", "lr", "ema_decay", "keep_checkpoints", "grad_clip"):
        assert flag_name(name) in text
    assert "(default: 32)" in text and "(default: 0.9999)" in text and "(default: on)" in text
    assert len(TrainConfig.__dataclass_fields__) > 30


def test_help_is_fast_and_imports_no_torch():
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from fitv2.cli import main\n"
            "try: main(['sample', '--help'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("False")
    assert seconds < 1.0


def test_rope_names_are_one_list_the_cli_and_the_library_read():
    """--rope offers fitv2.names.ROPE_NAMES; each resolves in the library, an alias to its project name."""
    from fitv2.cli import build_parser
    from fitv2.model.rope import RopeScaling, rope_scaling
    from fitv2.names import ROPE_ALIASES, ROPE_METHODS, ROPE_NAMES

    sample = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["sample"]
    rope = next(a for a in sample._actions if a.dest == "rope")
    assert tuple(rope.choices) == ROPE_NAMES
    for alias, name in ROPE_ALIASES.items():
        assert rope_scaling(alias) == rope_scaling(name)
    # the published code's names mean what its sampler does with them (SPEC 2.6)
    assert rope_scaling("ntkpro2") == RopeScaling("ntk", attn_scale="area")
    assert rope_scaling("vision-ntk+attn-scale") == RopeScaling("ntk", decouple=True, attn_scale="area")
    assert rope_scaling("dynntk").with_(decouple=True) == rope_scaling("vision-ntk")
    assert set(ROPE_METHODS).isdisjoint(ROPE_ALIASES)
