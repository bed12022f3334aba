"""The GPU bundle (geep.reproduce.bundle) on the tiny model and the toy dataset folder: what it
holds reads back as the suite encodes it, with float32 weights equal to the float16-rounded
originals; a damaged or missing file and an oversized bundle are refused; every method trains
on it and predicts, also in the GPU check; a trained model's exits carry over to a deeper model
at the same mean depth; and its command runs from a checkout that is not installed, as on the
offline GPU machine."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from geep.common.errors import GeepError
from geep.core.interface import Method
from geep.core.registry import get_method, method_names
from geep.model.train_state import this_process
from geep.pipeline.evaluate import load_split
from geep.pipeline.train import training_data
from geep.reproduce import gpu_check, profiles
from geep.reproduce.bundle import (
    DEVICE_LIMIT,
    MANIFEST,
    ROWS,
    WEIGHTS,
    Bundle,
    build_bundle,
    bundle_bytes,
    layer_shares,
    load_bundle,
    main,
    mapped_exit_layers,
    train_all,
    travel_budget,
)
from tests.helpers import assert_one_error_line, toy

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "bundle-test"  # smoke's recipe (1 epoch, length 32, 128 dev and test) on 48 samples
TRAIN = 48  # of the toy's 80: a seeded subset, as `geep train --max-train` takes


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private $GEEP_CACHE for the module (encoded splits, the float32 model folders), and
    the profile :data:`PROFILE` registered."""
    smoke = profiles.get_profile("smoke")
    recipe = replace(smoke, name=PROFILE, train=replace(smoke.train, max_train=TRAIN))
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv("GEEP_CACHE", str(folder))
        patch.setitem(profiles.PROFILES, PROFILE, recipe)
        yield folder


@pytest.fixture(scope="module")
def built(cache: Path, tiny_model: Path, toy_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "bundle"
    return build_bundle(out, str(toy_dir), PROFILE, str(tiny_model), limit=DEVICE_LIMIT)


@pytest.fixture(scope="module")
def bundle(built: Path) -> Bundle:
    return load_bundle(built)


@pytest.fixture(scope="module")
def trained(bundle: Bundle) -> dict[str, Method]:
    return train_all(bundle, "cpu")


def test_the_splits_read_back_as_the_suite_encodes_them(
    bundle: Bundle, tiny_model: Path, toy_dir: Path
) -> None:
    profile = profiles.get_profile(PROFILE)
    config = bundle.recipe("bert")
    assert config == profile.train_config("bert", str(toy_dir), profile.seeds[0])
    _, rows = training_data(str(toy_dir), config, this_process())
    bert = get_method("bert").create(str(tiny_model), bundle.labels, "toy", config)
    expected = {"train": bert.encode(rows["text"], labels=rows["label"])}
    for split in ("dev", "test"):
        expected[split] = load_split(bert, str(toy_dir), split, profile.max_eval).data
    for split, want in expected.items():
        got = getattr(bundle, split)
        assert len(got) == len(want) == bundle.manifest["samples"][split] > 0, split
        assert got.token_ids.dtype == want.token_ids.dtype, split
        assert np.array_equal(got.token_ids, want.token_ids), split
        for name in ("lengths", "second_start", "labels"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (split, name)
    assert len(bundle.train) == TRAIN < len(toy(80)[0])  # a subset of the toy's train split
    assert bundle.manifest["labels"] == rows.features["label"].names


def test_the_model_loads_in_float32_with_the_originals_rounded_to_float16(
    built: Path, bundle: Bundle, tiny_model: Path
) -> None:
    config = bundle.recipe("bert")
    method = get_method("bert").create(str(bundle.model), bundle.labels, "toy", config)
    assert {p.dtype for p in method.model.parameters()} == {torch.float32}
    loaded = method.backbone.encoder.state_dict()
    original = load_file(tiny_model / "model.safetensors")
    kept = torch.zeros(len(original["embeddings.word_embeddings.weight"]), dtype=torch.bool)
    kept[load_file(built / WEIGHTS)[ROWS]] = True
    used = np.concatenate([getattr(bundle, s).token_ids.ravel() for s in ("train", "dev", "test")])
    assert kept[torch.from_numpy(used.astype(np.int64))].all()
    assert kept[method.tokenizer.all_special_ids].all() and not kept.all()
    compared = 0
    for key, value in original.items():
        if key.startswith("pooler."):  # not in the backbone (Backbone keeps it aside)
            continue
        rounded = value.half().float() if value.is_floating_point() else value
        if key == "embeddings.word_embeddings.weight":
            assert torch.equal(loaded[key][kept], rounded[kept])
            assert not loaded[key][~kept].any()  # rows no split uses are zero
        else:
            assert torch.equal(loaded[key], rounded), key
        compared += not torch.equal(rounded, value)  # rounding changed it: the check can fail
    assert compared > 10


def test_a_damaged_or_missing_file_is_refused_by_name(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(built, copy)
    load_bundle(copy, model_dir=tmp_path / "model")  # whole: it loads
    data = copy / "data" / "test.safetensors"
    whole = data.read_bytes()
    data.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))
    with pytest.raises(GeepError, match=r"data/test\.safetensors is damaged \(its SHA-256"):
        load_bundle(copy)
    data.write_bytes(whole)
    (copy / "model" / "tokenizer.json").unlink()
    with pytest.raises(GeepError, match=r"model/tokenizer\.json is missing; build it again"):
        load_bundle(copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    del manifest["labels"]
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(GeepError, match=r"manifest\.json is damaged: labels is missing"):
        load_bundle(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(GeepError, match=r"is not a GPU bundle \(no manifest\.json\)"):
        load_bundle(copy)


def test_a_bundle_over_the_limit_is_refused_and_nothing_is_written(
    built: Path, cache: Path, tiny_model: Path, toy_dir: Path, tmp_path: Path
) -> None:
    size = sum(f.stat().st_size for f in built.rglob("*") if f.is_file())  # the manifest too
    listed = json.loads((built / MANIFEST).read_text())["bytes"]
    assert listed == size - (built / MANIFEST).stat().st_size
    out = tmp_path / "bundle"
    with pytest.raises(GeepError, match=r"the bundle would take [\d.]+ MB, over the [\d.]+ MB"):
        build_bundle(out, str(toy_dir), PROFILE, str(tiny_model), limit=size - 1)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    build_bundle(out, str(toy_dir), PROFILE, str(tiny_model), limit=size)  # exactly fits


def test_every_method_trains_on_the_bundle_and_predicts(
    bundle: Bundle, trained: dict[str, Method]
) -> None:
    assert list(trained) == method_names()
    for name, method in trained.items():
        assert method.info.train == bundle.recipe(name).to_dict()
        fresh = get_method(name).create(
            str(bundle.model), bundle.labels, "toy", bundle.recipe(name)
        )
        before = fresh.model.state_dict()
        assert any(not torch.equal(v, before[k]) for k, v in method.model.state_dict().items())
        assert method.info.label_names == bundle.labels
        for speed in (method.default_speeds()[0], method.default_speeds()[-1]):
            out = method.run(bundle.test, speed, 8)
            assert len(out.labels) == len(bundle.test) and (out.exit_layers >= 1).all(), name
    for name, method in trained.items():
        inference = method.inference_of(method.options)
        if inference in ("predicted", "token-exit"):  # GEEP's and HashEE's statistics: kept
            assert method.extras, name
    deebert = next(m for m in trained.values() if m.starts_from in trained)
    first = trained[deebert.starts_from].backbone.state_dict()
    second = deebert.backbone.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)  # stage 1 is bert's training


def test_training_is_seeded_as_geep_train_is(bundle: Bundle, trained: dict[str, Method]) -> None:
    again = train_all(bundle, "cpu", ["bert"])["bert"]
    first = trained["bert"].model.state_dict()
    assert all(torch.equal(v, first[k]) for k, v in again.model.state_dict().items())


def test_an_unknown_method_fails_before_any_training(bundle: Bundle) -> None:
    with pytest.raises(GeepError, match="nosuch"):
        train_all(bundle, "cpu", ["bert", "nosuch"])


# --- exits carried over to a deeper model --------------------------------------------------------


def test_layer_shares_keep_the_mean_exit_and_split_fractional_ones() -> None:
    shares = layer_shares(np.array([1.0, 2.0, 2.0, 3.25]), 4)
    assert shares.tolist() == [0.25, 0.5, 0.75 / 4, 0.25 / 4]
    exits = np.random.default_rng(0).uniform(1, 6, 500)
    shares = layer_shares(exits, 6)
    assert float(shares.sum()) == pytest.approx(1.0)
    assert float(shares @ torch.arange(1.0, 7, dtype=torch.float64)) == pytest.approx(exits.mean())


@pytest.mark.parametrize(
    ("source", "layers", "n"), [(6, 12, 2048), (6, 12, 37), (4, 12, 500), (6, 9, 999)]
)
def test_mapped_exits_keep_the_mean_depth_fraction(source: int, layers: int, n: int) -> None:
    for seed in range(5):
        shares = torch.from_numpy(np.random.default_rng(seed).dirichlet(np.ones(source)))
        exits = mapped_exit_layers(shares, layers, n, seed=seed)
        assert exits.shape == (n,) and exits.dtype == torch.int64
        assert int(exits.min()) >= 1 and int(exits.max()) <= layers
        depth = float(shares @ torch.arange(1.0, source + 1, dtype=torch.float64)) / source
        assert abs(exits.double().mean().item() / layers - depth) <= 0.5 / n + 1e-12


def test_six_layers_map_onto_the_even_layers_of_twelve() -> None:
    shares = torch.tensor([0.5, 0, 0, 0, 0.25, 0.25], dtype=torch.float64)
    exits = mapped_exit_layers(shares, 12, 8)
    assert sorted(exits.tolist()) == [2, 2, 2, 2, 10, 10, 12, 12]
    assert not torch.equal(exits, exits.sort().values)  # in random order, as synthetic targets


def test_the_gpu_checks_trained_check_trains_on_a_bundle(built: Path, tmp_path: Path) -> None:
    """``--bundle`` as on the GPU machine (here in a dry run, on the CPU): every method trained
    on the bundle's splits and measured on its test split, the bundle named in the results."""
    out = tmp_path / "check"
    argv = ["--dry-run", "--only", "trained", "--bundle", str(built), "--out", str(out)]
    assert gpu_check.main(argv) == 0
    (trained,) = json.loads((out / gpu_check.CHECK_FILE).read_text())["checks"]
    manifest = json.loads((built / MANIFEST).read_text())
    assert trained["details"]["bundle"]["dataset"] == manifest["dataset"]
    assert trained["details"]["bundle"]["profile"] == PROFILE
    rows = trained["details"]["rows"]
    assert {r["method"] for r in rows} == set(method_names())
    assert {r["n"] for r in rows} == {manifest["samples"]["test"]}


# --- the command -------------------------------------------------------------------------------


def test_the_command_explains_itself_and_refuses_bad_input_in_one_line(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    assert "python -m geep.reproduce.bundle --out gpu-bundle" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "b"), "--dataset", "nosuch"]) == 2
    assert_one_error_line(capsys.readouterr().err, "nosuch")
    assert main(["--out", str(tmp_path / "b"), "--profile", "nosuch"]) == 2
    assert_one_error_line(capsys.readouterr().err, "unknown profile 'nosuch'")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(["--out", str(tmp_path / "mine")]) == 2
    assert_one_error_line(capsys.readouterr().err, "geep did not write it")


def test_the_command_runs_from_a_checkout_that_is_not_installed() -> None:
    """As on the GPU machine: ``python -m`` in the checkout, geep not installed (no site hook,
    so no editable finder: only the libraries on PYTHONPATH); ``geep.baselines`` is then the
    checkout's baselines/ folder (geep/__init__.py) and every method registers."""
    libraries = ":".join(site.getsitepackages())
    code = (
        "import geep.baselines, geep.core.registry as r; "
        "print(geep.baselines.__file__); print(','.join(r.method_names()))"
    )
    env = {"PYTHONPATH": libraries, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    where, names = done.stdout.split()
    assert Path(where) == ROOT / "baselines" / "__init__.py"
    assert names.split(",") == method_names()
    help_ = [sys.executable, "-S", "-m", "geep.reproduce.bundle", "--help"]
    done = subprocess.run(help_, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "--out" in done.stdout, done.stderr


@pytest.mark.slow
def test_the_compare_bundle_of_the_embedded_model_fits_beside_the_checkout(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The real one: minilm-l6 and rotten-tomatoes from their pinned archives (cached after the
    first fetch), at ``compare``'s recipe."""
    out = tmp_path / "gpu-bundle"
    assert main(["--out", str(out)]) == 0
    assert "of the GPU machine's 64 MiB" in capsys.readouterr().out
    assert bundle_bytes(out) <= travel_budget(out)
    bundle = load_bundle(out)
    assert [len(bundle.train), len(bundle.dev), len(bundle.test)] == [2000, 1275, 1275]
    bert = get_method("bert").create(str(bundle.model), bundle.labels, "rt", bundle.recipe("bert"))
    assert bert.num_layers == 6 and bert.backbone.pooling == "mean"  # 1_Pooling came along
    assert {p.dtype for p in bert.model.parameters()} == {torch.float32}
