"""The `geep` command end to end: train -> checkpoint -> evaluate, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geep.cli import main
from geep.runner import method_names
from tests.helpers import EXPECTED_DATASETS, assert_one_error_line, run_cli, train_args


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path, toy_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "bert-toy"
    options = "--epochs 8 --seq-len 16 --lr 3e-3 --batch-size 8".split()
    status = main(train_args(toy_dir, tiny_model, out, *options))
    assert status == 0
    return out


def test_datasets_json_lists_all_eighteen(capsys) -> None:
    assert main(["datasets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in listed] == list(EXPECTED_DATASETS)
    for d in listed:
        expected = EXPECTED_DATASETS[d["name"]]
        assert (d["language"], d["task"], d["num_classes"]) == expected[:3], d["name"]


def test_train_then_evaluate_json_and_predictions(checkpoint, tmp_path, capsys) -> None:
    info = json.loads((checkpoint / "config.json").read_text())
    assert info["method"] == "bert" and info["dev_accuracy"] > 0.9
    preds = tmp_path / "preds.jsonl"
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--json",
                "--predictions",
                str(preds),
                "--batch-size",
                "7",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["method"] == "bert" and doc["num_layers"] == 4
    assert doc["dataset"] == info["dataset"]
    prov = doc["provenance"]
    assert prov["batch_size"] == 7 and prov["split"] == "test" and prov["train"]["epochs"] == 8
    (row,) = doc["results"]
    for key in (
        "speed",
        "accuracy",
        "avg_exit_layer",
        "flops_fastbert",
        "flops_full",
        "speedup",
        "throughput",
        "latency_ms_p50",
        "n",
    ):
        assert key in row, key
    assert row["accuracy"] > 0.9 and row["n"] == 20 and row["avg_exit_layer"] == 4
    assert row["speedup"] == pytest.approx(1.0) and row["flops_full"] > row["flops_fastbert"] > 0
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) == 20
    assert set(lines[0]) == {"index", "text", "label", "pred", "exit_layer", "speed"}
    assert [x["index"] for x in lines] == list(range(20))


def test_methods_lists_speed_knobs_and_options(capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "bert\n  speed: no exit" in out
    assert "geep\n  speed: uncertainty threshold" in out
    assert "deebert\n  speed: entropy threshold in nats" in out
    assert "pabee\n  speed: patience" in out and "fastbert\n  speed:" in out
    assert "option exit_head=student (student|shared, inference)" in out
    assert "option training=one-step (one-step|two-step)" in out


def test_geep_trains_and_evaluates_with_options(tiny_model, toy_dir, tmp_path, capsys) -> None:
    out = tmp_path / "geep-toy"
    options = "--epochs 2 --seq-len 16 --lr 3e-3 --batch-size 8 --method geep".split()
    assert main(train_args(toy_dir, tiny_model, out, *options, "--option", "ngram=2")) == 0
    capsys.readouterr()
    argv = ["evaluate", "--checkpoint", str(out), "--json", "--speed", "0", "--speed", "0.5"]
    assert main([*argv, "--option", "exit_head=shared", "--option", "exit_rule=mean"]) == 0
    doc = json.loads(capsys.readouterr().out)
    options = doc["provenance"]["options"]
    assert (options["exit_head"], options["exit_rule"], options["ngram"]) == ("shared", "mean", 2)
    full, fast = doc["results"]
    assert full["avg_exit_layer"] == 4 and full["extra"]["exit_mae"] == 0.0
    assert {"exit_mae", "exit_too_early", "exit_exact"} <= set(fast["extra"])
    assert json.loads((out / "config.json").read_text())["options"]["exit_head"] == "student"


def test_evaluate_table_and_max_eval(checkpoint, capsys) -> None:
    assert (
        main(["evaluate", "--checkpoint", str(checkpoint), "--max-eval", "5", "--split", "dev"])
        == 0
    )
    out = capsys.readouterr().out
    assert "bert on" in out and "n=5" in out and "accuracy" in out


@pytest.mark.parametrize("command", ["datasets", "methods", "train", "evaluate", "flops"])
def test_every_command_has_help_with_examples(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "examples:" in capsys.readouterr().out


T = "train --method bert --out {tmp}/x --dataset"
BAD = [  # (command line, what its one error line must say)
    (f"{T} rotten-tomatoes --method nope", "unknown method 'nope'"),
    (f"{T} no-such-set", "no-such-set"),
    (f"{T} {{tmp}}/missing.tsv", "missing.tsv"),
    (f"{T} rotten-tomatoes --seq-len 0", "is not a whole number >= 1"),
    (f"{T} rotten-tomatoes --lr abc", "'abc' is not a number"),
    (f"{T} {{toy}} --seq-len 4", "--seq-len must lie in 8..512"),
    (
        f"{T} {{toy}} --model someone/not-a-model",
        "could not fetch model 'someone/not-a-model': the Hugging Face hub is unavailable",
    ),
    (f"{T} ag-news", "offline"),
    ("evaluate --checkpoint {tmp}/none", "does not exist"),
    ("evaluate --checkpoint {ckpt} --speed 0.5", "out of range for bert"),
    ("evaluate --checkpoint {ckpt} --speed -1", "is not a speed >= 0"),
    ("evaluate --checkpoint {ckpt} --dataset rotten-tomatoes", "that the checkpoint does not know"),
    (f"{T} {{toy}} --method geep --option exit_quantile=2", "exit_quantile must lie in (0, 1]"),
    (f"{T} {{toy}} --method geep --option exit_head", "bad option 'exit_head'"),
    (f"{T} {{toy}} --method geep --option head=shared", "KEY one of teacher_inputs"),
    ("evaluate --checkpoint {ckpt} --option mode=dynamic", "this method has no options"),
]


@pytest.mark.parametrize("line, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_gives_one_line_and_status_2(line, message, tmp_path, toy_dir, checkpoint):
    argv = line.format(tmp=tmp_path, toy=toy_dir, ckpt=checkpoint).split()
    result = run_cli(*argv, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, message)
    assert not (tmp_path / "x").exists()  # nothing half-written


@pytest.mark.parametrize("method", method_names())
def test_same_seed_gives_identical_runs(method, tiny_model, toy_dir, tmp_path, capsys) -> None:
    """Seeding happens before the heads are built, so a whole train + evaluate is fixed by
    --seed: same weights, same predictions, exits, FLOPs and accuracy at every speed."""
    weights, evaluations = [], []
    timing = {"throughput", "latency_ms_p50", "latency_ms_p95"}
    for run in ("a", "b", "c"):
        seed = "7" if run != "c" else "8"
        options = ["--epochs", "1", "--seq-len", "16", "--seed", seed, "--method", method]
        assert main(train_args(toy_dir, tiny_model, tmp_path / run, *options)) == 0
        weights.append((tmp_path / run / "model.safetensors").read_bytes())
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", str(tmp_path / run), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["results"]
        evaluations.append([{k: v for k, v in r.items() if k not in timing} for r in rows])
    assert weights[0] == weights[1] and evaluations[0] == evaluations[1]
    assert weights[0] != weights[2]


MALFORMED = {
    "empty.tsv": (b"", "empty"),
    "nolabel.csv": (b"text,score\nnice film,1\nbad film,0\n", "label"),
    "latin1.tsv": ("label\ttext_a\n0\tcaf\u00e9 cr\u00e8me\n".encode("latin-1"), "UTF-8"),
    "negative.jsonl": (b'{"label": -1, "text": "bad"}\n{"label": 0, "text": "ok"}\n', "label"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_files_give_one_line(name, tiny_model, tmp_path, capsys) -> None:
    content, message = MALFORMED[name]
    (tmp_path / name).write_bytes(content)
    assert main(train_args(tmp_path / name, tiny_model, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, message)
    assert name in err
    assert not (tmp_path / "out").exists()
