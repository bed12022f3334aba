"""`geep train`: a dataset's train split -> a trained method -> its checkpoint, resumable."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.utils import set_seed

from geep.common.config import TrainConfig
from geep.common.errors import GeepError
from geep.common.storage import cache_root, check_target, exclusive
from geep.core.checkpoint import checkpoint_ownership
from geep.core.interface import Method
from geep.core.registry import get_method, load_checkpoint
from geep.data.encoding import Encoded, encode_split
from geep.measure.metrics import accuracy
from geep.model.train_state import TrainState, saving_into, state_folder, this_process

if TYPE_CHECKING:
    from accelerate import PartialState
    from datasets import Dataset, DatasetDict


def train_method(
    method_name: str,
    dataset: str,
    out: str | Path,
    model: str,
    config: TrainConfig,
    settings: Sequence[str] = (),
    start_from: str | Path | None = None,
    save_every_s: float = 300.0,
    max_dev: int | None = None,
) -> Method:
    """Train ``method_name`` on ``dataset``'s train split and save the checkpoint to ``out``.

    ``settings`` are the method's options as ``KEY=VALUE`` strings (``geep train --option``).
    ``start_from`` is a checkpoint of ``bert`` fine-tuned on the same data, for methods whose
    first stage is that fine-tuning (:meth:`Method.fit_from`).

    Accuracy on the dev split (its first ``max_dev`` samples; all when None) at the method's
    first (full-depth) speed is recorded in the checkpoint; the test split is never looked at.

    The training state is saved every ``save_every_s`` seconds (0: after every step) beside
    ``out``; a re-run of a killed run resumes from it (:mod:`geep.model.train_state`).

    Under ``accelerate launch`` every process runs this function on its own device; the main
    process alone fetches the data first, evaluates the dev split, writes the checkpoint and
    removes the saved state.

    Before any work, ``out`` is checked (:func:`geep.common.storage.check_target`): an existing
    folder is replaced only when it is a checkpoint this suite wrote, and its place must be
    writable. While it trains, ``out`` is locked: a second run into the same folder is refused at
    once.
    """
    cls = get_method(method_name)
    cls.options_class().with_settings(settings)  # reject bad options before any work
    out = check_target(out, "--out", "folder", checkpoint_ownership)
    cache_root()  # checked before the work too
    process = this_process()
    with _writing(out, process):
        set_seed(config.seed)  # before the heads are initialised, so a seed fixes the whole run
        data, train = training_data(dataset, config, process)
        task, labels = task_and_labels(train)
        method = cls.create(model, labels, dataset, config, task=task, settings=settings)
        method.to(process.device)
        encoded = encode_split(method.tokenizer, train, config.seq_len)
        run = {
            "method": method_name,
            "dataset": dataset,
            "model": model,
            "train": config.to_dict(),
            "settings": list(settings),
            "start_from": None if start_from is None else str(start_from),
            "data_sha256": encoded.sha256(),
            # a save resumes with as many processes (geep.model.train_state)
            "processes": process.num_processes,
        }
        state = TrainState(state_folder(Path(out)), run, save_every_s)
        with saving_into(state):
            first_stage = None if start_from is None else load_checkpoint(start_from)
            fit_method(method, encoded, first_stage)
        if process.is_main_process:  # the processes hold the same weights: one evaluates and saves
            method.info.train_samples = len(encoded)
            _record_dev_accuracy(method, data["dev"], max_dev, config.seq_len)
            method.save(out)
            state.remove()
        process.wait_for_everyone()  # no process ends before the checkpoint is whole
        return method


def _writing(out: Path, process: PartialState) -> contextlib.AbstractContextManager:
    """The lock on ``out`` while it trains (:func:`exclusive`): a second run into it is refused
    at once. The main process alone writes, so it alone locks ``out``."""
    busy = f"another `geep train` is writing {out}: wait for it to end, or give another --out"
    lock = out.with_name(f".{out.name}.lock")
    return (
        exclusive(lock, busy, remove=True) if process.is_main_process else contextlib.nullcontext()
    )


def training_data(
    dataset: str, config: TrainConfig, process: PartialState
) -> tuple[DatasetDict, Dataset]:
    """``dataset``'s splits (fetched by the main process first) and its training rows: a seeded
    random subset of ``config.max_train`` of them when that is fewer."""
    from geep.data import load_dataset  # the datasets library: only training needs it here

    with process.main_process_first():  # one download or archive extraction, then all read
        data = load_dataset(dataset)
    train = data["train"]
    if config.max_train is not None and config.max_train < len(train):
        train = train.shuffle(seed=config.seed).select(range(config.max_train))
    return data, train


def task_and_labels(rows: Dataset) -> tuple[str, list[str]]:
    """A split's task (``pair`` when it has a ``text_pair`` column, else ``single``) and its class
    names, as a method is created with them."""
    return "pair" if "text_pair" in rows.column_names else "single", rows.features["label"].names


def fit_method(method: Method, encoded: Encoded, first_stage: Method | None = None) -> Method:
    """Train ``method`` on ``encoded`` with its checkpoint's recipe: whole (:meth:`Method.fit`),
    or from ``first_stage``, a ``bert`` fine-tuned on the same data, when given
    (:meth:`Method.fit_from`). Out of GPU memory is a GeepError. Returns ``method``."""
    try:
        if first_stage is None:
            method.fit(encoded)
        else:
            method.fit_from(first_stage, encoded)
    except torch.OutOfMemoryError:
        config = TrainConfig.from_dict(method.info.train)
        raise GeepError(
            f"out of GPU memory training {method.name} at batch size {config.batch_size}, "
            f"--seq-len {config.seq_len}; lower one of them"
        ) from None
    return method


def _record_dev_accuracy(method: Method, rows: Dataset, max_dev: int | None, seq_len: int) -> None:
    """Record in ``method.info`` its accuracy at its first (full-depth) speed on the dev
    ``rows`` (the first ``max_dev`` of them; all when None)."""
    if max_dev is not None:
        rows = rows.select(range(min(max_dev, len(rows))))
    dev = encode_split(method.tokenizer, rows, seq_len)
    speed = method.default_speeds()[0]
    labels = method.run(dev, speed, 64).labels
    method.info.dev_accuracy = accuracy(dev.labels.numpy(), labels)
    method.info.dev_samples = len(dev)


def is_main_process() -> bool:
    """Whether this is the process that reports (always, outside ``accelerate launch``)."""
    return this_process().is_main_process
