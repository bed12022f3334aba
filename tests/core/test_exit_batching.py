"""Batching dynamic exits (the ``batching`` option, geep.core.dynamic_exit): a sample's exit
layer and answer are its own under ``shrink``, ``regroup`` and ``keep``, at any batch size and
in either order, on trained checkpoints of every dynamic-exit method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geep.common.errors import GeepError
from geep.core.dynamic_exit import DynamicExitMethod, dynamic_exit, kept_exit, regrouped_exit
from geep.data.encoding import Encoded
from geep.measure.work import work_counts
from tests.helpers import (
    FASTBERT_TOY,
    LOGIT_NOISE,
    assert_same_where_clear,
    layer_logits,
    mixed_split,
    new_method,
    spread_speed,
    top_two_gap,
    trained_on_toy,
)

pytestmark = pytest.mark.kernels  # per-sample decisions on floats: also run under other CPU kernels

POLICIES = ["shrink", "regroup", "keep"]
CASES = {"fastbert": (), "deebert": (), "pabee": (), "geep": ("mode=dynamic",)}
RECIPES = {"fastbert": FASTBERT_TOY}  # the others learn the toy at new_method's recipe


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tiny_model: Path) -> DynamicExitMethod:
    name = request.param
    return trained_on_toy(new_method(name, tiny_model, *CASES[name], **RECIPES.get(name, {})))


def test_a_samples_exit_and_answer_do_not_depend_on_batching(trained) -> None:
    data = mixed_split(trained)
    speed = spread_speed(trained, data)
    base = trained.run(data, speed, 32)  # shrink, in length order
    exits = base.exit_layers.astype(int)
    assert np.bincount(exits).max() <= 0.95 * len(data), "nearly every sample exits alike"
    gaps = top_two_gap(layer_logits(trained, data))  # [N, L]: how far each argmax is from a tie
    label_margin = gaps[torch.arange(len(data)), torch.from_numpy(exits - 1)]
    if trained.name == "pabee":  # its exits follow the argmax at every layer up to the exit
        below = torch.arange(trained.num_layers) < torch.from_numpy(exits)[:, None]
        exit_margin = torch.where(below, gaps, torch.inf).min(dim=1).values
    else:  # the threshold lies in a gap: every exit decision is clear of it
        exit_margin = torch.full((len(data),), torch.inf)
    try:
        for policy in POLICIES:
            trained.configure([f"batching={policy}"])
            for batch_size in (1, 7, 32):
                for order in ("length", "input"):
                    out = trained.run(data, speed, batch_size, order=order)
                    case = f"{policy}, batch {batch_size}, {order} order"
                    assert_same_where_clear(
                        out.exit_layers, base.exit_layers, exit_margin, LOGIT_NOISE, f"exit, {case}"
                    )
                    assert_same_where_clear(
                        out.labels, base.labels, label_margin, LOGIT_NOISE, f"label, {case}"
                    )
    finally:
        trained.configure(["batching=shrink"])


def policy_logits(method: DynamicExitMethod, data: Encoded, speed: float, batch_size: int):
    """Each policy's logits [N, C], straight from the exit functions, in the data's order."""
    out = {}
    with torch.no_grad():
        shrink, keep = [], []
        for batch in data.batches(batch_size):
            rule = method.exit_rule(speed, len(batch.index))
            shrink.append(dynamic_exit(method.backbone, batch, method.exit_head, rule)[0])
            rule = method.exit_rule(speed, len(batch.index))
            keep.append(kept_exit(method.backbone, batch, method.exit_head, rule)[0])
        out["shrink"], out["keep"] = torch.cat(shrink), torch.cat(keep)
        regrouped = torch.empty_like(out["shrink"])
        rule = method.exit_rule(speed, len(data))
        batches = data.batches(batch_size)
        for index, logits, _ in regrouped_exit(
            method.backbone, batches, method.exit_head, rule, batch_size
        ):
            regrouped[index] = logits
        out["regroup"] = regrouped
    return out


def test_every_policy_answers_with_the_logits_of_each_samples_own_exit(trained) -> None:
    data = mixed_split(trained)
    logits = policy_logits(trained, data, spread_speed(trained, data), 7)
    for policy in ("regroup", "keep"):  # equal up to the noise of other batch shapes
        torch.testing.assert_close(logits[policy], logits["shrink"], atol=LOGIT_NOISE, rtol=0)


def test_regrouped_layers_run_fuller_at_the_same_flops_and_kept_batches_run_deeper(
    trained,
) -> None:
    data = mixed_split(trained)
    speed = spread_speed(trained, data)
    runs = {}
    try:
        for policy in POLICIES:
            trained.configure([f"batching={policy}"])
            runs[policy] = trained.run(data, speed, 7)
    finally:
        trained.configure(["batching=shrink"])
    rows = {p: work_counts(r.calls, len(data))["mean_layer_batch_rows"] for p, r in runs.items()}
    assert rows["shrink"] < rows["regroup"] and rows["shrink"] < rows["keep"]
    same = runs["regroup"].exit_layers == runs["shrink"].exit_layers
    assert same.mean() >= 0.9
    # a sample's useful FLOPs follow its exit under regroup; under keep, its batch's deepest exit
    assert (runs["regroup"].flops_full[same] == runs["shrink"].flops_full[same]).all()
    assert runs["keep"].flops_full.sum() > runs["shrink"].flops_full.sum()


def test_batching_is_checked(tiny_model: Path) -> None:
    method = new_method("fastbert", tiny_model)
    with pytest.raises(GeepError, match="option batching="):
        method.configure(["batching=pool"])
    with pytest.raises(GeepError, match="give mode=dynamic too"):
        new_method("geep", tiny_model).configure(["batching=regroup"])
