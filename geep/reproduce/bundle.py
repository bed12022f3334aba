"""The GPU bundle: an encoder and a dataset's encoded splits in one folder that an offline GPU
machine, which receives only the checkout (docs/gpu.md), trains every method from.

``python -m geep.reproduce.bundle --out gpu-bundle`` writes (:func:`build_bundle`):

- ``model/``: the profile's encoder for the dataset (the embedded ``minilm-l6`` for ``compare``)
  with its config, tokenizer and sentence-transformers pooling file, its weights in float16 in
  ``weights-float16.safetensors``. Of the word embeddings only the rows of the tokens the splits
  hold (and the special tokens) are kept: for ``compare``'s rotten-tomatoes, 10,557 of MiniLM's
  30,522; the others, a third of its size, no sample looks up. The device machine takes 64 MiB
  with the checkout (about 18 MB of it): 45 MB of float16 weights would not fit beside it, the
  bundle's 31.6 MB do.
- ``data/<split>.safetensors``: the train, dev and test splits as ``geep train`` and
  ``geep evaluate`` encode them at the profile's recipe (``compare``: 2000 training samples, the
  first 1275 dev and test samples, length 64), as plain tensors (:class:`Encoded`'s arrays), so
  reading them needs no ``datasets``.
- ``manifest.json``: what is in it, each file's SHA-256, the recipe of every method, the labels,
  the commit.

:func:`load_bundle` checks every file against the manifest and writes the float32 model folder
that :meth:`Method.create` loads (the float16 weights upcast, the rows no sample uses zero);
:func:`train_all` trains every method on it; :func:`layer_shares` and
:func:`mapped_exit_layers` carry a trained method's exits over to a deeper synthetic model (the
GPU check's, geep.reproduce.gpu_check).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from geep.common.config import TrainConfig
from geep.common.errors import GeepError
from geep.common.schema import Check, document, first_problem, listing, text, whole
from geep.common.storage import (
    atomic_directory,
    cache_root,
    check_target,
    describe_os_error,
    exclusive,
    file_sha256,
)
from geep.core.interface import Method
from geep.core.registry import get_method, method_names, reference_name
from geep.data.encoding import Encoded, encode_split
from geep.model.backbone import resolve_model_dir
from geep.reproduce.profiles import get_profile

FORMAT = 1
"""The bundle's layout version, in its manifest: a reader refuses any other."""

MANIFEST = "manifest.json"
WEIGHTS = "model/weights-float16.safetensors"
ROWS = "word_embedding_rows"  # the weights file's tensor of the word-embedding rows kept
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "1_Pooling/config.json",  # sentence-transformers' pooling (geep.model.backbone.model_pooling)
)
"""The model folder's files a bundle copies, those of them that are there (config.json must be)."""
SPLITS = ("train", "dev", "test")
ARRAYS = ("token_ids", "lengths", "second_start", "labels")  # an Encoded split's tensors
DEVICE_LIMIT = 64 * 2**20
"""What the GPU machine receives: the checkout and the carried paths, 64 MiB together."""


def _mapping_of(check: Check) -> Check:
    """A JSON object whose every value passes ``check``."""
    return Check(
        lambda v: isinstance(v, dict) and all(first_problem(x, check) is None for x in v.values()),
        f"an object of which every value is {check.want}",
    )


MANIFEST_SCHEMA = document(
    {
        "format": whole(1),
        "dataset": text(),
        "profile": text(),
        "model": text(),
        "task": text(),
        "labels": listing(text(), at_least=2),
        "train": _mapping_of(document({"seed": whole(), "seq_len": whole(8)})),
        "files": _mapping_of(text()),
        "word_embedding_rows": document({"kept": whole(1), "of": whole(1)}),
        "bytes": whole(),
    }
)


@dataclass
class Bundle:
    """A checked bundle: its manifest, the float32 model folder :meth:`Method.create` takes, and
    the encoded splits."""

    folder: Path
    manifest: dict[str, Any]
    model: Path
    train: Encoded
    dev: Encoded
    test: Encoded

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]

    def recipe(self, method: str) -> TrainConfig:
        """``method``'s training recipe under the bundle's profile (the reference's for a method
        registered after the bundle was built)."""
        recipes = self.manifest["train"]
        return TrainConfig.from_dict(recipes.get(method, recipes[reference_name()]))


# --- building -------------------------------------------------------------------------------------


def build_bundle(
    out: Path,
    dataset: str = "rotten-tomatoes",
    profile: str = "compare",
    model: str | None = None,
    limit: int | None = None,
) -> Path:
    """Write the bundle of ``dataset`` at ``profile``'s recipe to ``out`` (module docstring),
    with ``model`` (default: the profile's encoder for the dataset). GeepError, and nothing
    written, when it would take more than ``limit`` bytes (default: what the GPU machine takes
    beside the checkout, :func:`travel_budget`). Returns ``out``, absolute."""
    from geep.model.train_state import this_process
    from geep.pipeline.evaluate import load_split
    from geep.pipeline.train import task_and_labels, training_data
    from geep.reproduce.units import git_commit

    chosen = get_profile(profile)
    model = model or chosen.model_for(dataset)
    out = check_target(out, "--out", "folder", bundle_ownership)
    limit = travel_budget(out) if limit is None else limit
    source = Path(resolve_model_dir(model))
    if not (source / "model.safetensors").is_file():
        raise GeepError(f"model {model} has no model.safetensors in {source}: a bundle needs one")
    recipes = {n: chosen.train_config(n, dataset, chosen.seeds[0]) for n in method_names()}
    config = recipes[reference_name()]
    _, rows = training_data(dataset, config, this_process())  # as `geep train` picks them
    task, labels = task_and_labels(rows)
    reference = get_method(reference_name()).create(model, labels, dataset, config, task=task)
    splits = {"train": encode_split(reference.tokenizer, rows, config.seq_len)}
    for split in SPLITS[1:]:  # as `geep evaluate` and the profile's units read them
        splits[split] = load_split(reference, dataset, split, chosen.max_eval).data
    with atomic_directory(out) as tmp:
        kept = _write_model(source, tmp, splits, reference.tokenizer.all_special_ids)
        for split, data in splits.items():
            _write_split(tmp / "data" / f"{split}.safetensors", data)
        files = {
            f.relative_to(tmp).as_posix(): file_sha256(f)
            for f in sorted(tmp.rglob("*"))
            if f.is_file()
        }
        manifest = {
            "format": FORMAT,
            "dataset": dataset,
            "profile": chosen.name,
            "model": model,
            "task": task,
            "labels": list(labels),
            "train": {n: c.to_dict() for n, c in recipes.items()},
            "max_eval": chosen.max_eval,
            "samples": {split: len(data) for split, data in splits.items()},
            "data_sha256": {split: data.sha256() for split, data in splits.items()},
            "word_embedding_rows": kept,
            "git_commit": git_commit(),
            "files": files,
            "bytes": sum((tmp / f).stat().st_size for f in files),  # the manifest's own aside
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        size = bundle_bytes(tmp)
        if size > limit:
            raise GeepError(
                f"the bundle would take {size / 1e6:.2f} MB, over the {limit / 1e6:.2f} MB left "
                f"of the GPU machine's {DEVICE_LIMIT / 2**20:.0f} MiB beside the checkout"
            )
    return out


def bundle_bytes(folder: Path) -> int:
    """The size of the files in ``folder``, what travels to the GPU machine."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _write_model(
    source: Path, into: Path, splits: dict[str, Encoded], special: Sequence[int]
) -> dict[str, int]:
    """The model folder's files and its weights in float16, with only the word-embedding rows
    that ``splits`` or the ``special`` tokens use; returns how many rows were kept, of how many."""
    folder = into / "model"
    for name in MODEL_FILES:
        if (source / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, folder / name)
    if not (folder / "config.json").is_file():
        raise GeepError(f"model folder {source} has no config.json")
    weights = load_file(source / "model.safetensors")
    key = _word_embeddings(weights)
    used = [np.unique(np.asarray(data.token_ids)) for data in splits.values()]
    rows = torch.from_numpy(np.union1d(np.concatenate(used), np.asarray(special, dtype=np.int64)))
    rows = rows.long()
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    half[key] = half[key][rows].contiguous()
    half[ROWS] = rows
    save_file(half, into / WEIGHTS, metadata={"word_embeddings": key})
    return {"kept": len(rows), "of": len(weights[key])}


def _word_embeddings(weights: dict[str, torch.Tensor]) -> str:
    """The key of the word-embedding matrix among a BERT encoder's weights."""
    keys = [k for k in weights if k.endswith("word_embeddings.weight")]
    if len(keys) != 1:
        raise GeepError(f"no single word-embedding matrix among the weights (found {keys})")
    return keys[0]


def _write_split(path: Path, data: Encoded) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "token_ids": torch.from_numpy(np.array(data.token_ids)),  # a copy: the cache's is read-only
        "lengths": data.lengths,
        "second_start": data.second_start,
        "labels": data.labels,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def travel_budget(out: Path | None = None) -> int:
    """The bytes left for a bundle of the GPU machine's :data:`DEVICE_LIMIT`: the limit less
    the checkout's files that travel with it (tracked, and untracked ones git does not ignore;
    those under ``out`` are the bundle's own). The whole limit outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return DEVICE_LIMIT
    inside = None if out is None else Path(out).resolve()
    total = 0
    for name in filter(None, listed.decode().split("\0")):
        path = root / name
        if path.is_file() and (inside is None or not path.resolve().is_relative_to(inside)):
            total += path.stat().st_size
    return DEVICE_LIMIT - total


def bundle_ownership(path: Path) -> str | None:
    """Why the folder ``path`` is not a bundle :func:`build_bundle` wrote (so replacing it could
    destroy someone's files); None when it is one: its manifest lists every file in it."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(listed, dict):
        return f"no {MANIFEST} of a GPU bundle"
    for f in sorted(path.rglob("*")):
        name = f.relative_to(path).as_posix()
        if f.is_file() and name != MANIFEST and name not in listed:
            return f"it holds {name}"
    return None


# --- loading --------------------------------------------------------------------------------------


def load_bundle(folder: Path, model_dir: Path | None = None) -> Bundle:
    """The bundle in ``folder``, every file checked against its manifest (GeepError naming the
    first one missing or damaged), with its float32 model folder written to ``model_dir``
    (default: ``$GEEP_CACHE/bundle-models/<digest of the model's files>``, written once)."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    rebuild = f"build it again with `python -m geep.reproduce.bundle --out {folder}`"
    for name, digest in sorted(manifest["files"].items()):
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise GeepError(f"bundle {folder}: {MANIFEST} lists {name!r}, not a file in it")
        if not path.is_file():
            raise GeepError(f"bundle {folder}: {name} is missing; {rebuild}")
        if file_sha256(path) != digest:
            raise GeepError(
                f"bundle {folder}: {name} is damaged (its SHA-256 differs from {MANIFEST}'s); "
                f"{rebuild}"
            )
    splits = {}
    for split in SPLITS:
        name = f"data/{split}.safetensors"
        if name not in manifest["files"]:
            raise GeepError(f"bundle {folder}: {MANIFEST} lists no {name}; {rebuild}")
        tensors = load_file(folder / name)
        splits[split] = Encoded(tensors["token_ids"].numpy(), *(tensors[a] for a in ARRAYS[1:]))
    model_files = {k: v for k, v in manifest["files"].items() if k.startswith("model/")}
    key = hashlib.sha256(json.dumps(model_files, sort_keys=True).encode()).hexdigest()[:16]
    model = model_dir or cache_root() / "bundle-models" / key
    _float32_model(folder, manifest, Path(model))
    return Bundle(folder, manifest, Path(model), **splits)


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    build = f"build one with `python -m geep.reproduce.bundle --out {folder}`"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise GeepError(f"{folder} is not a GPU bundle (no {MANIFEST}): {build}") from None
    except (OSError, ValueError) as err:
        raise GeepError(f"{path} cannot be read ({err}): {build}") from None
    if problem := first_problem(manifest, MANIFEST_SCHEMA):
        raise GeepError(f"{path} is damaged: {problem}; {build}")
    if manifest["format"] != FORMAT:
        raise GeepError(
            f"{path} is format {manifest['format']}, this suite reads {FORMAT}: {build}"
        )
    if WEIGHTS not in manifest["files"] or reference_name() not in manifest["train"]:
        raise GeepError(f"{path} lists no {WEIGHTS} or no {reference_name()} recipe: {build}")
    return manifest


def _float32_model(folder: Path, manifest: dict[str, Any], model: Path) -> None:
    """Write to ``model`` (unless it is there) the bundle's model folder with its weights in
    float32: the float16 values upcast, the word-embedding rows no split uses zero."""
    with exclusive(model.with_name(f".{model.name}.lock")):
        if (model / "config.json").is_file():
            return
        with atomic_directory(model) as tmp:
            for name in manifest["files"]:
                if name.startswith("model/") and name != WEIGHTS:
                    (tmp / name[6:]).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(folder / name, tmp / name[6:])
            weights = load_file(folder / WEIGHTS)
            key = _word_embeddings(weights)
            rows = weights.pop(ROWS)
            full = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
            matrix = torch.zeros(manifest["word_embedding_rows"]["of"], full[key].shape[1])
            matrix[rows] = full[key]
            full[key] = matrix
            save_file(full, tmp / "model.safetensors", metadata={"format": "pt"})


# --- training and exits ---------------------------------------------------------------------------


def train_all(
    bundle: Bundle, device: torch.device | str, methods: Sequence[str] | None = None
) -> dict[str, Method]:
    """Every method (``methods``, default every registered one) created on the bundle's model
    and trained on its train split at its recipe on ``device``, as ``geep train`` trains it
    (seeded before its heads are built; :func:`geep.pipeline.train.fit_method`, which keeps
    GEEP's and HashEE's statistics as their fit does). A method whose first stage is another's
    training (``starts_from``: DeeBERT's is ``bert``'s) starts from that one when it was trained
    before it in the list, as a profile's units do."""
    from accelerate.utils import set_seed

    from geep.pipeline.train import fit_method

    names = list(methods) if methods is not None else method_names()
    classes = [get_method(name) for name in names]  # an unknown name fails before any training
    trained: dict[str, Method] = {}
    for name, cls in zip(names, classes, strict=True):
        config = bundle.recipe(name)
        set_seed(config.seed)
        method = cls.create(
            str(bundle.model),
            bundle.labels,
            bundle.manifest["dataset"],
            config,
            task=bundle.manifest["task"],
        ).to(device)
        first_stage = trained.get(cls.starts_from) if cls.starts_from else None
        trained[name] = fit_method(method, bundle.train, first_stage)
    return trained


def layer_shares(exit_layers: np.ndarray, layers: int) -> torch.Tensor:
    """The share of samples exiting at each layer 1..``layers`` [layers] (float64) from their
    exit layers [N] (:func:`_spread`: a fractional one, HashEE's per-token mean, is split between
    the layers either side of it, so the mean exit is kept)."""
    exits = torch.as_tensor(np.asarray(exit_layers, dtype=np.float64))
    return _spread(exits, torch.full_like(exits, 1 / len(exits)), layers)


def _spread(depths: torch.Tensor, weights: torch.Tensor, layers: int) -> torch.Tensor:
    """Each of ``depths`` [N] (layers, in [1, layers] after clamping) with its ``weights`` [N]
    put on the layers either side of it, in proportion to its nearness to each: shares
    [layers] whose mean layer is the weighted mean depth."""
    depths = depths.clamp(1, layers)
    low = depths.floor().long().clamp(max=layers - 1)  # [N]: the layer at or below
    up = depths - low  # [N] in [0, 1]: the part carried to the layer above
    shares = torch.zeros(layers + 1, dtype=torch.float64)
    shares.index_add_(0, low, weights * (1 - up)).index_add_(0, low + 1, weights * up)
    return shares[1:]


def mapped_exit_layers(shares: torch.Tensor, layers: int, n: int, seed: int = 0) -> torch.Tensor:
    """Exit layers [n] in 1..``layers`` for a synthetic model of ``layers`` layers whose exits
    follow ``shares`` [L] of an L-layer model (:func:`layer_shares`), in random order.

    The rule: a sample that exits after layer k of L ran k/L of the encoder, so on the deeper
    model it exits at the same depth, layer k * layers / L; where that is not whole its share is
    split between the two layers either side, in proportion (6 -> 12: layer k -> layer 2k). The
    mean depth fraction (mean exit layer / layers) is therefore the model's; the ``n`` layers
    are then read off that distribution at evenly spaced quantiles, which keeps it within
    0.5 / n. A depth below 1 (only onto fewer layers) is layer 1.
    """
    source = len(shares)
    depth = torch.arange(1, source + 1, dtype=torch.float64) * layers / source  # [L]
    target = _spread(depth, shares.double() / shares.sum(), layers)  # [layers]
    cumulative = torch.cumsum(target, 0)  # [layers]
    quantiles = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # [n]
    exits = torch.searchsorted(cumulative, quantiles).clamp(max=layers - 1) + 1
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return exits[order]


# --- the command ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geep.reproduce.bundle",
        description="Write the GPU bundle: the encoder in float16 and a dataset's encoded splits "
        "at a profile's recipe, for an offline GPU machine to train every method from "
        "(docs/gpu.md).",
        epilog="example:\n  python -m geep.reproduce.bundle --out gpu-bundle",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="the bundle's folder")
    parser.add_argument("--dataset", default="rotten-tomatoes", help="default rotten-tomatoes")
    parser.add_argument("--profile", default="compare", help="its recipe; default compare")
    parser.add_argument("--model", help="the encoder (default: the profile's for the dataset)")
    args = parser.parse_args(argv)
    try:
        out = build_bundle(args.out, args.dataset, args.profile, args.model)
    except GeepError as err:
        print(f"geep: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a disk that fills up, a folder that vanishes
        print(f"geep: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    manifest = json.loads((out / MANIFEST).read_text())
    rows, samples = manifest["word_embedding_rows"], manifest["samples"]
    budget, size = travel_budget(out), bundle_bytes(out)
    print(
        f"wrote {args.out}: {size / 1e6:.1f} MB ({manifest['model']} in float16, "
        f"{rows['kept']:,} of {rows['of']:,} word-embedding rows; {manifest['dataset']} "
        + "/".join(str(samples[s]) for s in SPLITS)
        + f" train/dev/test samples at {manifest['profile']}'s recipe); with the checkout, "
        f"{(DEVICE_LIMIT - budget + size) / 2**20:.1f} of the GPU machine's "
        f"{DEVICE_LIMIT / 2**20:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
