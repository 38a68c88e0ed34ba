"""Training: a tiny model overfits a few images, and resuming is exact."""

import json

import pytest
import torch
from conftest import tiny_run

from fitv2.checkpoint import read_state_dict
from fitv2.training import TrainConfig, train


@pytest.fixture(scope="module")
def eight_images(token_dataset):
    """2 classes x 4 images, 64 tokens at most (tests/conftest.py)."""
    return token_dataset


def _config(data, out, **kw):
    return tiny_run(data, out, **kw)


@pytest.mark.slow
def test_tiny_model_overfits_eight_images(eight_images, tmp_path):
    result = train(_config(eight_images, tmp_path / "run", steps=400, log_every=1, data_mode="flexible"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    first = sum(r["loss"] for r in rows[:10]) / 10
    last = sum(r["loss"] for r in rows[-20:]) / 20
    assert first / last >= 5, (first, last)
    assert result.step == 400 and (tmp_path / "run" / "checkpoints" / "step_0000400" / "ema.safetensors").is_file()


@pytest.mark.slow
def test_resume_is_exact(eight_images, tmp_path):
    kw = dict(class_dropout_prob=0.1)  # label dropout exercises the global RNG too
    straight = train(_config(eight_images, tmp_path / "a", steps=40, ckpt_every=20, model=kw))
    train(_config(eight_images, tmp_path / "b", steps=20, ckpt_every=20, model=kw))
    resumed = train(_config(eight_images, tmp_path / "b", steps=40, ckpt_every=20, model=kw, resume="latest"))
    assert resumed.step == straight.step == 40
    for name in ("model.safetensors", "ema.safetensors"):
        a = read_state_dict(tmp_path / "a" / "checkpoints" / "step_0000040" / name)
        b = read_state_dict(tmp_path / "b" / "checkpoints" / "step_0000040" / name)
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    log_a = [json.loads(line)["loss"] for line in (tmp_path / "a" / "log.jsonl").open()]
    log_b = [json.loads(line)["loss"] for line in (tmp_path / "b" / "log.jsonl").open()]
    assert log_a == log_b


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch.nn.Module, "compile"), reason="needs nn.Module.compile")
def test_compiled_blocks_train_like_eager(eight_images, tmp_path):
    pytest.importorskip("torch._inductor")
    eager = train(_config(eight_images, tmp_path / "eager", steps=4, log_every=1))
    compiled = train(_config(eight_images, tmp_path / "compiled", steps=4, log_every=1, compile=True))
    a = read_state_dict(tmp_path / "eager" / "checkpoints" / "step_0000004" / "model.safetensors")
    b = read_state_dict(tmp_path / "compiled" / "checkpoints" / "step_0000004" / "model.safetensors")
    assert set(a) == set(b)  # compiled blocks save under the same names
    assert compiled.loss == pytest.approx(eager.loss, rel=1e-4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)


def test_ddpm_presets_are_refused_with_the_flow_override_named(eight_images, tmp_path):
    with pytest.raises(ValueError, match="learn_sigma=false continuous_time=true"):
        train(_config(eight_images, tmp_path / "v1", preset="FiT-B/2", steps=1))


def test_pad_pack_and_flat_batching_train_the_same_model(eight_images, tmp_path):
    """Noise and time are keyed by each example's place in the global batch and the loss is a mean over
    images, so the rows a batch is laid out in change nothing but rounding; a resume may switch them."""
    runs = {
        b: train(_config(eight_images, tmp_path / b, steps=6, log_every=1, batching=b, ckpt_every=3))
        for b in ("pad", "pack", "flat")
    }
    weights = {b: read_state_dict(tmp_path / b / "checkpoints" / "step_0000006" / "model.safetensors") for b in runs}
    for b in ("pack", "flat"):
        assert runs[b].loss == pytest.approx(runs["pad"].loss, rel=1e-4)
        for k in weights["pad"]:
            torch.testing.assert_close(weights[b][k], weights["pad"][k], rtol=1e-3, atol=1e-5)
    (tmp_path / "pad" / "checkpoints" / "step_0000006").rename(tmp_path / "gone")  # resume from step 3
    (tmp_path / "pad" / "checkpoints" / "latest").unlink(missing_ok=True)
    switched = train(
        _config(eight_images, tmp_path / "pad", steps=6, log_every=1, batching="flat", ckpt_every=3, resume="latest")
    )
    assert switched.loss == pytest.approx(runs["pad"].loss, rel=1e-4)


def test_options_saved_by_earlier_versions_still_load():
    """``pack`` (None / 0 / L) became ``batching`` + ``row_length``; grad checkpointing left the model config."""
    base = dict(data="d", out="o", preset="FiTv2-Micro/4")
    assert TrainConfig.from_dict({**base, "pack": None}).batching == "pad"
    assert TrainConfig.from_dict({**base, "pack": 0}).batching == "flat"
    packed = TrainConfig.from_dict({**base, "pack": 96})
    assert (packed.batching, packed.row_length) == ("pack", 96)
    old = TrainConfig.from_dict({**base, "model": {"depth": 1, "grad_checkpointing": True}})
    assert old.grad_checkpointing and old.model == {"depth": 1}
    assert old.runtime("fp32").grad_checkpointing
    from fitv2.config import ModelConfig

    assert "grad_checkpointing" not in ModelConfig.from_dict({"depth": 1, "grad_checkpointing": True}).to_dict()


def test_bf16_on_a_cpu_without_bf16_units_warns_with_the_measured_ratio(eight_images, tmp_path, monkeypatch, capsys):
    import fitv2.training.loop as T

    monkeypatch.setattr(T, "bf16_matmul_speedup", lambda: 1 / 17.0)
    train(_config(eight_images, tmp_path / "slow", steps=1, precision="bf16"))
    err = capsys.readouterr().err
    assert err.count("--precision bf16 is slower than fp32 on this CPU") == 1 and "17.0x the time of fp32" in err
    monkeypatch.setattr(T, "bf16_matmul_speedup", lambda: 3.0)
    train(_config(eight_images, tmp_path / "fast", steps=1, precision="bf16"))
    assert "slower than fp32" not in capsys.readouterr().err


def test_bf16_speedup_is_measured():
    from fitv2.training.precision import bf16_matmul_speedup

    assert bf16_matmul_speedup(size=128, repeats=1) > 0


@pytest.mark.parametrize("measured, chosen", [(3.0, "bf16"), (0.5, "fp32")])
def test_precision_auto_trains_in_what_the_measurement_says(
    eight_images, tmp_path, monkeypatch, capsys, measured, chosen
):
    """--precision auto (the default) measures a bf16 step against fp32 and records the choice with the ratio;
    a resumed run keeps the recorded choice whatever a new measurement would say."""
    import json

    import fitv2.training.loop as T

    calls = []
    monkeypatch.setattr(T, "bf16_step_speedup", lambda *a, **k: calls.append(a) or measured)
    out = tmp_path / "run"
    train(_config(eight_images, out, steps=2, ckpt_every=2, precision="auto"))
    assert len(calls) == 1 and calls[0][1] == 8 and calls[0][2] == 64  # the batch, the dataset's largest images
    record = json.loads((out / "config.json").read_text())["precision"]
    assert record == {"requested": "auto", "chosen": chosen, "bf16_speedup": measured}
    assert f"precision auto: {chosen}" in capsys.readouterr().out
    saved = json.loads((out / "checkpoints" / "step_0000002" / "config.json").read_text())
    assert saved["precision"]["chosen"] == chosen
    monkeypatch.setattr(T, "bf16_step_speedup", lambda *a, **k: 1 / measured)  # the other answer now
    train(_config(eight_images, out, steps=4, ckpt_every=2, resume="latest", precision="auto"))
    assert json.loads((out / "config.json").read_text())["precision"]["chosen"] == chosen


def test_bf16_step_speedup_is_measured_on_the_model():
    from conftest import tiny_config

    from fitv2.model import FiT
    from fitv2.training.precision import bf16_step_speedup, choose_precision

    model = FiT(tiny_config())
    assert bf16_step_speedup(model, 2, 16, torch.device("cpu"), rounds=3, seconds=0.1) > 0
    assert all(p.grad is None for p in model.parameters())
    assert choose_precision("fp32", lambda: 9.0) == ("fp32", None)
    assert choose_precision("auto", lambda: 1.5) == ("bf16", 1.5)
