"""Trained checkpoints for the benchmarks, cached so that a re-run only re-measures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from geep.backbone import DEFAULT_MODEL
from geep.config import TrainConfig
from geep.storage import cache_root
from geep.training import train_method


def trained_checkpoint(
    method: str,
    dataset: str,
    config: TrainConfig,
    settings: tuple[str, ...] = (),
    model: str = DEFAULT_MODEL,
) -> Path:
    """The checkpoint of ``method`` trained on ``dataset`` with ``config``: trained once, then
    reused from ``$GEEP_CACHE/benchmarks/`` (keyed by everything that defines the run)."""
    recipe = {"method": method, "dataset": dataset, "model": model, "settings": list(settings)}
    recipe["train"] = config.to_dict()
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root() / "benchmarks" / f"{method}-{dataset}-{key}"
    if not (path / "config.json").is_file():
        train_method(method, dataset, path, model, config, settings)
    return path
