"""A trial of ``torch.compile`` on full-depth ``bert``: eager and compiled (inductor, dynamic
shapes) forwards over the same batches, in interleaved rounds, medians (docs/gpu.md).

Not collected by pytest (no ``test_`` prefix). From the repository root, with a trained ``bert``
checkpoint (e.g. one the quick profile cached)::

    python benchmarks/compile_trial.py --checkpoint ~/.cache/geep/checkpoints/bert-...

It prints the first compiled pass (the compile time), each way's median pass over the first
``--samples`` test samples in batches of ``--batch-size``, the ratio, and the share of labels
the two agree on. Float32 on the device the checkpoint loads to (the GPU when there is one).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from geep.pipeline.evaluate import load_split, prepare_checkpoint


def timed_pass(forward: Callable, batches: list[tuple[torch.Tensor, ...]]) -> tuple[float, list]:
    """Seconds for one pass over ``batches`` (synchronised on a GPU) and its logits."""
    start = time.perf_counter()
    with torch.no_grad():
        logits = [forward(*inputs) for inputs in batches]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained bert checkpoint")
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    method = prepare_checkpoint(args.checkpoint)
    method.model.eval()
    data = load_split(method, args.dataset, "test", args.samples).data
    batches = [
        tuple(t.to(method.device) for t in data.batch(index).inputs().values())
        for index in torch.arange(len(data)).split(args.batch_size)
    ]
    eager = method.model.forward_logits
    compiled = torch.compile(eager, dynamic=True)
    first, _ = timed_pass(compiled, batches)
    print(f"first compiled pass (compiling included): {first:.1f} s")
    timed_pass(eager, batches)  # warm-up
    seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
    labels = {}
    for _ in range(args.rounds):
        for name, forward in (("eager", eager), ("compiled", compiled)):
            took, logits = timed_pass(forward, batches)
            seconds[name].append(took)
            labels[name] = torch.cat(logits).argmax(-1)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    agree = float((labels["eager"] == labels["compiled"]).float().mean())
    print(
        ", ".join(f"{n} {m * 1e3:.0f} ms" for n, m in median.items())
        + f" per pass of {len(data)} samples (medians of {args.rounds}); compiled runs "
        f"{median['eager'] / median['compiled']:.2f}x eager's speed; labels agree {agree:.3f}"
    )
    print("rounds, ms:", {n: [round(t * 1e3) for t in times] for n, times in seconds.items()})


if __name__ == "__main__":
    main()
