"""GEEP (Li et al., "Accelerating BERT inference with GPU-efficient exit prediction", Frontiers of
Computer Science 2024), ``--method geep``. docs/methods.md gives the method step by step.

Training, in one step (:class:`GeepModel`, on FastBERT's model: :mod:`geep.baselines.fastbert`):
FastBERT-style
students after layers 1..L-1 and a teacher after layer L. The teacher is "knowledgeable": it
reads the outputs of diverse sub-networks, sub-network k being layers 1..k followed directly by
layer L, for every exit position k (k = L-1 is the full stack). The shared exit loss is
``sum_k CE(teacher(sub-network_k), y) + sum_i KL(teacher_full.detach() || student_i)``; every
prefix of layers is computed once per step and layer L is applied to all of them in one call.

Exit prediction (:mod:`geep.methods.geep`, :mod:`geep.methods.exit_table`): after training, each
training sample's exit layer is the first layer whose student is confident (normalized entropy
< speed), L if none; a hash table counts, per token, the exit layers of the training samples
that contain it. A test sample's exit layer is predicted from its tokens' counts.

Sorted inference (:meth:`Geep.predict_batches`): samples are sorted by predicted exit layer, then
by length (the order :meth:`~geep.core.interface.Method.run` gives every method); each layer's
samples are cut into full batches (only a layer's last batch can be short, so a sample's exit never
depends on its neighbours), and each batch runs exactly its layers and ONE exit head. Results
are returned in input order.

Speed knob: the uncertainty threshold in [0, 1]; 0 runs every sample through all layers.

Options (:class:`GeepOptions`): the ablations ``teacher_inputs=last`` (teacher reads the full
stack only) and ``training=two-step`` (FastBERT's recipe: backbone and teacher first, then the
students by self-distillation at 10x the learning rate); ``exit_num=E``, students after layers
1..E only and the teacher fed sub-networks 1..min(E, L-2), as EasyNLP's GEEP (default 0: a
student after every layer below L); at evaluate time the exit head
(``student`` at layer k, or ``shared``: layer L applied to h_k, then the teacher), the
aggregation rule and its conservativeness, bigram keys (``ngram=2``, beyond the paper), and
``mode=dynamic``: FastBERT's dynamic exit on the same weights (a shrinking batch, or
``batching=regroup|keep``, :mod:`geep.core.dynamic_exit`), so the benefit of prediction over
dynamic exit is measured on one model.

Where the paper is silent (its text is not available): tokens are counted once per sample and
special tokens ([CLS], [SEP], padding) are not keys; a token's exit distribution is its counts
normalised, and an exit rule combines a sample's (:mod:`geep.methods.geep`; the profiles
choose it on dev, :meth:`Geep.choose_on_dev`); exit tables are built per speed
from stored training-sample uncertainties, before inference is timed. ``exit_layers`` reports
the layers a sample ran: k for the student exit, k + 1 for the shared exit below layer L.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geep.baselines.fastbert import FastBERT, FastBERTModel
from geep.common.config import TrainConfig, inference_option
from geep.common.errors import GeepError
from geep.core.dynamic_exit import DynamicExitOptions, first_exit_layer
from geep.core.interface import FORWARD_ONLY, BatchResult, Inference, Predictions
from geep.core.registry import register
from geep.core.sweeps import Calibration, gap_midpoints, matched_speed
from geep.data.encoding import Batch, Encoded
from geep.measure import work
from geep.measure.metrics import accuracy
from geep.methods.exit_table import ExitTable, sample_keys
from geep.model.backbone import Backbone
from geep.model.training import train_loop

# --- exit prediction: a test sample's exit layer from its tokens' counts in the exit table --------

ExitRule = Literal["quantile", "mean", "loglik", "idf", "deepest"]
EXIT_RULES: tuple[ExitRule, ...] = get_args(ExitRule)


SMOOTHING = 1.0
"""``loglik``'s additive (Laplace) smoothing: a token never seen exiting at a layer keeps
probability 1 / (n + L) there, so one token cannot veto a layer."""


def predict_exit_layers(
    table: ExitTable, keys: torch.Tensor, rule: ExitRule, quantile: float, margin: int
) -> torch.Tensor:
    """keys [N, K] (rows padded with -1) -> predicted exit layer [N] in 1..L (docs/methods.md,
    "geep", prediction).

    Token t's counts c_t [L] (training samples holding t that exit at each layer, n_t = sum c_t)
    give its exit distribution p_t = c_t / n_t. Tokens absent from the table are ignored; a
    sample with no known token runs all L layers. The rules combine a sample's tokens T:

    - ``quantile``: q = the mean of p_t over T; the first layer where q's cumulative sum
      reaches ``quantile`` (0.5: the median; higher is more conservative);
    - ``mean``: the expected layer under that q, rounded up;
    - ``loglik``: q proportional to exp(mean over T of log p'_t), p'_t = (c_t + a) / (n_t + a L)
      smoothed (:data:`SMOOTHING`): the tokens' per-token log-likelihood of each layer, a
      geometric mean of their distributions; then its ``quantile``;
    - ``idf``: q = the mean of p_t weighted by log((N + 1) / n_t), N the training samples of
      the table, so a token in most samples (a stop word) weighs little; then its ``quantile``;
    - ``deepest``: each token's own ``quantile`` layer of p_t, and the deepest of them (a
      conservative rule: no token of the sample asks for more layers).

    ``margin`` extra layers are added to any of them (more conservative), capped at L.
    """
    num_layers = table.num_layers
    n = keys.shape[0]
    present = keys >= 0  # [N, K]
    sample = torch.arange(n, device=keys.device).unsqueeze(1).expand_as(keys)[present]  # [M]
    counts = table.lookup(keys[present]).float()  # [M, L]
    totals = counts.sum(dim=1)  # [M]; 0 for tokens the table does not hold
    known = totals > 0
    sample, counts, totals = sample[known], counts[known], totals[known]  # [M'], ...
    distributions = counts / totals.unsqueeze(1)  # [M', L]
    num_known = torch.bincount(sample, minlength=n)  # [N]
    if rule == "deepest":
        token_layers = _quantile_layer(distributions, quantile)  # [M']
        layers = torch.zeros(n, dtype=torch.long, device=keys.device)
        layers.scatter_reduce_(0, sample, token_layers, reduce="amax")  # [N]
    else:
        if rule == "loglik":
            smoothed = (counts + SMOOTHING) / (totals + SMOOTHING * num_layers).unsqueeze(1)
            terms, weights = smoothed.log(), torch.ones_like(totals)  # [M', L], [M']
        elif rule == "idf":
            if table.samples < 1:
                raise GeepError(
                    "exit_rule=idf needs the table's sample count: build it with "
                    "ExitTable.from_samples"
                )
            terms, weights = distributions, torch.log((table.samples + 1) / totals)
        elif rule in ("quantile", "mean"):
            terms, weights = distributions, torch.ones_like(totals)
        else:
            raise GeepError(f"unknown exit rule {rule!r}: choose one of {', '.join(EXIT_RULES)}")
        summed = torch.zeros(n, num_layers, device=keys.device).index_add_(
            0, sample, terms * weights.unsqueeze(1)
        )  # [N, L]
        weight = torch.zeros(n, device=keys.device).index_add_(0, sample, weights)  # [N]
        combined = summed / weight.clamp(min=1e-12).unsqueeze(1)  # [N, L]
        if rule == "loglik":
            combined = torch.softmax(combined, dim=1)  # the geometric mean, normalised
        if rule == "mean":
            depth = torch.arange(1, num_layers + 1, device=keys.device, dtype=combined.dtype)
            layers = torch.ceil((combined * depth).sum(dim=1) - 1e-6).long()
        else:
            layers = _quantile_layer(combined, quantile)
    layers = (layers + margin).clamp(1, num_layers)
    return torch.where(num_known > 0, layers, torch.full_like(layers, num_layers))


def _quantile_layer(distributions: torch.Tensor, quantile: float) -> torch.Tensor:
    """[R, L] distributions -> [R]: the first layer (1..L) where the cumulative sum reaches
    ``quantile``."""
    below = distributions.cumsum(dim=1) < quantile - 1e-6  # [R, L]
    return below.sum(dim=1) + 1


def exit_quality(predicted: np.ndarray, oracle: np.ndarray) -> dict[str, float]:
    """How predicted exit layers compare with the oracle ones the students would give."""
    predicted, oracle = np.asarray(predicted, float), np.asarray(oracle, float)
    return {
        "exit_mae": float(np.abs(predicted - oracle).mean()),
        "exit_exact": float((predicted == oracle).mean()),
        "exit_too_early": float((predicted < oracle).mean()),
        "exit_too_late": float((predicted > oracle).mean()),
        "oracle_avg_exit_layer": float(oracle.mean()),
    }


# --- the model: FastBERT's students and a knowledgeable teacher, trained by one shared loss -------

ExitHead = Literal["student", "shared"]


class GeepModel(FastBERTModel):
    """FastBERT's students and teacher (:class:`~geep.baselines.fastbert.FastBERTModel`) with
    GEEP's knowledgeable teacher and shared exit.

    ``exit_num`` is E, 1..L-1 (0: L-1, a student after every layer below L). EasyNLP's GEEP
    places students after layers 1..E only; samples then exit at one of them or at L.
    """

    def __init__(
        self, backbone: Backbone, num_labels: int, teacher_inputs: str, exit_num: int = 0
    ) -> None:
        num_layers = backbone.num_layers
        if not 0 <= exit_num < num_layers:
            raise GeepError(
                f"option exit_num must lie in 1..{num_layers - 1} for this {num_layers}-layer "
                f"encoder (0: {num_layers - 1}), got {exit_num}"
            )
        super().__init__(backbone, num_labels, exit_num)
        self.teacher_inputs = teacher_inputs

    def shared_exit_logits(
        self,
        layer: int,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """GEEP's shared exit at ``layer`` from h_layer [B, T, H]: layer L applied to h_layer,
        then the teacher (the teacher alone at L)."""
        num_layers = self.backbone.num_layers
        if layer < num_layers:
            hidden = self.backbone.run_layers(hidden, mask, num_layers - 1, num_layers)
        return self.teacher(hidden, attention_mask)

    def add_teacher_terms(
        self,
        loss: torch.Tensor,
        states: list[torch.Tensor],
        mask: torch.Tensor | None,
        batch: Batch,
    ) -> torch.Tensor:
        """The shared exit loss's teacher terms: with ``teacher_inputs="diverse"`` the teacher
        also reads the sub-networks k = 1..min(E, L-2) (layers 1..k, then L), one CE each; with
        ``"last"``, the full stack only (its CE is FastBERT's). Layer L runs once on all the
        prefixes."""
        num_layers = self.backbone.num_layers
        diverse = min(len(self.students), num_layers - 2)  # sub-networks 1..k + L, k <= D
        if self.teacher_inputs != "diverse" or diverse <= 0:
            return loss
        prefixes = torch.cat(states[:diverse])  # [DB, T, H]: h_1 .. h_D
        repeated = mask.repeat(diverse, 1, 1, 1) if mask is not None else None
        tops = self.backbone.run_layers(prefixes, repeated, num_layers - 1, num_layers)
        logits = self.teacher(tops, batch.attention_mask.repeat(diverse, 1))  # [DB, C]
        # mean over DB samples times D = the sum over k of each batch-mean CE
        return loss + diverse * F.cross_entropy(logits, batch.labels.repeat(diverse))


# --- the method --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeepOptions(DynamicExitOptions):
    """GEEP's switches; the defaults are the method as docs/methods.md describes it.
    ``batching`` applies to ``mode=dynamic``
    (:class:`geep.core.dynamic_exit.DynamicExitOptions`)."""

    teacher_inputs: Literal["diverse", "last"] = "diverse"
    training: Literal["one-step", "two-step"] = "one-step"
    exit_num: int = 0  # students after layers 1..exit_num (EasyNLP's knob); 0: 1..L-1
    mode: Literal["predict", "dynamic"] = inference_option("predict")
    exit_head: ExitHead = inference_option("student")
    exit_rule: ExitRule = inference_option("quantile")
    exit_quantile: float = inference_option(0.5)
    exit_margin: int = inference_option(0)
    ngram: Literal[1, 2] = inference_option(1)

    def __post_init__(self) -> None:
        if not 0 < self.exit_quantile <= 1:
            raise GeepError(f"option exit_quantile must lie in (0, 1], got {self.exit_quantile}")
        if self.exit_margin < 0:
            raise GeepError(f"option exit_margin must be >= 0, got {self.exit_margin}")
        if self.exit_num < 0:
            raise GeepError(f"option exit_num must be >= 0 (0: every layer), got {self.exit_num}")
        if self.batching != "shrink" and self.mode != "dynamic":
            raise GeepError(
                f"option batching={self.batching} batches dynamic exits: give mode=dynamic too"
            )


RULE_SPEEDUP = 2.0
"""The dev FLOPs speedup (``full`` convention) at which the exit rules are compared."""


@dataclass
class ExitPlan:
    """Predicted exit layer [N] of every sample, and the batches to run: (layer, indices)."""

    layers: torch.Tensor
    batches: list[tuple[int, torch.Tensor]]


@register
class Geep(FastBERT):
    name = "geep"
    speed_help = (
        "uncertainty threshold: a training sample's exit label is its first layer whose student "
        "has normalized entropy below it; 0 = full depth"
    )
    options_class = GeepOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tables: dict[tuple[float, int, str], ExitTable] = {}
        self._oracle: tuple[Encoded, torch.Tensor] | None = None

    dynamic_settings = ("mode=dynamic",)

    @classmethod
    def inference_of(cls, options: GeepOptions) -> Inference:
        """Predicted exits (``mode=predict``), or FastBERT's dynamic exits on its weights."""
        return "predicted" if options.mode == "predict" else "dynamic"

    @classmethod
    def batching_of(cls, options: GeepOptions) -> str | None:
        """Predicted exits run full sorted batches: a policy only in ``mode=dynamic``."""
        return options.batching if options.mode == "dynamic" else None

    @classmethod
    def build_model(cls, backbone: Backbone, num_labels: int, options: Any) -> nn.Module:
        return GeepModel(backbone, num_labels, options.teacher_inputs, options.exit_num)

    # --- training ---------------------------------------------------------------------------

    def fit(self, train: Encoded) -> None:
        """Train (one step, or FastBERT's two), then keep the training samples' exit statistics."""
        if self.options.training == "one-step":
            config = TrainConfig.from_dict(self.info.train)
            params = self.model.parameters()
            train_loop(self.model, params, train, config, desc="geep: shared exit loss")
        else:
            self.fit_two_steps(train, "geep")
        self.keep_statistics(train)

    def keep_statistics(self, train: Encoded, exit_layers: torch.Tensor | None = None) -> None:
        """The training samples' token ids and their students' uncertainties [N, L-1], from
        which the exit tables of every speed are built (:meth:`build_table`). ``exit_layers``
        stands in for untrained students: uncertainty 1 below a sample's layer, 0 from it, so
        that any speed in (0, 1) gives exactly those exits."""
        if exit_layers is None:
            uncertainty = self.exit_statistics(train)
        else:
            step = torch.arange(1, self.num_layers)  # [L-1]
            uncertainty = (step[None, :] < exit_layers[:, None]).float()
        self.extras = {
            "train_input_ids": torch.from_numpy(train.token_ids.astype(np.int32)),
            "train_lengths": train.lengths.int(),
            "train_uncertainty": uncertainty,
        }

    @classmethod
    def training_passes(cls, num_layers: int, options: GeepOptions) -> float:
        """One step: the loss of backbone, teacher and students is one fine-tuning pass (the
        two-step recipe: FastBERT's); with ``teacher_inputs="diverse"``
        layer L also runs forward and backward once more on each of the D = min(E, L-2)
        shorter prefixes (D/L of a pass). Last, the training split runs forward once through
        layers 1..L-1 for the exit statistics."""
        students = options.exit_num or num_layers - 1
        diverse = min(students, num_layers - 2) if options.teacher_inputs == "diverse" else 0
        passes = max(diverse, 0) / num_layers
        if options.training == "two-step":
            passes += super().training_passes(num_layers, options)
        else:
            passes += 1.0
        return passes + FORWARD_ONLY * (num_layers - 1) / num_layers

    # --- exit prediction --------------------------------------------------------------------

    def prepare(self, speed: float) -> None:
        if self.options.mode == "predict":
            self.exit_table(speed)

    def keys(self, data: Encoded) -> torch.Tensor:
        """Each sample's table keys [N, K] (its non-special token ids; bigrams with ngram=2)."""
        special = self.tokenizer.all_special_ids
        whole = data.padded()
        return sample_keys(whole.input_ids, whole.attention_mask, special, self.options.ngram)

    def train_keys(self) -> torch.Tensor:
        """The training samples' keys [N, K], from the token ids kept in the checkpoint."""
        if "train_uncertainty" not in self.extras:
            raise GeepError("this geep checkpoint has no exit statistics: retrain it")
        ids = self.extras["train_input_ids"].long()  # [N, T], padded on the right
        lengths = self.extras["train_lengths"].long()
        attention = (torch.arange(ids.shape[1]) < lengths.unsqueeze(1)).long()
        return self.keys(
            Encoded.from_padded(ids, attention, torch.zeros_like(ids), torch.full_like(lengths, -1))
        )

    def exit_labels(self, speed: float) -> torch.Tensor:
        """The training samples' exit layers [N] at ``speed``, from their students."""
        return first_exit_layer(self.extras["train_uncertainty"], speed)

    def exit_table(self, speed: float) -> ExitTable:
        """The table of the training samples' exit layers at ``speed`` (built once, cached)."""
        key = (speed, self.options.ngram, str(self.device))
        if key not in self._tables:
            self._tables[key] = self.build_table(speed)
        return self._tables[key]

    def build_table(self, speed: float) -> ExitTable:
        return ExitTable.from_samples(
            self.train_keys(), self.exit_labels(speed), self.num_layers, device=self.device
        )

    def predict_layers(
        self, data: Encoded, speed: float, table: ExitTable | None = None
    ) -> torch.Tensor:
        """Every sample's predicted exit layer [N] (on the CPU), before any layer runs, from
        ``table`` (default: the cached table at ``speed``); with students after layers 1..E
        only, a layer between E and L becomes L."""
        options = self.options
        keys = self.keys(data).to(self.device)  # [N, K]
        if (
            work.recording()
        ):  # each key is probed and its L int32 counts read (geep.methods.exit_table)
            probes = int((keys >= 0).sum())
            work.record("exit_prediction", *keys.shape, 0, probes * (8 + 4 * self.num_layers))
        layers = predict_exit_layers(
            table or self.exit_table(speed),
            keys,
            options.exit_rule,
            options.exit_quantile,
            options.exit_margin,
        )
        if options.exit_head == "student":  # no student between E and L: on to L
            layers[layers > len(self.model.students)] = self.num_layers
        return layers.cpu()

    def queue_keys(self, data: Encoded, speed: float) -> torch.Tensor | None:
        """Predict mode: each sample's predicted exit layer, so that a server's batches hold
        samples of one layer (GEEP's sorted batches, under load); dynamic mode: None."""
        return self.predict_layers(data, speed) if self.options.mode == "predict" else None

    def layers_run(self, exit_layers: np.ndarray) -> np.ndarray:
        """Layers a sample runs to exit at ``exit_layers``: one more below L for the shared
        exit, which applies layer L to h_k."""
        if self.options.exit_head == "shared":
            return exit_layers + (exit_layers < self.num_layers)
        return exit_layers

    def calibrate(self, dev: Encoded) -> Calibration | None:
        """Predict mode: the dev FLOPs of the predicted exits at any speed. They change only where
        a training sample's exit label does, at its students' uncertainties; each speed's table
        is built afresh (not cached)."""
        if self.options.mode == "dynamic":
            return super().calibrate(dev)
        lengths = dev.lengths.numpy()
        uncertainty = self.extras["train_uncertainty"]

        def flops_at(speed: float) -> float:
            layers = self.predict_layers(dev, speed, self.build_table(speed)).numpy()
            return float(self.sample_flops(lengths, self.layers_run(layers), 1, "full").mean())

        return Calibration(gap_midpoints(uncertainty, 1.0), flops_at)

    def choose_on_dev(self, dev: Encoded, batch_size: int) -> dict[str, Any]:
        """Predict mode: the exit rule chosen on ``dev`` (docs/methods.md, "geep", choosing the
        rule). Each rule of :data:`EXIT_RULES` runs at its slowest speed whose mean dev FLOPs
        are at most full depth's / :data:`RULE_SPEEDUP`; the rule with the best dev accuracy
        there is chosen (ties: the smaller exit-layer error against the students' own first
        confident layer). A rule that cannot reach that speedup is not chosen; when none can,
        ``quantile`` is. Returns every rule's figures and the choice."""
        if self.options.mode != "predict":
            return {}
        labels = dev.labels.numpy()
        full = float(self.full_depth_flops(dev.lengths.numpy(), "full").mean())
        compared = []
        for rule in EXIT_RULES:
            self.configure([f"exit_rule={rule}"])
            matched = matched_speed(self.calibrate(dev), full / RULE_SPEEDUP)
            row: dict[str, Any] = {"rule": rule, "reached": matched is not None}
            if matched is not None:
                speed, flops = matched
                out = self.run(dev, speed, batch_size)
                row |= {"speed": speed, "dev_speedup_full": full / flops}
                row |= {"dev_accuracy": accuracy(labels, out.labels)}
                row |= self.diagnostics(dev, speed, out)
            compared.append(row)
        reached = [r for r in compared if r["reached"]]
        best = max(reached, key=lambda r: (r["dev_accuracy"], -r["exit_mae"])) if reached else None
        chosen = best["rule"] if best else "quantile"
        self.configure([f"exit_rule={chosen}"])
        return {
            "option": "exit_rule",
            "chosen": chosen,
            "split": "dev",
            "samples": len(dev),
            "target_speedup": RULE_SPEEDUP,
            "compared": compared,
        }

    def plan(self, data: Encoded, speed: float, batch_size: int) -> ExitPlan:
        """Predict every sample's exit layer, group the samples by it and cut the batches.

        The grouping is stable: within a layer the samples keep the order they came in, which
        :meth:`Method.run` makes length order by default (docs/methods.md, sorted inference).
        """
        layers = self.predict_layers(data, speed)
        order = torch.argsort(layers, stable=True)
        batches = []
        for layer in torch.unique(layers).tolist():
            group = order[layers[order] == layer]
            batches += [
                (layer, group[i : i + batch_size]) for i in range(0, len(group), batch_size)
            ]
        return ExitPlan(layers, batches)

    # --- inference --------------------------------------------------------------------------

    @torch.inference_mode()
    def predict_batches(
        self, data: Encoded, speed: float, batch_size: int
    ) -> Iterator[BatchResult]:
        if self.options.mode == "dynamic":
            yield from self.dynamic_batches(data, speed, batch_size)
            return
        for layer, index in self.plan(data, speed, batch_size).batches:
            inputs = data.batch(index).to(self.device).inputs().values()
            exit_at = partial(self.exit_forward, layer)
            (logits,) = self.call(("exit", layer, self.options.exit_head), exit_at, *inputs)
            ran = self.layers_run(np.full(len(index), layer))
            yield self.batch_result(index, logits, ran, heads=1, data=data)

    def exit_forward(
        self,
        layer: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Logits [B, C] of a batch whose samples exit at ``layer``: the embeddings, layers
        1..layer and ONE exit head (the option ``exit_head``); one call, so one CUDA graph per
        (layer, bucket) under graphs."""
        hidden, mask = self.backbone.embed(input_ids, attention_mask, token_type_ids)
        hidden = self.backbone.run_layers(hidden, mask, 0, layer)  # h_layer [B, T, H]
        if self.options.exit_head == "shared":
            return self.model.shared_exit_logits(layer, hidden, mask, attention_mask)
        return self.model.exit_logits(layer, hidden, attention_mask)

    # --- diagnostics ------------------------------------------------------------------------

    def diagnostics(self, data: Encoded, speed: float, out: Predictions) -> dict[str, float]:
        """The exit predictor against the oracle: the layer the students' own rule would pick."""
        if self.options.mode != "predict":
            return {}
        if self._oracle is None or self._oracle[0] is not data:
            self._oracle = (data, self.exit_statistics(data))
        oracle = first_exit_layer(self._oracle[1], speed).numpy()
        predicted = self.predict_layers(data, speed).numpy()
        return exit_quality(predicted, oracle)
