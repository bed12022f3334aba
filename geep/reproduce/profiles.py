"""Reproduction profiles: which datasets, encoders, training recipe, sweeps, seeds and timing a
run uses.

Selected by name (``GEEP_PROFILE`` or ``pytest benchmarks/ --profile``):

- ``smoke``: one offline dataset, a few hundred samples, three fixed speeds and two dev-chosen
  settings per method, both batching policies of ``compare``, and a serving plan of seconds per
  LoadGen run; a few minutes on 2 CPU cores, for tests and CI.
- ``quick``: the embedded encoder on rotten-tomatoes (binary) and tweet-sentiment (3 classes),
  1000 training samples for 2 epochs, the threshold methods at full depth and four settings
  chosen on dev, the others over their fixed grids, and the latency calibration; the default of
  ``tox -e reproduce`` (under 20 minutes on 2 cores, installation included). The Chinese
  datasets are left out: the embedded encoder is English.
- ``compare``: the same datasets with 2000 training samples, three seeds and six dev-chosen
  settings, the dynamic-exit methods with shrinking and with regrouped batches, GEEP's two
  ablations as entries of their own (its teacher fed the last layer only; FastBERT's two training
  steps), plus GEEP's efficiency and the training-speed benchmarks, for comparing methods (about 3
  hours on 2 cores); and the serving benchmark under LoadGen (docs/serving.md, about 20
  minutes more).
- ``quick-bfloat16``: ``quick`` on rotten-tomatoes in bfloat16, each unit also run by a float32
  eager copy of its checkpoint: what bfloat16 changes in exits, labels and accuracy.
- ``learning-1k`` .. ``learning-10k``: the pieces of the learning curve ``learning-curve``:
  ``compare``'s methods, recipe and ablations (PABEE and HashEE aside) trained on 1,000, 2,000,
  5,000 and 10,000 samples (rotten-tomatoes' whole 10,202 in the last), three seeds, the whole
  dev and test splits, the threshold methods at full depth and at the settings chosen on dev
  for 1.5x, 2x and 3x FLOPs; ``geep plan --profile learning-curve --device cpu`` gives its cost
  (many hours on 2 cores), ``tox -e learning-curve`` runs it piece by piece, resumably.
- ``offline``: all six offline datasets at full size (hours on a CPU, minutes on a GPU).
- ``paper``: the twelve paper datasets with bert-base-uncased / bert-base-chinese and the papers'
  recipe (lr 2e-5, batch 32, length 128, 3 epochs, plainly shuffled batches; HashEE lr 5e-5, 4
  epochs), for users with the hub and GPUs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace

from geep.common.config import DEFAULT_MODEL, Precision, TrainConfig
from geep.common.errors import GeepError
from geep.core.dynamic_exit import Batching
from geep.core.registry import method_names
from geep.core.runtime import DEFAULT_RUNTIME, Runtime
from geep.core.sweeps import DEV_SETTINGS
from geep.data.registry import OFFLINE_TIER, REGISTRY, get_spec
from geep.serving.server import BatcherConfig, LoadSettings, ServingPlan

PAPER = tuple(name for name, spec in REGISTRY.items() if spec.paper)


@dataclass(frozen=True)
class Ablation:
    """A registered method trained with other options and measured as an entry of its own (an
    ablation): its checkpoints, run files (``runs/<dataset>/<name>-seed<N>.json``) and table
    rows go by the ablation's name."""

    method: str
    options: tuple[str, ...]  # KEY=VALUE, as `geep train --option` takes them
    speeds: tuple[float, ...] | None = None  # its fixed sweep; None: its method's


@dataclass(frozen=True)
class Profile:
    """Everything a reproduction run fixes. ``speeds`` maps a method to its sweep (methods not
    listed use their default grid); ``method_train`` holds per-method changes to ``train``."""

    name: str
    description: str
    datasets: tuple[str, ...]
    train: TrainConfig
    models: dict[str, str] = field(
        default_factory=lambda: {"en": DEFAULT_MODEL, "zh": DEFAULT_MODEL}
    )
    seq_len: dict[str, int] = field(default_factory=dict)  # per dataset, else train.seq_len
    max_train: dict[str, int | None] = field(default_factory=dict)  # else train.max_train
    method_train: dict[str, dict[str, float | int]] = field(default_factory=dict)
    methods: tuple[str, ...] = ()  # empty: every registered method (geep.core.interface)
    speeds: dict[str, tuple[float, ...]] = field(default_factory=dict)
    dev_settings: int = DEV_SETTINGS  # settings chosen on dev per threshold method
    # FLOPs speedups to choose one dev setting each for, instead of dev_settings even steps
    dev_speedups: tuple[float, ...] = ()
    # how the dynamic-exit methods (FastBERT, DeeBERT, PABEE) batch their exits: each setting
    # is measured under every policy listed (geep.core.dynamic_exit); the other methods run once
    batchings: tuple[Batching, ...] = ("shrink",)
    seeds: tuple[int, ...] = (42,)  # one trained model per seed and (dataset, method)
    max_eval: int | None = None  # the first N dev and test samples; None: all
    batch_size: int = 32
    rounds: int = 3  # timed runs of the test split per setting, after a warm-up batch
    # GEEP's efficiency benchmark: dev-chosen settings (a third, two thirds and all of the way
    # from full depth to the fastest; geep.core.sweeps), timed at ``batch_size``; () skips it
    efficiency_settings: tuple[str, ...] = ("dev2", "dev4", "dev6")
    efficiency_rounds: int = 5  # its alternating rounds per setting (medians of these)
    training_speed: bool = True  # run the training-step benchmark (test_training_speed.py)
    serving: ServingPlan | None = None  # the serving benchmark (test_serving.py); None skips it
    ablations: dict[str, Ablation] = field(default_factory=dict)  # measured after the methods
    # the arithmetic and graph mode every unit is measured in (geep.core.runtime)
    precision: Precision = "float32"
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        for name, ablation in self.ablations.items():
            if not name.startswith(f"{ablation.method}-"):  # tables list it after its method
                raise GeepError(
                    f"ablation {name!r} of {ablation.method}: name it {ablation.method}-..."
                )

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.precision, self.cuda_graphs)

    def method_names(self) -> list[str]:
        """The registered methods this profile runs, in the registry's order."""
        return list(self.methods) or method_names()

    def entries(self) -> list[str]:
        """Everything this profile measures: its methods, then its ablations."""
        return self.method_names() + list(self.ablations)

    def method_of(self, entry: str) -> tuple[str, tuple[str, ...]]:
        """The registered method an entry trains and the options it trains it with."""
        ablation = self.ablations.get(entry)
        return (ablation.method, ablation.options) if ablation else (entry, ())

    def model_for(self, dataset: str) -> str:
        return self.models[get_spec(dataset).language]

    def train_config(self, entry: str, dataset: str, seed: int | None = None) -> TrainConfig:
        """The training recipe of ``entry`` (a method or an ablation) on ``dataset`` under this
        profile (with ``seed``, else the recipe's own); an ablation's is its method's."""
        changes = {**self.method_train.get(self.method_of(entry)[0], {})}
        if dataset in self.seq_len:
            changes["seq_len"] = self.seq_len[dataset]
        if dataset in self.max_train:
            changes["max_train"] = self.max_train[dataset]
        if seed is not None:
            changes["seed"] = seed
        return replace(self.train, **changes)

    def config_hash(self) -> str:
        """A short hash of every setting of the profile that shapes its run files (neither the
        description, nor the serving plan, whose files record it, nor the ablations, each of
        which adds run files of its own that record its options): runs with different hashes
        never mix."""
        unshared = ("description", "serving", "ablations")
        settings = {k: v for k, v in asdict(self).items() if k not in unshared}
        if self.runtime == DEFAULT_RUNTIME:  # float32 eager hashes as a profile without them
            del settings["precision"], settings["cuda_graphs"]
        for name in ("max_train", "dev_speedups"):  # unset, they hash as a profile without them
            if not settings[name]:
                del settings[name]
        settings["methods"] = self.method_names()
        raw = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


PROFILES = {
    "smoke": Profile(
        name="smoke",
        description="rotten-tomatoes, 200 training samples, 3 speeds per method (minutes, CPU)",
        datasets=("rotten-tomatoes",),
        train=TrainConfig(max_train=200, epochs=1, seq_len=32),
        speeds={
            "geep": (0.0, 0.5, 0.8),
            "fastbert": (0.0, 0.5, 0.8),
            "deebert": (0.0, 0.3466, 0.6238),
            "pabee": (0.0, 2.0, 1.0),
            "hashee": (0.0, 3.0, 5.0),
        },
        dev_settings=2,
        batchings=("shrink", "regroup"),
        max_eval=128,
        rounds=1,
        serving=ServingPlan(  # every method through all three scenarios, in seconds
            datasets=("rotten-tomatoes",),
            batcher=BatcherConfig(max_batch=16, max_wait=0.005, max_dispatch=32),
            load=LoadSettings(min_duration=0.3, min_queries=16, target_latency=0.5),
            max_samples=64,
            settings=("matched",),
            rate_steps=2,
            overload=(2.0, 5.0),  # bert and GEEP past their rates, 32 waiting at most
            overload_methods=("bert", "geep"),
            overload_queue=32,
            int8_methods=("geep",),  # beside the best variant's int8
            onnx_precisions=(
                "int8",
            ),  # bert as one graph; layer pieces (30 s to export) in compare
        ),
    ),
    "quick": Profile(
        name="quick",
        description="rotten-tomatoes + tweet-sentiment, embedded encoder, dev-chosen sweeps, "
        "1000 dev and test samples each (2-core CPU, under 20 minutes)",
        datasets=("rotten-tomatoes", "tweet-sentiment"),
        # 1000 samples: with 600, GEEP's one-step students stay near uniform at every layer
        train=TrainConfig(max_train=1000, epochs=2, seq_len=64),
        # the threshold methods at full depth and four dev-chosen settings: their fixed grids
        # (nine more settings each) would not leave the time to train on 1000 samples
        speeds={"geep": (0.0,), "fastbert": (0.0,), "deebert": (0.0,)},
        dev_settings=4,
        max_eval=1000,
        rounds=1,
        efficiency_settings=(),  # GEEP's efficiency and training speed: in ``compare``
        training_speed=False,
    ),
    "compare": Profile(
        name="compare",
        description="the quick datasets with twice the training samples and three seeds, "
        "1275 dev and test samples each, for comparing methods (2-core CPU, about 3 hours)",
        datasets=("rotten-tomatoes", "tweet-sentiment"),
        train=TrainConfig(max_train=2000, epochs=2, seq_len=64),
        seeds=(1, 2, 3),
        batchings=("shrink", "regroup"),
        max_eval=1275,
        rounds=1,
        serving=ServingPlan(  # docs/serving.md; about 20 minutes on 2 cores
            datasets=("rotten-tomatoes", "tweet-sentiment"),
            batcher=BatcherConfig(max_batch=32, max_wait=0.010, max_dispatch=64),
            load=LoadSettings(min_duration=2.0, min_queries=64, target_latency=0.2),
            max_samples=512,
            rate_steps=5,
            overload=(2.0, 5.0),  # bert and GEEP past their rates, one dispatch waiting at most
            overload_methods=("bert", "geep"),
            overload_queue=64,
            int8_methods=("fastbert", "geep"),
            onnx_precisions=("fp32", "int8"),  # bert as one graph, FastBERT as layer pieces
            onnx_pieces=("fastbert",),
        ),
        ablations={  # GEEP without each of its training ingredients (docs/methods.md)
            # full depth and the six dev-chosen settings: the fixed grid would add 9 more each
            "geep-teacher-last": Ablation("geep", ("teacher_inputs=last",), speeds=(0.0,)),
            "geep-two-step": Ablation("geep", ("training=two-step",), speeds=(0.0,)),
        },
    ),
    "offline": Profile(
        name="offline",
        description="all six offline datasets at full size, embedded encoder",
        datasets=OFFLINE_TIER,
        train=TrainConfig(epochs=2, seq_len=128),
    ),
    "paper": Profile(
        name="paper",
        description="the twelve paper datasets, BERT-base, the papers' recipe (hub + GPU)",
        datasets=PAPER,
        models={"en": "bert-base-uncased", "zh": "bert-base-chinese"},
        train=TrainConfig(epochs=3, batch_size=32, lr=2e-5, seq_len=128, batching="random"),
        method_train={"hashee": {"lr": 5e-5, "epochs": 4}},
    ),
}

PROFILES["quick-bfloat16"] = replace(
    PROFILES["quick"],
    name="quick-bfloat16",
    description="quick's checkpoints and settings on rotten-tomatoes in bfloat16 (weights "
    "cast), a float32 eager copy run beside each unit to count the exits and labels it moves",
    datasets=("rotten-tomatoes",),
    precision="bfloat16",
)

LEARNING_CURVE = "learning-curve"
"""A curve: profiles alike but for their training-set sizes (its pieces), each run into a
subfolder of the curve's results folder (``results/learning-curve/<piece>/``) and reported
together (:mod:`geep.report.curve`)."""
CURVE_SIZES = {  # each piece's training samples per dataset (None: the whole split, 10,202)
    "learning-1k": {"rotten-tomatoes": 1000, "tweet-sentiment": 1000},
    "learning-2k": {"rotten-tomatoes": 2000, "tweet-sentiment": 2000},
    "learning-5k": {"rotten-tomatoes": 5000, "tweet-sentiment": 5000},
    "learning-10k": {"rotten-tomatoes": None, "tweet-sentiment": 10000},
}


def _learning_piece(name: str, sizes: dict[str, int | None]) -> Profile:
    """A piece of the learning curve: ``compare``'s recipe, datasets, seeds and ablations on
    training sets of ``sizes``, the whole dev and test splits, the threshold methods at full
    depth and at the settings chosen on dev for 1.5x, 2x and 3x FLOPs."""
    shown = " and ".join(f"{n:,}" if n else "all" for n in sizes.values())
    compare = PROFILES["compare"]
    return Profile(
        name=name,
        description=f"a learning curve's piece: {shown} training samples of "
        f"{' and '.join(sizes)}, whole test splits, three seeds",
        datasets=tuple(sizes),
        train=compare.train,
        max_train=sizes,
        methods=("bert", "geep", "deebert", "fastbert"),
        speeds={"geep": (0.0,), "fastbert": (0.0,), "deebert": (0.0,)},
        dev_speedups=(1.5, 2.0, 3.0),
        seeds=compare.seeds,
        rounds=1,
        efficiency_settings=(),
        training_speed=False,
        ablations=compare.ablations,
    )


PROFILES |= {name: _learning_piece(name, sizes) for name, sizes in CURVE_SIZES.items()}
CURVES = {LEARNING_CURVE: tuple(CURVE_SIZES)}


def curve_pieces(name: str) -> list[Profile]:
    """A curve's pieces in order of size, or the profile called ``name`` alone."""
    if name in CURVES:
        return [PROFILES[piece] for piece in CURVES[name]]
    if name not in PROFILES:
        choices = ", ".join([*PROFILES, *CURVES])
        raise GeepError(f"unknown profile or curve '{name}': choose one of {choices}")
    return [PROFILES[name]]


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name`` (default: ``$GEEP_PROFILE``, else ``quick``)."""
    name = name or os.environ.get("GEEP_PROFILE") or "quick"
    if name not in PROFILES:
        raise GeepError(f"unknown profile '{name}': choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
