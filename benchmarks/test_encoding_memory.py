"""Encoding a million-sample split without holding it in memory: peak resident memory,
tokenization throughput, the cache's size on disk and the time of a cached load.

A seeded dataset of random words from the embedded tokenizer's vocabulary (4 to 120 words a
text, random labels of 5 classes) is written as Arrow files, so its texts are never all in
memory. A fresh Python process (so nothing else counts in its memory) encodes it with
:func:`geep.data.encoding.encode_split` at length 128 into an empty cache, then cuts
:data:`BATCHES` random batches of 32 from the memory-mapped token ids; a second process loads
the split from the cache (its tokenizer made to fail if called), cuts the same batches and takes
the split's sha256, as ``geep train`` does.

Peak resident memory is ``ru_maxrss``: the libraries (torch, transformers, datasets) and the
model's tokenizer, one chunk of tokenizer output, the per-sample lengths and labels, and the
pages of the memory-mapped texts and ids the process has read (the kernel drops those at will).
Above what the libraries and the tokenizer take, it must stay under :data:`BASE_MIB` +
:data:`SAMPLE_BYTES` a sample, about 1 GiB at a million samples, where three int64 tensors
[N, 128] would take 2.9 GiB.

Runs in the compare, offline and paper profiles at 1,000,000 samples, or in any profile at
``$GEEP_ENCODING_ROWS`` samples (e.g. 20000 for a fast check). The figures go to
``extra_info`` and to ``<results>/encoding-memory.json``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value, concatenate_datasets
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from geep.common.config import DEFAULT_MODEL
from geep.common.storage import atomic_write_text, check_target, json_ownership
from geep.data.encoding import encode_split
from geep.model.backbone import resolve_model_dir
from geep.report.results import ENCODING_FILE
from geep.reproduce.profiles import Profile
from geep.reproduce.units import device_name, git_commit

ROWS = 1_000_000
PROFILES = ("compare", "offline", "paper")  # the profiles that run it at ROWS samples
SEQ_LEN = 128
BATCHES, BATCH_SIZE = 4000, 32
WORDS = (4, 120)  # fewest and most words of a text

BASE_MIB, SAMPLE_BYTES = 256, 768
"""The bound on either process's peak resident memory above that of its libraries and tokenizer:
256 MiB (a chunk of tokenizer output, the cache's writes) + 768 bytes a sample (the texts' and
ids' mapped pages, about 480 + 270 at a million samples, and the lengths and labels). That is
988 MiB at a million samples, where three int64 tensors [N, 128] would take 2,930 MiB."""


def vocabulary_words(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """The whole lowercase words of the vocabulary (no ## pieces, no special tokens)."""
    return np.array(sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.islower()))


def write_dataset(folder: Path, rows: int, words: np.ndarray) -> list[str]:
    """``rows`` seeded random texts and labels as Arrow files in ``folder``; their paths."""

    def samples():
        rng = np.random.default_rng(0)
        for start in range(0, rows, 10_000):
            block = min(10_000, rows - start)
            counts = rng.integers(WORDS[0], WORDS[1] + 1, block)
            labels = rng.integers(0, 5, block)
            for count, label in zip(counts, labels, strict=True):
                yield {"text": " ".join(words[rng.integers(0, len(words), count)]), "label": label}

    features = Features({"text": Value("string"), "label": ClassLabel(num_classes=5)})
    split = Dataset.from_generator(samples, features=features, cache_dir=str(folder))
    return [file["filename"] for file in split.cache_files]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def mapped_rss_mib() -> float:
    """Resident pages of mapped files (the texts' Arrow file, the token ids, the libraries)."""
    status = Path("/proc/self/status").read_text().splitlines()
    [line] = [x for x in status if x.startswith("RssFile:")]
    return int(line.split()[1]) / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(mode: str, model_dir: str, *arrows: str) -> dict[str, float]:
    """In a fresh process: encode (``mode`` "encode") or load from the cache ("load") the split
    in the Arrow files ``arrows``, then cut the random batches; times and peak memory."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    split = concatenate_datasets([Dataset.from_file(arrow) for arrow in arrows])  # memory-mapped
    if mode == "load":

        def tokenizing(*args, **kwargs):
            raise AssertionError("the cached load called the tokenizer")

        type(tokenizer).__call__ = tokenizing
    figures = {"rss_before_mib": peak_rss_mib()}
    start, cpu = time.perf_counter(), cpu_seconds()
    encoded = encode_split(tokenizer, split, SEQ_LEN)
    figures["seconds"] = time.perf_counter() - start
    figures["cpu_per_wall"] = (cpu_seconds() - cpu) / figures["seconds"]
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(BATCHES):
        encoded.batch(torch.randint(len(encoded), (BATCH_SIZE,), generator=generator))
    figures["batches_per_s"] = BATCHES / (time.perf_counter() - start)
    if mode == "load":
        start = time.perf_counter()
        encoded.sha256()
        figures["sha256_seconds"] = time.perf_counter() - start
    figures["peak_rss_mib"] = peak_rss_mib()
    figures["mapped_rss_mib"] = mapped_rss_mib()
    return figures


def rows_for(profile: Profile) -> int | None:
    """Samples to encode: ``$GEEP_ENCODING_ROWS``, else :data:`ROWS` in :data:`PROFILES`."""
    if "GEEP_ENCODING_ROWS" in os.environ:
        return int(os.environ["GEEP_ENCODING_ROWS"])
    return ROWS if profile.name in PROFILES else None


def test_encoding_memory(benchmark, profile: Profile, results_dir: Path, tmp_path: Path) -> None:
    rows = rows_for(profile)
    if rows is None:
        pytest.skip(f"the {profile.name} profile does not encode a large split")
    model_dir = resolve_model_dir(DEFAULT_MODEL)
    arrows = write_dataset(
        tmp_path / "data", rows, vocabulary_words(AutoTokenizer.from_pretrained(model_dir))
    )
    env = {**os.environ, "GEEP_CACHE": str(tmp_path / "cache")}

    def child(mode: str) -> dict[str, float]:
        done = subprocess.run(
            [sys.executable, __file__, mode, model_dir, *arrows],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.splitlines()[-1])

    encoded = benchmark.pedantic(child, args=("encode",), rounds=1, iterations=1)
    cached = child("load")
    [entry] = [p for p in (tmp_path / "cache" / "encoded").iterdir() if p.is_dir()]  # no lock
    cache_bytes = sum(f.stat().st_size for f in entry.iterdir())
    bound = BASE_MIB + rows * SAMPLE_BYTES / 2**20
    info = {
        "rows": rows,
        "seq_len": SEQ_LEN,
        "profile": profile.name,
        "text_mib": round(sum(Path(a).stat().st_size for a in arrows) / 2**20, 1),
        "int64_tensors_mib": round(3 * rows * SEQ_LEN * 8 / 2**20, 1),
        "cache_mib": round(cache_bytes / 2**20, 1),
        "encode_seconds": round(encoded["seconds"], 1),
        "encode_rows_per_s": round(rows / encoded["seconds"]),
        "encode_cpu_per_wall": round(encoded["cpu_per_wall"], 2),
        "encode_peak_rss_mib": round(encoded["peak_rss_mib"]),
        "encode_mapped_rss_mib": round(encoded["mapped_rss_mib"]),
        "libraries_rss_mib": round(encoded["rss_before_mib"]),
        "cached_load_seconds": round(cached["seconds"], 2),
        "cached_peak_rss_mib": round(cached["peak_rss_mib"]),
        "cached_mapped_rss_mib": round(cached["mapped_rss_mib"]),
        "cached_libraries_rss_mib": round(cached["rss_before_mib"]),
        "batches_per_s": round(cached["batches_per_s"]),
        "sha256_seconds": round(cached["sha256_seconds"], 2),
        "bound_above_libraries_mib": round(bound),
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),  # other work shares the cores
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
        "device": device_name(torch.device("cpu")),
        "git_commit": git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    benchmark.extra_info.update(info)
    path = results_dir / ENCODING_FILE
    check_target(path, "the encoding benchmark's file", "file", json_ownership("encode_rows_per_s"))
    atomic_write_text(path, json.dumps(info, indent=1) + "\n")
    for figures in (encoded, cached):
        assert figures["peak_rss_mib"] - figures["rss_before_mib"] < bound, info


if __name__ == "__main__":
    print(json.dumps(measure(*sys.argv[1:])))
