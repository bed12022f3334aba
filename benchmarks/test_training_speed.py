"""Where a training step's time goes, and what length-bucketed batches and a fused optimizer
save: training samples per second before and after, measured side by side.

On the profile's first dataset and recipe (its training length and batch size), the embedded
encoder with ``bert``'s classifier runs real training steps (forward, backward, gradient
clipping, AdamW) for each case, the cases taking turns step by step so that all of them see the
same minutes of a shared machine (one model takes all the steps: only time is measured):

- ``before``: plainly shuffled batches (``batching=random``) and AdamW's per-parameter loop;
- ``bucketed``: length-bucketed batches (:class:`geep.model.training.EpochBatches`), the same AdamW;
- ``after``: length-bucketed batches and the fused AdamW (:func:`geep.model.training.adamw`), what
  ``geep train`` does.

``extra_info`` gives, per case, the median milliseconds per step of data (cutting the batch),
forward, backward and optimizer (clipping included), the share of padding tokens, and samples
per second from the median step; ``speedup`` is after over before. FastBERT's second step and
DeeBERT's second stage run a frozen backbone without gradients, so they cost a forward pass per
step; DeeBERT's first stage is ``bert``'s training, reused rather than run again.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from accelerate.utils import set_seed

from geep.core.registry import get_method
from geep.data import load_dataset
from geep.data.encoding import encode_split
from geep.model.training import EpochBatches, adamw
from geep.reproduce.profiles import Profile
from geep.reproduce.units import device_name

STEPS = 24  # timed steps per case, after one untimed step each
CASES = {"before": ("random", False), "bucketed": ("length", False), "after": ("length", True)}


def test_training_step_speed(benchmark, profile: Profile) -> None:
    if not profile.training_speed:
        pytest.skip(f"the {profile.name} profile does not time training steps")
    dataset = profile.datasets[0]
    config = profile.train_config("bert", dataset, profile.seeds[0])
    set_seed(config.seed)
    splits = load_dataset(dataset)
    rows = splits["train"].shuffle(seed=config.seed).select(range(config.batch_size * 200))
    method = get_method("bert").create(
        profile.model_for(dataset), splits["train"].features["label"].names, dataset, config
    )
    data = encode_split(method.tokenizer, rows, config.seq_len)
    model = method.model.train()
    params = list(model.parameters())
    cases = {}
    for name, (batching, fused) in CASES.items():
        generator = torch.Generator().manual_seed(config.seed)
        batches = iter(EpochBatches(data.lengths, config.batch_size, batching, generator))
        cases[name] = (batches, adamw(params, config.lr, config.weight_decay, fused))
    parts = {name: {"data": [], "forward": [], "backward": [], "optimizer": []} for name in CASES}
    padding: dict[str, list[float]] = {name: [] for name in CASES}

    def step(name: str) -> None:
        batches, optimizer = cases[name]
        start = time.perf_counter()
        batch = data.batch(torch.tensor(next(batches)))
        cut = time.perf_counter()
        loss = model(batch)
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        end = time.perf_counter()
        spans = (cut - start, forward - cut, backward - forward, end - backward)
        for part, seconds in zip(parts[name], spans, strict=True):
            parts[name][part].append(seconds)
        padding[name].append(1 - float(batch.attention_mask.float().mean()))

    def all_steps() -> None:
        for name in CASES:
            step(name)  # untimed: first-call allocations
            for key in parts[name]:
                parts[name][key].clear()
            padding[name].clear()
        for _ in range(STEPS):
            for name in CASES:
                step(name)

    benchmark.pedantic(all_steps, rounds=1, iterations=1)
    info: dict[str, object] = {
        "dataset": dataset,
        "profile": profile.name,
        "seq_len": config.seq_len,
        "batch_size": config.batch_size,
        "steps": STEPS,
        "device": device_name(method.device),
    }
    for name in CASES:
        medians = {part: statistics.median(times) for part, times in parts[name].items()}
        step_seconds = statistics.median(map(sum, zip(*parts[name].values(), strict=True)))
        info[name] = {
            **{f"{part}_ms": round(1000 * s, 1) for part, s in medians.items()},
            "padding_share": round(statistics.mean(padding[name]), 3),
            "samples_per_s": round(config.batch_size / step_seconds, 1),
        }
    info["speedup"] = round(info["after"]["samples_per_s"] / info["before"]["samples_per_s"], 2)
    benchmark.extra_info.update(info)
