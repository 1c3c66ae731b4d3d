"""Per-expert statistics (evaluate/experts.py, metrics.expert_top_accuracy) and expert names (model/moe.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moe_reward.app.workspace import model_id
from moe_reward.data.pairs import PreferencePair
from moe_reward.embed.features import PairFeatures
from moe_reward.evaluate.experts import describe_unused, expert_title, summarize_experts, unused_experts
from moe_reward.evaluate.metrics import evaluate, expert_top_accuracy, score_pairs
from moe_reward.model.moe import ModelConfig, SparseMoERewardModel, set_expert_name

D = 4


def two_criteria(n: int = 40) -> PairFeatures:
    """Half the prompts carry cue A (prompt[0] = +1, the chosen response is +e1), half cue B (prompt[0] =
    -1, the chosen response is -e1): two opposite criteria."""
    prompt = np.zeros((n, D), np.float32)
    chosen = np.zeros((n, D), np.float32)
    rejected = np.zeros((n, D), np.float32)
    pairs = []
    for i in range(n):
        a = i % 2 == 0
        prompt[i, 0] = 1.0 if a else -1.0
        prompt[i, 2] = 0.01 * i  # distinct prompts
        chosen[i, 1], rejected[i, 1] = (1.0, -1.0) if a else (-1.0, 1.0)
        pairs.append(PreferencePair(f"p{i}", f"c{i}", f"r{i}", group="A" if a else "B", id=f"x{i}"))
    return PairFeatures(prompt, chosen, rejected, pairs, {})


def perfect_top2_model(k: int = 2) -> SparseMoERewardModel:
    """E0 rewards +e1 and leads cue-A prompts, E1 rewards -e1 and leads cue-B prompts; top-2 of k, so
    both take part in every pair (with k > 2 the other experts are never chosen first)."""
    model = SparseMoERewardModel(ModelConfig(kind="sparse", input_dim=D, num_experts=k, top_k=2))
    with torch.no_grad():
        model.router.weight.zero_()
        model.router.bias.zero_()
        model.router.weight[0, 0], model.router.weight[1, 0] = 3.0, -3.0
        if k > 2:
            model.router.bias[2:] = -1.0  # always below the leader: second at most
        model.head.zero_()
        model.head[0, 1], model.head[1, 1] = 1.0, -1.0
    return model.eval()


def test_a_perfect_top2_expert_reads_perfect():
    feats, model = two_criteria(), perfect_top2_model()
    s = score_pairs(model, feats)
    assert ((s.routing > 0).sum(1) == 2).all()  # top-2 of 2: both experts in every pair
    # the old number ("accuracy where routed": own margin on every pair it takes part in) reads 0.5
    assert [float(s.expert_correct[s.routing[:, e] > 0, e].mean()) for e in range(2)] == [0.5, 0.5]
    ev = evaluate(model, feats)
    assert ev["accuracy"] == 1.0
    assert ev["expert_top_accuracy"] == [1.0, 1.0]  # the number a card leads with: perfect
    rows = summarize_experts(s)
    assert [r.top_accuracy for r in rows] == [1.0, 1.0]
    assert [r.own_top_accuracy for r in rows] == [1.0, 1.0]
    assert [r.n_top for r in rows] == [20, 20] and [r.n_routed for r in rows] == [40, 40]
    assert rows[0].top_share == 0.5 and rows[0].title == "E0"


def test_expert_top_accuracy_uses_the_overall_accuracy_per_pair_and_none_where_no_pair():
    feats, model = two_criteria(), perfect_top2_model(k=3)
    s = score_pairs(model, feats)
    # flip a quarter of the labels: the model is now wrong on those pairs
    flipped = PairFeatures(feats.prompt, feats.chosen.copy(), feats.rejected.copy(), feats.pairs, {})
    flipped.chosen[:10], flipped.rejected[:10] = feats.rejected[:10], feats.chosen[:10]
    ev = evaluate(model, flipped)
    top = ev["expert_top_accuracy"]
    assert top[2] is None  # E2 leads no pair
    s = score_pairs(model, flipped)
    counts = np.bincount(s.top_expert, minlength=3)
    # averaged over the pairs each expert leads, it is the overall accuracy (one per-pair correctness)
    assert sum(
        t * c for t, c in zip(top, counts, strict=True) if t is not None
    ) / counts.sum() == pytest.approx(ev["accuracy"])
    assert top[0] == pytest.approx(float(s.correct[s.top_expert == 0].mean()))
    assert top[0] < 1.0
    # the helper takes any per-pair credit (ties counted as half stay half)
    assert expert_top_accuracy(np.array([0, 0, 1]), np.array([1.0, 0.5, 0.0]), 3) == [0.75, 0.0, None]


def test_unused_experts_are_listed_once():
    feats, model = two_criteria(), perfect_top2_model(k=5)
    s = score_pairs(model, feats)
    assert unused_experts(s) == [2, 3, 4]
    line = describe_unused([2, 3, 4], len(feats))
    assert line.startswith("3 unused experts (E2, E3, E4)") and "40 pairs" in line
    assert describe_unused([], 10) == ""
    rows = summarize_experts(s, index=np.arange(10))
    assert [r.used for r in rows] == [True, True, False, False, False] and rows[0].n_pairs == 10


def test_expert_title():
    assert expert_title(3, ["", "", "", "brevity"]) == "E3 · brevity"
    assert expert_title(3, ["a"]) == "E3" and expert_title(0, None) == "E0"


def test_naming_an_expert_rewrites_only_config_json(tmp_path):
    model = perfect_top2_model(k=3)
    out = model.save_pretrained(tmp_path / "m", metrics={"test": {"accuracy": 1.0}})
    weights = (out / "model.safetensors").read_bytes()
    metrics = (out / "metrics.json").read_bytes()
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    before_model_id = model_id(out)
    set_expert_name(out, 1, "  brevity  ")
    loaded = SparseMoERewardModel.from_pretrained(out)
    assert loaded.config.expert_names == ["", "brevity"]
    assert (out / "model.safetensors").read_bytes() == weights
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert (out / "metrics.json").read_bytes() == metrics
    assert model_id(out) == before_model_id  # scores, descriptions and maps stay cached
    config = json.loads((out / "config.json").read_text())
    assert config["expert_names"] == ["", "brevity"] and config["num_experts"] == 3
    with pytest.raises(ValueError, match="E1 is already named 'brevity'"):
        set_expert_name(out, 2, "Brevity")
    for bad, why in (("x" * 41, "at most 40"), ("two\nlines", "printable"), ("tab\there", "printable")):
        with pytest.raises(ValueError, match=why):
            set_expert_name(out, 0, bad)
    with pytest.raises(ValueError, match=r"expert must be in \[0, 2\]"):
        set_expert_name(out, 3, "x")
    set_expert_name(out, 1, "")  # removes it
    assert SparseMoERewardModel.from_pretrained(out).config.expert_names == []
    assert not list(out.glob(".*.tmp"))  # written atomically, nothing left behind


def test_a_config_with_bad_expert_names_is_refused():
    with pytest.raises(ValueError, match="expert_names has 3 names for 2 experts"):
        ModelConfig(kind="sparse", input_dim=4, num_experts=2, top_k=1, expert_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"expert_names\[0\]"):
        ModelConfig(kind="sparse", input_dim=4, num_experts=2, top_k=1, expert_names=["a\nb"])


def test_expert_groups_and_pairs_on_a_subset():
    from moe_reward.evaluate.experts import expert_groups, expert_pairs

    feats, model = two_criteria(), perfect_top2_model()
    s = score_pairs(model, feats)
    groups = np.array([p.group for p in feats.pairs])
    index = np.arange(0, 40, 3)  # a subset: rows 0, 3, 6, ...
    rows = expert_groups(s, groups, 0, index, order=["B", "A"])
    assert [r.group for r in rows] == ["B", "A"]
    a = rows[1]
    in_a = [i for i in index if groups[i] == "A"]
    assert (a.n, a.n_top, a.own_accuracy, a.top_accuracy) == (len(in_a), len(in_a), 1.0, 1.0)
    b = rows[0]
    assert (b.n_top, b.own_accuracy, b.top_accuracy) == (0, 0.0, None)  # E0 never leads B, and is wrong there
    top, big = expert_pairs(s, 0, index, top=3)
    assert set(top) <= set(index) and len(top) == 3
    assert all(s.routing[top[0], 0] >= s.routing[i, 0] for i in index)
    assert len(big) == 3 and set(big) <= set(index)
