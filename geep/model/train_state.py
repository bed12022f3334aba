"""Training state saved while ``geep train`` runs, so a killed run goes on where it stopped.

:func:`geep.pipeline.train.train_method` opens a :class:`TrainState` in a hidden folder beside the
checkpoint (``.NAME.resume/``) and every :func:`geep.model.training.train_loop` call of the method's
``fit`` saves into it: every ``every_s`` seconds, and when the call ends. One save is the whole
state after a step: the model's weights, AdamW's moments, the schedule, torch's random generators
(dropout, and the batch order at the start of the epoch), the losses so far, and how far the run
got. Saves are atomic (:func:`geep.common.storage.atomic_directory`), so a kill at any point leaves
the previous save whole.

On a re-run with the same method, data, encoder, recipe and options, calls that had ended are
skipped and the call that was running restores the save and continues at the next step, drawing
the same batches and dropout masks: the checkpoint equals an uninterrupted run's (on a CPU; GPU
kernels need not be bit-reproducible). A save of a different run is discarded. The folder is
deleted once the checkpoint is written. Saves are read with ``weights_only=True`` and
safetensors: nothing is unpickled.

Under ``accelerate launch`` every process keeps a TrainState, but only the main process deletes
and writes files; a save holds every process's random generators (their dropout masks differ),
so a run resumes exactly with the same number of processes (``train_method`` records it in the
run, and a save of another process count is discarded).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from geep.common.errors import GeepError
from geep.common.storage import (
    atomic_directory,
    atomic_write_text,
    remove_stale_temporaries,
    safetensors_os_error,
)

RUN_FILE = "run.json"
SAVE_DIR = "latest"
PROGRESS_KEYS = {"call", "desc", "steps", "total", "done", "losses"}


def this_process() -> PartialState:
    """Which of the processes of ``accelerate launch`` (or ``torchrun``) this one is; one process
    outside them. On a machine without CUDA the processes talk over gloo."""
    return PartialState(cpu=not torch.cuda.is_available())


def state_folder(out: Path) -> Path:
    """Where the training state of checkpoint ``out`` is kept while it trains."""
    out = Path(out)
    return out.parent / f".{out.name}.resume"


class TrainState:
    """The saves of one training run (see the module docstring).

    ``run`` identifies the run; ``calls`` counts the ``train_loop`` calls made so far, so each
    call finds its own save.
    """

    def __init__(self, folder: Path, run: dict[str, Any], every_s: float) -> None:
        self.folder = Path(folder)
        self.every_s = every_s
        self.calls = 0
        self._last_save = time.monotonic()
        self._process = this_process()
        with self._process.main_process_first():  # the main process cleans up, then all read
            if self._process.is_main_process:
                remove_stale_temporaries(self.folder / SAVE_DIR)  # a save a kill left aside
                self._discard_other_runs(run)
            self._saved: dict[str, Any] | None = _read_json(
                self.folder / SAVE_DIR / "progress.json"
            )
        if self._saved is not None and self._process.is_main_process:
            print(
                f"geep: resuming from the state saved in {folder} "
                f"({self._saved['desc']}, step {self._saved['steps']} of {self._saved['total']})",
                file=sys.stderr,
            )

    def _discard_other_runs(self, run: dict[str, Any]) -> None:
        """Delete a save of a different run, or one whose progress record is incomplete, and
        record ``run`` as the folder's."""
        run_file = self.folder / RUN_FILE
        if self.folder.exists() and _read_json(run_file) != run:
            print(
                f"geep: discarding the saved state of a different run in {self.folder}",
                file=sys.stderr,
            )
            shutil.rmtree(self.folder)
        saved = _read_json(self.folder / SAVE_DIR / "progress.json")
        if saved is not None and not set(saved) >= PROGRESS_KEYS:
            print(f"geep: discarding the unreadable saved state in {self.folder}", file=sys.stderr)
            shutil.rmtree(self.folder / SAVE_DIR)
        atomic_write_text(run_file, json.dumps(run, indent=2, sort_keys=True) + "\n")

    def start_call(self) -> int:
        """Count a ``train_loop`` call starting now; returns its index."""
        self.calls += 1
        return self.calls - 1

    def saved(self, call: int) -> dict[str, Any] | None:
        """What the save holds about ``call``: None when it had not started; its progress (with
        ``call`` and ``done``, and ``losses`` of this call only) otherwise. A call before the
        saved one had ended; its weights are in the save's, restored by the saved call."""
        if self._saved is None or call > self._saved["call"]:
            return None
        losses = self._saved["losses"][call]
        if call < self._saved["call"]:
            return {"call": self._saved["call"], "done": True, "losses": losses}
        return {**self._saved, "losses": losses}

    def due(self) -> bool:
        return time.monotonic() - self._last_save >= self.every_s

    def save(
        self,
        call: int,
        progress: dict[str, Any],
        losses: list[float],
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: LRScheduler | None = None,
        epoch_generator: torch.Tensor | None = None,
    ) -> None:
        """Save the state after a step of call ``call`` (``progress``: desc, epoch, step_in_epoch,
        steps, total, done). ``optimizer`` and ``scheduler`` are left out once the call is done.
        Every process calls it at the same step; the main process writes."""
        earlier = self._saved["losses"][:call] if self._saved else []
        state: dict[str, Any] = {"rng": gather_object([_rng_state()])}  # one per process
        if optimizer is not None:
            state |= {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            state["epoch_generator"] = epoch_generator
        saved = {**progress, "call": call, "losses": [*earlier, losses]}
        if self._process.is_main_process:
            with atomic_directory(self.folder / SAVE_DIR) as tmp:
                try:
                    save_model(model, str(tmp / "model.safetensors"))
                except SafetensorError as err:
                    raise safetensors_os_error(err, self.folder) or err from None
                # through Python's own write, so a full disk is an OSError like any other
                buffer = io.BytesIO()
                torch.save(state, buffer)
                (tmp / "state.pt").write_bytes(buffer.getbuffer())
                (tmp / "progress.json").write_text(json.dumps(saved) + "\n")
        self._saved = saved
        self._last_save = time.monotonic()

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: LRScheduler | None = None,
    ) -> torch.Tensor | None:
        """Load the save into ``model`` (and ``optimizer``/``scheduler``), restore the random
        generators, and return the batch generator's state at the start of the saved epoch."""
        folder = self.folder / SAVE_DIR
        try:
            load_model(model, str(folder / "model.safetensors"), device=str(_device(model)))
            state = torch.load(folder / "state.pt", weights_only=True)
        except (OSError, RuntimeError, SafetensorError) as e:
            raise GeepError(
                f"the training state saved in {self.folder} is unreadable ({type(e).__name__}); "
                "delete that folder and run again"
            ) from None
        _set_rng_state(state["rng"][self._process.process_index])
        if optimizer is None:
            return None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return state["epoch_generator"]

    def remove(self) -> None:
        if self._process.is_main_process:
            shutil.rmtree(self.folder, ignore_errors=True)


_active: ContextVar[TrainState | None] = ContextVar("geep_train_state", default=None)


def active_state() -> TrainState | None:
    """The state ``train_loop`` saves into: None outside :func:`saving_into`."""
    return _active.get()


@contextlib.contextmanager
def saving_into(state: TrainState) -> Iterator[TrainState]:
    """Within the block, every ``train_loop`` call saves into and resumes from ``state``."""
    token = _active.set(state)
    try:
        yield state
    finally:
        _active.reset(token)


def _read_json(path: Path) -> Any:
    """``path``'s JSON object, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
