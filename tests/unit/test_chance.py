"""Numbers read against chance (issue 18): permutation nulls, ties as half, intervals, cluster-robust tests,
one expert said as such, the heterogeneity verdict, untrained checkpoints, validated training requests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moe_reward.app.pipeline import TrainRequest, train_from_data
from moe_reward.data.pairs import PreferencePair
from moe_reward.embed.features import PairFeatures
from moe_reward.evaluate.chance import nmi_null, wilson_interval
from moe_reward.evaluate.metrics import ONE_EXPERT, Evaluation, evaluate
from moe_reward.model.moe import ModelConfig, SparseMoERewardModel
from moe_reward.train.config import TrainConfig
from moe_reward.train.selection import gain_test, z_threshold


def test_nmi_null_separates_chance_from_structure():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 8, 300)
    independent = nmi_null(rng.integers(0, 12, 300), groups)
    assert independent.observed > 0.02  # far from 0 on 300 pairs with 12 x 8 cells ...
    assert independent.p > 0.05 and independent.observed < independent.null_p95 + 0.02  # ... and it is chance
    assert abs(independent.observed - independent.null_mean) < 0.05
    structured = nmi_null(groups, groups)
    assert structured.observed == pytest.approx(1.0) and structured.p < 0.01 and structured.null_p95 < 0.2


def test_nmi_null_shuffles_whole_prompts_when_a_prompt_has_one_group():
    """20 prompts x 10 pairs: routing and group are constant within a prompt. Shuffling pairs would make the
    null far too narrow (it breaks the blocks); shuffling prompts keeps them."""
    rng = np.random.default_rng(1)
    prompt_group = rng.integers(0, 2, 20)
    prompt_top = rng.integers(0, 2, 20)  # routing independent of the group
    units = np.repeat(np.arange(20), 10)
    by_prompt = nmi_null(prompt_top[units], prompt_group[units], units)
    by_pair = nmi_null(prompt_top[units], prompt_group[units])
    assert by_prompt.unit == "prompt" and by_pair.unit == "pair"
    assert by_prompt.null_p95 > 2 * by_pair.null_p95  # blocks make chance NMI much larger


def test_wilson_interval_is_wide_on_few_pairs():
    lo, hi = wilson_interval(8, 16)
    assert lo < 0.3 and hi > 0.7
    lo, hi = wilson_interval(800, 1600)
    assert hi - lo < 0.06


def test_gain_test_counts_units_not_pairs_and_raises_the_bar_with_candidates():
    rng = np.random.default_rng(0)
    per_unit = rng.normal(0.02, 0.1, 40)
    gains = np.repeat(per_unit, 25)  # 25 pairs share each unit's gain
    naive = gain_test(gains)
    robust = gain_test(gains, np.repeat(np.arange(40), 25))
    assert robust.units == 40 and robust.se > 3 * naive.se
    assert z_threshold(0.05, 20) > z_threshold(0.05, 1) + 1
    consistent = np.full(50, 1e-4) + rng.normal(0, 1e-6, 50)
    assert gain_test(consistent).significant and not gain_test(consistent, floor=1e-3).significant


def _pairs(n, group=None, prompt=None):
    return [
        PreferencePair(
            prompt(i) if prompt else f"p{i}", f"c{i}", f"r{i}", group=group(i) if group else None, id=str(i)
        )
        for i in range(n)
    ]


def test_a_model_that_scores_everything_alike_reads_half_not_zero():
    rng = np.random.default_rng(0)
    n, d = 40, 8
    f = PairFeatures(*(rng.normal(size=(n, d)).astype(np.float32) for _ in range(3)), _pairs(n), {})
    model = SparseMoERewardModel(ModelConfig(kind="single", input_dim=d))  # a zero head: every margin is 0
    ev = evaluate(model, f)
    assert isinstance(ev, Evaluation)
    assert ev.accuracy == 0.5 and ev.ties == n and ev["accuracy"] == 0.5
    assert ev.accuracy_ci[0] < 0.5 < ev.accuracy_ci[1]
    assert Evaluation.from_dict(ev.to_dict()).to_dict() == ev.to_dict()


def test_identical_experts_claim_no_routing_nmi():
    rng = np.random.default_rng(0)
    n, d = 60, 8
    f = PairFeatures(
        *(rng.normal(size=(n, d)).astype(np.float32) for _ in range(3)),
        _pairs(n, group=lambda i: f"g{i % 3}"),
        {},
    )
    model = SparseMoERewardModel(ModelConfig(kind="sparse", input_dim=d, num_experts=4, top_k=2))
    with torch.no_grad():
        model.head.copy_(torch.randn(d).expand(4, d))
    ev = evaluate(model, f)
    assert ev.experts_identical and ev.distinct_experts == 1
    assert ev.routing_nmi is None and ev.routing == ONE_EXPERT
    assert ev.diagnostics.routing_nmi_p is None


def _verdict_world(prompt_sees_group: bool, groups_differ: bool, n=900, d=12, seed=0):
    """Three groups; each has its own preference direction (or all share one), and the prompt embedding
    carries the group (or does not)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(3, d)) if groups_differ else np.repeat(rng.normal(size=(1, d)), 3, 0)
    group = rng.integers(0, 3, n)
    prompt = rng.normal(size=(n, d)) * 0.3
    if prompt_sees_group:
        prompt[np.arange(n), group] += 3.0
    base, delta = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    delta *= np.sign((delta * directions[group]).sum(1, keepdims=True))
    pairs = _pairs(n, group=lambda i: f"g{group[i]}")
    return PairFeatures(
        prompt.astype(np.float32),
        (base + 0.5 * delta).astype(np.float32),
        (base - 0.5 * delta).astype(np.float32),
        pairs,
        {},
    )


@pytest.mark.parametrize(
    ("sees", "differ", "verdict"),
    [(True, True, "routing"), (False, True, "personalization"), (False, False, "none")],
)
def test_the_verdict_names_the_kind_of_heterogeneity(sees, differ, verdict):
    f = _verdict_world(sees, differ)
    req = TrainRequest(
        data="(in memory)",
        kind="sparse",
        experts=3,
        top_k=1,
        validation=0.15,
        test=0.25,
        train=TrainConfig.for_kind("sparse", epochs=8, min_steps=60),
    )
    _, metrics = train_from_data(req, None, features=f)
    test = metrics["test"]
    assert test["specialization"] == verdict, (test["specialization_reason"], metrics["discovery"])
    d = test["diagnostics"]
    assert d["routing_nmi_null"] is not None or test["routing_nmi"] is None
    if verdict == "personalization":
        assert d["oracle_gain_p"] < 0.05 and "routing cannot help" in test["specialization_reason"]
        assert test["routing_nmi"] is None or d["routing_nmi_p"] >= 0.05  # no specialization claimed
    if verdict == "routing":
        assert d["routing_nmi_p"] < 0.05 and d["discovery_efficiency"] is not None
        assert 0 <= d["discovery_efficiency"] <= 1


def test_an_untrained_checkpoint_is_flagged():
    """Labels that are coin flips: the single head's kept checkpoint is no better than a constant on
    validation, and metrics.json says so (and the warnings do)."""
    rng = np.random.default_rng(3)
    n, d = 400, 16
    f = PairFeatures(*(rng.normal(size=(n, d)).astype(np.float32) for _ in range(3)), _pairs(n), {})
    req = TrainRequest(
        data="(in memory)", kind="single", train=TrainConfig.for_kind("single", epochs=5, min_steps=30)
    )
    _, metrics = train_from_data(req, None, features=f)
    assert metrics["checkpoint_untrained"] is True
    assert any(w.startswith("untrained model:") for w in metrics["warnings"])
    assert metrics["test"]["accuracy"] != 0.0


@pytest.mark.parametrize(
    "bad",
    [
        dict(experts=-4),
        dict(validation=3.0),
        dict(test=-0.1),
        dict(validation=0.6, test=0.5),
        dict(kind="moe"),
        dict(top_k=9, experts=8),
        dict(max_length=0),
        dict(split_by="  "),
    ],
)
def test_a_train_request_is_validated_where_it_enters(bad):
    with pytest.raises(ValueError):
        TrainRequest(data="x.jsonl", **bad)


@pytest.mark.parametrize(
    "bad",
    [
        dict(head_l2=()),
        dict(patience=-5),
        dict(lr=math.nan),
        dict(epochs=0),
        dict(discovery_l2=(0.1, -1.0)),
        dict(min_validation_pairs=1),
        dict(discovery_alpha=0.7),
        dict(batch_size=True),
        dict(cluster_init=1),
    ],
)
def test_a_train_config_is_validated_where_it_enters(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)
