"""Stress test of resuming: ``geep train`` killed with SIGINT at a random time, then resumed,
must end with the uninterrupted run's checkpoint, bit for bit (docs/reproducibility.md).

Not collected by pytest (no ``test_`` prefix); a trial takes seconds. From the repository root::

    nice -n 10 python benchmarks/stress_resume.py --trials 1000 --seed 0

Every trial trains FastBERT (two ``train_loop`` calls: backbone and teacher, then the students
on the frozen backbone) on a tiny random BERT and a toy task, saving after every step
(``--save-every 0``). It picks one of the two calls and sends SIGINT at a uniformly random time
within it: the call's length is timed on the uninterrupted run, and the clock starts when the
killed run writes its first save (call 0) or ends call 0 (call 1). A run the signal reached too
late just ends. The trial then re-runs the same command and compares every tensor of the
checkpoint with the uninterrupted run's; a trial whose checkpoint differs is kept under
``--work``.

To keep a trial short, python and torch are imported once: every ``geep train`` is a forked
child of this process calling :func:`geep.cli.main`, as ``python -m geep.cli`` would, with
Ctrl-C's handler. Trials run one at a time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

WORDS = "good great fine nice love best happy bad awful poor hate worst sad boring".split()
FILLER = "the movie film plot was is a an and very not it this of to".split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Kill `geep train` with SIGINT at random times, resume it, and check that "
        "every checkpoint equals the uninterrupted one bit for bit."
    )
    parser.add_argument("--trials", type=int, default=1000, help="kill-and-resume trials (1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times (0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of every training run (default: torch's, as `geep train` runs)",
    )
    parser.add_argument(
        "--samples", type=int, default=48, help="training samples: steps per epoch = N / 8 (48)"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for the runs (default: a new one in /dev/shm, else the temporary folder)",
    )
    return parser.parse_args(argv)


def make_inputs(folder: Path, samples: int) -> None:
    """Write a tiny random BERT (3 layers, hidden 32, dropout 0.1) and a separable toy task."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    model = folder / "tiny-bert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *FILLER]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(model)
    tokenizer.save_pretrained(model)
    data = folder / "toy"
    data.mkdir()
    rng = random.Random(0)
    for split, n in (("train", samples), ("dev", 16), ("test", 16)):
        rows = []
        for i in range(n):
            words = [
                *rng.sample(FILLER, rng.randint(2, 6)),
                rng.choice(WORDS[7 * (i % 2) : 7 * (i % 2) + 7]),
            ]
            rng.shuffle(words)
            rows.append(f"{i % 2}\t{' '.join(words)}")
        (data / f"{split}.tsv").write_text("label\ttext_a\n" + "\n".join(rows) + "\n")


def train_argv(model: Path, data: Path, out: Path) -> list[str]:
    argv = ["train", "--method", "fastbert", "--dataset", str(data), "--model", str(model)]
    argv += ["--out", str(out), "--epochs", "2", "--batch-size", "8", "--seq-len", "16"]
    return [*argv, "--save-every", "0"]


CHILDREN: set[int] = set()
"""The forked runs not waited for yet."""


def fork_train(argv: list[str], log: Path, threads: int | None) -> int:
    """Start ``geep train ARGV`` in a forked child (stdout and stderr to ``log``); its pid."""
    pid = os.fork()
    if pid:
        CHILDREN.add(pid)
        return pid
    status = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        import torch

        from geep.cli import main

        if threads is not None:
            torch.set_num_threads(threads)
        # Ctrl-C's handler, as in a terminal, even where this script runs with SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        status = main(argv)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def wait(pid: int) -> int:
    """The exit status of child ``pid`` (128 + N when a signal N ended it)."""
    _, status = os.waitpid(pid, 0)
    CHILDREN.discard(pid)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def progress(out: Path) -> dict:
    """The progress record of the latest save of checkpoint ``out``'s training ({} if none)."""
    try:
        return json.loads(
            (out.parent / f".{out.name}.resume" / "latest" / "progress.json").read_text()
        )
    except (OSError, ValueError):
        return {}


def timeline(model: Path, data: Path, work: Path, threads: int | None) -> tuple[dict, list[float]]:
    """Train uninterrupted while watching its saves: the checkpoint's tensors, and the seconds
    after the first save at which call 0's last save (its end) and call 1's appeared."""
    out = work / "uninterrupted"
    pid = fork_train(train_argv(model, data, out), work / "uninterrupted.log", threads)
    first = wait_for(pid, out, lambda saved: True)
    ends = [
        wait_for(pid, out, lambda saved, c=c: saved["call"] == c and saved["done"]) for c in (0, 1)
    ]
    if wait(pid) != 0 or None in (first, *ends):
        sys.exit(f"the uninterrupted run failed: see {work / 'uninterrupted.log'}")
    return load_file(out / "model.safetensors"), [end - first for end in ends]


def wait_for(pid: int, out: Path, condition: Callable[[dict], bool]) -> float | None:
    """Poll the saves of child ``pid`` until one meets ``condition``: when (monotonic seconds);
    None if the child ended first."""
    while True:
        saved = progress(out)
        if saved and condition(saved):
            return time.monotonic()
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return None  # it ended (left for wait() to reap)
        time.sleep(0.001)


def differences(expected: dict, out: Path) -> str | None:
    """None when ``out``'s checkpoint holds exactly the ``expected`` tensors; else what differs."""
    if not (out / "model.safetensors").is_file():
        return "no checkpoint"
    found = load_file(out / "model.safetensors")
    if found.keys() != expected.keys():
        return "other tensor names"
    differ = {
        k: float(np.abs(found[k].astype(np.float64) - expected[k]).max())
        for k in found
        if found[k].tobytes() != expected[k].tobytes()
    }
    if not differ:
        return None
    return f"{len(differ)} tensors differ, by up to {max(differ.values()):.3g}"


def stop(signum: int, frame: object) -> None:
    """SIGTERM's handler: stop the trials."""
    raise KeyboardInterrupt


def trial(
    model: Path,
    data: Path,
    expected: dict,
    folder: Path,
    call: int,
    delay: float,
    threads: int | None,
) -> tuple[str, int, str | None]:
    """Kill a run ``delay`` seconds into ``call`` with SIGINT, resume it: where the kill landed,
    the steps its last save held, and what differs from the uninterrupted run (None: nothing)."""
    folder.mkdir()
    out = folder / "fastbert"
    pid = fork_train(train_argv(model, data, out), folder / "killed.log", threads)
    # the clock starts at the run's first save (call 0) or at the end of call 0 (call 1)
    start = wait_for(pid, out, lambda saved: call == 0 or saved["done"])
    if start is not None:
        time.sleep(max(0.0, start + delay - time.monotonic()))
        os.kill(pid, signal.SIGINT)
    status = wait(pid)
    saved = progress(out)
    if status == 0:
        landed = "after the training (it ended)"
    elif status != 130:
        landed = f"exit status {status}"
    elif not saved:
        landed = "before the first save"
    else:
        landed = f"call {saved['call']}" + (" (done)" if saved["done"] else "")
    status = wait(fork_train(train_argv(model, data, out), folder / "resumed.log", threads))
    problem = f"resumed run's exit status {status}" if status else differences(expected, out)
    if problem is None and out.parent.joinpath(f".{out.name}.resume").exists():
        problem = "the saved state was left behind"
    return landed, saved.get("steps", 0), problem


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shm = Path("/dev/shm")
    work = args.work or Path(
        tempfile.mkdtemp(prefix="stress-resume-", dir=shm if shm.is_dir() else None)
    )
    work.mkdir(parents=True, exist_ok=True)
    os.environ["GEEP_CACHE"] = str(work / "cache")
    os.environ.setdefault("TQDM_DISABLE", "1")
    # imported once, before the forks: a trial does not pay for them
    for module in ("transformers.models.bert.modeling_bert", "geep.cli", "geep.data"):
        importlib.import_module(module)
    importlib.import_module("geep.core.interface").get_method("fastbert")

    pid = os.fork()  # torch runs in children only: a forked child gets no half-used thread pool
    if not pid:
        make_inputs(work, args.samples)
        os._exit(0)
    wait(pid)
    model, data = work / "tiny-bert", work / "toy"
    started = time.monotonic()
    expected, ends = timeline(model, data, work, args.threads)
    print(
        f"uninterrupted run: {len(expected)} tensors; after its first save, call 0 ended at "
        f"{ends[0]:.2f} s and call 1 at {ends[1]:.2f} s",
        flush=True,
    )
    rng = random.Random(args.seed)
    results: Counter[str] = Counter()
    where: Counter[str] = Counter()
    signal.signal(signal.SIGTERM, stop)  # ends the loop; the trials done so far are summed up
    done = 0
    try:
        for done in range(1, args.trials + 1):
            t0 = time.monotonic()
            call = rng.randrange(2)
            delay = rng.uniform(0, ends[call] - (ends[0] if call else 0))
            folder = work / f"trial-{done}"
            landed, steps, problem = trial(model, data, expected, folder, call, delay, args.threads)
            where[landed] += 1
            results["identical" if problem is None else "differing"] += 1
            kill = f"SIGINT {delay:.2f} s into call {call} ({landed}, step {steps})"
            verdict = "identical" if problem is None else f"DIFFERS: {problem}; kept {folder}"
            seconds = time.monotonic() - t0
            print(f"trial {done}/{args.trials}: {kill}: {verdict} ({seconds:.1f} s)", flush=True)
            if problem is None:
                shutil.rmtree(folder)
    except KeyboardInterrupt:
        for pid in list(CHILDREN):
            os.kill(pid, signal.SIGKILL)
            wait(pid)
        print(f"stopped during trial {done}", flush=True)
    wall = time.monotonic() - started
    print("kills landed: " + ", ".join(f"{k}: {n}" for k, n in sorted(where.items())))
    print(
        f"summary: trials {results.total()}, identical {results['identical']}, "
        f"differing {results['differing']}, wall time {wall:.0f} s"
    )
    if not results["differing"] and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if results["differing"] else 0


if __name__ == "__main__":
    sys.exit(main())
