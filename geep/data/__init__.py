"""Datasets: the registry of specs and the loader that turns any source into train/dev/test.

The loader (geep.data.sources, which imports the ``datasets`` library) is imported when it is
first used, so reading the registry or a pinned archive stays light.
"""

from typing import Any

from geep.data.registry import OFFLINE_TIER, REGISTRY, DatasetSpec, get_spec

__all__ = ["OFFLINE_TIER", "REGISTRY", "DatasetSpec", "get_spec", "load_dataset"]


def __getattr__(name: str) -> Any:
    if name == "load_dataset":
        from geep.data.sources import load_dataset

        return load_dataset
    raise AttributeError(f"module 'geep.data' has no attribute {name!r}")
