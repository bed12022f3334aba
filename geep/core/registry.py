"""The registry of methods by name, and rebuilding a registered method from its checkpoint."""

from __future__ import annotations

import functools
import importlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import load_file, load_model

from geep.common.config import TrainConfig
from geep.common.errors import GeepError
from geep.common.schema import first_problem
from geep.core.checkpoint import (
    CHECKPOINT_FAULTS,
    CHECKPOINT_SCHEMA,
    EXTRAS_FILE,
    INFO_FILE,
    WEIGHTS_FILE,
    CheckpointInfo,
    backbone_problem,
    checksum_problem,
)
from geep.model.backbone import Backbone

if TYPE_CHECKING:
    from geep.core.interface import Method


METHODS: dict[str, type[Method]] = {}


METHOD_MODULES = (
    "geep.baselines.bert",
    "geep.methods.geep",
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


def method_of(entry: str) -> type[Method] | None:
    """The registered method ``entry`` names in a results folder: the method itself, or the
    one a profile's ablation of it runs (ablations are named ``<method>-...``,
    :class:`geep.reproduce.profiles.Ablation`; the longest such name wins); None when no
    installed method is either."""
    names = method_names()
    if entry in METHODS:
        return METHODS[entry]
    stems = [name for name in names if entry.startswith(f"{name}-")]
    return METHODS[max(stems, key=len)] if stems else None


def reference_name() -> str:
    """The registered full-depth reference every other method is measured against
    (``reference = True``; the first in :func:`method_names`' order if several are)."""
    return next(name for name in method_names() if METHODS[name].reference)


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


def load_checkpoint(path: str | Path) -> Method:
    """Rebuild a method from a checkpoint folder (safetensors + JSON; nothing is unpickled)."""
    from transformers import AutoConfig, AutoTokenizer  # here: `geep methods` stays fast

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
    if problem := backbone_problem(raw["backbone"]):
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
