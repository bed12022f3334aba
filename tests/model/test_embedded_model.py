"""The real embedded model (all-MiniLM-L6-v2 from its pinned archive) end to end."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from geep.cli import main
from geep.data.encoding import encode_texts
from geep.model.backbone import load_pretrained


def test_embedded_model_loads_pretrained_weights() -> None:
    backbone, tokenizer = load_pretrained("minilm-l6")
    backbone.eval()
    assert backbone.num_layers == 6 and backbone.hidden_size == 384
    assert backbone.pooling == "mean"  # from the model's own 1_Pooling/config.json
    texts = ["a cat sits on the mat", "a kitten is sitting on a rug", "stock markets fell sharply"]
    batch = encode_texts(tokenizer, texts, seq_len=32).padded()
    with torch.no_grad():
        hidden, mask = backbone.embed(**batch.inputs())
        hidden = backbone.run_layers(hidden, mask, 0, 6)
    emb = F.normalize(backbone.sentence_vector(hidden, batch.attention_mask), dim=-1)
    # Pretrained sentence embeddings know a kitten from the stock market; random weights do not.
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


def test_train_and_evaluate_on_real_data(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bert-rt"
    line = f"train --method bert --dataset rotten-tomatoes --out {out} --max-train 64 --seq-len 32"
    assert main([*line.split(), "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--max-eval", "64", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_layers"] == 6 and doc["results"][0]["n"] == 64


def test_geep_trains_and_sweeps_on_real_chinese_data(tmp_path: Path, capsys) -> None:
    out = tmp_path / "geep-cr"
    line = f"train --method geep --dataset chinese-reviews --out {out} --max-train 64 --seq-len 32"
    assert main([*line.split(), "--epochs", "1"]) == 0
    capsys.readouterr()
    argv = ["evaluate", "--checkpoint", str(out), "--max-eval", "64", "--json"]
    assert main([*argv, "--speed", "0", "--speed", "1"]) == 0
    full, fastest = json.loads(capsys.readouterr().out)["results"]
    assert full["avg_exit_layer"] == 6 and full["speedup"] == 1.0  # speed 0: all layers
    assert fastest["avg_exit_layer"] < 6 and fastest["speedup"] > 1.0


def test_a_user_file_with_the_checkpoints_classes_is_evaluated_whole(
    tmp_path: Path, capsys
) -> None:
    """A rotten-tomatoes checkpoint on the user's own TSV of test texts, labelled by class name
    (in another order than the checkpoint's) or by class index: every row is evaluated, labels
    map onto the checkpoint's classes, and predictions equal those through the registry."""
    out = tmp_path / "bert-rt"
    line = f"train --method bert --dataset rotten-tomatoes --out {out} --max-train 64 --seq-len 32"
    assert main([*line.split(), "--epochs", "1"]) == 0
    evaluate = ["evaluate", "--checkpoint", str(out), "--json", "--batch-size", "64"]

    def predictions(*argv: str) -> dict[str, tuple[int, int]]:
        """text -> (label, prediction) of `geep evaluate ARGV --predictions`; checks n."""
        path = tmp_path / "predictions.jsonl"
        capsys.readouterr()
        assert main([*evaluate, *argv, "--predictions", str(path)]) == 0
        assert json.loads(capsys.readouterr().out)["results"][0]["n"] == 40
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return {r["text"]: (r["label"], r["pred"]) for r in rows}

    registry = predictions("--max-eval", "40")
    names = ["rotten", "fresh"]  # the checkpoint's classes, in its order
    for labels in (names, ["0", "1"]):
        lines = [f"{labels[label]}\t{text}" for text, (label, _) in registry.items()]
        mine = tmp_path / f"mine-{labels[0]}.tsv"
        mine.write_text("label\ttext_a\n" + "\n".join(lines) + "\n")
        assert predictions("--dataset", str(mine)) == registry
