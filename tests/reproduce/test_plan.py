"""`geep plan`: a profile's FLOPs and device-hours before it runs, offline, nothing loaded."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from geep.cli import main
from geep.common.errors import GeepError
from geep.core.registry import get_method, method_names
from geep.data.registry import OFFLINE_TIER, get_spec
from geep.reproduce import plan as planning
from geep.reproduce.plan import measured_cpu_rate, plan, split_sizes
from geep.reproduce.profiles import LEARNING_CURVE, PAPER, PROFILES, curve_pieces
from tests.helpers import EXPECTED_DATASETS, assert_one_error_line

SMOKE = PROFILES["smoke"]


def minilm_forward(n: int) -> int:
    """6 layers of hidden 384, FFN 1536 on n tokens, by hand: Q, K, V, output projections,
    the FFN's two matmuls, attention scores and context."""
    h, f = 384, 1536
    return 6 * (2 * n * (4 * h * h + 2 * h * f) + 2 * 2 * n * n * h)


def row(cost, dataset: str, method: str):
    (found,) = [r for r in cost.rows if (r.dataset, r.method) == (dataset, method)]
    return found


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any network connection, dataset load or model load."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("geep plan must not fetch or load anything")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr("geep.data.sources.load_dataset", refuse)
    monkeypatch.setattr("geep.data.load_dataset", refuse)
    monkeypatch.setattr("geep.core.interface.load_pretrained", refuse)


def test_bert_costs_match_a_hand_computation(offline: None) -> None:
    cost = row(plan(SMOKE), "rotten-tomatoes", "bert")
    forward = minilm_forward(32)  # the smoke profile's seq_len
    assert (cost.train_samples, cost.dev_samples, cost.test_samples) == (200, 128, 128)
    assert cost.train_flops == 200 * 1 * 3 * forward  # samples x epochs x (forward + backward)
    # one setting: 1 round of 128 test samples + warm-up and operator batches of 32; dev once
    assert cost.eval_flops == (128 + 2 * 32 + 128) * forward
    hours = plan(SMOKE, "a100").hours(cost.train_flops)
    assert hours == pytest.approx(cost.train_flops / (0.6 * 19.5e12) / 3600)  # A100, float32


def test_pass_counts_per_method() -> None:
    passes = {r.method: r.passes for r in plan(SMOKE).rows}
    assert passes["bert"] == passes["pabee"] == passes["hashee"] == 1.0
    assert passes["fastbert"] == pytest.approx(4 / 3)  # + self-distillation, backbone frozen
    assert passes["deebert"] == pytest.approx(1 / 3)  # its first stage is bert's checkpoint
    # GEEP on 6 layers: fine-tuning, layer L on the 4 shorter prefixes, the exit statistics
    assert passes["geep"] == pytest.approx(1 + 4 / 6 + 5 / 18)
    geep = get_method("geep")
    assert geep.training_passes(12, geep.options_class()) == pytest.approx(1 + 10 / 12 + 11 / 36)
    two_step = geep.options_class().with_settings(["training=two-step", "teacher_inputs=last"])
    assert geep.training_passes(12, two_step) == pytest.approx(4 / 3 + 11 / 36)


def test_deebert_alone_pays_for_its_first_stage() -> None:
    with_bert = row(plan(SMOKE), "rotten-tomatoes", "deebert")
    alone = row(plan(replace(SMOKE, methods=("deebert",))), "rotten-tomatoes", "deebert")
    assert alone.passes == pytest.approx(4 / 3)
    assert alone.train_flops == pytest.approx(4 * with_bert.train_flops, rel=1e-9)
    assert alone.eval_flops == with_bert.eval_flops


def test_seeds_multiply_every_figure() -> None:
    one, two = plan(SMOKE), plan(replace(SMOKE, seeds=(1, 2)))
    assert two.seeds == 2 and len(two.rows) == len(one.rows) == len(method_names())
    for a, b in zip(one.rows, two.rows, strict=True):
        assert (b.train_samples, b.settings, b.passes) == (a.train_samples, a.settings, a.passes)
        assert b.train_flops == pytest.approx(2 * a.train_flops, rel=1e-12)
        assert b.eval_flops == 2 * a.eval_flops
    assert two.train_flops + two.eval_flops == pytest.approx(
        2 * (one.train_flops + one.eval_flops), rel=1e-12
    )


def test_split_sizes_carve_dev_and_cap() -> None:
    paper = PROFILES["paper"]
    assert split_sizes(paper, "ag-news", "bert") == (108_000, 12_000, 7_600)  # 10% of train
    assert split_sizes(paper, "chnsenticorp", "bert") == (9_600, 1_200, 1_200)
    assert split_sizes(paper, "weibo", "bert") is None
    capped = replace(paper, max_eval=1000, train=replace(paper.train, max_train=5000))
    assert split_sizes(capped, "ag-news", "bert") == (5000, 1000, 1000)


def test_registry_sizes() -> None:
    for name in OFFLINE_TIER:  # the prepared splits tests/data/test_offline_datasets.py checks
        assert get_spec(name).sizes == EXPECTED_DATASETS[name].sizes, name
    unknown = [name for name in PAPER if get_spec(name).sizes is None]
    assert unknown == ["shopping-review", "weibo"]


def test_unknown_sizes_are_flagged_and_left_out_of_the_total() -> None:
    cost = plan(PROFILES["paper"])
    assert cost.unknown == ["shopping-review", "weibo"]
    flagged = [r for r in cost.rows if r.dataset in cost.unknown]
    assert len(flagged) == 12 and all(r.train_flops is r.eval_flops is None for r in flagged)
    known = [r for r in cost.rows if r.dataset not in cost.unknown]
    assert cost.train_flops == sum(r.train_flops for r in known) > 0
    assert cost.eval_flops == sum(r.eval_flops for r in known) > 0
    nothing = plan(replace(PROFILES["paper"], datasets=("weibo",)))
    assert nothing.train_flops == nothing.eval_flops == 0 and nothing.unknown == ["weibo"]


def test_paper_plan_prints_every_row_and_a_total(offline: None, capsys) -> None:
    assert main(["plan", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    rows = [line.split() for line in lines if line.split()[0] in PAPER]
    assert len(rows) == 12 * 6
    assert {(r[0], r[1]) for r in rows} == {(d, m) for d in PAPER for m in method_names()}
    assert all(r[5:] == ["unknown"] * 5 for r in rows if r[0] in ("shopping-review", "weibo"))
    assert sum(line.startswith("total ") for line in lines) == 1
    assert "left out of the total, split sizes unknown: shopping-review, weibo" in out
    assert "estimated" in out and "40.2 TFLOP/s" in out  # 60% of the H100's 67 float32 TFLOP/s
    cost = plan(PROFILES["paper"])
    hours = cost.hours(cost.train_flops + cost.eval_flops)
    assert lines[-1] == f"total: {hours:.2f} estimated device-hours on h100"


def test_plan_json(capsys) -> None:
    assert main(["plan", "--profile", "quick", "--device", "a100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["device"] == "a100" and data["estimated"] is True
    assert data["sustained_flops_per_second"] == pytest.approx(0.6 * 19.5e12)
    assert len(data["rows"]) == 2 * 6 and data["left_out_unknown_sizes"] == []
    total = data["total"]
    assert total["train_flops"] == sum(r["train_flops"] for r in data["rows"])
    assert total["hours"] == pytest.approx(total["train_hours"] + total["eval_hours"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--profile", "paper", "--device", "tpu"], "unknown device 'tpu': choose cpu or one of"),
        (["--profile", "nope"], "unknown profile or curve 'nope': choose one of smoke"),
        (["--profile", "nope"], "learning-10k, learning-curve"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys) -> None:
    assert main(["plan", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, message)


def test_unknown_device_in_the_library() -> None:
    with pytest.raises(GeepError, match="unknown device 'v100'"):
        plan(SMOKE, "v100")


def test_the_paper_table_in_the_docs_is_current(offline: None, capsys) -> None:
    assert main(["plan", "--profile", "paper"]) == 0
    docs = (Path(__file__).resolve().parents[2] / "docs" / "plan.md").read_text()
    copy = docs.split("## The paper profile", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert copy == capsys.readouterr().out


def test_the_cpu_rate_is_the_plans_training_flops_over_a_measured_step(monkeypatch) -> None:
    """Training FLOPs of a step (batch x 3 forwards at seq_len, the plan's convention) over the
    median of the timed steps, the untimed first one aside: with a clock that makes the steps
    take 5 s, then 0.5, 0.5 and 0.7 s, exactly that over 0.5."""
    ticks = iter([0.0, 5.0, 5.0, 5.5, 5.5, 6.0, 6.0, 6.7])
    monkeypatch.setattr(planning.time, "perf_counter", lambda: next(ticks))
    rate, shape = measured_cpu_rate(SMOKE, steps=3)
    step = SMOKE.train.batch_size * 3 * minilm_forward(SMOKE.train.seq_len)
    assert rate == pytest.approx(step / 0.5, rel=1e-12)
    assert shape == "6 layers of 384, batch 16 x 32 tokens"


def test_a_curve_plans_each_piece_then_its_total(capsys) -> None:
    assert main(["plan", "--profile", LEARNING_CURVE]) == 0
    lines = capsys.readouterr().out.splitlines()
    pieces = curve_pieces(LEARNING_CURVE)
    heads = [line.split()[1] for line in lines if line.startswith("profile ")]
    assert heads == [p.name for p in pieces]
    costs = [plan(p) for p in pieces]
    hours = sum(c.hours(c.train_flops + c.eval_flops) for c in costs)
    assert lines[-1] == f"{LEARNING_CURVE}: {hours:.2f} estimated device-hours on h100 in all"
    assert main(["plan", "--profile", LEARNING_CURVE, "--json"]) == 0
    documents = json.loads(capsys.readouterr().out)
    assert [d["profile"] for d in documents] == [p.name for p in pieces]
