"""GEEP on a tiny random BERT: the one-step loss, exit prediction, sorted inference and FLOPs."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geep.baselines import fastbert
from geep.common.errors import GeepError
from geep.core.dynamic_exit import first_exit_layer
from geep.core.registry import load_checkpoint
from geep.data.encoding import Encoded
from geep.methods.exit_table import ExitTable
from geep.methods.geep import EXIT_RULES, Geep, GeepOptions, exit_quality, predict_exit_layers
from geep.reproduce.profiles import PROFILES
from geep.reproduce.units import load_unit
from tests.helpers import (
    LOGIT_NOISE,
    assert_same_where_clear,
    counted_flops,
    new_method,
    spread_exit_labels,
    threshold_in_gap,
    top_two_gap,
    toy,
    toy_test_split,
    trained_on_toy,
)

pytestmark = pytest.mark.kernels  # per-sample decisions on floats: also run under other CPU kernels


@pytest.fixture(scope="module")
def trained(tiny_model: Path) -> Geep:
    return trained_on_toy(new_method("geep", tiny_model))


@pytest.fixture(scope="module")
def test_data(trained: Geep) -> Encoded:
    return toy_test_split(trained)


def configured(method: Geep, *settings: str) -> Geep:
    """The same trained weights and exit statistics with other inference options."""
    info = type(method.info)(**{**vars(method.info), "options": dict(method.info.options)})
    copy = Geep(method.model, method.tokenizer, info, dict(method.extras))
    copy.configure(settings)
    return copy


def exit_path(method: Geep, data: Encoded, i: int, layer: int) -> torch.Tensor:
    """Logits [1, C] of sample ``i`` alone (unpadded): layers 1..``layer``, then its exit head."""
    batch = data.batch(torch.tensor([i]))
    hidden, mask = method.backbone.embed(**batch.inputs())
    hidden = method.backbone.run_layers(hidden, mask, 0, layer)
    if method.options.exit_head == "shared":
        return method.model.shared_exit_logits(layer, hidden, mask, batch.attention_mask)
    return method.model.exit_logits(layer, hidden, batch.attention_mask)


SPEED = 0.5


@pytest.fixture(scope="module")
def spread(trained: Geep) -> Geep:
    """The trained model with exit labels spread over the layers (:func:`spread_exit_labels`)."""
    method = configured(trained)
    spread_exit_labels(method)
    return method


# --- the one-step training loss ----------------------------------------------------------------


def naive_loss(method: Geep, batch, diverse: bool) -> torch.Tensor:
    """docs/methods.md's formula, recomputing every sub-network from the embeddings."""
    model, backbone = method.model, method.backbone
    num_layers = backbone.num_layers
    hidden, mask = backbone.embed(**batch.inputs())
    am, y = batch.attention_mask, batch.labels
    full = model.teacher(backbone.run_layers(hidden, mask, 0, num_layers), am)
    loss = F.cross_entropy(full, y)
    for k in range(1, num_layers - 1) if diverse else []:
        prefix = backbone.run_layers(hidden, mask, 0, k)
        top = backbone.run_layers(prefix, mask, num_layers - 1, num_layers)
        loss = loss + F.cross_entropy(model.teacher(top, am), y)
    teacher_p = F.softmax(full.detach(), dim=-1)
    for i, student in enumerate(model.students, start=1):
        log_q = F.log_softmax(student(backbone.run_layers(hidden, mask, 0, i), am), dim=-1)
        loss = loss + (teacher_p * (teacher_p.log() - log_q)).sum(-1).mean()
    return loss


@pytest.mark.parametrize("teacher_inputs", ["diverse", "last"])
def test_one_step_loss_equals_the_formula(tiny_model: Path, teacher_inputs: str) -> None:
    method = new_method("geep", tiny_model, f"teacher_inputs={teacher_inputs}")
    method.model.eval()  # no dropout, so both computations see the same network
    texts, labels = toy(6)
    batch = method.encode(texts, labels=labels).batch(torch.arange(6))
    fast = method.model(batch)
    slow = naive_loss(method, batch, diverse=teacher_inputs == "diverse")
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)


def easynlp_loss(method: Geep, batch, exit_num: int) -> torch.Tensor:
    """EasyNLP's GEEP training loss, transcribed on the suite's heads: the encoder's train mode
    (``GEEPEncoder.forward``, easynlp/modelzoo/models/geep/modeling_geep.py) runs, for each
    skip in 1..L-1 chosen (1..exit_num, and L-1: the full stack), layers 1..skip then the last
    layer, keeping the last layer's input; ``compute_loss``
    (easynlp/appzoo/geep_classification/model.py) sums the teacher's NLL on every output and
    KL(batchmean) from the full output's teacher to the students on the kept inputs but the
    last."""
    backbone, model = method.backbone, method.model
    num_layers = backbone.num_layers
    embedded, mask = backbone.embed(**batch.inputs())
    am, y = batch.attention_mask, batch.labels
    chosen = [*range(1, exit_num + 1), num_layers - 1]  # 0-based skip: layers 0..skip-1
    outputs, sub_hidden_states = [], []
    for skip_layer in range(1, num_layers):
        if skip_layer not in chosen:
            continue
        hidden = embedded
        for i in [*range(skip_layer), num_layers - 1]:
            if i == num_layers - 1:
                sub_hidden_states.append(hidden)
            hidden = backbone.run_layers(hidden, mask, i, i + 1)
        outputs.append(hidden)
    logits_list = [model.teacher(hidden, am) for hidden in outputs]
    log_softmax, criterion = torch.nn.LogSoftmax(dim=-1), torch.nn.NLLLoss()
    loss1 = sum(criterion(log_softmax(logits), y) for logits in logits_list)
    teacher_probs = F.softmax(logits_list[-1], dim=1).detach()
    soft_criterion = torch.nn.KLDivLoss(reduction="batchmean")
    loss2 = sum(
        soft_criterion(log_softmax(model.students[i](sub_hidden_states[i], am)), teacher_probs)
        for i in range(len(logits_list) - 1)
    )
    return loss1 + loss2


def test_the_loss_with_exit_num_l_minus_2_is_easynlps(tiny_model: Path) -> None:
    """With students after layers 1..L-2 (``exit_num=L-2``) the one-step loss is EasyNLP's on
    the same weights and batch; the default adds one KL term, its student after layer L-1."""
    texts, labels = toy(6)
    easy = new_method("geep", tiny_model, "exit_num=2")  # the tiny encoder has L = 4
    easy.model.eval()  # no dropout, so both computations see the same network
    batch = easy.encode(texts, labels=labels).batch(torch.arange(6))
    assert len(easy.model.students) == 2
    assert easy.model(batch).item() == pytest.approx(easynlp_loss(easy, batch, 2).item(), rel=1e-5)

    default = new_method("geep", tiny_model)
    default.model.eval()
    hidden, mask = default.backbone.embed(**batch.inputs())
    h3 = default.backbone.run_layers(hidden, mask, 0, 3)
    full = default.model.teacher(default.backbone.run_layers(h3, mask, 3, 4), batch.attention_mask)
    log_q = F.log_softmax(default.model.students[2](h3, batch.attention_mask), dim=-1)
    extra = F.kl_div(log_q, F.softmax(full, dim=-1), reduction="batchmean")
    expected = easynlp_loss(default, batch, 2) + extra
    assert default.model(batch).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["mode=predict", "mode=dynamic", "batching=regroup"])
def test_with_students_after_layers_1_to_e_samples_exit_there_or_at_l(
    tiny_model: Path, mode: str
) -> None:
    """``exit_num=1`` on a 4-layer encoder: one student, after layer 1; no statistic, exit or
    head after layers 2 and 3; every FLOPs count has a head at layer 1 and the teacher at 4."""
    method = trained_on_toy(new_method("geep", tiny_model, "exit_num=1", epochs=2))
    settings = [mode] if mode != "batching=regroup" else ["mode=dynamic", mode]
    method.configure(settings)
    data = toy_test_split(method)
    statistics = method.exit_statistics(data)
    assert torch.isfinite(statistics[:, 0]).all() and torch.isinf(statistics[:, 1:]).all()
    for speed in (0.3, 0.7, 1.0):
        out = method.run(data, speed, 8)
        assert set(out.exit_layers.tolist()) <= {1.0, 4.0}
        layers = out.exit_layers.astype(int)
        heads = 1 + (layers == 4) if mode != "mode=predict" else 1
        expected = method.sample_flops(data.lengths.numpy(), layers, heads, "full")
        np.testing.assert_allclose(out.flops_full, expected)
    if mode != "mode=predict":
        return
    for rule in EXIT_RULES:  # at speed 1 nearly every training sample exits at layer 1
        method.configure([f"exit_rule={rule}", "exit_margin=0"])
        assert set(method.predict_layers(data, 1.0).tolist()) <= {1, 4}  # `mean`: 2 -> 4
        method.configure(["exit_margin=1"])  # no student after layer 2: on to layer 4
        assert set(method.predict_layers(data, 1.0).tolist()) == {4}


def test_exit_num_must_leave_a_layer_for_the_teacher(tiny_model: Path) -> None:
    with pytest.raises(GeepError, match=r"exit_num must lie in 1\.\.3 for this 4-layer encoder"):
        new_method("geep", tiny_model, "exit_num=4")
    with pytest.raises(GeepError, match="exit_num must be >= 0"):
        new_method("geep", tiny_model, "exit_num=-1")


def test_student_step_leaves_backbone_and_teacher_untouched(tiny_model: Path) -> None:
    method = new_method("geep", tiny_model)
    texts, labels = toy(6)
    batch = method.encode(texts, labels=labels).batch(torch.arange(6))
    method.model(batch, terms="students").backward()
    frozen = [*method.backbone.parameters(), *method.model.teacher.parameters()]
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in method.model.students.parameters())


def test_two_step_training_freezes_the_first_step(tiny_model: Path, monkeypatch) -> None:
    method = new_method("geep", tiny_model, "training=two-step", epochs=1)
    texts, labels = toy(16)
    seen: list[tuple[str, float]] = []
    real_loop = fastbert.train_loop

    def spy(model, params, data, config, lr=None, desc="", **kwargs):
        seen.append((kwargs.get("terms", "all"), lr or config.lr))
        if kwargs.get("terms") == "students":
            before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
            out = real_loop(model, params, data, config, lr=lr, desc=desc, **kwargs)
            after = model.backbone.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before)
            return out
        return real_loop(model, params, data, config, lr=lr, desc=desc, **kwargs)

    monkeypatch.setattr("geep.baselines.fastbert.train_loop", spy)
    method.fit(method.encode(texts, labels=labels))
    assert seen == [("teacher", 3e-3), ("students", 3e-2)]  # step 2 at 10x the learning rate


# --- exit prediction -----------------------------------------------------------------------------


def hand_table() -> ExitTable:
    """Four layers. Token 10 exits at layer 1 three times: counts (3, 0, 0, 0); token 11 at
    layers 2, 4, 4, 4: (0, 1, 0, 3); token 12 at layer 4: (0, 0, 0, 1)."""
    table = ExitTable(num_layers=4)
    table.add(
        torch.tensor([10, 10, 10, 11, 11, 11, 11, 12]), torch.tensor([1, 1, 1, 2, 4, 4, 4, 4])
    )
    return table


def test_predicted_layer_follows_the_rule_on_a_hand_built_table() -> None:
    table = hand_table()
    keys = torch.tensor([[10, -1], [11, -1], [10, 11], [99, -1], [10, 12]])
    median = predict_exit_layers(table, keys, "quantile", 0.5, 0)
    # [10, 11] averages (1,0,0,0) and (0,.25,0,.75) -> (.5,.125,0,.375): the median is layer 1
    assert median.tolist() == [1, 4, 1, 4, 1]  # 99 is unknown -> L
    assert predict_exit_layers(table, keys, "quantile", 0.6, 0).tolist() == [1, 4, 2, 4, 4]
    # expected layers: 1, 3.5, 2.25, -, 2.5 -> rounded up
    assert predict_exit_layers(table, keys, "mean", 0.5, 0).tolist() == [1, 4, 3, 4, 3]
    assert predict_exit_layers(table, keys, "quantile", 0.5, 1).tolist() == [2, 4, 2, 4, 2]


def test_the_loglik_rule_combines_smoothed_token_distributions_geometrically() -> None:
    table = hand_table()
    keys = torch.tensor([[10, -1], [11, -1], [10, 11], [99, -1], [12, 11]])
    # smoothed: 10 -> (4,1,1,1)/7, 11 -> (1,2,1,4)/8, 12 -> (1,1,1,2)/5. [10, 11]: the
    # geometric mean is proportional to sqrt(4*1, 1*2, 1*1, 1*4) = (2, 1.41, 1, 2): cumulative
    # 0.31, 0.53 -> the median is layer 2 (the mean of the distributions gives layer 1).
    # [12, 11]: sqrt(1, 2, 1, 8) = (1, 1.41, 1, 2.83) -> 0.16, 0.38, 0.54: layer 3.
    # token 11 alone: (1,2,1,4)/8 reaches 0.5 at layer 3
    assert predict_exit_layers(table, keys, "loglik", 0.5, 0).tolist() == [1, 3, 2, 4, 3]
    # at 0.6: token 10 alone, (4,1,1,1)/7, has 0.57 at layer 1; [10, 11] 0.69 at layer 3
    assert predict_exit_layers(table, keys, "loglik", 0.6, 0).tolist() == [2, 4, 3, 4, 4]


def test_the_idf_rule_discounts_tokens_most_samples_hold() -> None:
    # 8 training samples: token 1 (a stop word) in all of them, token 2 in the first two only
    keys = torch.tensor([[1, 2]] * 2 + [[1, -1]] * 6)
    table = ExitTable.from_samples(keys, torch.tensor([1, 1, 3, 3, 3, 3, 3, 3]), num_layers=3)
    # the mean of (2, 0, 6)/8 and (1, 0, 0) is (0.625, 0, 0.375): layer 1; with idf weights
    # log(9/8) = 0.118 and log(9/2) = 1.504, the stop word weighs 7% and layer 1 holds 95%
    sample = torch.tensor([[1, 2]])
    assert predict_exit_layers(table, sample, "quantile", 0.7, 0).tolist() == [3]
    assert predict_exit_layers(table, sample, "idf", 0.7, 0).tolist() == [1]
    assert predict_exit_layers(table, sample, "idf", 0.98, 0).tolist() == [3]
    assert table.samples == 8
    by_hand = ExitTable(num_layers=3)
    by_hand.add(torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(GeepError, match="idf needs the table's sample count"):
        predict_exit_layers(by_hand, sample, "idf", 0.5, 0)


def test_the_deepest_rule_takes_the_deepest_of_the_tokens_own_layers() -> None:
    table = hand_table()
    keys = torch.tensor([[10, -1], [11, -1], [10, 11], [99, -1], [10, 99]])
    # own median layers: 10 -> 1, 11 -> 4 (cumulative 0, .25, .25, 1); 12 -> 4
    assert predict_exit_layers(table, keys, "deepest", 0.5, 0).tolist() == [1, 4, 4, 4, 1]
    # at 0.25 token 11's own layer is 2
    assert predict_exit_layers(table, keys, "deepest", 0.25, 0).tolist() == [1, 2, 2, 4, 1]
    assert predict_exit_layers(table, keys, "deepest", 0.25, 1).tolist() == [2, 3, 3, 4, 2]


def test_exit_quality_counts_early_and_late_exits() -> None:
    q = exit_quality(np.array([1, 2, 3, 4]), np.array([2, 2, 2, 4]))
    assert q["exit_mae"] == 0.5 and q["exit_exact"] == 0.5
    assert q["exit_too_early"] == 0.25 and q["exit_too_late"] == 0.25


def choose_rule(method: Geep, dev: Encoded, monkeypatch, speedup: float) -> dict:
    monkeypatch.setattr("geep.methods.geep.RULE_SPEEDUP", speedup)
    return method.choose_on_dev(dev, 8)


def test_the_exit_rule_with_the_best_dev_accuracy_at_matched_flops_is_chosen(
    spread: Geep, monkeypatch
) -> None:
    texts, labels = toy(40, seed=5)
    dev = spread.encode(texts, labels=labels)
    try:
        choice = choose_rule(spread, dev, monkeypatch, 1.1)
        assert [row["rule"] for row in choice["compared"]] == list(EXIT_RULES)
        reached = [row for row in choice["compared"] if row["reached"]]
        assert len(reached) >= 3 and all(row["dev_speedup_full"] >= 1.1 for row in reached)
        best = max(reached, key=lambda row: (row["dev_accuracy"], -row["exit_mae"]))
        assert choice["chosen"] == best["rule"] == spread.options.exit_rule
        assert len({row["exit_mae"] for row in reached}) > 1  # the rules do differ here
        never = choose_rule(spread, dev, monkeypatch, 100.0)
        assert not any(row["reached"] for row in never["compared"])
        assert never["chosen"] == "quantile" == spread.options.exit_rule
    finally:
        spread.configure(["exit_rule=quantile"])


def test_the_exit_rule_choice_does_not_change_with_the_test_labels(
    spread: Geep, monkeypatch
) -> None:
    """Through the profiles' loading of a unit (geep.reproduce.units.load_unit): its test split's
    labels flipped, the rule chosen and every figure of the comparison stay the same."""
    monkeypatch.setattr("geep.methods.geep.RULE_SPEEDUP", 1.1)
    texts, labels = toy(40, seed=5)
    dev = spread.encode(texts, labels=labels)
    test = toy_test_split(spread)
    flipped = spread.encode(toy(40, seed=3)[0], labels=[1 - y for y in toy(40, seed=3)[1]])
    profile = PROFILES["smoke"]
    monkeypatch.setattr("geep.reproduce.units.checkpoint", lambda *args: Path("unused"))
    monkeypatch.setattr("geep.reproduce.units.prepare_checkpoint", lambda path: spread)
    choices = []
    for split in (test, flipped):
        splits = {"dev": dev, "test": split}
        monkeypatch.setattr(
            "geep.reproduce.units.load_split",
            lambda method, dataset, name, n, splits=splits: SimpleNamespace(data=splits[name]),
        )
        try:
            loaded = load_unit(profile, "geep", "toy", 1)
            assert loaded.test is split
            choices.append(loaded.sweep["choice"])
        finally:
            spread.configure(["exit_rule=quantile"])
    assert choices[0] == choices[1]
    assert choices[0]["split"] == "dev" and choices[0]["samples"] == len(dev)


def test_speed_zero_runs_every_sample_through_all_layers(trained: Geep, test_data) -> None:
    out = trained.run(test_data, 0.0, 8)
    assert out.exit_layers.tolist() == [trained.num_layers] * len(test_data)
    full = trained.full_depth_flops(test_data.lengths.numpy(), "full")
    assert (out.flops_full == full).all()


def test_options_are_checked(trained: Geep) -> None:
    with pytest.raises(GeepError, match=r"choose one of student\|shared"):
        configured(trained, "exit_head=middle")
    with pytest.raises(GeepError, match="exit_quantile must lie in"):
        configured(trained, "exit_quantile=1.5")
    with pytest.raises(GeepError, match="fixed when the model is trained"):
        configured(trained, "training=two-step")
    assert GeepOptions().with_settings(["ngram=2"]).ngram == 2


# --- sorted inference ----------------------------------------------------------------------------


def test_plan_groups_by_layer_keeps_the_order_within_and_cuts_full_batches(spread, test_data):
    by_length = test_data.select(torch.argsort(test_data.lengths, stable=True))
    for data in (test_data, by_length):  # input order, and the length order run() gives
        plan = spread.plan(data, SPEED, 8)
        layers = [layer for layer, _ in plan.batches]
        assert layers == sorted(layers) and len(set(layers)) >= 3
        for layer, index in plan.batches:
            assert (plan.layers[index] == layer).all()
            assert (index.diff() > 0).all()  # the order the samples came in, within a layer
        for layer in set(layers):  # only a layer's last batch may be short
            sizes = [len(index) for k, index in plan.batches if k == layer]
            assert all(size == 8 for size in sizes[:-1])
        seen = torch.cat([index for _, index in plan.batches]).sort().values
        assert seen.tolist() == list(range(len(data)))
    plan = spread.plan(by_length, SPEED, 8)
    assert all((by_length.lengths[index].diff() >= 0).all() for _, index in plan.batches)


@pytest.mark.parametrize("head", ["student", "shared"])
def test_each_batch_runs_exactly_its_layers_and_one_head(spread, test_data, head) -> None:
    """Acceptance 3: the layer and head calls of sorted batches equal the predicted ones."""
    method = configured(spread, f"exit_head={head}")
    num_layers = method.num_layers
    calls: list[tuple[str, int]] = []  # (module, batch rows) in call order
    modules = {f"layer{i}": m for i, m in enumerate(method.backbone.encoder.encoder.layer, 1)}
    modules |= {f"student{i}": m for i, m in enumerate(method.model.students, 1)}
    modules["teacher"] = method.model.teacher
    hooks = [
        m.register_forward_hook(lambda m, a, o, name=name: calls.append((name, a[0].shape[0])))
        for name, m in modules.items()
    ]
    try:
        with torch.inference_mode():
            results = list(method.predict_batches(test_data, SPEED, 8))
    finally:
        for hook in hooks:
            hook.remove()
    plan = method.plan(test_data, SPEED, 8)
    expected = []
    for layer, index in plan.batches:
        rows = len(index)
        expected += [(f"layer{k}", rows) for k in range(1, layer + 1)]
        if layer == num_layers:
            expected.append(("teacher", rows))
        elif head == "student":
            expected.append((f"student{layer}", rows))
        else:
            expected += [(f"layer{num_layers}", rows), ("teacher", rows)]
    assert calls == expected
    ran = torch.cat([r.exit_layers for r in results])
    predicted = torch.cat([plan.layers[index] for _, index in plan.batches]).double()
    extra = (predicted < num_layers).double() if head == "shared" else 0
    assert torch.equal(ran, predicted + extra)


def test_predictions_do_not_depend_on_batch_size_or_order(spread, test_data) -> None:
    """Acceptance 2: a sample's label and exit layer are its own. Exit layers come from integer
    table counts and must match exactly; labels wherever the exit head's top two logits are
    clear of a tie (batch rows and padding change the logits' last bits)."""
    base = spread.run(test_data, SPEED, 8)
    layers = spread.plan(test_data, SPEED, 8).layers
    with torch.no_grad():
        margin = torch.stack(
            [
                top_two_gap(exit_path(spread, test_data, i, int(layers[i]))[0])
                for i in range(len(test_data))
            ]
        )
    for batch_size in (1, 3, 40):
        other = spread.run(test_data, SPEED, batch_size)
        assert (other.exit_layers == base.exit_layers).all()
        assert_same_where_clear(
            other.labels, base.labels, margin, LOGIT_NOISE, f"label at {batch_size}"
        )
    perm = torch.randperm(len(test_data), generator=torch.Generator().manual_seed(0))
    shuffled = spread.run(test_data.select(perm), SPEED, 8)
    assert (shuffled.exit_layers == base.exit_layers[perm.numpy()]).all()
    assert_same_where_clear(
        shuffled.labels, base.labels[perm.numpy()], margin[perm], LOGIT_NOISE, "label"
    )


def test_flops_count_what_ran(spread, test_data) -> None:
    """A sample's full-convention FLOPs equal a FLOP counter on its own exit path."""
    for head in ("student", "shared"):
        method = configured(spread, f"exit_head={head}")
        out = method.run(test_data, SPEED, 8)
        layers = method.plan(test_data, SPEED, 8).layers
        for i in range(0, len(test_data), 7):
            path = partial(exit_path, method, test_data, i, int(layers[i]))
            with torch.no_grad():
                assert out.flops_full[i] == counted_flops(path), (head, i)
    assert (out.flops_fastbert < out.flops_full).all()


def test_dynamic_mode_exits_where_the_students_become_confident(
    trained: Geep, test_data: Encoded
) -> None:
    """FastBERT's rule on GEEP's weights; a head ran after every layer a sample went through."""
    method = configured(trained, "mode=dynamic")
    uncertainty = trained.exit_statistics(test_data)  # [N, L-1]
    speed = threshold_in_gap(
        uncertainty, lambda t: len(first_exit_layer(uncertainty, t).unique()) > 1
    )
    out = method.run(test_data, speed, 8)
    oracle = first_exit_layer(uncertainty, speed).numpy()
    assert len(set(oracle)) > 1
    assert (out.exit_layers == oracle).all()
    for i in range(0, len(test_data), 7):
        batch = test_data.batch(torch.tensor([i]))

        def path(batch=batch, exit_layer=int(oracle[i])) -> None:
            hidden, mask = method.backbone.embed(**batch.inputs())
            for layer in range(1, exit_layer + 1):
                hidden = method.backbone.run_layers(hidden, mask, layer - 1, layer)
                method.model.exit_logits(layer, hidden, batch.attention_mask)

        with torch.no_grad():
            assert out.flops_full[i] == counted_flops(path), i


def test_diagnostics_compare_the_predictor_with_the_oracle(spread, test_data) -> None:
    out = spread.run(test_data, SPEED, 8)
    quality = spread.diagnostics(test_data, SPEED, out)
    assert set(quality) >= {"exit_mae", "exit_too_early", "exit_exact"}
    assert spread.diagnostics(test_data, 0.0, out)["exit_mae"] == 0.0  # both say L
    assert configured(spread, "mode=dynamic").diagnostics(test_data, SPEED, out) == {}


def test_checkpoint_keeps_the_exit_statistics(spread, test_data, tmp_path) -> None:
    path = spread.save(tmp_path / "geep")
    loaded = load_checkpoint(path)
    assert isinstance(loaded, Geep)
    for name, tensor in spread.extras.items():
        assert torch.equal(loaded.extras[name], tensor), name
    a, b = spread.run(test_data, SPEED, 8), loaded.run(test_data, SPEED, 8)  # same batches
    assert (a.labels == b.labels).all() and (a.exit_layers == b.exit_layers).all()
    (path / "extras.safetensors").write_bytes(b"\x00" * 8)
    with pytest.raises(GeepError, match=r"extras\.safetensors is not the file that was saved"):
        load_checkpoint(path)
