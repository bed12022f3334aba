"""The `geep` command end to end: train -> checkpoint -> evaluate, and every kind of bad input."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from geep.cli import main
from geep.core.registry import load_checkpoint, method_names
from geep.core.sweeps import DEV_SETTINGS, dev_sweep
from geep.data import load_dataset
from geep.pipeline.evaluate import load_split
from tests.helpers import assert_one_error_line, documented_datasets, run_cli, train_args


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path, toy_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "bert-toy"
    options = "--epochs 8 --seq-len 16 --lr 3e-3 --batch-size 8".split()
    status = main(train_args(toy_dir, tiny_model, out, *options))
    assert status == 0
    return out


def test_datasets_json_lists_all_eighteen_as_documented(capsys) -> None:
    assert main(["datasets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    documented = documented_datasets()
    assert [d["name"] for d in listed] == list(documented)
    for d in listed:
        expected = documented[d["name"]]
        assert (d["language"], d["task"], d["num_classes"]) == (
            expected["language"],
            expected["task"],
            expected["classes"],
        ), d["name"]


LOCAL_ONLY = ["book-review", "shopping-review", "thucnews", "amazon-full"]


def test_datasets_marks_the_ones_that_need_local_files(capsys) -> None:
    """A dataset with no hub source and no archive says `local files only` and which files."""
    assert main(["datasets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    for d in listed:
        sources = d["sources"]
        assert d["local_only"] == (sources["hub"] is None and sources["archive"] is None)
    assert [d["name"] for d in listed if d["local_only"]] == LOCAL_ONLY
    assert main(["datasets"]) == 0
    table, files = capsys.readouterr().out.split("\nlocal files only, in UER format:\n")
    rows = {row.split()[0]: row for row in table.splitlines()[1:]}
    assert [name for name, row in rows.items() if "local files only" in row] == LOCAL_ONLY
    assert "hub/local" in rows["weibo"] and "offline" in rows["bbc-news"]
    wanted = {row.split()[0]: row for row in files.splitlines()[1:]}
    assert list(wanted) == LOCAL_ONLY and "UER/FastBERT's cnews" in wanted["thucnews"]


COPIES = {  # a thucnews copy in $GEEP_DATA_DIR -> what its one error line must say
    "classes": (["society", "stock", "sports"], "its classes [society, sports, stock] are not"),
    "sizes": (list(range(10)), "have 20 / 10 / 10 examples but thucnews's published split"),
}


@pytest.mark.parametrize("case", COPIES)
def test_a_refused_copy_is_one_error_line(case, tmp_path) -> None:
    labels, message = COPIES[case]
    for split, n in (("train", 20), ("dev", 10), ("test", 10)):
        rows = "".join(f"{labels[i % len(labels)]}\tarticle {i}\n" for i in range(n))
        (tmp_path / "thucnews").mkdir(exist_ok=True)
        (tmp_path / "thucnews" / f"{split}.tsv").write_text("label\ttext_a\n" + rows)
    argv = ["train", "--method", "bert", "--out", str(tmp_path / "x"), "--dataset", "thucnews"]
    result = run_cli(*argv, env={"GEEP_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, message)


def test_train_then_evaluate_json_and_predictions(checkpoint, toy_dir, tmp_path, capsys) -> None:
    info = json.loads((checkpoint / "config.json").read_text())
    assert info["method"] == "bert" and info["dev_accuracy"] > 0.9
    assert info["train_samples"] == len(load_dataset(str(toy_dir))["train"])  # every one of them
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


def test_evaluate_times_several_rounds_and_gives_their_spread(checkpoint, capsys, monkeypatch):
    """--rounds 3: each speed runs three times; samples/s is the median run's and the spread
    is (max - min) / median of the runs' times."""
    from geep.core.interface import Method

    seconds = iter([1.0, 4.0, 2.0])  # the three timed runs of the one speed
    run = Method.run

    def timed(self, *args, **kwargs):
        out = run(self, *args, **kwargs)
        out.batch_seconds = [next(seconds, 0.5)]  # the warm-up's run is not timed here
        return out

    argv = ["evaluate", "--checkpoint", str(checkpoint), "--max-eval", "6", "--split", "dev"]
    monkeypatch.setattr(Method, "warm_up", lambda self, data, speed, batch_size: batch_size)
    monkeypatch.setattr(Method, "run", timed)
    assert main([*argv, "--rounds", "3", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["round_spread"] == pytest.approx(1.5) and result["throughput"] == 3.0
    seconds = iter([1.0, 4.0, 2.0])
    assert main([*argv, "--rounds", "3"]) == 0
    header, row = capsys.readouterr().out.splitlines()[-2:]
    assert "spread (3 runs)" in header and "150%" in row.split()


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
    (f"{T} {{toy}} --method geep --option head=shared", "KEY one of batching, teacher_inputs"),
    ("evaluate --checkpoint {ckpt} --option mode=dynamic", "this method has no options"),
    ("evaluate --checkpoint {ckpt} --rounds 0", "--rounds must be at least 1, got 0"),
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


@pytest.mark.slow
def test_evaluate_sweeps_settings_chosen_on_dev(tmp_path, capsys) -> None:
    """A FastBERT trained on 300 samples for one epoch, evaluated without --speed: full depth
    and settings chosen on the training data's dev split spread over its FLOPs (the papers'
    grid leaves such a model at full depth); the settings do not depend on the evaluated
    split, whose labels are flipped here."""
    out = tmp_path / "fastbert"
    recipe = "--max-train 300 --epochs 1 --seq-len 48 --batch-size 8 --lr 2e-4".split()
    argv = ["train", "--method", "fastbert", "--dataset", "rotten-tomatoes", "--out", str(out)]
    assert main([*argv, *recipe]) == 0
    evaluate = ["evaluate", "--checkpoint", str(out), "--max-eval", "600", "--json"]
    capsys.readouterr()
    assert main([*evaluate, "--sweep", "dev"]) == 0
    doc = json.loads(capsys.readouterr().out)
    speedups = [r["speedup_full"] for r in doc["results"]]
    assert doc["provenance"]["speed_source"] == "dev" and len(speedups) >= 5
    assert max(speedups) >= 2.5 * min(speedups)
    # chosen on the first 600 samples of the training data's dev split, as a profile chooses
    method = load_checkpoint(out)
    assert method.info.train_samples == 300  # the checkpoint says how many it trained on
    dev = load_split(method, "rotten-tomatoes", "dev", 600).data
    assert doc["provenance"]["dev_sweep"] == dev_sweep(method, dev, DEV_SETTINGS)

    flipped = tmp_path / "flipped.tsv"
    rows = load_dataset("rotten-tomatoes")["test"].select(range(600))
    names = rows.features["label"].names
    lines = [f"{names[1 - y]}\t{t}" for t, y in zip(rows["text"], rows["label"], strict=True)]
    flipped.write_text("label\ttext_a\n" + "\n".join(lines) + "\n")
    assert main([*evaluate, "--dataset", str(flipped)]) == 0  # dev is the default sweep
    other = json.loads(capsys.readouterr().out)
    assert [r["speed"] for r in other["results"]] == [r["speed"] for r in doc["results"]]
    assert other["provenance"]["dev_sweep"] == doc["provenance"]["dev_sweep"]
    for row, flipped_row in zip(doc["results"], other["results"], strict=True):
        assert row["accuracy"] + flipped_row["accuracy"] == pytest.approx(1.0)  # they flipped
    assert main([*evaluate, "--split", "train"]) == 0  # other texts: still the same settings
    on_train = json.loads(capsys.readouterr().out)
    assert [r["speed"] for r in on_train["results"]] == [r["speed"] for r in doc["results"]]


HEAVY = ("torch", "transformers", "datasets", "matplotlib", "pandas", "pynvml")


def imported_after(argv: list[str], modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh process has imported once `geep ARGV` returns."""
    code = "\n".join(
        [
            "import sys",
            "from geep.cli import main",
            "try:",
            f"    main({argv!r})",
            "except SystemExit:",
            "    pass",
            f"print(sorted(m for m in {modules!r} if m in sys.modules))",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--seq-len", "0"]])
def test_help_and_argument_errors_import_no_heavy_library(argv) -> None:
    """`geep --help` and a bad argument answer at once: no torch, no transformers, no pandas."""
    assert imported_after(argv, HEAVY) == []


def test_finding_the_methods_imports_neither_report_nor_monitor() -> None:
    light = (
        "matplotlib",
        "pandas",
        "datasets",
        "geep.report.results",
        "geep.measure.monitor",
        "geep.reproduce.units",
    )
    assert imported_after(["methods"], light) == []
