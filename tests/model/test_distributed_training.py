"""Data-parallel training under `accelerate launch`: two CPU processes (gloo) follow the
one-process run at the same global batch, only the main process writes, and a two-process run
killed mid-training resumes to the uninterrupted two-process checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_tiny_model
from tests.model.test_resume import finish, reached, saved_progress, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 0.01
"""How far the two-process weights may lie from the one-process ones, as a share of how far
training moved the one-process weights (L2 norms). Only the order of float sums differs; on
this suite's toy task the share measured 1e-6 to 3e-4 across the six methods, while a wrong
global batch (each process taking a whole batch) moves them by tens of percent."""

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(out: Path, dataset: Path, model: Path, processes: int) -> subprocess.Popen:
    """`geep train` of FastBERT (two training steps: the second freezes the backbone), saving
    after every step, in one process or under `accelerate launch` with ``processes``."""
    argv = ["-m", "geep.cli", "train", "--method", "fastbert", "--dataset", str(dataset)]
    argv += ["--model", str(model), "--out", str(out), "--epochs", "2", "--batch-size", "8"]
    argv += ["--seq-len", "16", "--save-every", "0"]
    launcher = [sys.executable]
    if processes > 1:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
        launcher += ["--num_processes", str(processes), "--num_machines", "1"]
        launcher += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        launcher += ["--main_process_port", str(free_port())]
    return subprocess.Popen(
        [*launcher, *argv],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def still_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT without dropout: the processes' dropout masks cannot match one process's."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert-no-dropout"), dropout=0.0)


@pytest.fixture(scope="module")
def two_process_run(toy_dir: Path, still_model: Path, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("two") / "fastbert"
    process = train(out, toy_dir, still_model, processes=2)
    out_text, err = process.communicate(timeout=600)
    assert process.returncode == 0, out_text[-3000:] + err[-3000:]
    return out, out_text


def test_two_processes_match_one(
    two_process_run: tuple[Path, str], toy_dir: Path, still_model: Path, tmp_path: Path
) -> None:
    two, printed = two_process_run
    assert printed.count("saved fastbert checkpoint") == 1, printed  # the main process reports
    one = tmp_path / "fastbert"
    finish(train(one, toy_dir, still_model, processes=1))
    initial = load_file(still_model / "model.safetensors")
    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert w1.keys() == w2.keys()
    encoder = {k: k.removeprefix("backbone.encoder.") for k in w1 if k.startswith("backbone.")}
    encoder = {k: v for k, v in encoder.items() if v in initial}
    assert len(encoder) == len([k for k in initial if not k.startswith("pooler.")])
    moved = torch.sqrt(sum(((w1[k] - initial[v]) ** 2).sum() for k, v in encoder.items()))
    apart = torch.sqrt(sum(((w1[k] - w2[k]) ** 2).sum() for k in w1))
    assert moved > 0.01  # training did move the weights
    assert apart <= TOLERANCE * moved, f"{float(apart):.3g} apart, {float(moved):.3g} moved"


def test_killed_two_process_run_resumes_to_the_uninterrupted_checkpoint(
    two_process_run: tuple[Path, str], toy_dir: Path, still_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fastbert"
    process = train(out, toy_dir, still_model, processes=2)
    wait_until(process, lambda: reached(out, 0, 5))
    launcher = psutil.Process(process.pid)
    for p in [launcher, *launcher.children(recursive=True)]:  # as when the node is lost
        p.send_signal(signal.SIGKILL)
    process.communicate()
    assert not out.exists(), "a checkpoint appeared before training ended"
    killed_at = saved_progress(out)
    assert (killed_at["call"], killed_at["done"]) != (1, True), "the kill came too late"

    err = finish(train(out, toy_dir, still_model, processes=2))
    assert err.count("resuming from the state saved in") == 1, err[-3000:]
    resumed = load_file(out / "model.safetensors")
    uninterrupted = load_file(two_process_run[0] / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert not list(tmp_path.glob(".*")), "the saved state or a temporary was left behind"
