"""What a profile costs before anything runs (``geep plan``, docs/plan.md): training and
evaluation FLOPs and estimated device-hours per (dataset, method), from the split sizes in the
registry and the analytic FLOPs of :mod:`geep.measure.flops`. Nothing is downloaded, loaded or
trained.

Conventions (every figure is an estimate):

- A forward is the encoder's L layers on a sample padded to the method's ``seq_len``, in the
  ``full`` convention: an upper bound, since real lengths are unknown before tokenizing.
  Embeddings and heads are not counted.
- Training, per seed: samples x epochs x the method's passes
  (:meth:`~geep.core.interface.Method.training_passes`) x 3 forwards (a backward costs about two). A
  method that ``starts_from`` another one the profile trains (DeeBERT from bert) pays only its
  later stages, as :func:`geep.reproduce.units.checkpoint` reuses the first.
- Evaluation, per seed: each measured setting (:func:`geep.reproduce.units.units`) runs ``rounds``
  times the test split plus two untimed batches (the warm-up and the operator count), all at
  full depth (early exit only lowers it); the dev split runs once after training (its accuracy)
  and once more for a method that chooses settings on dev.
- Device-hours: FLOPs over the device's sustained float32 compute, the precision the suite
  trains and evaluates in: a GPU's datasheet figure (:data:`geep.measure.latency.FLOAT32_PEAK`
  x ``SUSTAINED_COMPUTE``), or, for ``cpu``, this machine's, measured in a few seconds of
  training steps of a randomly initialised encoder (:func:`measured_cpu_rate`).

A dataset whose split sizes are unknown gets no figures and is left out of the totals.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace

from geep.common.errors import GeepError
from geep.core.interface import BACKWARD
from geep.core.registry import get_method
from geep.data.registry import get_spec
from geep.data.sources import HOLDOUT
from geep.measure.flops import dims_for, encoder_layer
from geep.measure.latency import FLOAT32_PEAK, GPUS, SUSTAINED_COMPUTE
from geep.reproduce.profiles import Profile
from geep.reproduce.units import units


@dataclass(frozen=True)
class Row:
    """The cost of one (dataset, method): counts per seed, FLOPs over all seeds; None where the
    dataset's split sizes are unknown."""

    dataset: str
    method: str
    seq_len: int
    epochs: int
    passes: float  # forward + backward passes per training sample and epoch
    settings: int  # measured units per seed: settings x batching policies
    train_samples: int | None = None
    dev_samples: int | None = None
    test_samples: int | None = None
    train_flops: int | None = None
    eval_flops: int | None = None


@dataclass(frozen=True)
class Plan:
    """Every row of a profile on one device, and the totals over the rows with known sizes."""

    profile: str
    device: str  # "cpu" or a key of geep.measure.latency.GPUS
    seeds: int
    rows: tuple[Row, ...]
    flops_per_second: float  # the device's sustained float32 compute
    rate_source: str  # where that figure comes from

    @property
    def unknown(self) -> list[str]:
        """The datasets left out of the totals: their split sizes are unknown."""
        return list(dict.fromkeys(r.dataset for r in self.rows if r.train_flops is None))

    @property
    def train_flops(self) -> int:
        return sum(r.train_flops for r in self.rows if r.train_flops is not None)

    @property
    def eval_flops(self) -> int:
        return sum(r.eval_flops for r in self.rows if r.eval_flops is not None)

    def hours(self, flops: int | None) -> float | None:
        """Estimated device-hours of ``flops`` at the device's sustained compute."""
        return None if flops is None else flops / self.flops_per_second / 3600

    def assumptions(self) -> list[str]:
        """The conventions behind the figures, one line each (the module docstring)."""
        lengths = ", ".join(str(n) for n in sorted({r.seq_len for r in self.rows}))
        return [
            f"FLOPs: the encoder layers (full convention) at seq_len {lengths}, every sample "
            "padded to it (an upper bound); embeddings and heads not counted",
            "training: samples x epochs x passes x 3 (forward + backward) per seed; "
            "a method starting from another one's checkpoint (deebert from bert) pays only its "
            "later stages",
            "evaluation: per setting, rounds x the test split + 2 batches at full depth (early "
            "exit only lowers it); plus the dev split once after training and once for a dev "
            "sweep",
            f"device-hours at {self.flops_per_second / 1e12:.3g} TFLOP/s sustained "
            f"{self.rate_source}",
        ]

    def to_dict(self) -> dict:
        """A JSON-ready dict (``geep plan --json``); hours next to each FLOPs figure."""
        rows = [
            {
                **asdict(r),
                "train_hours": self.hours(r.train_flops),
                "eval_hours": self.hours(r.eval_flops),
            }
            for r in self.rows
        ]
        return {
            "profile": self.profile,
            "device": self.device,
            "sustained_flops_per_second": self.flops_per_second,
            "rate_source": self.rate_source,
            "seeds": self.seeds,
            "estimated": True,
            "rows": rows,
            "total": {
                "train_flops": self.train_flops,
                "eval_flops": self.eval_flops,
                "train_hours": self.hours(self.train_flops),
                "eval_hours": self.hours(self.eval_flops),
                "hours": self.hours(self.train_flops + self.eval_flops),
            },
            "left_out_unknown_sizes": self.unknown,
            "assumptions": self.assumptions(),
        }


def split_sizes(profile: Profile, dataset: str, method: str) -> tuple[int, int, int] | None:
    """(train, dev, test) samples ``method`` uses on ``dataset`` under ``profile``: the
    registry's sizes, a missing dev carved from train (HOLDOUT, as geep.data.sources does per
    class), capped by ``max_train`` and ``max_eval``; None when unknown."""
    sizes = get_spec(dataset).sizes
    if sizes is None:
        return None
    train, dev, test = sizes
    if dev is None:
        dev = round(HOLDOUT * train)
        train -= dev
    max_train = profile.train_config(method, dataset).max_train
    if max_train is not None:
        train = min(train, max_train)
    if profile.max_eval is not None:
        dev, test = min(dev, profile.max_eval), min(test, profile.max_eval)
    return train, dev, test


def forward_flops(profile: Profile, dataset: str, method: str) -> int:
    """One sample's full-depth forward through the encoder layers at the method's seq_len."""
    dims = dims_for(profile.model_for(dataset))
    seq_len = profile.train_config(method, dataset).seq_len
    return dims.num_layers * encoder_layer(dims, seq_len, "full")


def passes(profile: Profile, dataset: str, entry: str) -> float:
    """The entry's training passes (an ablation's: its method's under its options), less those
    of the method it starts from when the profile trains that one (its checkpoint is reused)."""
    layers = dims_for(profile.model_for(dataset)).num_layers
    method, options = profile.method_of(entry)
    cls = get_method(method)
    total = cls.training_passes(layers, cls.options_class().with_settings(options))
    first = cls.starts_from
    if first is not None and first in profile.method_names():
        start = get_method(first)
        total -= start.training_passes(layers, start.options_class())
    return total


def device_rate(device: str, profile: Profile) -> tuple[float, str]:
    """The sustained float32 FLOPs per second of ``device`` ("cpu": this machine's, measured at
    ``profile``'s shapes; else a key of GPUS) and where the figure comes from."""
    if device == "cpu":
        rate, shape = measured_cpu_rate(profile)
        return rate, f"on this CPU: measured in training steps of a random encoder ({shape})"
    if device not in GPUS:
        raise GeepError(f"unknown device '{device}': choose cpu or one of {', '.join(GPUS)}")
    name = GPUS[device].name.removesuffix(" (modelled)")
    peak = FLOAT32_PEAK[device]
    return SUSTAINED_COMPUTE * peak, (
        f"on {name}: {SUSTAINED_COMPUTE:.0%} of its {peak / 1e12:g} TFLOP/s float32 peak "
        "(datasheet; geep.measure.latency), the precision the suite runs in"
    )


def measured_cpu_rate(profile: Profile, steps: int = 4) -> tuple[float, str]:
    """This CPU's sustained compute in the plan's convention (:func:`forward_flops` x 3 per
    training sample): training steps (forward, backward, AdamW) of a randomly initialised encoder
    of the profile's first dataset's dims, at its training batch size and seq_len, every sample
    at full length; the median of ``steps`` timed steps after one untimed. Returns the FLOPs per
    second and the shape it was measured at."""
    import torch
    from transformers import BertConfig, BertModel

    dataset = profile.datasets[0]
    dims = dims_for(profile.model_for(dataset))
    entry = profile.entries()[0]
    config = profile.train_config(entry, dataset)
    model = BertModel(
        BertConfig(
            vocab_size=1000,
            hidden_size=dims.hidden,
            num_hidden_layers=dims.num_layers,
            num_attention_heads=dims.num_heads,
            intermediate_size=dims.intermediate,
            max_position_embeddings=max(512, config.seq_len),
        )
    )
    optimiser = torch.optim.AdamW(model.parameters())
    ids = torch.randint(1000, (config.batch_size, config.seq_len))
    seconds = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        model(ids).last_hidden_state.mean().backward()
        optimiser.step()
        optimiser.zero_grad()
        seconds.append(time.perf_counter() - start)
    flops = config.batch_size * (1 + BACKWARD) * forward_flops(profile, dataset, entry)
    shape = f"{dims.num_layers} layers of {dims.hidden}, "
    shape += f"batch {config.batch_size} x {config.seq_len} tokens"
    return flops / statistics.median(seconds[1:]), shape


def plan(profile: Profile, device: str = "h100", rate: tuple[float, str] | None = None) -> Plan:
    """The cost of every (dataset, method) of ``profile`` on ``device`` ("cpu" or a key of
    GPUS), at ``rate`` (:func:`device_rate`'s figure and source) when given."""
    rate, source = rate or device_rate(device, profile)
    measured = Counter(u[:2] for u in units(profile))  # settings x seeds x policies
    rows = tuple(
        cost(profile, dataset, method, measured[dataset, method])
        for dataset in profile.datasets
        for method in profile.entries()
    )
    return Plan(profile.name, device, len(profile.seeds), rows, rate, source)


def cost(profile: Profile, dataset: str, method: str, measured: int) -> Row:
    """The row of (dataset, method) whose ``measured`` units (settings x policies x seeds) the
    profile runs."""
    config = profile.train_config(method, dataset)
    seeds = len(profile.seeds)
    row = Row(
        dataset=dataset,
        method=method,
        seq_len=config.seq_len,
        epochs=config.epochs,
        passes=passes(profile, dataset, method),
        settings=measured // seeds,
    )
    sizes = split_sizes(profile, dataset, method)
    if sizes is None:
        return row
    train, dev, test = sizes
    forward = forward_flops(profile, dataset, method)
    trained = seeds * train * config.epochs * row.passes * (1 + BACKWARD) * forward
    per_setting = profile.rounds * test + 2 * min(profile.batch_size, test)
    calibrates = get_method(profile.method_of(method)[0]).calibrates
    dev_passes = 1 + (calibrates and profile.dev_settings > 0)
    evaluated = measured * per_setting + seeds * dev_passes * dev
    return replace(
        row,
        train_samples=train,
        dev_samples=dev,
        test_samples=test,
        train_flops=round(trained),
        eval_flops=evaluated * forward,
    )
