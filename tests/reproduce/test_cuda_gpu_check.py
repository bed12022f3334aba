"""The GPU check (geep/reproduce/gpu_check.py) without --dry-run, on the fake GPU and the fake
CuPy (tests/fakes.py): the graphs check captures and replays CUDA graphs, and run_checks writes
the GPU's name and the datasheet model."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from geep.core import interface as runner
from geep.reproduce import gpu_check
from geep.reproduce.gpu_check import DRY_SIZE
from tests.fakes import GPU, NAME, STREAM, FakeCuda, FakeCupy, OnFakeGpu


@pytest.fixture
def small_graphs(monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The graphs check's CUDA grid cut to four points at lengths DRY_SIZE's model holds (its
    seq_len is 12: GRAPH_LENGTHS' 32 and 128 do not fit) and two timed repeats."""
    monkeypatch.setattr(gpu_check, "GRAPH_SIZES", (1, 4))
    monkeypatch.setattr(gpu_check, "GRAPH_LENGTHS", (6, 12))
    monkeypatch.setattr(gpu_check, "GRAPH_REPEATS", 2)
    return gpu_check.GRAPH_SIZES, gpu_check.GRAPH_LENGTHS


WAYS = ["eager", "layer graphs", "whole graph"]


def test_the_graphs_check_on_a_gpu_captures_and_replays_cuda_graphs(
    tmp_path: Path, fake_cuda: FakeCuda, small_graphs: tuple[tuple[int, ...], tuple[int, ...]]
) -> None:
    """check_graphs on cuda:1: each point timed eager, as per-call graphs and as one graph of
    the whole forward (_graphed: a side-stream warm-up, captures into one pool, replays), every
    timed run synchronised, the cache emptied after each point, the fits named after the GPU."""
    sizes, lengths = small_graphs
    model = gpu_check.make_model(tmp_path, DRY_SIZE)
    with OnFakeGpu():
        result = gpu_check.check_graphs(GPU, DRY_SIZE, model)
    assert result.passed and result.name == "graphs", result.summary
    points = result.details["points"]
    assert [(p["length"], p["batch_size"]) for p in points] == [
        (t, b) for t in lengths for b in sizes
    ]
    assert all(list(p["seconds"]) == WAYS for p in points)
    models = result.details["models"]
    assert [(w, m["name"], m["overlap"]) for w, m in models.items()] == [
        (w, f"{NAME} ({w})", True) for w in WAYS
    ]
    assert "whole graph" in result.summary

    layers, runs = DRY_SIZE.layers, 1 + gpu_check.GRAPH_REPEATS  # an untimed call, the timed
    per_point = layers + 3  # the whole forward; embeddings, each layer, the head
    assert len(fake_cuda.graphs) == len(points) * per_point
    assert len(fake_cuda.side_streams) == len(fake_cuda.pools) == len(points)
    default, expected = fake_cuda.default[GPU.index], []
    for n, (side, pool) in enumerate(zip(fake_cuda.side_streams, fake_cuda.pools, strict=True)):
        graphs = fake_cuda.graphs[n * per_point : (n + 1) * per_point]
        kinds = [
            [m for m in g.modules if m in ("BertEmbeddings", "BertLayer", "PoolerClassifier")]
            for g in graphs
        ]
        assert kinds == [
            ["BertEmbeddings", *["BertLayer"] * layers, "PoolerClassifier"],  # the whole
            ["BertEmbeddings"],
            *[["BertLayer"]] * layers,
            ["PoolerClassifier"],
        ]
        assert all(g.captured for g in graphs) and [g.replays for g in graphs] == [runs] * per_point
        # a side stream of the GPU waits for the current one, runs the warm-up, is waited for;
        # then each graph is captured into the point's pool
        assert side.device_index == GPU.index
        expected += [
            ("Stream", {}),
            ("Stream.wait_stream", {"self": side, "stream": default}),
            ("stream", {"stream": side}),
            ("Stream.wait_stream", {"self": default, "stream": side}),
            *(("graph", {"cuda_graph": g, "pool": pool}) for g in graphs),
        ]
    names = ("Stream", "Stream.wait_stream", "stream", "graph")
    assert [(n, a) for n, a in fake_cuda.calls if n in names] == expected
    assert fake_cuda.called("synchronize") == [{"device": GPU}] * (len(points) * len(WAYS) * runs)
    assert fake_cuda.called("empty_cache") == [{}] * len(points)


def test_the_check_on_a_gpu_writes_its_name_and_the_datasheet_model(
    tmp_path: Path,
    fake_cupy: FakeCupy,
    fake_cuda: FakeCuda,
    monkeypatch: pytest.MonkeyPatch,
    small_graphs: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    """run_checks without --dry-run on the fake GPU (at DRY_SIZE): the current device, the CUDA
    exit table against the CPU's, the calibration (the only check that reaches _datasheet: the
    fake's name holds "H200") and the graphs; gpu-check.json names the GPU."""
    small = replace(DRY_SIZE, table_keys=500, calibration_lengths=(6,))  # 3 calibration points
    monkeypatch.setattr(gpu_check, "GPU_SIZE", small)
    monkeypatch.setattr(runner.Method, "device", property(lambda self: GPU))
    table_syncs = []  # the synchronisations of the exit-table check
    check_exit_table = gpu_check.check_exit_table

    def spied(*args: Any, **kwargs: Any) -> gpu_check.CheckResult:
        before = len(fake_cuda.called("synchronize"))
        result = check_exit_table(*args, **kwargs)
        table_syncs.extend(fake_cuda.called("synchronize")[before:])
        return result

    monkeypatch.setattr(gpu_check, "check_exit_table", spied)
    only = ("exit-table", "calibration", "graphs")
    _, path = gpu_check.run_checks(dry_run=False, out=tmp_path, commit="x", only=only)
    assert path == tmp_path / gpu_check.CHECK_FILE
    document = json.loads(path.read_text())
    checks = {c["name"]: c for c in document["checks"]}
    assert list(checks) == list(only) and all(c["passed"] for c in checks.values()), checks
    assert document["passed"] and not document["dry_run"] and document["device"] == NAME
    assert document["versions"]["cupy"] == fake_cupy.__version__
    assert checks["exit-table"]["details"]["backend"] == "cuda"
    assert table_syncs == [{"device": GPU}]  # before the CUDA table's time is read
    assert {(x["device"], x["stream"]) for x in fake_cupy.launches} == {(1, STREAM + 1)}
    models = checks["calibration"]["details"]["models"]
    assert models["fitted"]["name"] == NAME and models["fitted"]["overlap"]
    datasheet = models["datasheet"]
    assert datasheet["name"] == f"{NAME}, float32 (modelled)" and datasheet["overlap"]
    assert datasheet["flops_per_second"] == pytest.approx(0.6 * 67e12)
    assert datasheet["bytes_per_second"] == pytest.approx(0.8 * 4.8e12)
    assert list(checks["graphs"]["details"]["models"]) == WAYS and fake_cuda.graphs
    assert document["size"] == json.loads(json.dumps(asdict(small)))
    assert fake_cuda.called("current_device") == [{}]  # run_checks' device: cuda:1
    for name in ("get_device_name", "synchronize"):
        assert fake_cuda.called(name) and {str(a) for a in fake_cuda.called(name)} == {
            str({"device": GPU})
        }
    assert f"on {NAME}" in (tmp_path / "tables.md").read_text()
