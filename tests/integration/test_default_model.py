"""The default model ships with the repository (data/controlled/default-model/, `make default-model`): a
fresh clone installs it instead of training, it matches the code and data it claims to come from, its
recorded numbers are what it scores, and a fresh training reproduces it (`-m retrain`: minutes)."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from moe_reward.app import shipped as ship
from moe_reward.app.workspace import DEFAULT_MODEL, Workspace, file_id
from moe_reward.embed.features import PairFeatures
from moe_reward.evaluate.metrics import evaluate
from moe_reward.model.moe import SparseMoERewardModel

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ROOT / "data" / "controlled" / "features.safetensors"
SHIPPED = ROOT / "data" / "controlled" / ship.SHIPPED_DIR
REBUILD = "run `make default-model` (and commit data/controlled/default-model/)"


@pytest.fixture(scope="module")
def features() -> PairFeatures:
    return PairFeatures.load(FEATURES)


def test_the_shipped_model_matches_this_code_and_data(features):
    assert ship.problem(SHIPPED, FEATURES, features) is None, (
        f"{ship.problem(SHIPPED, FEATURES, features)}: {REBUILD}"
    )
    config = json.loads((SHIPPED / "config.json").read_text())
    req = ship.default_request(features)
    assert (config["kind"], config["num_experts"], config["top_k"]) == (req.kind, req.experts, req.top_k)
    assert config["input_dim"] == features.dim and config["backbone"] == features.metadata
    assert json.loads((SHIPPED / "metrics.json").read_text())["data"] == "controlled"
    # small enough for the repository
    assert sum((SHIPPED / f).stat().st_size for f in ship.MODEL_FILES) < 1_000_000


def test_the_shipped_numbers_are_what_the_shipped_model_scores(features):
    model = SparseMoERewardModel.from_pretrained(SHIPPED)
    metrics = json.loads((SHIPPED / "metrics.json").read_text())
    split = json.loads((SHIPPED / "split_ids.json").read_text())
    row = {pid: i for i, pid in enumerate(features.ids)}
    test = features.subset([row[pid] for pid in split[metrics["test_subset"]]])
    ev = evaluate(model, test)
    assert ev["n_pairs"] == metrics["test"]["n_pairs"] >= 500
    assert ev["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    assert ev["routing_nmi"] == pytest.approx(metrics["test"]["routing_nmi"], abs=1e-9)
    described = ship.descriptions(SHIPPED)
    assert described is not None and [d.expert for d in described] == list(range(model.num_experts))


def test_a_fresh_workspace_installs_the_shipped_model_without_training(tmp_path, monkeypatch, features):
    from moe_reward.app import pipeline

    def no_training(*_a, **_k):
        raise AssertionError("the default model was trained although the repository ships it")

    monkeypatch.setattr(pipeline, "train_from_data", no_training)
    ws = Workspace(tmp_path / "ws", data_dir=ROOT / "data")
    stages: list[str] = []
    out = ws.ensure_default(progress=lambda m, f: stages.append(m))
    assert ws.list_models() == [DEFAULT_MODEL] and any("ships with the repository" in m for m in stages)
    for name in ship.MODEL_FILES:
        assert filecmp.cmp(out / name, SHIPPED / name, shallow=False), name
    # its expert descriptions are where the dashboard and `moe-reward report` look them up
    cached = ws.descriptions_file(file_id(out), file_id(FEATURES))
    assert cached.is_file()
    assert [d.label for d in ws.descriptions_for(out, FEATURES, None, None, None)] == [
        d.label for d in ship.descriptions(SHIPPED) or []
    ]
    # the model directory in data/ is not offered as a data file
    assert all(ship.SHIPPED_DIR not in d.label for d in ws.list_data())


def test_a_shipped_model_that_no_longer_matches_is_trained_instead(tmp_path):
    """On tiny features: a model built by `build` is installed; change the features (or the recipe) and
    the same workspace call trains instead, and says why."""
    from app_workspace import tiny_features

    data = tmp_path / "data" / "controlled" / "features.safetensors"
    tiny_features(n_pairs=None).save(data)
    out, metrics = ship.build(data)
    assert out == data.parent / ship.SHIPPED_DIR and metrics["data"] == "controlled"
    feats = PairFeatures.load(data)
    assert ship.problem(out, data, feats) is None
    ws = Workspace(tmp_path / "a", data_dir=tmp_path / "data")
    installed = ws.ensure_default()
    assert filecmp.cmp(installed / "model.safetensors", out / "model.safetensors", shallow=False)

    tiny_features(seed=1, n_pairs=None).save(data)  # the features changed, the shipped model did not
    why = ship.problem(out, data, PairFeatures.load(data))
    assert why is not None and "another version of features.safetensors" in why
    stages: list[str] = []
    again = Workspace(tmp_path / "b", data_dir=tmp_path / "data").ensure_default(
        progress=lambda m, f: stages.append(m)
    )
    assert any(m.startswith("training the default model here") for m in stages)
    assert not filecmp.cmp(again / "model.safetensors", out / "model.safetensors", shallow=False)

    recorded = json.loads((out / "metrics.json").read_text())
    recorded["train_config"]["lr"] = 1.0
    assert any("train_config.lr" in d for d in ship.recipe_differences(recorded, ship.default_request(feats)))


def test_a_fresh_clone_opens_on_the_shipped_model(tmp_path, monkeypatch):
    """`streamlit run app.py` on an empty workspace: the Overview shows the shipped model's held-out
    accuracy at once, without training."""
    from streamlit.testing.v1 import AppTest

    from moe_reward.app import pipeline

    monkeypatch.setattr(pipeline, "train_from_data", lambda *a, **k: pytest.fail("trained on first start"))
    monkeypatch.setenv("MOE_REWARD_HOME", str(tmp_path / "fresh"))
    monkeypatch.setenv("MOE_REWARD_DATA_DIR", str(ROOT / "data"))
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = next(m for m in at.metric if m.label == "Accuracy")
    recorded = json.loads((SHIPPED / "metrics.json").read_text())["test"]
    assert shown.value == f"{recorded['accuracy']:.3f}" and shown.delta.startswith("held-out test split")


@pytest.mark.retrain
def test_a_fresh_training_reproduces_the_shipped_model(tmp_path, features):
    """Trains the default model again (minutes on 2 cores): the same config (router input, vocabulary)
    and the same held-out numbers within noise. Run with `pytest -m retrain` after changing training."""
    out, metrics = ship.build(FEATURES, out=tmp_path / "again")
    assert json.loads((out / "config.json").read_text()) == json.loads((SHIPPED / "config.json").read_text())
    shipped_test = json.loads((SHIPPED / "metrics.json").read_text())["test"]
    assert metrics["test"]["n_pairs"] == shipped_test["n_pairs"]
    assert abs(metrics["test"]["accuracy"] - shipped_test["accuracy"]) <= 0.02, REBUILD
    assert abs(metrics["test"]["routing_nmi"] - shipped_test["routing_nmi"]) <= 0.05, REBUILD
    assert np.isfinite(metrics["test"]["accuracy"])
