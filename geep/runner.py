"""The interface every method implements, the registry of methods, and checkpoints.

A method is registered by name (``@register``) and is used the same way by the CLI, the
benchmarks and the tests::

    method = get_method("bert").create("minilm-l6", labels, dataset="rotten-tomatoes", config=cfg)
    method.fit(train)                      # train: geep.encoding.Encoded
    method.save("ckpt/")                   # model.safetensors + config.json + tokenizer files
    method = load_checkpoint("ckpt/")      # never unpickles
    out = method.predict(texts, speed=0.5, batch_size=32)  # labels, exit layers, FLOPs, timings

A method implements :meth:`Method.build_model`, :meth:`Method.fit`,
:meth:`Method.predict_batches`, :meth:`Method.full_depth_flops` and :meth:`Method.speed_grid`;
it may declare typed switches (``options_class``), work done before timing
(:meth:`Method.prepare`), extra diagnostics (:meth:`Method.diagnostics`) and tensors to keep in
the checkpoint (``extras``).
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

import geep
from geep.backbone import Backbone, load_pretrained
from geep.config import MethodOptions, TrainConfig
from geep.encoding import Encoded, encode_texts
from geep.errors import GeepError
from geep.flops import CONVENTIONS, EncoderDims
from geep.schema import choice, document, first_problem, listing, maybe, number, text, whole
from geep.storage import atomic_directory, file_sha256, safetensors_os_error
from geep.work import Call, counting

if TYPE_CHECKING:
    from geep.sweeps import Calibration

WEIGHTS_FILE = "model.safetensors"
EXTRAS_FILE = "extras.safetensors"
INFO_FILE = "config.json"


@dataclass
class CheckpointInfo:
    """Everything needed to rebuild a trained method without its training code or the hub."""

    method: str
    model: str  # what the backbone was loaded from: embedded name, path or hub id
    dataset: str  # registry name or path the method was trained on
    label_names: list[str]
    task: str  # "single" or "pair"
    train: dict[str, Any]  # TrainConfig.to_dict()
    backbone: dict[str, Any]  # the encoder's transformers config
    pooling: str  # the encoder's sentence vector: "cls" or "mean" (Backbone.sentence_vector)
    options: dict[str, Any] = field(default_factory=dict)  # Method.options_class.to_dict()
    dev_accuracy: float | None = None
    dev_samples: int | None = None  # how many dev samples dev_accuracy was measured on
    geep_version: str = geep.__version__
    files: list[str] = field(default_factory=list)  # what the save wrote (checkpoint_ownership)
    sha256: dict[str, str] = field(default_factory=dict)  # file -> its SHA-256, config.json aside

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def seq_len(self) -> int:
        return int(self.train["seq_len"])


_TRAIN_FIELDS = {
    "epochs": whole(1),
    "batch_size": whole(1),
    "lr": number(0),
    "warmup": number(0, 1),
    "weight_decay": number(0),
    "seq_len": whole(1),
    "seed": whole(0),
    "max_train": maybe(whole(1)),
    "batching": text(),
}
_BACKBONE_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)
CHECKPOINT_SCHEMA = document(
    {
        "method": text(),
        "model": text(),
        "dataset": text(),
        "label_names": listing(text(), at_least=1),
        "task": choice("single", "pair"),
        "train": document(_TRAIN_FIELDS),
        "backbone": document({"model_type": text()} | {k: whole(1) for k in _BACKBONE_SIZES}),
        "pooling": choice("cls", "mean"),
        "options": document({}),
        "dev_accuracy": maybe(number(0, 1)),
        "dev_samples": maybe(whole(0)),
        "geep_version": maybe(text()),
        "files": maybe(listing(text())),
        "sha256": maybe(document({})),
    }
)
"""What a checkpoint's config.json must hold (:class:`CheckpointInfo`; geep.schema)."""


@dataclass
class BatchResult:
    """What a method yields per model batch; every tensor is [B]."""

    index: torch.Tensor  # positions in the encoded input
    labels: torch.Tensor
    exit_layers: torch.Tensor  # 1..L (fractional for per-token exits)
    flops_fastbert: torch.Tensor
    flops_full: torch.Tensor


@dataclass
class Predictions:
    """Per-sample results of :meth:`Method.predict`, in input order ([N] arrays)."""

    labels: np.ndarray
    exit_layers: np.ndarray
    flops_fastbert: np.ndarray
    flops_full: np.ndarray
    batch_seconds: list[float]  # wall time of each model batch, in the order run
    calls: Counter[Call] = field(default_factory=Counter)  # the work issued (geep.work)


Order = Literal["length", "input"]  # how Method.run orders samples into batches

METHODS: dict[str, type[Method]] = {}
METHOD_MODULES = (
    "geep.bert",
    "geep.geep",
    "geep.baselines.deebert",
    "geep.baselines.fastbert",
    "geep.baselines.hashee",
    "geep.baselines.pabee",
)
"""The suite's methods, one module each: the one list of them, in the order every list of
methods takes (profiles, tables, plots). A new method of the suite is a module and a line here."""
ENTRY_POINT_GROUP = "geep.methods"  # other packages' methods: module paths under this group


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    known = METHODS.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise GeepError(
            f"two methods are called {cls.name!r}: {known.__module__}, {cls.__module__}"
        )
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``."""
    names = method_names()
    if name not in METHODS:
        raise GeepError(f"unknown method '{name}': choose one of {', '.join(names)}")
    return METHODS[name]


def method_names() -> list[str]:
    """Every registered method, in one order whatever was imported first: the suite's
    :data:`METHOD_MODULES`, then other packages' entry points."""
    rank = {module: i for i, module in enumerate(_import_methods())}
    return sorted(METHODS, key=lambda name: rank.get(METHODS[name].__module__, len(rank)))


@functools.cache
def _import_methods() -> tuple[str, ...]:
    """Import the methods: a method is a module that defines a registered class (``@register``).

    The suite's are :data:`METHOD_MODULES`; other installed packages add theirs as entry points
    of the :data:`ENTRY_POINT_GROUP` group (``[project.entry-points."geep.methods"]`` in their
    pyproject.toml: ``name = "their_package.module"``). Returns the modules in that order.
    """
    modules = [importlib.import_module(name).__name__ for name in METHOD_MODULES]
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()
        modules.append(entry_point.module)
    return tuple(modules)


BACKWARD = 2
"""Forwards a backward pass costs (the usual estimate: it computes gradients of both the
activations and the weights)."""

FORWARD_ONLY = 1 / (1 + BACKWARD)
"""A forward through frozen layers, in training passes: for :meth:`Method.training_passes`."""


class Method(ABC):
    """A trained (or trainable) early-exit method: a model with heads plus its exit rule."""

    name: ClassVar[str]
    speed_help: ClassVar[str]  # what the speed knob means, for --help and reports
    speed_bounds: ClassVar[tuple[float, float]]  # inclusive range of valid speeds
    whole_speeds: ClassVar[bool] = False  # True when the speed is a count (layers, patience)
    dev_sweep: ClassVar[bool] = False  # True when sweep settings can be chosen on dev (calibrate)
    starts_from: ClassVar[str | None] = None  # a method whose training is this one's first stage
    options_class: ClassVar[type[MethodOptions]] = MethodOptions  # no switches by default

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        info: CheckpointInfo,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.extras = extras or {}  # tensors saved next to the weights (e.g. exit statistics)

    # --- what each method implements -------------------------------------------------------

    @classmethod
    @abstractmethod
    def build_model(cls, backbone: Backbone, num_labels: int, options: Any) -> nn.Module:
        """The backbone plus this method's heads (``options``: an ``options_class`` instance)."""

    @abstractmethod
    def fit(self, train: Encoded) -> None:
        """Train on the encoded training split with ``self.info.train`` settings."""

    @abstractmethod
    def predict_batches(
        self, data: Encoded, speed: float, batch_size: int
    ) -> Iterator[BatchResult]:
        """Run inference the way the method works, yielding results batch by batch."""

    @abstractmethod
    def full_depth_flops(self, lengths: np.ndarray, convention: str) -> np.ndarray:
        """FLOPs per sample of the same model run through all layers and its final classifier."""

    @classmethod
    @abstractmethod
    def speed_grid(cls, num_layers: int, num_labels: int) -> list[float]:
        """The default sweep, from full depth to aggressive exit, for a backbone of
        ``num_layers`` layers and a task of ``num_labels`` classes."""

    def prepare(self, speed: float) -> None:  # noqa: B027 (optional hook)
        """Work done once per speed before inference is timed (GEEP builds its exit table)."""

    def queue_keys(self, data: Encoded, speed: float) -> torch.Tensor | None:
        """What a serving batcher queues ``data``'s samples by (geep.serving), known before any
        layer runs: None (the default) for one first-in-first-out queue."""
        return None

    def calibrate(self, dev: Encoded) -> Calibration | None:
        """How the mean FLOPs per ``dev`` sample depend on the speed, for sweep settings chosen
        on the dev split (:mod:`geep.sweeps`); None unless ``dev_sweep``."""
        return None

    def choose_on_dev(self, dev: Encoded, batch_size: int) -> dict[str, Any]:
        """Choose inference options on the ``dev`` split before its speeds are (GEEP: the exit
        rule), configure them, and return the record of the choice; {} (the default) for none.
        Profiles call it with the speeds they choose on dev (geep.reproduce)."""
        return {}

    def diagnostics(self, data: Encoded, speed: float, out: Predictions) -> dict[str, float]:
        """Method-specific figures for one speed's run on ``data`` (not timed); none by default."""
        return {}

    def fit_from(self, fine_tuned: Method, train: Encoded) -> None:
        """Train starting from a fine-tuned full-depth ``bert`` method on the same data (a
        method whose first stage is ordinary fine-tuning reuses it); most methods cannot."""
        raise GeepError(f"{self.name} cannot start from a fine-tuned model: train it from scratch")

    @classmethod
    def batching_of(cls, options: Any) -> str | None:
        """The batching policy ``options`` (an ``options_class`` instance) give this method's
        dynamic exits (:mod:`geep.exits`); None for a method that runs no dynamic exits."""
        return None

    @classmethod
    def training_passes(cls, num_layers: int, options: Any) -> float:
        """What :meth:`fit` costs per training sample and epoch, in forward + backward passes
        of the full-depth encoder (geep.plan, ``geep plan``): ordinary fine-tuning is 1 (the
        default); a forward-only pass over frozen layers counts :data:`FORWARD_ONLY`; heads are
        not counted. It includes the stages of ``starts_from``, which the
        planner takes off when the profile trains that method. ``options``: an
        ``options_class`` instance."""
        return 1.0

    # --- shared behaviour ----------------------------------------------------------------

    def default_speeds(self) -> list[float]:
        """This checkpoint's sweep grid (:meth:`speed_grid`)."""
        return self.speed_grid(self.num_layers, self.info.num_labels)

    @property
    def options(self) -> Any:
        """This checkpoint's switches, as an ``options_class`` instance."""
        return self.options_class.from_dict(self.info.options)

    @property
    def batching(self) -> str | None:
        """This checkpoint's batching policy of dynamic exits (:meth:`batching_of`)."""
        return self.batching_of(self.options)

    def configure(self, settings: Sequence[str]) -> None:
        """Change inference options (``KEY=VALUE``); training options stay as trained."""
        self.info.options = self.options.with_settings(settings, inference_only=True).to_dict()

    @property
    def backbone(self) -> Backbone:
        return self.model.backbone

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    @property
    def dims(self) -> EncoderDims:
        return EncoderDims.from_config(self.backbone.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Method:
        self.model.to(device)
        return self

    @classmethod
    def create(
        cls,
        model: str,
        label_names: Sequence[str],
        dataset: str,
        config: TrainConfig,
        task: str = "single",
        settings: Sequence[str] = (),
    ) -> Method:
        """A new, untrained method on the pretrained encoder ``model``; ``settings``: KEY=VALUE."""
        options = cls.options_class().with_settings(settings)
        backbone, tokenizer = load_pretrained(model)
        check_seq_len(config.seq_len, backbone)
        info = CheckpointInfo(
            method=cls.name,
            model=model,
            dataset=dataset,
            label_names=list(label_names),
            task=task,
            train=config.to_dict(),
            backbone=backbone.config.to_dict(),
            pooling=backbone.pooling,
            options=options.to_dict(),
        )
        return cls(cls.build_model(backbone, len(label_names), options), tokenizer, info)

    def check_speed(self, speed: float) -> None:
        low, high = self.speed_bounds
        if not low <= speed <= high:
            raise GeepError(
                f"speed {speed} is out of range for {self.name}: use a value in "
                f"[{low:g}, {high:g}] ({self.speed_help})"
            )
        if self.whole_speeds and speed != int(speed):
            raise GeepError(
                f"speed {speed} is not a whole number: {self.name}'s speed is {self.speed_help}"
            )

    def encode(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        seq_len: int | None = None,
        labels: Sequence[int] | None = None,
    ) -> Encoded:
        """Tokenize with this checkpoint's tokenizer; ``seq_len`` defaults to training's."""
        return encode_texts(self.tokenizer, texts, seq_len or self.info.seq_len, text_pairs, labels)

    def predict(
        self,
        texts: Sequence[str],
        speed: float,
        batch_size: int = 32,
        text_pairs: Sequence[str] | None = None,
    ) -> Predictions:
        """Predicted label, exit layer and FLOPs (both conventions) for each text."""
        return self.run(self.encode(texts, text_pairs), speed, batch_size)

    @torch.inference_mode()
    def run(
        self,
        data: Encoded,
        speed: float,
        batch_size: int,
        progress: bool = False,
        order: Order = "length",
        on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> Predictions:
        """Inference on encoded data; each batch is timed (synchronised on a GPU) and the work
        it issues is counted (:mod:`geep.work`). ``on_batch(positions, labels)``, if given, is
        called as each model batch finishes, with the input positions of its samples and their
        labels (a server answers those requests then, :mod:`geep.serving`).

        Every method receives the samples in the same ``order``: sorted by length (stable), so
        batches carry little padding and a wall-clock comparison between methods measures their
        exits rather than their padding, or in ``input`` order. A method may regroup them (GEEP
        groups by predicted exit layer, keeping this order within a layer). Results are in input
        order either way.
        """
        self.check_speed(speed)
        if batch_size < 1:
            raise GeepError(f"--batch-size must be at least 1, got {batch_size}")
        self.model.eval()
        self.prepare(speed)
        n = len(data)
        if order == "length":
            position = torch.argsort(data.lengths, stable=True).numpy()  # input index of each
            data = data.select(torch.from_numpy(position))
        else:
            position = np.arange(n)
        labels = np.full(n, -1, dtype=np.int64)
        exits = np.zeros(n, dtype=np.float64)
        flops = {c: np.zeros(n, dtype=np.int64) for c in CONVENTIONS}
        seconds: list[float] = []
        batches = self.predict_batches(data, speed, batch_size)
        bar = tqdm(
            total=n,
            desc=f"{self.name} speed={speed:g}",
            unit="sample",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        with counting() as calls:
            while True:
                start = time.perf_counter()
                result = next(batches, None)
                self._synchronize()
                if result is None:
                    break
                seconds.append(time.perf_counter() - start)
                idx = position[result.index.cpu().numpy()]
                labels[idx] = result.labels.cpu().numpy()
                exits[idx] = result.exit_layers.cpu().numpy()
                flops["fastbert"][idx] = result.flops_fastbert.cpu().numpy()
                flops["full"][idx] = result.flops_full.cpu().numpy()
                if on_batch is not None:
                    on_batch(idx, labels[idx])
                bar.update(len(idx))
        bar.close()
        if (labels < 0).any():
            raise RuntimeError(f"{self.name}.predict_batches left samples without a prediction")
        return Predictions(labels, exits, flops["fastbert"], flops["full"], seconds, calls)

    def warm_up(self, data: Encoded, speed: float, batch_size: int) -> int:
        """One untimed batch at ``speed`` before timing: caches, exit tables, the allocator.
        Returns the batch size to time at.

        The batch holds the split's ``batch_size`` longest samples, the widest batch the timed
        runs can see. While it runs out of GPU memory the size is halved and it is tried again;
        GeepError when not even one sample fits.
        """
        size = batch_size
        while True:
            longest = data.lengths.argsort(descending=True, stable=True)[:size]
            try:
                self.run(data.select(longest), speed, size)
                return size
            except torch.OutOfMemoryError:
                pass  # leave the except block first, so the failed batch's tensors can be freed
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if size == 1:
                raise GeepError(
                    f"{self.name} at speed {speed:g} runs out of GPU memory even at batch size "
                    "1; use a GPU with more memory or a shorter --seq-len"
                )
            print(
                f"geep: {self.name} at speed {speed:g} ran out of GPU memory at batch size "
                f"{size}; trying {size // 2}",
                file=sys.stderr,
            )
            size //= 2

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically: a reader never sees a half-written folder, and a
        failed write (a full disk) leaves the previous one as it was. Its config.json, written
        last, lists every file, so a later save knows the folder is a checkpoint it may replace
        (:func:`checkpoint_ownership`)."""
        path = Path(path)
        with atomic_directory(path) as tmp:
            try:
                save_model(self.model, str(tmp / WEIGHTS_FILE))
                if self.extras:
                    extras = {k: v.contiguous().cpu() for k, v in self.extras.items()}
                    save_file(extras, tmp / EXTRAS_FILE)
            except SafetensorError as err:
                raise safetensors_os_error(err, path) or err from None
            self.tokenizer.save_pretrained(tmp)
            files = sorted(f.relative_to(tmp).as_posix() for f in tmp.rglob("*") if f.is_file())
            self.info.files = sorted([*files, INFO_FILE])
            self.info.sha256 = {name: file_sha256(tmp / name) for name in files}
            (tmp / INFO_FILE).write_text(json.dumps(asdict(self.info), indent=2) + "\n")
        return path


def check_seq_len(seq_len: int, backbone: Backbone) -> None:
    """GeepError unless ``seq_len`` fits the encoder's position embeddings (and the suite's
    lower bound of 8 tokens, as for training)."""
    positions = backbone.config.max_position_embeddings
    if not 8 <= seq_len <= positions:
        raise GeepError(f"--seq-len {seq_len} must lie in 8..{positions}, the model's positions")


def checksum_problem(path: Path, sha256: Any) -> str | None:
    """The first file of checkpoint ``path`` that is missing or whose SHA-256 is not the one
    its config.json records (``sha256``: file -> digest, as :meth:`Method.save` wrote it); None
    when every file is as it was saved. A checkpoint saved before checksums were recorded has
    none to check."""
    if not isinstance(sha256, dict):
        return f"{INFO_FILE}'s sha256 must map each file to its digest"
    for name, digest in sorted(sha256.items()):
        file = path / name
        if not isinstance(digest, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            return f"{INFO_FILE}'s sha256 entry for {name!r} is not a file's digest"
        if not file.is_file():
            return f"{name} is missing"
        if file_sha256(file) != digest:
            return f"{name} is not the file that was saved (its SHA-256 differs from {INFO_FILE}'s)"
    return None


def checkpoint_ownership(path: Path) -> str | None:
    """Why the folder ``path`` is not a checkpoint that :meth:`Method.save` wrote (so replacing
    it could destroy someone's files); None when it is one: its config.json lists every file in
    it (geep.storage.check_target)."""
    try:
        info = json.loads((path / INFO_FILE).read_text())
    except (OSError, ValueError):
        info = None
    listed = info.get("files") if isinstance(info, dict) and "method" in info else None
    if not isinstance(listed, list):
        return f"no {INFO_FILE} of a geep checkpoint listing its files"
    for f in sorted(path.rglob("*")):
        name = f.relative_to(path).as_posix()
        if not f.is_dir() and name not in listed:
            return f"it holds {name}"
    return None


def _backbone_problem(backbone: dict[str, Any]) -> str | None:
    """The first field of a stored encoder config whose JSON type is not that of its default in
    transformers' config of the same model type (fields whose default is null may hold any);
    None when every field has its type."""
    try:
        defaults = AutoConfig.for_model(backbone["model_type"]).to_dict()
    except ValueError:
        return f"backbone.model_type {backbone['model_type']!r} is not a model transformers knows"
    for key, value in backbone.items():
        default = defaults.get(key)
        if default is not None and _json_kind(value) != _json_kind(default):
            return f"backbone.{key} must be {_json_kind(default)}, got {value!r:.40}"
    return None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), "null")


CHECKPOINT_FAULTS = (
    SafetensorError,
    StrictDataclassError,  # transformers' check of a config's field types
    RuntimeError,
    OSError,
    KeyError,
    ValueError,
    TypeError,
    AttributeError,
)
"""What building a method from a damaged or incomplete checkpoint raises."""


def load_checkpoint(path: str | Path) -> Method:
    """Rebuild a method from a checkpoint folder (safetensors + JSON; nothing is unpickled)."""
    path = Path(path)
    if not path.is_dir():
        raise GeepError(
            f"checkpoint {path} does not exist: train one with `geep train --out {path}`"
        )
    where = f"checkpoint {path / INFO_FILE}"
    try:
        raw = json.loads((path / INFO_FILE).read_text())
    except FileNotFoundError as err:
        raise GeepError(f"{path} is not a checkpoint (no {INFO_FILE}): retrain it") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GeepError(f"{where} is corrupted (not JSON): retrain it") from err
    if problem := first_problem(raw, CHECKPOINT_SCHEMA):
        raise GeepError(f"{where} is damaged: {problem}; retrain it")
    if problem := _backbone_problem(raw["backbone"]):
        raise GeepError(f"{where} is damaged: {problem}; retrain it")
    with ThreadPoolExecutor(max_workers=1) as pool:  # hashing releases the GIL: it overlaps
        checked = pool.submit(checksum_problem, path, raw.get("sha256") or {})  # the build
        fields_ = {f.name for f in fields(CheckpointInfo)}
        info = CheckpointInfo(**{k: v for k, v in raw.items() if k in fields_})
        try:
            cls = get_method(info.method)
            TrainConfig.from_dict(info.train)
            options = cls.options_class.from_dict(info.options)
        except GeepError as err:
            raise GeepError(f"{where} is damaged: {err}; retrain it") from None
        backbone_config = dict(info.backbone)
        try:  # from the config alone: no file of the checkpoint is read before its check
            config = AutoConfig.for_model(backbone_config.pop("model_type"), **backbone_config)
            model = cls.build_model(
                Backbone.from_config(config, info.pooling), info.num_labels, options
            )
        except CHECKPOINT_FAULTS as err:
            raise GeepError(
                f"checkpoint {path} is incomplete or corrupted ({type(err).__name__}): retrain it"
            ) from err
        if problem := checked.result():
            raise GeepError(f"checkpoint {path} is damaged: {problem}; retrain it or copy it again")
    try:
        load_model(model, str(path / WEIGHTS_FILE), strict=True)
        extras = load_file(path / EXTRAS_FILE) if (path / EXTRAS_FILE).exists() else {}
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except CHECKPOINT_FAULTS as err:
        raise GeepError(
            f"checkpoint {path} is incomplete or corrupted ({type(err).__name__}): retrain it"
        ) from err
    return cls(model, tokenizer, info, extras)
