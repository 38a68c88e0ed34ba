"""The run folder and checkpoints are safe: no training over an earlier run, resumes that pick an
intact checkpoint and keep what is trained, writes that survive a full disk, clear errors."""

import errno
import json
import os
import shutil
import stat

import pytest
import torch
from conftest import tiny_run

import fitv2.checkpoint
import fitv2.run_folder
import fitv2.training.loop
from fitv2.checkpoint import (
    CheckpointError,
    atomic_write,
    load_model,
    read_model_config,
    read_state_dict,
    save_json,
    save_model_dir,
)
from fitv2.config import model_config
from fitv2.errors import ConfigError, MissingFileError, UserError
from fitv2.model import FiT
from fitv2.run_folder import checkpoint_problem, pick_resume, rotate
from fitv2.training import TrainConfig, train
from fitv2.training.finetune import load_pretrained
from fitv2.training.run import saved_train_config


@pytest.fixture(scope="module")
def data(token_dataset):
    """2 classes x 4 images, 64 tokens at most (tests/conftest.py)."""
    return token_dataset


def _config(data, out, **kw):
    return tiny_run(data, out, **{"steps": 20, "ckpt_every": 10, **kw})


@pytest.fixture(scope="module")
def base_run(data, tmp_path_factory):
    """20 steps with checkpoints at 10 and 20 (latest)."""
    out = tmp_path_factory.mktemp("base") / "run"
    train(_config(data, out))
    return out


@pytest.fixture
def run(base_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base_run, out, symlinks=True)
    return out


def _ckpt(out, step):
    return out / "checkpoints" / f"step_{step:07d}"


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "log.jsonl").open()]


# 1. the environment is checked before any data is opened or any model built


def test_environment_is_checked_before_data_or_model(data, tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was opened before the options were checked")

    monkeypatch.setattr(fitv2.training.loop, "TokenDataset", no_data)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train(_config(data, tmp_path / "file" / "run"))
    with pytest.raises(ConfigError, match="torchrun"):
        train(_config(data, tmp_path / "run", fsdp=True))
    assert not (tmp_path / "run").exists()


# 2. a run folder that holds a run is refused unless resumed or overwritten


def test_a_folder_that_holds_a_run_is_refused(data, run):
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(UserError, match=r"already holds a run .*--resume latest.*--overwrite"):
        train(_config(data, run, steps=5))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert _steps(run) == [5, 10, 15, 20]
    shutil.rmtree(run / "checkpoints")  # a log alone is a run too
    with pytest.raises(UserError, match="already holds a run"):
        train(_config(data, run, steps=5))


def test_overwrite_removes_the_old_run_and_starts_afresh(data, run):
    (run / "loss.png").write_bytes(b"old")
    (run / "tensorboard").mkdir()
    (run / "notes.txt").write_text("not the run's")
    result = train(_config(data, run, steps=5, ckpt_every=5, overwrite=True))
    assert result.step == 5
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000005"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000005"
    assert _steps(run) == [5]
    assert not (run / "tensorboard").exists() and (run / "loss.png").read_bytes() != b"old"
    assert (run / "notes.txt").read_text() == "not the run's"
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 5


def test_resume_latest_in_a_new_folder_starts_fresh(data, tmp_path, capsys):
    result = train(_config(data, tmp_path / "new", steps=3, ckpt_every=3, resume="latest"))
    assert result.step == 3 and _steps(tmp_path / "new") == [3]
    assert "resuming" not in capsys.readouterr().out


# 3. rotation never deletes the checkpoint just written


def test_rotation_keeps_the_checkpoint_just_written(data, run, capsys):
    # continue from the older checkpoint: step_0000015 sorts between the two that exist
    result = train(_config(data, run, steps=15, ckpt_every=5, keep_checkpoints=1, resume=str(_ckpt(run, 10))))
    assert f"resuming from step 10: {_ckpt(run, 10)}" in capsys.readouterr().out
    assert result.step == 15 and checkpoint_problem(_ckpt(run, 15)) is None
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000015"
    assert not _ckpt(run, 10).exists()
    assert _ckpt(run, 20).exists()  # past the resumed step: left alone, replaced when the run gets there
    assert pick_resume(run, "latest").path == _ckpt(run, 15)


def test_rotate_keeps_at_least_the_new_checkpoint(tmp_path):
    for step in (1, 2, 3):
        _ckpt(tmp_path, step).mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_0000002.tmp").mkdir()
    rotate(_ckpt(tmp_path, 2), keep=0)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]


# 4. resume='latest' says where it resumes, and falls back past a broken checkpoint


def test_resume_prints_the_step_and_folder(data, run, capsys):
    result = train(_config(data, run, steps=25, ckpt_every=5, resume="latest"))
    assert result.step == 25
    assert f"resuming from step 20: {_ckpt(run, 20)}" in capsys.readouterr().out


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path):  # same size, one byte changed: only a checksum sees it
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


BREAKS = {
    "model truncated": lambda c: _truncate(c / "model.safetensors"),
    "ema truncated": lambda c: _truncate(c / "ema.safetensors"),
    "train state truncated": lambda c: _truncate(c / "train_state.pt"),
    "model missing": lambda c: (c / "model.safetensors").unlink(),
    "train state missing": lambda c: (c / "train_state.pt").unlink(),
    "config unparseable": lambda c: (c / "config.json").write_text('{"model": {'),
    "model byte flipped": lambda c: _flip(c / "model.safetensors"),
    "train state byte flipped": lambda c: _flip(c / "train_state.pt"),
    "ema emptied": lambda c: (c / "ema.safetensors").write_bytes(b""),
}


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "legacy"])
@pytest.mark.parametrize("how", list(BREAKS))
def test_a_broken_latest_checkpoint_falls_back_to_the_newest_intact(run, how, manifest):
    if not manifest and how == "model byte flipped":
        pytest.skip("safetensors has no checksum: without a manifest a changed byte of tensor data is invisible")
    if not manifest:  # checkpoints written before manifests are checked by their structure
        for step in (10, 20):
            (_ckpt(run, step) / "manifest.json").unlink()
        assert checkpoint_problem(_ckpt(run, 20)) is None
    BREAKS[how](_ckpt(run, 20))
    files = sorted(p.name for p in _ckpt(run, 20).iterdir())
    choice = pick_resume(run, "latest")
    assert choice.path == _ckpt(run, 10)
    assert "step_0000020 is not intact" in choice.warning and "\n" not in choice.warning
    assert sorted(p.name for p in _ckpt(run, 20).iterdir()) == files  # nothing deleted
    with pytest.raises(CheckpointError, match=r"is not an? (intact )?training checkpoint"):
        pick_resume(run, str(_ckpt(run, 20)))  # a checkpoint named explicitly is not replaced by another


def test_fallback_resume_trains_on_exactly(data, base_run, run, capsys):
    straight = read_state_dict(_ckpt(base_run, 20) / "model.safetensors")
    _truncate(_ckpt(run, 20) / "model.safetensors")
    result = train(_config(data, run, resume="latest"))
    captured = capsys.readouterr()
    assert "warning: step_0000020 is not intact (model.safetensors has" in captured.err
    assert f"resuming from step 10: {_ckpt(run, 10)}" in captured.out
    assert result.step == 20 and checkpoint_problem(_ckpt(run, 20)) is None
    resumed = read_state_dict(_ckpt(run, 20) / "model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert _steps(run) == [5, 10, 15, 20]


def test_no_intact_checkpoint_is_an_error(data, run):
    for step in (10, 20):
        _truncate(_ckpt(run, step) / "train_state.pt")
    with pytest.raises(UserError, match=r"no intact checkpoint to resume .*step_0000020.*step_0000010.*--overwrite"):
        train(_config(data, run, resume="latest"))


# 5. the latest pointer is a name inside checkpoints/, never followed out of the run folder


@pytest.fixture(scope="module")
def other_run(data, tmp_path_factory):
    """A run further on (30 steps) that a pointer could lead to (only read: a pointer that is followed
    resumes at step 30 and trains nothing)."""
    out = tmp_path_factory.mktemp("other") / "other"
    train(_config(data, out, steps=30, ckpt_every=30))
    return out


@pytest.mark.parametrize("pointer", ["relative", "absolute", "symlink"])
def test_latest_is_never_followed_out_of_the_run_folder(data, run, other_run, pointer, capsys):
    latest = run / "checkpoints" / "latest"
    assert latest.read_text() == "step_0000020\n"
    if pointer == "relative":
        latest.write_text(os.path.relpath(_ckpt(other_run, 30), latest.parent))  # ../../../other0/other/...
        assert (latest.parent / latest.read_text()).is_dir()  # the pointer leads to the other run
    elif pointer == "absolute":
        latest.write_text(str(_ckpt(other_run, 30)))
    else:
        os.symlink(_ckpt(other_run, 30), run / "checkpoints" / "step_0000030")
        latest.write_text("step_0000030")
    result = train(_config(data, run, resume="latest"))  # steps=20: resuming at 20 trains nothing
    assert result.step == 20, "followed the pointer out of the run folder"
    assert "ignored" in capsys.readouterr().err


# 6. options that change what is trained must match the checkpoint; the others may change


def test_changed_training_options_are_refused_by_name(data, run):
    with pytest.raises(ConfigError) as err:
        train(_config(data, run, resume="latest", lr=1e-3, batch_size=4, model=dict(class_dropout_prob=0.2)))
    msg = str(err.value)
    assert "--lr: 0.003 -> 0.001" in msg and "--batch-size: 8 -> 4" in msg
    assert "--model class_dropout_prob: 0.0 -> 0.2" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="--ema-warmup: True -> False"):
        train(_config(data, run, resume="latest", ema_warmup=False))
    assert _steps(run) == [5, 10, 15, 20]


def test_run_options_may_change_and_are_recorded(data, run):
    result = train(_config(data, run, resume="latest", steps=24, log_every=2, ckpt_every=4, keep_checkpoints=3))
    assert result.step == 24 and _steps(run) == [5, 10, 15, 20, 22, 24]
    for where in (run, _ckpt(run, 24)):
        saved = json.loads((where / "config.json").read_text())["train"]
        assert (saved["steps"], saved["log_every"], saved["keep_checkpoints"]) == (24, 2, 3)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest",
        "step_0000010",
        "step_0000020",
        "step_0000024",
    ]


def test_saved_train_config_is_the_base_for_a_plain_resume(data, run, tmp_path):
    saved = saved_train_config(str(run), "latest")
    assert saved["lr"] == 0.003 and saved["steps"] == 20 and saved["model"] == {"class_dropout_prob": 0.0}
    assert "resume" not in saved and "overwrite" not in saved
    assert saved_train_config(str(tmp_path / "nothing"), "latest") is None
    assert saved_train_config(str(run), str(_ckpt(run, 10)))["steps"] == 20
    # what `fitv2 train --out RUN --resume latest --steps 25` builds: saved options, then the flags given
    cfg = TrainConfig.from_dict({**saved, "out": str(run), "resume": "latest", "steps": 25, "ckpt_every": 5})
    assert train(cfg).step == 25


# 7. checkpoints are fsynced before they are renamed, and a failed write leaves nothing behind


def test_checkpoint_files_and_folder_are_synced_around_the_rename(data, tmp_path, monkeypatch):
    events = []
    sync = fitv2.checkpoint.fsync_path

    def record_sync(path):
        events.append(("sync", str(path)))
        sync(path)

    rename = type(tmp_path).rename

    def record_rename(self, target):
        events.append(("rename", str(self)))
        return rename(self, target)

    monkeypatch.setattr(fitv2.checkpoint, "fsync_path", record_sync)
    monkeypatch.setattr(fitv2.run_folder, "fsync_path", record_sync)
    monkeypatch.setattr(type(tmp_path), "rename", record_rename)
    out = tmp_path / "run"
    train(_config(data, out, steps=1, ckpt_every=1))
    tmp = str(_ckpt(out, 1)) + ".tmp"
    moved = events.index(("rename", tmp))
    before = [p for kind, p in events[:moved] if kind == "sync"]
    for name in ("config.json", "model.safetensors", "ema.safetensors", "train_state.pt", "manifest.json"):
        assert any(os.path.dirname(p) == tmp and os.path.basename(p).startswith(f".{name}.") for p in before), name
    assert before[-1] == tmp
    assert ("sync", str(out / "checkpoints")) in events[moved:]


def test_a_full_disk_removes_the_partial_checkpoint(data, run, monkeypatch):
    real_save = fitv2.checkpoint.save_file
    calls = []

    def fill_the_disk(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # model.safetensors went in; ema.safetensors stops half way
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(fitv2.checkpoint, "save_file", fill_the_disk)
    with pytest.raises(UserError) as err:
        train(_config(data, run, steps=25, ckpt_every=25, resume="latest"))
    msg = str(err.value)
    assert "\n" not in msg and "No space left on device" in msg
    assert "step_0000025" in msg and "removed the partial folder" in msg
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000010", "step_0000020"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000020"
    assert checkpoint_problem(_ckpt(run, 20)) is None and checkpoint_problem(_ckpt(run, 10)) is None
    monkeypatch.setattr(fitv2.checkpoint, "save_file", real_save)
    assert train(_config(data, run, steps=25, ckpt_every=25, resume="latest")).step == 25


# 8. atomic_write honours the umask


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_write_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_json({"a": 1}, tmp_path / "a.json")
        atomic_write(tmp_path / "b.txt", lambda tmp: open(tmp, "w").write("b"))
    finally:
        os.umask(old)
    for name in ("a.json", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt"]


# 9. grad_clip=0 means no clipping


def test_grad_clip_zero_does_not_clip(data, tmp_path):
    train(_config(data, tmp_path / "off", steps=3, ckpt_every=3, log_every=1, grad_clip=0.0))
    train(_config(data, tmp_path / "huge", steps=3, ckpt_every=3, log_every=1, grad_clip=1e9))
    off = read_state_dict(_ckpt(tmp_path / "off", 3) / "model.safetensors")
    huge = read_state_dict(_ckpt(tmp_path / "huge", 3) / "model.safetensors")
    assert all(torch.equal(off[k], huge[k]) for k in off)
    assert torch.count_nonzero(off["final_layer.linear.weight"]) > 0  # zero init: it trained
    norms = [json.loads(line)["grad_norm"] for line in (tmp_path / "off" / "log.jsonl").open()]
    assert len(norms) == 3 and all(n > 0 for n in norms)


# 10. --init-from is checked like any other architecture


def _pixel_config(**overrides):
    return model_config("FiTv2-Micro/4", num_classes=2, patch_size=4, in_channels=3, **overrides)


def test_init_from_a_ddpm_checkpoint_names_the_flow_override(data, tmp_path):
    cfg = _pixel_config(learn_sigma=True, continuous_time=False)
    save_model_dir(tmp_path / "v1", cfg, FiT(cfg).state_dict())
    with pytest.raises(ConfigError, match=r"DDPM model .*overriding --model learn_sigma=false continuous_time=true"):
        train(_config(data, tmp_path / "run", init_from=str(tmp_path / "v1")))


@pytest.mark.parametrize(
    "config",
    ['{"model": {', '{"model": {"hidden_size": 100, "num_heads": 3}}', "[]"],
    ids=["unparseable", "invalid", "not-a-config"],
)
def test_init_from_a_bad_config_is_a_user_error(data, tmp_path, config):
    cfg = _pixel_config()
    save_model_dir(tmp_path / "src", cfg, FiT(cfg).state_dict())
    (tmp_path / "src" / "config.json").write_text(config)
    with pytest.raises(UserError, match=r"config\.json"):
        train(_config(data, tmp_path / "run", init_from=str(tmp_path / "src")))
    with pytest.raises(CheckpointError, match=r"config\.json"):
        read_model_config(tmp_path / "src")


def test_reinit_unfrozen_needs_partial_finetuning(tmp_path):
    cfg = _pixel_config()
    save_model_dir(tmp_path / "src", cfg, FiT(cfg).state_dict())
    with pytest.raises(ConfigError, match="mode='partial'"):
        load_pretrained(FiT(cfg), str(tmp_path / "src"), reinit_unfrozen=True, mode="full")


# 11. checkpoint errors say what is wrong with which file


def test_load_model_on_a_missing_path(tmp_path):
    with pytest.raises(MissingFileError, match=r"checkpoint not found: .*nowhere"):
        load_model(tmp_path / "nowhere", preset="FiTv2-Micro/4")
    with pytest.raises(MissingFileError, match="checkpoint not found"):
        load_model(tmp_path / "nowhere.safetensors")


@pytest.mark.parametrize("content", [os.urandom(256), b"", None], ids=["random", "empty", "truncated"])
def test_a_broken_safetensors_file_is_named(tmp_path, content):
    file = tmp_path / "w.safetensors"
    if content is None:
        cfg = _pixel_config()
        save_model_dir(tmp_path / "ok", cfg, FiT(cfg).state_dict())
        content = (tmp_path / "ok" / "model.safetensors").read_bytes()[:1000]
    file.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"w\.safetensors is not a readable safetensors file") as err:
        load_model(file, preset="FiTv2-Micro/4")
    assert "\n" not in str(err.value)


def test_a_broken_pickle_is_named(tmp_path):
    torch.save({"w": torch.zeros(100)}, tmp_path / "w.pt")
    _truncate(tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"cannot read .*w\.pt: not an intact PyTorch file"):
        read_state_dict(tmp_path / "w.pt")


# 12. with ema_warmup (the default) a short run's EMA follows the weights


def _distance(a, b):
    return sum(float((a[k].float() - b[k].float()).square().sum()) for k in a) ** 0.5


def test_ema_warmup_follows_a_short_run(data, tmp_path):
    distances = {}
    for warmup in (True, False):
        out = tmp_path / f"warmup_{warmup}"
        train(_config(data, out, steps=60, ckpt_every=60, ema_warmup=warmup))
        torch.manual_seed(0)
        init = FiT(read_model_config(_ckpt(out, 60))).state_dict()
        raw = read_state_dict(_ckpt(out, 60) / "model.safetensors")
        ema = read_state_dict(_ckpt(out, 60) / "ema.safetensors")
        travelled = _distance(raw, init)
        distances[warmup] = (
            _distance(ema, raw) / travelled,
            _distance(ema, init) / travelled,
            _distance(ema, raw) / _distance(raw, {k: torch.zeros_like(v) for k, v in raw.items()}),
        )
    print(
        "EMA distance to the raw weights and to the init (as fractions of |raw - init|), |ema - raw| / |raw|:",
        distances,
    )
    assert distances[True][0] < 0.35  # the average of about the last tenth of the run
    assert distances[False][1] < 0.02  # decay 0.9999 without warm-up: still at the init
