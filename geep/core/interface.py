"""The interface every method implements: the contract between a method and the rest of the suite.

A method is registered by name (``@register``, :mod:`geep.core.registry`) and is used the same
way by the CLI, the benchmarks and the tests::

    method = get_method("bert").create("minilm-l6", labels, dataset="rotten-tomatoes", config=cfg)
    method.fit(train)                      # train: geep.data.encoding.Encoded
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

import sys
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from geep.common.config import MethodOptions, TrainConfig
from geep.common.errors import GeepError
from geep.core.checkpoint import CheckpointInfo, save_checkpoint
from geep.core.runtime import (
    DEFAULT_RUNTIME,
    CudaGraphs,
    GraphBackend,
    GraphRunner,
    Runtime,
    check_runtime,
)
from geep.data.encoding import Encoded, encode_texts
from geep.measure.flops import CONVENTIONS, EncoderDims
from geep.measure.work import Call, counting
from geep.model.backbone import Backbone, load_pretrained

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from geep.core.sweeps import Calibration


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
    calls: Counter[Call] = field(default_factory=Counter)  # the work issued (geep.measure.work)


Order = Literal["length", "input"]  # how Method.run orders samples into batches
Inference = Literal["full-depth", "predicted", "dynamic", "token-exit"]
"""How a method's inference issues layer calls (:meth:`Method.inference_of`): every sample
through every layer; each sample through the layers predicted for it before any runs, in full
batches (GEEP); samples leaving after any layer, batched as a policy says
(:mod:`geep.core.dynamic_exit`);
or every layer on every sample with exited tokens frozen (HashEE)."""
HeadKind = Literal["pooler", "fastbert"]
"""What one exit-head call computes: a pooler and a classifier on the sentence vector, or
FastBERT's classifier over every token (:func:`geep.measure.flops.fastbert_head`)."""
SpeedKnob = Literal["none", "threshold", "patience", "depth"]
"""How a method's speed reads: no knob; a threshold an exit statistic must fall below; the
layers a prediction must hold (patience); how many layers below the top tokens exit."""


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
    calibrates: ClassVar[bool] = False  # True when sweep settings can be chosen on dev (calibrate)
    starts_from: ClassVar[str | None] = None  # a method whose training is this one's first stage
    options_class: ClassVar[type[MethodOptions]] = MethodOptions  # no switches by default
    # what the rest of the suite asks a method instead of its name (the report, the regime
    # model, the GPU check, serving):
    reference: ClassVar[bool] = False  # the full-depth model every other method is measured by
    head_kind: ClassVar[HeadKind] = "pooler"  # what one of its exit-head calls computes
    speed_reads: ClassVar[SpeedKnob] = "none"  # how its speed knob reads
    dynamic_settings: ClassVar[tuple[str, ...] | None] = None  # the options (KEY=VALUE) that
    # make it run dynamic exits: () when it always does, None when it never does
    graphs_unsupported: ClassVar[str | None] = None  # why its calls cannot be CUDA graphs

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
        self.runtime = DEFAULT_RUNTIME  # precision and graph mode of inference (use_runtime)
        self.graphs: GraphRunner | None = None  # the captured graphs, under CUDA graphs

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
        """What a serving batcher queues ``data``'s samples by (geep.serving.server), known before
        any layer runs: None (the default) for one first-in-first-out queue."""
        return None

    def calibrate(self, dev: Encoded) -> Calibration | None:
        """How the mean FLOPs per ``dev`` sample depend on the speed, for sweep settings chosen
        on the dev split (:mod:`geep.core.sweeps`); None unless ``calibrates``."""
        return None

    def choose_on_dev(self, dev: Encoded, batch_size: int) -> dict[str, Any]:
        """Choose inference options on the ``dev`` split before its speeds are (GEEP: the exit
        rule), configure them, and return the record of the choice; {} (the default) for none.
        Profiles call it with the speeds they choose on dev (geep.reproduce.units)."""
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
        dynamic exits (:mod:`geep.core.dynamic_exit`); None for a method that runs no dynamic
        exits."""
        return None

    @classmethod
    def inference_of(cls, options: Any) -> Inference:
        """How inference under ``options`` (an ``options_class`` instance) issues its layer
        calls (:data:`Inference`): dynamic exits when it has a batching policy, else full
        depth (the default)."""
        return "full-depth" if cls.batching_of(options) is None else "dynamic"

    def keep_statistics(self, train: Encoded, exit_layers: torch.Tensor | None = None) -> None:  # noqa: B027
        """Keep, in :attr:`extras`, what the method learns from its training split besides its
        weights (GEEP: each sample's exit statistics; HashEE: token counts); nothing by
        default. ``exit_layers`` [N], given for an untrained model (the GPU check), stands in
        for the exits trained heads would give, where the statistics depend on them."""

    @classmethod
    def training_passes(cls, num_layers: int, options: Any) -> float:
        """What :meth:`fit` costs per training sample and epoch, in forward + backward passes
        of the full-depth encoder (geep.reproduce.plan, ``geep plan``): ordinary fine-tuning is 1
        (the default); a forward-only pass over frozen layers counts :data:`FORWARD_ONLY`; heads are
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
        if self.graphs is not None:
            self.graphs.graphs.clear()  # captured under the old options

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
        """Where the model's weights are: the CPU for a model without torch weights (one run by
        ONNX Runtime, :mod:`geep.core.onnx_runtime`)."""
        weight = next(self.model.parameters(), None)
        return torch.device("cpu") if weight is None else weight.device

    def to(self, device: torch.device | str) -> Method:
        self.model.to(device)
        if self.graphs is not None:
            self.graphs.graphs.clear()  # captured on the old device
        return self

    def use_runtime(self, runtime: Runtime, backend: GraphBackend | None = None) -> Method:
        """Run inference in ``runtime``'s precision and graph mode (:mod:`geep.core.runtime`):
        the weights are cast to its type; with graphs, every :meth:`call` is replayed from a
        graph captured on ``backend`` (default: CUDA graphs, on a CUDA device only)."""
        check_runtime(runtime, self.device, self.graphs_unsupported)
        if runtime.graphs and backend is None and self.device.type != "cuda":
            raise GeepError(f"CUDA graphs need a CUDA device: {self.name} is on {self.device}")
        self.model.to(runtime.dtype)
        self.graphs = GraphRunner(backend or CudaGraphs()) if runtime.graphs else None
        self.runtime = runtime
        return self

    def call(
        self,
        key: tuple[object, ...],
        fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
        *inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """``fn(*inputs)`` as a tuple: one call that moves a batch through the model, replayed
        from the graph of ``key`` and the inputs' bucketed shape under CUDA graphs
        (:class:`~geep.core.runtime.GraphRunner`), else run as it is."""
        if self.graphs is not None:
            return self.graphs(key, fn, *inputs)
        out = fn(*inputs)
        return out if isinstance(out, tuple) else (out,)

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
        it issues is counted (:mod:`geep.measure.work`). ``on_batch(positions, labels)``, if given,
        is called as each model batch finishes, with the input positions of its samples and their
        labels (a server answers those requests then, :mod:`geep.serving.server`).

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
        with self.runtime.matmul_settings():
            return self._run(data, speed, batch_size, progress, order, on_batch)

    def _run(
        self,
        data: Encoded,
        speed: float,
        batch_size: int,
        progress: bool,
        order: Order,
        on_batch: Callable[[np.ndarray, np.ndarray], None] | None,
    ) -> Predictions:
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
        """Write this checkpoint to ``path`` (:func:`geep.core.checkpoint.save_checkpoint`)."""
        return save_checkpoint(path, self.model, self.tokenizer, self.info, self.extras)


def check_seq_len(seq_len: int, backbone: Backbone) -> None:
    """GeepError unless ``seq_len`` fits the encoder's position embeddings (and the suite's
    lower bound of 8 tokens, as for training)."""
    positions = backbone.config.max_position_embeddings
    if not 8 <= seq_len <= positions:
        raise GeepError(f"--seq-len {seq_len} must lie in 8..{positions}, the model's positions")
