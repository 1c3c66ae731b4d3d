"""Personalization adapters on constructed expert margins (no model, no backbone: milliseconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moe_reward.model.moe import ModelConfig, SparseMoERewardModel
from moe_reward.personalize.adapters import (
    ADAPTERS,
    Adapter,
    disagreement_scores,
    expert_margins_for,
    make_adapter,
    margin_scale_for,
    personalized_accuracy,
    prior_from_routing,
    profile_prior,
    select_next,
    span_report,
    weight_shift,
)

K = 5
PLANTED = 2
VARIANTS = [
    ("hedge", {}),
    ("hedge", {"loss": "zero_one"}),
    ("batch", {}),
    ("signed", {}),
    ("gradient", {}),
    ("gradient", {"mode": "router_bias"}),
    ("gradient", {"mode": "router_bias", "top_k": 2}),
]


def planted_user(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Margins oriented by the user's labels: expert 2 always agrees with them, the others are noise."""
    rng = np.random.default_rng(seed)
    margins = rng.normal(size=(n, K))
    margins[:, PLANTED] = np.abs(margins[:, PLANTED]) + 0.3
    return margins, rng.normal(size=(n, K))


@pytest.mark.parametrize(("name", "params"), VARIANTS)
def test_adapters_move_weight_to_the_expert_that_explains_the_user(name, params):
    margins, logits = planted_user()
    adapter = make_adapter(name, K, **params)
    before = adapter.weights[PLANTED]
    adapter.fit(margins[:24], [f"p{i}" for i in range(24)], logits[:24])
    w = adapter.weights
    if name != "signed":  # signed weights live in R^K, not on the simplex
        assert w.sum() == pytest.approx(1.0)
    assert w[PLANTED] > before + 0.2
    assert int(np.argmax(w)) == PLANTED
    assert personalized_accuracy(adapter, margins[24:], logits[24:]) > personalized_accuracy(
        np.full(K, 1 / K), margins[24:]
    )
    assert len(adapter.history) == 24 and adapter.history[-1].weights == pytest.approx(w.tolist())


def test_every_adapter_is_covered():
    assert {name for name, _ in VARIANTS} == set(ADAPTERS) == {"hedge", "batch", "gradient", "signed"}


@pytest.mark.parametrize("name", ["hedge", "batch"])
def test_the_floor_keeps_every_expert_reachable(name):
    """Fixed share: however many labels favour one expert, every expert keeps share * prior."""
    margins, _ = planted_user(n=200)
    prior = np.array([0.4, 0.3, 0.1, 0.1, 0.1])
    adapter = make_adapter(name, K, prior, share=0.05)
    for i, m in enumerate(margins):
        w = adapter.update(m, f"p{i}")
        assert (w >= 0.05 * prior - 1e-12).all()
    assert int(np.argmax(adapter.weights)) == PLANTED


def test_hedge_keeps_learning_when_the_user_changes_their_mind():
    """After 10 labels that favour expert 2, 30 labels that favour expert 4: the profile follows, which
    plain Hedge (share 0) cannot do once it has locked onto expert 2."""
    rng = np.random.default_rng(3)
    first = rng.normal(size=(10, K))
    first[:, PLANTED] = np.abs(first[:, PLANTED]) + 2
    later = rng.normal(size=(30, K))
    later[:, 4] = np.abs(later[:, 4]) + 2
    later[:, PLANTED] = -np.abs(later[:, PLANTED]) - 2
    labels = np.concatenate([first, later])
    shared = make_adapter("hedge", K, eta=4.0, share=0.05)
    shared.fit(labels)
    locked = make_adapter("hedge", K, eta=4.0, share=0.0)
    locked.fit(labels[:10])
    assert locked.weights[PLANTED] > 0.999  # plain Hedge has locked on
    assert int(np.argmax(shared.weights)) == 4 and shared.weights[4] > 0.8


def test_signed_weights_recover_a_user_opposite_to_every_expert():
    """Every expert agrees with the crowd; the user disagrees with all of them. Simplex profiles can only
    mute experts (accuracy stays near the start); signed weights reverse them."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(120, 1))
    margins = np.abs(base) * np.array([1.0, 0.8, 1.2, 0.9, 1.1]) + rng.normal(size=(120, K)) * 0.3
    user = -margins  # oriented by the user's labels: every expert's margin is negative
    fit, test = user[:32], user[32:]
    for name in ("hedge", "batch", "gradient"):
        assert personalized_accuracy(make_adapter(name, K).fit(fit), test) < 0.2
    signed = make_adapter("signed", K)
    signed.fit(fit)
    assert personalized_accuracy(signed, test) > 0.9 and signed.weights.sum() < 0


def test_hedge_with_zero_learning_rate_never_moves():
    margins, _ = planted_user()
    prior = np.array([0.4, 0.1, 0.1, 0.2, 0.2])
    adapter = make_adapter("hedge", K, prior, eta=0.0)
    adapter.fit(margins)
    assert adapter.weights == pytest.approx(prior)


def test_single_updates_equal_fit_and_undo_recomputes():
    margins, logits = planted_user(10)
    for name, params in VARIANTS:
        one = make_adapter(name, K, **params)
        for i in range(10):
            one.update(margins[i], f"p{i}", logits[i])
        batch = make_adapter(name, K, **params)
        batch.fit(margins, [f"p{i}" for i in range(10)], logits)
        assert one.weights == pytest.approx(batch.weights)
        one.undo()
        shorter = make_adapter(name, K, **params)
        shorter.fit(margins[:9], None, logits[:9])
        assert one.weights == pytest.approx(shorter.weights), name
        assert len(one.history) == 9
    empty = make_adapter("hedge", K)
    assert empty.undo() == pytest.approx(np.full(K, 1 / K))


def test_round_trip_through_json_keeps_labels():
    margins, logits = planted_user(8)
    for name, params in VARIANTS:
        adapter = make_adapter(
            name, K, prior_from_routing(np.eye(K)[[0, 0, 1]]), margin_scale=np.arange(1, K + 1), **params
        )
        adapter.fit(margins, [f"p{i}" for i in range(8)], logits)
        d = json.loads(json.dumps(adapter.to_dict()))
        again = Adapter.from_dict(d)
        assert type(again) is type(adapter) and again.params == adapter.params
        assert again.weights == pytest.approx(adapter.weights)
        assert again.initial_weights == pytest.approx(adapter.initial_weights)
        assert again.labeled_ids == adapter.labeled_ids
        again.undo()
        assert len(again.history) == 7
    assert "weights" in d and "router_bias" in d


def test_active_selection_picks_the_pair_where_weighted_experts_disagree():
    adapter = make_adapter("hedge", 3, np.array([0.45, 0.45, 0.1]))
    margins = np.array(
        [
            [1.0, 1.0, 1.0],  # everyone agrees: nothing to learn
            [2.0, -2.0, 0.0],  # the two heavy experts disagree strongly
            [0.0, 0.0, 3.0],  # only the light expert has an opinion
            [0.5, -0.5, 0.0],  # heavy experts disagree, weakly
            [-1.0, -1.0, -1.0],
        ]
    )
    scores = disagreement_scores(adapter, margins)
    assert int(np.argmax(scores)) == 1
    assert scores[1] > scores[3] > scores[0]
    assert select_next(adapter, margins) == 1
    assert select_next(adapter, margins, exclude=[1]) == 3
    mask = np.array([False, True, False, True, False])
    assert select_next(adapter, margins, exclude=mask) in (0, 2, 4)
    assert select_next(adapter, margins, labeled_mask=mask, exclude=[0]) in (2, 4)
    ids = [f"p{i}" for i in range(5)]
    assert select_next(adapter, margins, exclude={"p1"}, pair_ids=ids) == 3
    with pytest.raises(ValueError, match="pair_ids"):
        select_next(adapter, margins, exclude=["p1"])
    assert select_next(adapter, margins, strategy="random", rng=0) in range(5)
    with pytest.raises(ValueError):
        select_next(adapter, margins, exclude=np.ones(5, bool))
    # The score does not depend on which way the pair is oriented (the label is unknown).
    assert disagreement_scores(adapter, -margins) == pytest.approx(scores)


def test_weight_shift_names_the_labels_that_moved_each_expert():
    margins, _ = planted_user(6)
    margins[3, PLANTED] = 5.0
    margins[3, [0, 1, 3, 4]] = -5.0  # the most informative label
    adapter = make_adapter("hedge", K, eta=0.5)
    adapter.fit(margins, [f"p{i}" for i in range(6)])
    shift = weight_shift(adapter)
    assert shift["after"] == pytest.approx(adapter.weights.tolist())
    assert np.add(shift["before"], shift["delta"]) == pytest.approx(shift["after"])
    assert shift["top_movers"][PLANTED][0][0] == "p3"
    assert shift["top_movers"][PLANTED][0][1] > 0


def test_validation_errors_are_clear():
    with pytest.raises(ValueError, match="adapter must be one of"):
        make_adapter("nope", 3)
    with pytest.raises(ValueError, match="unknown parameters"):
        make_adapter("hedge", 3, temperature=1.0)
    with pytest.raises(ValueError, match="eta"):
        make_adapter("hedge", 3, eta=-1)
    with pytest.raises(ValueError, match="expected 3 values"):
        make_adapter("batch", 3).update(np.zeros(4))
    with pytest.raises(ValueError, match="router_logits"):
        make_adapter("gradient", 3, mode="router_bias").predict_margin(np.zeros((2, 3)))
    bias = make_adapter("gradient", 3, mode="router_bias")
    with pytest.raises(ValueError, match="router logits"):
        bias.update(np.ones(3), "p0")
    assert bias.n_labels == 0 and bias.update(np.ones(3), "p0", np.zeros(3)).shape == (3,)
    with pytest.raises(ValueError, match="initial_weights"):
        make_adapter("hedge", 3, [1.0, -1.0, 0.5])


def test_model_helpers_give_margins_logits_prior_and_scale():
    from moe_reward.data.pairs import PreferencePair
    from moe_reward.embed.features import PairFeatures

    torch.manual_seed(0)
    model = SparseMoERewardModel(ModelConfig(kind="sparse", input_dim=6, num_experts=4, top_k=2)).eval()
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(7, 6)).astype(np.float32) for _ in range(3)]
    feats = PairFeatures(*arrays, [PreferencePair("p", "a", "b", id=str(i)) for i in range(7)])
    margins, logits = expert_margins_for(model, feats)
    assert margins.shape == logits.shape == (7, 4)
    with torch.no_grad():
        out = model.pair(*(torch.from_numpy(a) for a in arrays))
    assert margins == pytest.approx(out.expert_margins.numpy().astype(float), abs=1e-5)
    prior = profile_prior(model, feats)
    assert prior.sum() == pytest.approx(1.0) and (prior > 0).all()
    assert profile_prior(model) == pytest.approx(np.full(4, 0.25))
    single = SparseMoERewardModel(ModelConfig(kind="drm", input_dim=6, num_experts=3))
    assert profile_prior(single) == pytest.approx(np.full(3, 1 / 3))
    scale = margin_scale_for(margins)
    assert scale.shape == (4,) and (scale > 0).all()
    # The profile's margin equals the model's margin with the profile replacing the router.
    adapter = make_adapter("batch", 4, prior)
    adapter.fit(margins[:3])
    with torch.no_grad():
        routed = model.pair(
            *(torch.from_numpy(a) for a in arrays),
            user_weights=torch.as_tensor(adapter.weights, dtype=torch.float32),
        )
    assert adapter.predict_margin(margins) == pytest.approx(routed.margin.numpy().astype(float), abs=1e-4)


def test_span_report_says_when_a_user_is_outside_every_expert():
    margins, _ = planted_user(n=12)
    assert make_adapter("hedge", K).fit(margins) is not None
    inside = span_report(margins)
    assert not inside["outside"] and inside["best_expert_agreement"] == 1.0
    assert span_report(-np.abs(margins))["outside"]  # every expert disagrees with every label
    assert not span_report(-np.abs(margins[:3]))["outside"]  # too few labels to say
    adapter = make_adapter("signed", K)
    adapter.fit(-np.abs(margins))
    assert span_report(adapter)["outside"] and span_report(adapter)["n_labels"] == 12


def test_the_cli_offers_every_adapter():
    from moe_reward.cli import ADAPTER_NAMES

    assert ADAPTER_NAMES == ADAPTERS


# ----------------------------------------------------------------------------- issue 20 item 2: always finite

HOSTILE_PARAMS = [
    ("signed", {"lr": 1e308}, r"params\.lr must be in \(0, 10\], got 1e\+308"),
    ("signed", {"l2": 1e308}, r"params\.l2 must be in \[0, 1000\]"),
    ("gradient", {"lr": 1e308}, r"params\.lr must be in \(0, 10\]"),
    ("gradient", {"l2": 1e308}, r"params\.l2 must be in \[0, 1000\]"),
    ("batch", {"temperature": 1e-320}, r"params\.temperature must be in \[0\.001, 1000\]"),
    ("hedge", {"eta": float("nan")}, r"params\.eta must be a finite number"),
    ("hedge", {"eta": 1e6}, r"params\.eta must be in \[0, 100\]"),
    ("signed", {"lr": float("inf")}, r"params\.lr must be a finite number"),
    ("signed", {"steps": 10**9}, r"params\.steps must be in \[1, 10000\]"),
    ("hedge", {"margin_scale": [1e-300] * K}, r"margin_scale must be 5 numbers in \[1e-06, 1e\+06\]"),
]


@pytest.mark.parametrize("name, params, message", HOSTILE_PARAMS)
def test_parameters_outside_their_bounds_are_refused(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_adapter(name, K, **params)


@pytest.mark.parametrize(
    "name, params",
    [
        ("signed", {"lr": 10.0, "l2": 1000.0, "steps": 300}),
        ("signed", {"lr": 10.0, "l2": 0.0}),
        ("gradient", {"lr": 10.0, "l2": 1000.0}),
        ("batch", {"temperature": 1e-3, "prior_strength": 0.0}),
        ("hedge", {"eta": 100.0, "share": 0.0}),
    ],
)
def test_weights_stay_finite_at_the_bounds_on_extreme_margins(name, params):
    """The largest rates the bounds allow, on margins as large as a label may carry (1e9) and with the
    smallest margin scale: every weight stays finite after every label."""
    rng = np.random.default_rng(0)
    adapter = make_adapter(name, K, margin_scale=[1e-6] * K, **params)
    for i in range(12):
        w = adapter.update(rng.choice([-1e9, 1e9, 0.0, 3.0], size=K), f"p{i}")
        assert np.all(np.isfinite(w)), (i, w)


def test_an_update_that_would_go_non_finite_is_refused_and_rolled_back(monkeypatch):
    from moe_reward.personalize.adapters import NonFiniteProfile, SignedAdapter

    adapter = make_adapter("signed", K)
    adapter.update(np.ones(K), "a")
    before = adapter.weights.copy()
    monkeypatch.setattr(SignedAdapter, "_next_state", lambda self, state: state * np.nan)
    with pytest.raises(NonFiniteProfile, match="pair 'b' would make the signed profile's weights NaN"):
        adapter.update(np.ones(K), "b")
    assert adapter.n_labels == 1 and adapter.labeled_ids == ["a"] and np.array_equal(adapter.weights, before)


def test_a_profile_file_with_impossible_numbers_is_refused():
    good = make_adapter("signed", K).to_dict()
    labels = {"pair_ids": ["a"], "expert_margins": [[1.0] * K]}
    for params, message in (
        ({**good["params"], "lr": 1e308}, "params.lr must be in"),
        ({**good["params"], "margin_scale": [1e-300] * K}, "params.margin_scale"),
    ):
        with pytest.raises(ValueError, match=r"upload\.json: params\."):
            Adapter.from_dict({**good, "params": params, "labels": labels}, "upload.json")
        assert message
    with pytest.raises(ValueError, match=r"upload\.json: labels\.expert_margins\[0\]\[0\] must be in"):
        Adapter.from_dict({**good, "labels": {**labels, "expert_margins": [[1e300] * K]}}, "upload.json")
    with pytest.raises(ValueError, match="positive, finite sum"):
        make_adapter("hedge", 2, [1e308, 1e308])
