import numpy as np
import pytest
import torch

from moe_reward.data.pairs import PreferencePair
from moe_reward.embed.features import PairFeatures
from moe_reward.evaluate.metrics import evaluate, normalized_mutual_information, score_pairs
from moe_reward.model.moe import MODEL_KINDS, ModelConfig, SparseMoERewardModel, top_k_gate
from moe_reward.train.config import TrainConfig
from moe_reward.train.loop import TrainingDiverged, train_model
from moe_reward.train.objective import balance_loss, diversity_loss, mixture_loss, sparsity_loss


def planted_features(n=600, d=8, groups=3, seed=0, noise=0.1) -> PairFeatures:
    """Pairs whose preferred direction depends on a group signalled in the prompt embedding."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(groups, d))
    group = rng.integers(groups, size=n)
    prompt = rng.normal(size=(n, d)) * 0.3
    prompt[np.arange(n), group] += 3.0  # the context signal the router can read
    base = rng.normal(size=(n, d))
    delta = rng.normal(size=(n, d))
    delta *= np.sign(
        (delta * directions[group]).sum(1, keepdims=True)
    )  # chosen - rejected agrees with the group
    chosen = base + 0.5 * delta + noise * rng.normal(size=(n, d))
    rejected = base - 0.5 * delta
    pairs = [PreferencePair(f"p{i}", f"c{i}", f"r{i}", group=f"g{group[i]}", id=str(i)) for i in range(n)]
    return PairFeatures(
        prompt.astype(np.float32), chosen.astype(np.float32), rejected.astype(np.float32), pairs, {}
    )


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_shapes_for_every_kind(kind):
    model = SparseMoERewardModel(ModelConfig(kind=kind, input_dim=16, num_experts=4, top_k=2))
    out = model(torch.randn(5, 16), torch.randn(5, 16))
    k = 1 if kind == "single" else 4
    assert out.reward.shape == (5,) and out.routing.shape == (5, k) and out.expert_rewards.shape == (5, k)
    assert torch.allclose(out.routing.sum(-1), torch.ones(5))
    assert torch.allclose(out.reward, (out.routing * out.expert_rewards).sum(-1))


def test_sparse_routing_has_exactly_k_nonzero_weights():
    for k in (1, 2, 3):
        model = SparseMoERewardModel(ModelConfig(kind="sparse", input_dim=8, num_experts=6, top_k=k))
        torch.nn.init.normal_(model.router.weight, std=1.0)
        routing = model(torch.randn(50, 8), torch.randn(50, 8)).routing
        assert ((routing > 0).sum(-1) == k).all()
        noisy = model.pair(torch.randn(50, 8), torch.randn(50, 8), torch.randn(50, 8), noisy=True).routing
        assert ((noisy > 0).sum(-1) == k).all()


def test_top_k_gate_keeps_largest():
    g = top_k_gate(torch.tensor([[0.1, 0.5, 0.3, 0.1]]), 2)
    assert torch.allclose(g, torch.tensor([[0.0, 0.625, 0.375, 0.0]]))


def test_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(kind="nope")
    with pytest.raises(ValueError):
        ModelConfig(kind="sparse", num_experts=4, top_k=5)
    with pytest.raises(ValueError):
        TrainConfig(lr=0)
    assert ModelConfig(kind="single", num_experts=8).num_experts == 1


def test_each_loss_term_points_the_right_way():
    peaked, flat = torch.tensor([[0.97, 0.01, 0.01, 0.01]]), torch.full((1, 4), 0.25)
    assert sparsity_loss(peaked) < sparsity_loss(flat)  # local sparsity: low entropy is rewarded
    one_expert = torch.tensor([[1.0, 0, 0, 0]] * 8)
    spread = torch.eye(4).repeat(2, 1)
    assert balance_loss(one_expert, one_expert) > balance_loss(spread, spread)  # global balance
    assert abs(float(balance_loss(spread, spread)) - 1.0) < 1e-6
    m = torch.randn(64, 1)
    same = torch.cat([m, 2 * m, -m], 1)
    different = torch.randn(64, 3)
    assert (
        diversity_loss(same) > 0.99 and diversity_loss(different) < 0.2
    )  # diversity: decorrelated is better

    class Out:  # the mixture term prefers the router to back the expert that explains the pair
        pass

    good, bad = Out(), Out()
    good.expert_margins = bad.expert_margins = torch.tensor([[4.0, -4.0]])
    good.router_probs, bad.router_probs = torch.tensor([[0.9, 0.1]]), torch.tensor([[0.1, 0.9]])
    assert mixture_loss(good) < mixture_loss(bad)


def test_regularizers_change_what_training_learns():
    f = planted_features()
    on = train_model(
        f, None, ModelConfig(kind="sparse", input_dim=f.dim, num_experts=3, top_k=1), TrainConfig(epochs=30)
    )
    off = train_model(
        f,
        None,
        ModelConfig(kind="sparse", input_dim=f.dim, num_experts=3, top_k=1),
        TrainConfig(
            epochs=30,
            sparsity_weight=0,
            balance_weight=0,
            diversity_weight=0,
            specialization_weight=0,
            cluster_init=False,
        ),
    )
    u_on = evaluate(on.model, f)["expert_utilization"]
    assert min(u_on) > 0.15  # balance: all experts in use
    assert evaluate(on.model, f)["routing_nmi"] >= evaluate(off.model, f)["routing_nmi"] - 0.05


def test_training_is_reproducible_and_beats_chance_on_real_signal():
    f = planted_features()
    train, test = f.subset(range(450)), f.subset(range(450, 600))
    cfg = ModelConfig(kind="sparse", input_dim=f.dim, num_experts=3, top_k=1)
    a = train_model(train, test, cfg, TrainConfig(epochs=20, seed=1))
    b = train_model(train, test, cfg, TrainConfig(epochs=20, seed=1))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    res = evaluate(a.model, test)
    assert res["accuracy"] > 0.85
    assert res["routing_nmi"] > 0.8  # each planted group gets its own expert
    single = train_model(
        train, test, ModelConfig(kind="single", input_dim=f.dim), TrainConfig.for_kind("single", epochs=20)
    )
    assert res["accuracy"] > evaluate(single.model, test)["accuracy"] + 0.1


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_save_load_round_trip_is_bit_identical(kind, tmp_path):
    f = planted_features(n=120)
    model = train_model(
        f,
        None,
        ModelConfig(kind=kind, input_dim=f.dim, num_experts=3, top_k=2),
        TrainConfig.for_kind(kind, epochs=3, min_steps=5),
    ).model
    model.save_pretrained(tmp_path / "m", metrics={"accuracy": 1.0})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "metrics.json",
        "model.safetensors",
    ]
    loaded = SparseMoERewardModel.from_pretrained(tmp_path / "m")
    a, b = score_pairs(model, f), score_pairs(loaded, f)
    assert np.array_equal(a.margin, b.margin) and np.array_equal(a.routing, b.routing)
    assert loaded.config == model.config


def test_from_pretrained_rejects_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        SparseMoERewardModel.from_pretrained(tmp_path)


def test_divergence_stops_with_a_clear_message():
    f = planted_features(n=50)
    f.chosen[0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train_model(
            f,
            None,
            ModelConfig(kind="single", input_dim=f.dim),
            TrainConfig(epochs=2, min_steps=1, batch_size=64),
        )


def test_nmi_matches_definition():
    assert normalized_mutual_information([0, 0, 1, 1], ["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert normalized_mutual_information([0, 1, 0, 1], ["a", "a", "b", "b"]) == pytest.approx(0.0)
    assert normalized_mutual_information([0, 0, 0, 0], ["a", "a", "b", "b"]) == 0.0
