"""The checkpoint format: what a saved method holds, and the checks a folder passes before it
loads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from safetensors.torch import save_file, save_model

import geep
from geep.common.schema import choice, document, listing, maybe, number, text, whole
from geep.common.storage import atomic_directory, file_sha256, safetensors_os_error

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase


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
    train_samples: int | None = None  # how many training samples it was trained on
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
        "train_samples": maybe(whole(1)),
        "geep_version": maybe(text()),
        "files": maybe(listing(text())),
        "sha256": maybe(document({})),
    }
)
"""What a checkpoint's config.json must hold (:class:`CheckpointInfo`; geep.common.schema)."""


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    info: CheckpointInfo,
    extras: dict[str, torch.Tensor],
) -> Path:
    """Write a checkpoint atomically: a reader never sees a half-written folder, and a failed
    write (a full disk) leaves the previous one as it was. Its config.json, written last, lists
    every file and their SHA-256, so a later save knows the folder is a checkpoint it may
    replace (:func:`checkpoint_ownership`) and a load knows the files are the ones saved."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        try:
            save_model(model, str(tmp / WEIGHTS_FILE))
            if extras:
                tensors = {k: v.contiguous().cpu() for k, v in extras.items()}
                save_file(tensors, tmp / EXTRAS_FILE)
        except SafetensorError as err:
            raise safetensors_os_error(err, path) or err from None
        tokenizer.save_pretrained(tmp)
        files = sorted(f.relative_to(tmp).as_posix() for f in tmp.rglob("*") if f.is_file())
        info.files = sorted([*files, INFO_FILE])
        info.sha256 = {name: file_sha256(tmp / name) for name in files}
        (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return path


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
    it (geep.common.storage.check_target)."""
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


def backbone_problem(backbone: dict[str, Any]) -> str | None:
    """The first field of a stored encoder config whose JSON type is not that of its default in
    transformers' config of the same model type (fields whose default is null may hold any);
    None when every field has its type."""
    try:
        from transformers import AutoConfig

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
