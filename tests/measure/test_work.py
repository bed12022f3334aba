"""The work a run issues (geep.measure.work): hand-worked counts for full depth, a shrinking, a
regrouped and a kept batch, GEEP's sorted batches and HashEE's token exits, executed FLOPs equal
to a real FLOP counter's; and the latency model built on them (geep.measure.latency)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from geep.core.dynamic_exit import ExitDecision, dynamic_exit, kept_exit, regrouped_exit
from geep.core.interface import Method
from geep.measure import flops
from geep.measure.latency import Device, Measurement, fit_device
from geep.measure.work import Call, calls_from_rows, calls_to_rows, counting, work_counts
from tests.helpers import counted_flops, new_method, toy

TEXTS = ["good", "the best film and a great plot", "hate it", "a film", "bad plot", "the plot"]


def layer_flops(method: Method, rows: int, tokens: int, active: int | None = None) -> int:
    """Executed FLOPs of one (layer, batch) call, from geep.measure.flops."""
    active = tokens if active is None else active
    return rows * flops.token_exit_layer(method.dims, tokens, active, "full")


def test_full_depth_counts_one_call_per_layer_and_batch(tiny_model: Path) -> None:
    method = new_method("bert", tiny_model)
    data = method.encode(TEXTS)
    out = method.run(data, speed=0.0, batch_size=4)
    widths = sorted(data.lengths.tolist())  # length order: batches of 4 and 2
    first, second = max(widths[:4]), max(widths[4:])
    counts = work_counts(out.calls, len(TEXTS))
    layers = method.num_layers
    assert counts["layer_batches"] == 2 * layers
    assert counts["mean_layer_batch_rows"] == 3.0
    assert counts["head_calls"] == 2 and counts["head_rows"] == 6
    head = flops.pooler_classifier(method.dims.hidden, 2)
    executed = layers * (layer_flops(method, 4, first) + layer_flops(method, 2, second))
    assert counts["flops_executed_full"] * 6 == executed + 6 * head
    # padding is executed work: more than the useful FLOPs at real length, equal without it
    assert counts["flops_executed_full"] > out.flops_full.mean()
    same = method.encode(["a film", "bad plot", "the plot"])
    alone = method.run(same, speed=0.0, batch_size=3)
    assert work_counts(alone.calls, 3)["flops_executed_full"] == alone.flops_full.mean()


def test_a_shrinking_batch_counts_the_rows_each_layer_and_head_ran_on(tiny_model: Path) -> None:
    method = new_method("fastbert", tiny_model)  # 4 layers
    data = method.encode(TEXTS[:4])
    batch = data.batch(torch.arange(4))
    planned = {1: [0], 2: [1, 2]}  # sample 0 exits at layer 1, samples 1 and 2 at layer 2

    def exits(layer: int, logits: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        return torch.isin(running, torch.tensor(planned.get(layer, [])))

    with counting() as calls, torch.no_grad():
        _, layers = dynamic_exit(method.backbone, batch, method.exit_head, exits)
    assert layers.tolist() == [1, 2, 2, 4]
    counts = work_counts(calls, 4)
    assert counts["layer_batches"] == 4  # layers 1..4, one batch
    assert counts["mean_layer_batch_rows"] == (4 + 3 + 1 + 1) / 4
    assert counts["head_calls"] == 4 and counts["head_rows"] == 4 + 3 + 1 + 1
    kept = [c.rows for c in calls.elements() if c.kind == "select"]
    assert sorted(kept) == [1, 1, 3]  # after layers 1, 2, 3 (layer 3: nobody left, still a copy)
    width = batch.input_ids.shape[1]
    head = [flops.fastbert_head(method.dims.hidden, width, 2, "full") * r for r in (4, 3, 1, 1)]
    layer = [layer_flops(method, r, width) for r in (4, 3, 1, 1)]
    assert sum(c.flops * n for c, n in calls.items()) == sum(head) + sum(layer)


SAME_LENGTH = ["good film", "bad plot", "the plot", "a film", "hate it", "the best"]  # 4 tokens


def planned(exits_at: dict[int, list[int]]) -> ExitDecision:
    """A rule exiting the samples at the given positions after each layer."""

    def exits(layer: int, logits: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        return torch.isin(running, torch.tensor(exits_at.get(layer, []), dtype=running.dtype))

    return exits


def layer_calls(method: Method) -> list[tuple[int, int]]:
    """(layer, rows) of every encoder-layer call from now on, in the order they run."""
    calls: list[tuple[int, int]] = []
    for i, layer in enumerate(method.backbone.encoder.encoder.layer, start=1):
        layer.register_forward_hook(lambda m, a, o, i=i: calls.append((i, a[0].shape[0])))
    return calls


def test_a_regrouped_stream_runs_each_layer_on_its_pool(tiny_model: Path) -> None:
    method = new_method("fastbert", tiny_model)  # 4 layers
    data = method.encode(SAME_LENGTH)
    width = int(data.lengths[0])
    assert (data.lengths == width).all()  # no padding: pools join without copies to pad
    rule = planned({1: [0, 1], 2: [2, 4]})  # positions in the data; 3 and 5 run to layer 4
    ran = layer_calls(method)
    with counting() as calls, torch.no_grad():
        out = list(regrouped_exit(method.backbone, data.batches(4), method.exit_head, rule, 4))
    # batch [0..3] runs layer 1; [2, 3] wait for layer 2 while [4, 5] are embedded and run layer
    # 1 (no batch left, so the shallowest pool runs); then the pool of four runs layer 2, the two
    # that go on run layers 3 and 4
    assert ran == [(1, 4), (1, 2), (2, 4), (3, 2), (4, 2)]
    assert [o[0].tolist() for o in out] == [[0, 1], [2, 4, 3, 5]]  # before batch 2, at the end
    assert [o[2].tolist() for o in out] == [[1, 1], [2, 2, 4, 4]]
    counts = work_counts(calls, 6)
    assert counts["layer_batches"] == 5 and counts["mean_layer_batch_rows"] == 14 / 5
    assert counts["head_calls"] == 5 and counts["head_rows"] == 14
    # the rows that go on after each layer, and the pool of two batches joined for layer 2
    assert sorted(c.rows for c in calls.elements() if c.kind == "select") == [2, 2, 2, 2, 4]
    head = flops.fastbert_head(method.dims.hidden, width, 2, "full")
    rows = [r for _, r in ran]
    executed = sum(layer_flops(method, r, width) + r * head for r in rows)
    assert sum(c.flops * n for c, n in calls.items()) == executed


def test_a_kept_batch_runs_whole_to_its_deepest_exit(tiny_model: Path, monkeypatch) -> None:
    method = new_method("fastbert", tiny_model, "batching=keep")
    data = method.encode(SAME_LENGTH)
    batch = data.batch(torch.arange(4))
    ran = layer_calls(method)
    with counting() as calls, torch.no_grad():
        _, layers, deepest = kept_exit(
            method.backbone, batch, method.exit_head, planned({1: [0], 2: [1, 2]})
        )
    assert layers.tolist() == [1, 2, 2, 4] and deepest == 4
    assert ran == [(1, 4), (2, 4), (3, 4), (4, 4)]  # nobody leaves the batch
    counts = work_counts(calls, 4)
    assert counts["head_calls"] == 4 and counts["head_rows"] == 16
    assert not [c for c in calls if c.kind == "select"]
    # through the runner: a sample's FLOPs are its batch's, up to the deepest exit in it
    monkeypatch.setattr(method, "exit_rule", lambda speed, samples: planned({1: [0], 2: [1]}))
    out = method.run(data, 0.5, batch_size=4)
    assert out.exit_layers.tolist() == [1, 2, 4, 4, 1, 2]  # batches [0..3] and [4, 5]
    lengths = data.lengths.numpy()
    deepest = np.array([4, 4, 4, 4, 2, 2])
    assert (out.flops_full == method.sample_flops(lengths, deepest, deepest, "full")).all()


def test_geep_sorted_batches_run_full_batches_and_one_head_each(
    tiny_model: Path, monkeypatch
) -> None:
    method = new_method("geep", tiny_model)
    texts, _ = toy(10)
    data = method.encode(texts)
    predicted = torch.tensor([1, 4, 1, 2, 4, 4, 1, 2, 4, 4])  # layer 1: 3, layer 2: 2, layer 4: 5
    monkeypatch.setattr(method, "predict_layers", lambda data, speed: predicted)
    with counting() as calls, torch.no_grad():
        results = list(method.predict_batches(data, 0.5, batch_size=4))
    assert [len(r.index) for r in results] == [3, 2, 4, 1]
    counts = work_counts(calls, 10)
    assert counts["layer_batches"] == 1 + 2 + 4 + 4
    assert counts["mean_layer_batch_rows"] == (3 * 1 + 2 * 2 + 4 * 4 + 1 * 4) / 11
    assert counts["head_calls"] == 4 and counts["head_rows"] == 10  # no head where nobody exits
    assert not [c for c in calls if c.kind == "select"]  # no batch shrinks


def test_hashee_layers_run_on_the_most_active_tokens_of_a_row(tiny_model: Path) -> None:
    method = new_method("hashee", tiny_model)
    layers = method.num_layers
    table = method.model.exit_layer_of_token
    table.fill_(layers)
    table[method.tokenizer.convert_tokens_to_ids("good")] = 1  # "good" leaves after layer 1
    data = method.encode(["good good good", "good bad"])  # 5 and 4 tokens with [CLS], [SEP]
    with counting() as calls, torch.no_grad():
        list(method.predict_batches(data, 1, batch_size=2))
    ran = sorted((c.tokens, c.flops) for c in calls.elements() if c.kind == "layer")
    # layer 1: every real token (row 1 has 5); then [CLS] [SEP] in row 1, [CLS] bad [SEP] in row 2
    expected = [(5, layer_flops(method, 2, 5, 5))] + [(5, layer_flops(method, 2, 5, 3))] * (
        layers - 1
    )
    assert ran == sorted(expected)
    assert work_counts(calls, 2)["head_rows"] == 2


FLOP_CASES = [
    ("bert",),
    ("fastbert",),
    ("fastbert", "batching=regroup"),
    ("fastbert", "batching=keep"),
    ("deebert",),
    ("deebert", "batching=regroup"),
    ("pabee",),
    ("pabee", "batching=regroup"),
    ("pabee", "batching=keep"),
    ("hashee",),
    ("geep", "mode=dynamic"),  # predict mode needs a trained table
    ("geep", "mode=dynamic", "batching=regroup"),
]


@pytest.mark.parametrize("case", FLOP_CASES, ids="-".join)
def test_executed_flops_are_what_a_flop_counter_sees(
    tiny_model: Path, case: tuple, monkeypatch
) -> None:
    name, *settings = case
    method = new_method(name, tiny_model, *settings)
    if any(s.startswith("batching=") for s in settings):  # an untrained model exits nobody early
        rule = planned({1: [0, 3, 7], 2: [1, 5, 8, 10]})
        monkeypatch.setattr(method, "exit_rule", lambda speed, samples: rule)
    if name == "hashee":  # an untrained model has no hash: every token to the top but "plot"
        method.model.exit_layer_of_token.fill_(method.num_layers)
        method.model.exit_layer_of_token[method.tokenizer.convert_tokens_to_ids("plot")] = 2
    texts, _ = toy(12)
    data = method.encode(texts)
    speed = {"bert": 0.0, "pabee": 1.0, "hashee": 1.0}.get(name, 0.6)
    issued: list[Counter[Call]] = []

    def run() -> None:
        with counting() as calls, torch.no_grad():
            list(method.predict_batches(data, speed, batch_size=5))
        issued.append(calls)

    measured = counted_flops(run)
    assert sum(c.flops * n for c, n in issued[0].items()) == measured


def test_calls_survive_a_run_file_round_trip() -> None:
    calls = Counter({Call("layer", 4, 9, 100, 200): 6, Call("head", 4, 1, 7, 8): 1})
    rows = calls_to_rows(calls)
    assert rows[0][0] == "layer" and calls_from_rows(rows) == calls
    assert np.isclose(work_counts(calls, 4)["flops_executed_full"], (600 + 7) / 4)


def test_the_latency_model_sums_its_calls_and_recovers_known_parameters() -> None:
    layer = Call("layer", 8, 16, 4_000_000, 1_000_000)
    cpu = Device("toy cpu", 1e-5, 1e9, 1e8, overlap=False)
    # 10 operators at 10 us, then max(4 ms of compute, 10 ms of memory traffic)
    assert np.isclose(cpu.call_seconds(layer, 10), 1e-4 + 1e-2)
    gpu = replace(cpu, overlap=True)
    assert np.isclose(gpu.call_seconds(layer, 10), 1e-2)
    assert np.isclose(gpu.seconds(Counter({layer: 3}), {"layer": 10}), 3e-2)
    points = []  # runs of different shapes timed on the toy CPU: the fit finds its parameters
    for rows, tokens in [(1, 8), (4, 16), (16, 32), (64, 64), (2, 64), (64, 4)]:
        size = rows * tokens
        calls = Counter(
            {
                Call("layer", rows, tokens, size * 10**6, 10**6 + size * 10**3): 6,
                Call("head", rows, 1, rows * 10**4, 10**5): 1,
            }
        )
        operators = {"layer": 14.0, "head": 10.0}
        points.append(Measurement(calls, operators, cpu.seconds(calls, operators)))
    fitted = fit_device(points, "fitted")
    for p in points:
        assert np.isclose(fitted.seconds(p.calls, p.operators), p.seconds, rtol=0.02)
    assert np.isclose(fitted.flops_per_second, 1e9, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["bert", "fastbert", "hashee"])
def test_a_gpu_run_issues_the_calls_of_the_cpu_run(tiny_model: Path, name: str) -> None:
    method = new_method(name, tiny_model)
    if name == "hashee":
        method.model.exit_layer_of_token.fill_(method.num_layers)
        method.model.exit_layer_of_token[method.tokenizer.convert_tokens_to_ids("plot")] = 2
    data = method.encode(toy(12)[0])
    issued = []
    for device in ("cpu", "cuda"):
        method.to(device)
        with counting() as calls, torch.no_grad():
            list(method.predict_batches(data, 0.0 if name != "hashee" else 1.0, batch_size=5))
        issued.append(calls)
    assert issued[0] == issued[1]
