"""Sweep settings chosen on the dev split: candidates between values, even FLOPs steps, the
calibration against a real run, and independence from the test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geep.core.dynamic_exit import first_exit_layer
from geep.core.registry import get_method, method_names
from geep.core.sweeps import Calibration, dev_sweep, even_flops_speeds, gap_midpoints
from geep.pipeline.evaluate import load_split
from tests.helpers import (
    ENTROPY_NOISE,
    assert_same_where_clear,
    new_method,
    toy,
    toy_test_split,
    trained_on_toy,
)

pytestmark = pytest.mark.kernels  # per-sample decisions on floats: also run under other CPU kernels


def test_candidates_lie_between_neighbouring_values() -> None:
    values = torch.tensor([[0.3, 0.1], [0.1, 0.2], [0.200001, 0.3]], dtype=torch.float64)
    # 0.2 and 0.200001 are closer than MIN_GAP: one value, no speed between them
    assert gap_midpoints(values, ceiling=1.0) == pytest.approx([0.15, 0.2500005, 0.65])
    assert gap_midpoints(values, ceiling=0.3) == pytest.approx([0.15, 0.2500005])  # at the top


def test_even_flops_steps_take_the_slowest_speed_reaching_each_target() -> None:
    cost = {0.0: 100.0, 0.15: 80.0, 0.25: 50.0, 0.65: 20.0}
    calibration = Calibration(np.array([0.15, 0.25, 0.65]), lambda speed: cost[speed])
    # targets 100 - k * 80 / 3: 73.3 -> 0.25 (50); 46.7 -> 0.65 (20); 20 -> 0.65 again
    assert even_flops_speeds(calibration, 3) == [(0.25, 50.0), (0.65, 20.0)]
    assert even_flops_speeds(calibration, 4) == [(0.15, 80.0), (0.25, 50.0), (0.65, 20.0)]


class _Costed:
    """A threshold method whose dev FLOPs per sample at each candidate speed are given."""

    def __init__(self, cost: dict[float, float]) -> None:
        self.cost = cost

    def calibrate(self, dev) -> Calibration:
        return Calibration(np.array(sorted(self.cost)[1:]), lambda speed: self.cost[speed])

    def full_depth_flops(self, lengths: np.ndarray, convention: str) -> np.ndarray:
        return np.full(len(lengths), self.cost[0.0])


class _Dev:
    """A dev split of ``n`` samples (their lengths unused)."""

    def __init__(self, n: int) -> None:
        self.lengths = torch.ones(n)

    def __len__(self) -> int:
        return len(self.lengths)


def test_a_sweep_for_target_speedups_takes_the_slowest_speed_reaching_each() -> None:
    method = _Costed({0.0: 100.0, 0.15: 80.0, 0.25: 50.0, 0.65: 20.0})
    sweep = dev_sweep(method, _Dev(5), 3, speedups=(1.5, 2.0, 3.0, 6.0))
    # 1.5x: FLOPs <= 66.7 -> 0.25 (50, 2x); 2x: 0.25 again; 3x: <= 33.3 -> 0.65 (5x); 6x: none
    assert sweep["speeds"] == [0.25, 0.25, 0.65, None]
    assert sweep["dev_speedup_full"] == [2.0, 2.0, 5.0, None]
    assert sweep["target_speedups"] == [1.5, 2.0, 3.0, 6.0] and sweep["settings"] == 4
    assert dev_sweep(method, _Dev(5), 3)["speeds"] == [0.25, 0.65]  # even steps without targets


THRESHOLD_METHODS = [name for name in method_names() if get_method(name).calibrates]


@pytest.fixture(scope="module", params=[*THRESHOLD_METHODS, "geep-dynamic"])
def trained(request, tiny_model: Path):
    name, _, mode = request.param.partition("-")
    settings = [f"mode={mode}"] if mode else []
    method = trained_on_toy(new_method(name, tiny_model))
    method.configure(settings)
    return method


def test_calibrated_flops_are_those_of_a_real_run(trained) -> None:
    """The dev FLOPs the calibration predicts at each chosen speed are the mean FLOPs a real
    run on the dev split gives; the last speed is the fastest, the first not speed 0's cost.

    How many distinct steps there are depends on how far the toy students trained, which
    depends on the CPU's kernels (one step when every student stays near-uniform), so the
    test asks for at least one; the stepping itself is checked on hand-made values above."""
    dev = toy_test_split(trained)
    calibration = trained.calibrate(dev)
    chosen = even_flops_speeds(calibration, 4)
    assert chosen
    assert chosen[0][1] < calibration.flops_at(0.0)  # the first step already exits early
    predicted = trained.name == "geep" and trained.options.mode == "predict"
    statistics = None if predicted else trained.exit_statistics(dev)  # [N, L-1]
    for speed, flops in chosen:
        out = trained.run(dev, speed, 8)
        if statistics is None:  # GEEP's predicted exits come from integer counts: exact
            assert out.flops_full.mean() == pytest.approx(flops, rel=1e-12)
            continue
        expected = first_exit_layer(statistics, speed).numpy()
        distance = (statistics - speed).abs().min(dim=1).values
        assert_same_where_clear(out.exit_layers, expected, distance, ENTROPY_NOISE, "exit")
        if (distance > ENTROPY_NOISE).all():
            assert out.flops_full.mean() == pytest.approx(flops, rel=1e-12)
    assert trained.run(dev, chosen[-1][0], 8).exit_layers.max() == 1  # everyone at layer 1


def test_dev_sweep_ignores_the_test_split(trained, toy_dir: Path, tmp_path: Path) -> None:
    """The sweep reads the dev split only: new test labels and texts leave it unchanged, while
    other dev texts change it."""
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"{split}.tsv").write_text((toy_dir / f"{split}.tsv").read_text())

    def sweep() -> dict:  # the speeds and their dev FLOPs speedups
        return dev_sweep(trained, load_split(trained, str(folder), "dev").data, 4)

    before = sweep()
    texts, labels = toy(20, seed=9)
    rows = [f"{1 - y}\t{t}" for t, y in zip(texts, labels, strict=True)]  # other texts, labels
    (folder / "test.tsv").write_text("label\ttext_a\n" + "\n".join(rows) + "\n")
    assert sweep() == before
    (folder / "dev.tsv").write_text("label\ttext_a\n" + "\n".join(rows) + "\n")
    assert sweep() != before
