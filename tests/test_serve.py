"""fitv2 serve: the page's checks and reproduce command, and the page itself driven in headless Chromium."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from fitv2.cli import main
from fitv2.cli.page import ASPECTS, Limits, aspect_size, check_request, generate
from fitv2.errors import UserError
from fitv2.sampling import Sampler

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from serve_screenshot import drive  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(cli_run):
    return cli_run / "run" / "checkpoints" / "step_0000006"


@pytest.mark.parametrize("aspect", list(ASPECTS))
def test_aspect_presets_keep_the_ratio_and_the_area(aspect):
    a, b = ASPECTS[aspect]
    h, w = aspect_size(aspect, 256, 16)
    assert h % 16 == 0 and w % 16 == 0 and h * b == w * a
    assert 0.7 < h * w / 256**2 < 1.4


def _values(**kw):
    base = dict(label=2, height=16, width=32, steps=3, solver="euler", guidance=2.0, rope="none", seed=5)
    return {**base, **kw}


def test_the_page_image_is_what_its_command_writes(ckpt, tmp_path):
    sampler = Sampler.load(ckpt)
    request = check_request(sampler, _values())
    image = generate(sampler, request, progress=False)
    assert image.shape == (16, 32, 3)
    command = request.command(str(ckpt), out=str(tmp_path / "s"))
    assert command.startswith("fitv2 sample ")
    argv = command.split()[1:]
    assert main([*argv, "--no-progress"]) == 0
    written = np.load(tmp_path / "s" / "16x32.npz")["arr_0"][0]
    assert np.array_equal(written, image)
    released = request.command("xl.safetensors", loading=("--preset", "FiTv2-XL/2", "--autoencoder", "my vae"))
    assert released.endswith("--preset FiTv2-XL/2 --autoencoder 'my vae'")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(height=30), "not possible"),
        (dict(width=2.5), "whole number"),
        (dict(steps=0), "steps must be between 1"),
        (dict(steps=251), "steps must be between 1 and 250"),
        (dict(height=128, width=128), "1024 tokens; this page samples at most 256"),
        (dict(solver="ddpm"), "solver must be one of"),
        (dict(solver="rk4"), "solver must be one of"),
        (dict(solver="sde", steps=1), "at least 2 steps"),
        (dict(guidance=-1), "guidance scale"),
        (dict(rope="ntk-aware-pro9"), "extrapolation must be one of"),
        (dict(label=None), "choose a class"),
        (dict(label=3), "label must be between 0 and 2"),
        (dict(seed=-1), "seed must be"),
    ],
)
def test_bad_page_values_are_one_message(ckpt, change, message):
    sampler = Sampler.load(ckpt)
    with pytest.raises(UserError, match=message):
        check_request(sampler, _values(**change))


def test_page_limits_come_from_the_options(ckpt):
    sampler = Sampler.load(ckpt)
    assert Limits.of(sampler) == Limits(4 * 8 * 8, 250)  # 4x the training tokens (8x8 tokens of 4x4 px)
    small = Limits(max_tokens=10, max_steps=3)
    with pytest.raises(UserError, match="at most 10 "):
        check_request(sampler, _values(height=16, width=16), small)  # 16 tokens
    with pytest.raises(UserError, match="between 1 and 3"):
        check_request(sampler, _values(height=8, width=16, steps=4), small)
    assert check_request(sampler, _values(height=8, width=16, steps=3), small).steps == 3


def test_serve_refuses_a_bad_port_and_a_busy_one(ckpt, capsys):
    assert main(["serve", str(ckpt), "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(ckpt), "--port", str(port)]) == 2
    assert "cannot listen on" in capsys.readouterr().err


def test_serve_without_gradio_says_how_to_install_it(ckpt, tmp_path):
    blocker = tmp_path / "gradio.py"
    blocker.write_text("raise ImportError('no gradio here')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "fitv2.cli", "serve", str(ckpt)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: fitv2 serve needs gradio, which is not installed: pip install 'fitv2[web]'"
    ]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fitv2 serve exited: {proc.stderr.read() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: run scripts/install_browser.sh (Debian's chromium)")
def test_the_page_in_a_real_browser(ckpt, tmp_path):
    pytest.importorskip("gradio", reason="pip install 'fitv2[web]'")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fitv2.cli", "serve", str(ckpt), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, proc)
        shot = tmp_path / "serve.png"
        seen = drive(f"http://127.0.0.1:{port}/", str(shot), class_index=2, aspect="1:2", steps=4)
        assert seen["fields"] == [24, 48]  # the 1:2 preset at about the 32x32 training area
        assert seen["image_size"] == [48, 24]  # width, height: an image of that aspect ratio
        assert "--sizes 24x48" in seen["command"] and "--labels 2" in seen["command"]
        assert "--steps 4" in seen["command"]
        assert (tmp_path / "serve.png").stat().st_size > 10_000
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_small_request_is_not_stuck_behind_a_large_one(ckpt):
    """Two requests at once: with the page's workers (two by default) the small one is done long before the
    large one, instead of waiting in the queue until the large one finishes."""
    pytest.importorskip("gradio", reason="pip install 'fitv2[web]'")
    client_module = pytest.importorskip("gradio_client")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "fitv2.cli", "serve", str(ckpt), "--port", str(port), "--max-steps", "4000"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(port, proc)
        client = client_module.Client(f"http://127.0.0.1:{port}/", verbose=False)
        #        class, height, width, steps, solver, guidance, rope, seed, time shift, cache
        large = client.submit(1, 64, 64, 4000, "euler", 3.0, "none", 0, "none", "none", api_name="/generate")
        deadline = time.monotonic() + 60
        while large.status().code.name != "PROCESSING" and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.monotonic()
        small = client.submit(1, 8, 8, 1, "euler", 3.0, "none", 0, "none", "none", api_name="/generate")
        image, command, _ = small.result(timeout=120)
        waited = time.monotonic() - start
        assert "--sizes 8x8" in command and Path(image).is_file()
        assert not large.done(), f"the large request finished first; the small one waited {waited:.1f} s"
        large.cancel()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
