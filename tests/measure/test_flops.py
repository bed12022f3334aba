"""FLOPs accounting: the analytic counts agree with counters run on a real forward."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import BertConfig

from geep.baselines.fastbert import FastBERTHead
from geep.cli import main
from geep.measure import flops
from geep.measure.flops import EncoderDims
from geep.model.backbone import Backbone
from tests.helpers import assert_one_error_line, counted_flops, linear_only_flops

CONFIGS = ["bert-base", "minilm-l6"]


def forward_with_head(dims: EncoderDims, n: int, num_labels: int) -> tuple[nn.Module, callable]:
    """A random encoder of ``dims`` plus one FastBERT head, and a closure running one sample."""
    config = BertConfig(
        hidden_size=dims.hidden,
        num_hidden_layers=dims.num_layers,
        num_attention_heads=dims.num_heads,
        intermediate_size=dims.intermediate,
    )
    backbone = Backbone.from_config(config).eval()
    head = FastBERTHead(dims.hidden, num_labels, dropout=0.1).eval()
    ids = torch.randint(1000, 2000, (1, n))
    mask = torch.ones_like(ids)

    def run() -> torch.Tensor:
        with torch.no_grad():
            hidden, amask = backbone.embed(ids, mask, torch.zeros_like(ids))
            hidden = backbone.run_layers(hidden, amask, 0, dims.num_layers)
            return head(hidden, mask)

    return nn.ModuleList([backbone, head]), run


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("n", [16, 128])
def test_full_convention_matches_flop_counter(name: str, n: int) -> None:
    dims = flops.NAMED_DIMS[name]
    _, run = forward_with_head(dims, n, num_labels=3)
    analytic = flops.breakdown(dims, n, 3, "full")["total"]
    measured = counted_flops(run)
    assert abs(analytic - measured) / measured < 0.01, (analytic, measured)
    assert analytic == measured  # in fact exact


@pytest.mark.parametrize("name", CONFIGS)
def test_fastbert_convention_matches_linear_hooks(name: str) -> None:
    dims = flops.NAMED_DIMS[name]
    model, run = forward_with_head(dims, 40, num_labels=2)
    measured = linear_only_flops(model, run)
    assert flops.breakdown(dims, 40, 2, "fastbert")["total"] == measured


def test_conventions_differ_by_attention_matmuls_only() -> None:
    dims = flops.NAMED_DIMS["bert-base"]
    full = flops.breakdown(dims, 128, 2, "full")
    fast = flops.breakdown(dims, 128, 2, "fastbert")
    attention = 12 * 2 * (2 * 128 * 128 * 768) + 2 * (2 * 128 * 128 * 128)
    assert full["total"] - fast["total"] == attention
    # BERT-base at length 128, linear layers only: 12 x 2 x 128 x (4 x 768^2 + 2 x 768 x 3072).
    assert fast["layer.ffn (x12)"] + fast["layer.attention.qkv (x12)"] + fast[
        "layer.attention.output (x12)"
    ] == 12 * 2 * 128 * (4 * 768**2 + 2 * 768 * 3072)


def test_flops_cli_counts_what_a_real_forward_runs(tmp_path, capsys) -> None:
    """`geep flops` by name and by config file: its totals are the FLOP counter's and the
    linear hooks' on a random model of those dimensions with a head of --num-labels classes."""
    argv = ["flops", "--config", "minilm-l6", "--seq-len", "64", "--convention", "full"]
    assert main([*argv, "--num-labels", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    _, run = forward_with_head(flops.NAMED_DIMS["minilm-l6"], 64, num_labels=3)
    assert doc["components"]["total"] == counted_flops(run)
    config = tmp_path / "config.json"
    small = BertConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128
    )
    config.write_text(json.dumps(small.to_dict()))
    assert main(["flops", "--config", str(config), "--seq-len", "10", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    model, run = forward_with_head(flops.dims_for(str(config)), 10, num_labels=2)
    assert doc["dims"]["num_layers"] == 2 and doc["dims"]["hidden"] == 64
    assert doc["components"]["total"] == linear_only_flops(model, run)  # fastbert: linears


@pytest.mark.parametrize(
    "argv, message",
    [
        (["flops", "--config", "nope"], "unknown config 'nope'"),
        (["flops", "--config", "bert-base", "--seq-len", "0"], "is not a whole number >= 1"),
        (["flops", "--config", "bert-base", "--convention", "thop"], "invalid choice"),
    ],
)
def test_flops_cli_bad_input(argv, message, capsys) -> None:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse errors exit directly
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


BAD_CONFIGS = {
    "a string": ({"hidden_size": "768"}, "hidden_size must be a whole number >= 1, got '768'"),
    "zero": ({"num_hidden_layers": 0}, "num_hidden_layers must be a whole number >= 1, got 0"),
    "negative": ({"intermediate_size": -4}, "intermediate_size must be a whole number >= 1"),
    "a fraction": ({"num_attention_heads": 1.5}, "num_attention_heads must be a whole number"),
    "a boolean": ({"num_attention_heads": True}, "num_attention_heads must be a whole number"),
    "missing": ({"hidden_size": None}, "hidden_size is missing"),
    "heads not dividing": (
        {"num_attention_heads": 5},
        "hidden_size 64 must be divisible by num_attention_heads 5",
    ),
    "positions": ({"max_position_embeddings": 0}, "max_position_embeddings must be a whole"),
    "too long": ({"max_position_embeddings": 8}, "--seq-len 10 is longer than"),
}


@pytest.mark.parametrize("change, message", BAD_CONFIGS.values(), ids=list(BAD_CONFIGS))
def test_flops_cli_checks_every_field_of_a_config_first(change, message, tmp_path, capsys):
    fields = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    fields |= {"intermediate_size": 128, "max_position_embeddings": 64} | change
    config = tmp_path / "config.json"
    config.write_text(json.dumps({k: v for k, v in fields.items() if v is not None}))
    status = main(["flops", "--config", str(config), "--seq-len", "10"])
    out, err = capsys.readouterr()
    assert status == 2 and not out, out
    assert_one_error_line(err, message)


def test_flops_cli_refuses_a_config_that_is_not_json(tmp_path, capsys) -> None:
    config = tmp_path / "config.json"
    config.write_text("hidden_size: 64")
    assert main(["flops", "--config", str(config)]) == 2
    assert_one_error_line(capsys.readouterr().err, "is not a BERT config.json (not JSON)")
