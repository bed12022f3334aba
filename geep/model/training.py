"""The one training loop every method uses: AdamW, linear warm-up and decay, Accelerate.

Accelerate places the model and batches on the available device. Under ``accelerate launch``
(or ``torchrun``) with N processes the loop trains with data parallelism: every process draws
the same global batches, takes its share of each (:class:`EpochBatches`), and DDP averages the
gradients, so N processes follow the one-process run at the same ``--batch-size``
(docs/distributed.md). Only the main process writes the saves, the checkpoint and the progress
bars. A method supplies the loss and the parameters to train, so multi-step recipes (FastBERT's
self-distillation, DeeBERT's two stages) call it once per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from geep.common.config import TrainConfig
from geep.data.encoding import Batch, Encoded
from geep.model.train_state import TrainState, active_state

BUCKET_BATCHES = 50
"""Batches per chunk that length-bucketed batching sorts by length (see :class:`EpochBatches`)."""


class EpochBatches(Sampler[list[int]]):
    """Each epoch's batches of sample indices, drawn from ``generator`` when iteration starts.

    ``random``: a shuffled order cut into batches, as the papers' reference code trains.
    ``length``: the shuffled order is cut into chunks of :data:`BUCKET_BATCHES` batches, each
    chunk is sorted by length and cut into batches, and the batches are shuffled. Every batch
    then holds samples of similar length, so little of it is padding (rotten-tomatoes at length
    64: 5% instead of 44%), while which samples meet in a batch and the batch order stay random.

    With ``processes`` > 1 every process draws the same global batches (same generator state)
    and yields the ``rank``-th of ``processes`` near-equal contiguous parts of each; a process
    whose part is empty (a last batch smaller than ``processes``) gets the batch's first sample,
    weighed 0. ``shares`` holds the loss weight of each batch of the epoch being drawn (1.0 for
    one process).
    """

    def __init__(
        self,
        lengths: torch.Tensor,
        batch_size: int,
        batching: str,
        generator: torch.Generator,
        rank: int = 0,
        processes: int = 1,
    ) -> None:
        self.lengths, self.batch_size, self.batching = lengths, batch_size, batching
        self.generator = generator
        self.rank, self.processes = rank, processes

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator)
        if self.batching == "length":
            chunks = order.split(self.batch_size * BUCKET_BATCHES)
            order = torch.cat([c[torch.argsort(self.lengths[c], stable=True)] for c in chunks])
        batches = order.split(self.batch_size)
        if self.batching == "length":
            shuffle = torch.randperm(len(batches), generator=self.generator)
            batches = [batches[i] for i in shuffle]
        self.shares = [1.0] * len(batches)
        if self.processes > 1:
            batches, self.shares = zip(*(self.part(batch) for batch in batches), strict=True)
        return iter([batch.tolist() for batch in batches])

    def part(self, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This process's part of a global batch and the weight of its mean loss.

        DDP averages the processes' gradients; weighing each part's mean loss by
        ``len(part) * processes / len(batch)`` makes that average the gradient of the global
        batch's mean loss, as one process computes it. It assumes a method's loss is a mean
        over the batch's samples, as every method's is.
        """
        mine = batch.tensor_split(self.processes)[self.rank]
        if len(mine) == 0:
            return batch[:1], 0.0
        return mine, len(mine) * self.processes / len(batch)


def adamw(
    params: list[nn.Parameter], lr: float, weight_decay: float, fused: bool = True
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases or norms). ``fused`` updates all
    parameters in one kernel: on 2 CPU cores a MiniLM step's update took 6 ms instead of 41
    (benchmarks/test_training_speed.py)."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def train_loop(
    model: nn.Module,
    params: Iterable[nn.Parameter],
    data: Encoded,
    config: TrainConfig,
    lr: float | None = None,
    desc: str = "train",
    **forward_kwargs: Any,
) -> list[float]:
    """Minimise ``model(batch, **forward_kwargs)`` (a scalar loss) over ``data``.

    Returns the loss of every step (of the global batch, under several processes). Only
    ``params`` are updated (a method's later steps freeze the rest).
    ``lr`` overrides ``config.lr`` (FastBERT's step 2 uses 10x). Batches are drawn with
    ``config.seed`` as ``config.batching`` says (:class:`EpochBatches`); the schedule decays to 0
    exactly at the last step (not earlier, unlike the FastBERT reference code).

    Inside :func:`train_method` the loop saves its state as it goes and, on a re-run after a
    kill, resumes from the last save (:mod:`geep.model.train_state`). A method's code between two
    calls must therefore depend on the model only through its weights.
    """
    state = active_state()
    call = state.start_call() if state else 0
    saved = state.saved(call) if state else None
    if saved is not None and saved["done"]:  # this call ended before the kill
        if saved["call"] == call:
            state.restore(model)
        return saved["losses"]
    run = _prepare(model, params, data, config, lr, forward_kwargs)
    accelerator, total = run.accelerator, run.total
    first_epoch, skip = 0, 0
    if saved is not None:  # the call the kill interrupted: go on after its last saved step
        weights = accelerator.unwrap_model(run.model)
        run.generator.set_state(state.restore(weights, run.optimizer, run.scheduler))
        run.losses = saved["losses"]
        first_epoch, skip = saved["epoch"], saved["step_in_epoch"]
    run.model.train()
    main = accelerator.is_main_process
    bar = tqdm(total=total, initial=len(run.losses), desc=desc, unit="step", disable=not main)
    with bar:
        for epoch in range(first_epoch, config.epochs):
            epoch_generator = run.generator.get_state()
            for step in run.epoch(skip, bar, state):  # the steps after which a save is due
                progress = {
                    "desc": desc,
                    "epoch": epoch,
                    "step_in_epoch": step + 1,
                    "steps": len(run.losses),
                    "total": total,
                    "done": False,
                }
                state.save(
                    call,
                    progress,
                    run.losses,
                    accelerator.unwrap_model(run.model),
                    run.optimizer,
                    run.scheduler,
                    epoch_generator,
                )
            skip = 0
    model = accelerator.unwrap_model(run.model).eval()
    if state is not None:
        progress = {"desc": desc, "steps": total, "total": total, "done": True}
        state.save(call, progress, run.losses, model)
    return run.losses


@dataclass
class _Run:
    """One :func:`train_loop` call's training parts, placed by Accelerate: what its steps use."""

    accelerator: Accelerator
    model: nn.Module  # as prepared: wrapped for DDP under several processes
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    params: list[nn.Parameter]
    generator: torch.Generator  # draws each epoch's batch order
    sampler: EpochBatches
    loader: DataLoader
    total: int  # steps over all epochs
    forward_kwargs: dict[str, Any]
    losses: list[float] = field(default_factory=list)  # of every step so far

    def epoch(self, skip: int, bar: tqdm, state: TrainState | None) -> Iterator[int]:
        """Train one epoch from its step ``skip`` on (the batch order up to it is replayed, not
        trained), appending each step's loss; yields each step after which a save is due."""
        for step, batch in enumerate(self.loader):
            if step < skip:  # replay the batch order up to the saved step
                continue
            loss = self.step(batch, self.sampler.shares[step])
            due = state is not None and state.due() and len(self.losses) + 1 < self.total
            # one all-reduce: the global batch's loss, and whether any process's save is due
            flags = torch.tensor([loss.item(), float(due)], device=loss.device)
            summed = self.accelerator.reduce(flags, "sum")
            self.losses.append(summed[0].item() / self.accelerator.num_processes)
            bar.set_postfix(loss=f"{self.losses[-1]:.3f}")
            bar.update()
            if summed[1] > 0:
                yield step

    def step(self, batch: Batch, share: float) -> torch.Tensor:
        """One update on ``batch``: its loss, weighed by ``share`` (:meth:`EpochBatches.part`)."""
        loss = self.model(batch.to(self.accelerator.device), **self.forward_kwargs) * share
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        return loss


def _prepare(
    model: nn.Module,
    params: Iterable[nn.Parameter],
    data: Encoded,
    config: TrainConfig,
    lr: float | None,
    forward_kwargs: dict[str, Any],
) -> _Run:
    """Seed, then build and place what :func:`train_loop` trains with: the optimizer over the
    ``params`` that require grad, its schedule, and the batches (:class:`EpochBatches`)."""
    set_seed(config.seed)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    params = [p for p in params if p.requires_grad]
    optimizer = adamw(params, lr or config.lr, config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)  # draws each epoch's batch order
    sampler = EpochBatches(
        data.lengths,
        config.batch_size,
        config.batching,
        generator,
        accelerator.process_index,
        accelerator.num_processes,
    )
    loader = DataLoader(  # not prepared: EpochBatches shards it, so every loss weight is known
        range(len(data)),
        batch_sampler=sampler,
        collate_fn=lambda index: data.batch(torch.tensor(index)),
        generator=generator,  # the loader draws a seed per epoch: from here, not dropout's RNG
    )
    total = len(loader) * config.epochs
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup * total), total)
    model, optimizer = accelerator.prepare(model, optimizer)
    return _Run(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
        generator=generator,
        sampler=sampler,
        loader=loader,
        total=total,
        forward_kwargs=forward_kwargs,
    )
