"""Datasets: the registry of specs and the loader that turns any source into train/dev/test."""

from geep.data.registry import OFFLINE_TIER, REGISTRY, DatasetSpec, get_spec
from geep.data.sources import load_dataset

__all__ = ["OFFLINE_TIER", "REGISTRY", "DatasetSpec", "get_spec", "load_dataset"]
