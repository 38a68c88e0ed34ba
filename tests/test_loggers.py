"""--log-to tensorboard,wandb: metrics reach each logger; a resumed run continues its wandb run."""

import sys
import types

import pytest
from conftest import tiny_run

from fitv2.cli import main
from fitv2.errors import ConfigError, UserError
from fitv2.training import TrainConfig, train
from fitv2.training.loggers import parse_loggers


class FakeRun:
    def __init__(self, runs, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False
        runs.append(self)

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in wandb module that records what training sends it."""
    module = types.ModuleType("wandb")
    module.runs = []
    module.init = lambda **kwargs: FakeRun(module.runs, **kwargs)
    module.util = types.SimpleNamespace(generate_id=lambda: f"id{len(module.runs)}")
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def _cfg(data, out, **kw):
    logging = dict(batch_size=4, steps=4, log_every=2, ckpt_every=2, log_to="wandb", wandb_project="fitv2-tests")
    return tiny_run(data, out, **{**logging, **kw})


def test_wandb_gets_the_metrics_and_a_resume_continues_its_run(token_dataset, tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    train(_cfg(token_dataset, out))
    (first,) = fake_wandb.runs
    assert first.kwargs["project"] == "fitv2-tests" and first.kwargs["dir"] == str(out)
    assert first.kwargs["config"]["batch_size"] == 4 and first.kwargs["resume"] == "allow"
    assert [step for step, _ in first.logged] == [2, 4] and first.finished
    assert set(first.logged[0][1]) == {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"}
    assert (out / "wandb_id").read_text().strip() == first.kwargs["id"]

    train(_cfg(token_dataset, out, steps=6, resume="latest"))
    second = fake_wandb.runs[1]
    assert second.kwargs["id"] == first.kwargs["id"]  # the same wandb run, continued
    assert [step for step, _ in second.logged] == [6]


def test_loggers_are_checked_before_any_work(tmp_path, monkeypatch, token_dataset):
    assert parse_loggers("tensorboard, wandb,wandb") == ("tensorboard", "wandb")
    assert parse_loggers("") == ()
    with pytest.raises(ConfigError, match="--log-to takes"):
        TrainConfig(data=str(token_dataset), log_to="mlflow")
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(UserError, match=r"pip install 'fitv2\[wandb\]'"):
        train(_cfg(token_dataset, tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    assert TrainConfig(data=str(token_dataset), tensorboard=True, log_to="wandb").loggers == ("tensorboard", "wandb")


def test_log_to_on_the_command_line(token_dataset, tmp_path, capsys):
    args = ["train", "--data", str(token_dataset), "--out", str(tmp_path / "r"), "--log-to", "tensorbored"]
    assert main(args) == 2
    assert "--log-to takes a comma-separated list of tensorboard, wandb; got tensorbored" in capsys.readouterr().err
