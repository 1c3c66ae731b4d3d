"""Router inputs and discovery on constructed data (no backbone): criteria buried in long topical prompts,
an attention router that must find the cue token, DRM scaling and checkpoint selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moe_reward.data.pairs import PreferencePair, split_pairs
from moe_reward.embed.features import PairFeatures
from moe_reward.evaluate.metrics import evaluate, score_pairs
from moe_reward.evaluate.summary import training_story
from moe_reward.model import router_inputs
from moe_reward.model.moe import ModelConfig
from moe_reward.train.config import TrainConfig
from moe_reward.train.loop import train_model

DIM = 16
TOPICS = [
    "garden",
    "kitchen",
    "bicycle",
    "taxes",
    "violin",
    "aquarium",
    "roof",
    "printer",
    "wedding",
    "camping",
    "chess",
    "sourdough",
]
# criterion -> (cue of the first pole, cue of the second pole)
CUES = {
    "length": ("keep it short", "explain in depth"),
    "format": ("use numbered steps", "write flowing prose"),
    "tone": ("be formal please", "be casual please"),
}
FILLER = (
    "I have been thinking about my {t} for a while now and the {t} situation keeps coming up with friends "
    "who ask me about the {t} and what to do with the {t} next week"
)


def buried_cue_data(pairs_per_topic_and_pole: int = 8, seed: int = 0):
    """Prompts are ~40 topical words with a short cue buried at a random place; the pooled prompt vector is
    the topic's vector plus a faint cue signal. Responses differ on every criterion; the cue says which
    one decides. Returns features with group = pole and meta.topic for topic-level splits."""
    rng = np.random.default_rng(seed)
    axes = {c: rng.normal(size=DIM) for c in CUES}
    topic_vec = {t: rng.normal(size=DIM) * 3 for t in TOPICS}
    cue_vec = {cue: rng.normal(size=DIM) * 0.1 for pair in CUES.values() for cue in pair}
    pairs, prompt, chosen, rejected = [], [], [], []
    for t in TOPICS:
        words = FILLER.format(t=t).split()
        for criterion, poles in CUES.items():
            for side, cue in enumerate(poles):
                for i in range(pairs_per_topic_and_pole):
                    at = int(rng.integers(0, len(words) + 1))
                    text = " ".join(words[:at] + [cue + ","] + words[at:]) + f" (question {i})"
                    a = {c: rng.choice([-1.0, 1.0]) for c in CUES}
                    b = {c: -a[c] if c == criterion else rng.choice([-1.0, 1.0]) for c in CUES}
                    want = 1.0 if side == 0 else -1.0
                    win, lose = (a, b) if a[criterion] == want else (b, a)
                    emb = [
                        sum(v[c] * axes[c] for c in CUES) + rng.normal(size=DIM) * 0.3 for v in (win, lose)
                    ]
                    pairs.append(
                        PreferencePair(
                            text,
                            f"response {len(pairs)} A",
                            f"response {len(pairs)} B",
                            group=f"{criterion}:{side}",
                            id=f"p{len(pairs)}",
                            meta={"topic": t},
                        )
                    )
                    prompt.append(topic_vec[t] + cue_vec[cue] + rng.normal(size=DIM) * 0.1)
                    chosen.append(emb[0])
                    rejected.append(emb[1])
    arrays = (np.asarray(a, dtype=np.float32) for a in (prompt, chosen, rejected))
    return PairFeatures(
        *arrays, pairs, {"backbone": "synthetic", "pooling": "mean", "max_length": 64, "dim": DIM}
    )


def topic_split(feats: PairFeatures, seed: int = 0):
    s = split_pairs(feats.pairs, 0.2, 0.25, seed=seed, by="meta.topic")
    return {n: feats.subset(getattr(s, n)) for n in ("train", "validation", "test")}


def train(parts, router_input="auto", kind="sparse", experts=6, **overrides):
    cfg = TrainConfig.for_kind(kind, **{"epochs": 10, "min_steps": 60, "seed": 0, **overrides})
    mcfg = ModelConfig(kind=kind, input_dim=DIM, num_experts=experts, top_k=1, router_input=router_input)
    return train_model(parts["train"], parts["validation"], mcfg, cfg)


@pytest.fixture(scope="module")
def buried():
    return topic_split(buried_cue_data())


@pytest.fixture(scope="module")
def buried_sparse(buried):
    """The sparse model with the default router input on the buried cues (read, never changed, by tests)."""
    return train(buried)


def test_discovery_recovers_criteria_buried_in_topical_prompts_on_unseen_topics(buried, buried_sparse):
    result = buried_sparse
    assert result.discovery.router_input in (
        "lexical",
        "pooled+lexical",
    )  # chosen on validation likelihood
    assert result.discovery.warm_start == "clusters" and result.discovery.context_helps is True
    pool = PairFeatures.concat([buried["train"], buried["validation"]])  # the probes fit on training pairs
    ev = evaluate(result.model, buried["test"], diagnostics=True, train_features=pool)
    assert ev["routing_nmi"] > 0.8, ev["routing_nmi"]
    assert ev["accuracy"] > 0.85
    d = ev["diagnostics"]
    assert d["router_probe_nmi"] > 0.9 and d["discovery_efficiency"] > 0.8
    assert d["oracle_routing_accuracy"] > 0.85
    assert sum(map(sum, d["contingency"].values())) == len(buried["test"])
    story = training_story({"discovery": result.discovery.to_dict(), "best_epoch": result.best_epoch})
    assert story[0].startswith(f"The router reads {result.discovery.router_input}, chosen on validation")
    assert "groups of preference codes" in story[1] and "held-out folds" in story[2]
    assert "checkpoint" in story[3]
    # The pooled embedding is the topic: a router reading only it cannot find the criteria on new topics.
    pooled = train(buried, router_input="pooled")
    assert evaluate(pooled.model, buried["test"])["routing_nmi"] < 0.3


def global_preference_data(seed: int = 1) -> PairFeatures:
    """The buried-cue prompts, but labels that ignore them: one global preference direction, 90% followed."""
    feats = buried_cue_data(pairs_per_topic_and_pole=4, seed=seed)
    rng = np.random.default_rng(0)
    flip = rng.random(len(feats)) < 0.5
    direction = rng.normal(size=DIM)
    c, r = feats.chosen.copy(), feats.rejected.copy()
    c[flip], r[flip] = feats.rejected[flip], feats.chosen[flip]  # labels unrelated to the cue ...
    better = ((c - r) @ direction < 0) != (rng.random(len(c)) < 0.1)
    c[better], r[better] = r[better].copy(), c[better].copy()  # ... and one global preference instead
    return PairFeatures(feats.prompt, c, r, feats.pairs, feats.metadata)


@pytest.fixture(scope="module")
def noise():
    """Labels that ignore the prompt: the split, the sparse model and the single head trained on it."""
    parts = topic_split(global_preference_data())
    return parts, train(parts), train(parts, kind="single", experts=1)


def test_no_context_signal_starts_every_expert_as_the_shared_head(noise):
    """Labels that ignore the prompt: discovery says so and the sparse model is a single head at start."""
    parts, result, single = noise
    assert result.discovery.context_helps is False and result.discovery.warm_start == "global"
    assert any(
        "Every expert is the single-head model, because the prompt did not predict the preference" in line
        for line in training_story({"discovery": result.discovery.to_dict(), "best_epoch": result.best_epoch})
    )
    acc = evaluate(result.model, parts["test"])["accuracy"]
    assert acc >= evaluate(single.model, parts["test"])["accuracy"] - 0.02


def test_checkpoint_is_the_best_validation_loss_of_the_run_or_the_warm_start_within_the_bar(buried):
    """A later epoch replaces the warm start only if its per-pair validation gain passes the Bonferroni bar
    for the epochs compared; otherwise the warm start stays, and it is no materially worse than the best."""
    for parts in (buried, topic_split(buried_cue_data(pairs_per_topic_and_pole=3, seed=2))):
        result = train(parts, epochs=20)
        losses = [row["val_loss"] for row in result.history]
        assert result.history[0]["epoch"] == 0  # the warm start is a candidate
        assert result.final["val_loss"] <= min(losses) + 0.01
        test = result.discovery.checkpoint_test
        if result.best_epoch == 0 and min(losses) < losses[0]:
            assert test is not None and not test["significant"] and test["candidates"] == len(losses) - 1
        elif result.best_epoch:
            assert test is not None and test["significant"] and result.final["val_loss"] == min(losses[1:])


def test_lexical_channel_is_saved_with_the_model(buried, tmp_path):
    result = train(buried, router_input="lexical")
    model = result.model
    assert model.config.router_input == "lexical" and len(model.config.lexical_vocabulary) > 10
    model.save_pretrained(tmp_path / "m")
    again = type(model).from_pretrained(tmp_path / "m")
    a, b = score_pairs(model, buried["test"]), score_pairs(again, buried["test"])
    assert np.array_equal(a.routing, b.routing) and np.allclose(a.margin, b.margin)
    assert "keep it short" in again.config.lexical_vocabulary or "short" in again.config.lexical_vocabulary


def test_drm_heads_are_the_mean_direction_then_principal_directions_at_unit_spread(noise):
    """Head 0 points along the mean chosen - rejected difference (as the heads see it) at its Bradley-Terry
    scale, so alone it does better than a constant on training; the other heads have unit margin spread."""
    parts = noise[0]
    result = train(parts, kind="drm", experts=4)
    model = result.model
    diff = torch.from_numpy(parts["train"].chosen - parts["train"].rejected)
    margins = model.expert_rewards(diff).detach()  # rewards are linear: r(c) - r(r) = r(c - r)
    seen = diff / model.response_scale
    cosine = torch.nn.functional.cosine_similarity(model.head[0], seen.mean(0), dim=0)
    assert float(cosine) > 0.999, cosine
    assert float(torch.nn.functional.softplus(-margins[:, 0]).mean()) < 0.6
    assert torch.allclose(margins[:, 1:].std(0), torch.ones(3), atol=0.02), margins[:, 1:].std(0)
    assert min(row["val_loss"] for row in result.history) < 0.69


# ----------------------------------------------------------------------------- attention channel

CUE_TOKENS = 4


@pytest.fixture(scope="module")
def token_world():
    """Token states without a backbone: each prompt is 12 topic-word vectors plus one cue-token vector at a
    random position; the cue says which of two preferences applies. `prompt_token_states` is replaced by
    a lookup of these states (the real extraction is tested with the real backbone in test_router_inputs)."""
    rng = np.random.default_rng(0)
    words = rng.normal(size=(200, DIM)) * 2.0
    cues = rng.normal(size=(CUE_TOKENS, DIM)) * 1.0
    axis = rng.normal(size=DIM)
    states, pairs, prompt, chosen, rejected, cue_at = {}, [], [], [], [], {}
    for i in range(480):
        cue = i % CUE_TOKENS
        topic = rng.choice(200, 12)
        at = int(rng.integers(0, 13))
        seq = np.insert(words[topic], at, cues[cue], axis=0)
        text = f"prompt {i}"
        states[text] = seq.astype(np.float16)
        cue_at[text] = at
        a, b = axis + rng.normal(size=DIM) * 0.3, -axis + rng.normal(size=DIM) * 0.3
        win, lose = (a, b) if cue < 2 else (b, a)
        pairs.append(
            PreferencePair(text, f"a{i}", f"b{i}", group=f"cue{cue}", id=f"t{i}", meta={"q": i // 4})
        )
        prompt.append(words[topic].mean(0))
        chosen.append(win)
        rejected.append(lose)
    feats = PairFeatures(
        *(np.asarray(a, np.float32) for a in (prompt, chosen, rejected)),
        pairs,
        {"backbone": "synthetic", "pooling": "mean", "max_length": 64, "dim": DIM},
    )
    return feats, states, cue_at


def test_attention_router_attends_to_the_cue_token(token_world, monkeypatch):
    feats, states, cue_at = token_world
    monkeypatch.setattr(
        router_inputs,
        "prompt_token_states",
        lambda backbone, prompts, max_tokens, cache_dir="default", progress=None: [
            states[p] for p in prompts
        ],
    )
    s = split_pairs(feats.pairs, 0.2, 0.2, seed=0, by="meta.q")
    parts = {n: feats.subset(getattr(s, n)) for n in ("train", "validation", "test")}
    result = train(parts, router_input="attention", experts=2)
    model = result.model
    test = parts["test"]
    data = router_inputs.router_data(model, test)
    batch = data.batch(np.arange(len(test)))
    with torch.no_grad():
        _, weights = model.attend(batch.tokens, batch.mask)  # [B, Q, T]
    w = weights.max(1).values.numpy()  # the most cue-seeking query
    at = np.array([cue_at[p.prompt] for p in test.pairs])
    on_cue = w[np.arange(len(at)), at]
    elsewhere = (w.sum(1) - on_cue) / 12
    assert on_cue.mean() > 3 * elsewhere.mean(), (on_cue.mean(), elsewhere.mean())
    # The pooled prompt vector holds only topic words: routing on it cannot beat chance on new prompts.
    # The learned attention finds the cue, but on 288 training pairs its routed start does not beat one head
    # on held-out folds (see the README's router inputs), so the model stays the single baseline: it pays
    # nothing for experts it could not show.
    pooled = train(parts, router_input="pooled", experts=2)
    assert evaluate(pooled.model, test)["accuracy"] < 0.6
    single = train(parts, kind="single", experts=1)
    if result.discovery.decision == "single head":
        assert "held-out folds" in (result.discovery.decision_reason or "")
        assert evaluate(model, test)["accuracy"] == evaluate(single.model, test)["accuracy"]
    else:
        assert evaluate(model, test)["accuracy"] > 0.62


def test_more_experts_than_criteria_keeps_one_expert_per_criterion(buried):
    """Two criteria' poles only (4 groups), 8 experts: the warm start picks fewer clusters on validation
    (one-standard-error rule) instead of splitting a criterion across experts at random."""
    keep = {"length:0", "length:1", "format:0", "format:1"}
    parts = {n: f.subset([i for i, p in enumerate(f.pairs) if p.group in keep]) for n, f in buried.items()}
    result = train(parts, experts=8)
    assert result.discovery.clusters < 8
    ev = evaluate(result.model, parts["test"])
    assert ev["routing_nmi"] > 0.9 and ev["accuracy"] > 0.9
    assert sum(u > 0 for u in ev["expert_utilization"]) == result.discovery.clusters


def test_a_routed_start_must_beat_one_head_on_held_out_folds(buried, buried_sparse, noise):
    """The routed start is kept only if, refitted on folds of the training pairs, it beats one head on the
    held-out fold beyond the Bonferroni bar: the buried cues pass; the same configuration on labels that
    ignore the prompt does not, and the sparse model is then exactly the single baseline."""
    from moe_reward.model.router_inputs import fit_lexical
    from moe_reward.train.discovery import RoutedStart, cross_validate_routing

    d = buried_sparse.discovery
    assert d.decision == "routed" and d.cv["significant"] and d.cv["gain"] > d.cv["z"] * d.cv["se"]
    assert d.cv["candidates"] == len(d.counts_tried) * 3  # three router inputs compared on validation
    start = RoutedStart(d.router_input, d.l2, d.clusters, d.head_anchor, d.head_l2)
    cfg = TrainConfig.for_kind(
        "sparse", seed=0, discovery_folds=5
    )  # 5 folds: the same verdicts as 10, half the time
    vocabulary, idf = fit_lexical([p.prompt for p in buried["train"].pairs])
    model_config = ModelConfig(kind="sparse", input_dim=DIM, num_experts=6, top_k=1)
    ignored = noise[0]["train"]
    nv, nidf = fit_lexical([p.prompt for p in ignored.pairs])
    test = cross_validate_routing(model_config, start, ignored, nv, nidf, cfg, candidates=d.cv["candidates"])
    assert not test.significant and test.gain < test.z * test.se
    again = cross_validate_routing(
        model_config, start, buried["train"], vocabulary, idf, cfg, d.cv["candidates"]
    )
    assert again.significant


def test_a_sparse_model_that_finds_no_experts_is_the_single_baseline(noise):
    parts, sparse, single = noise
    assert sparse.discovery.decision == "single head" and sparse.discovery.decision_reason
    heads = sparse.model.head
    assert torch.equal(heads, single.model.head.expand_as(heads))  # every expert is the single head
    a, b = score_pairs(sparse.model, parts["test"]), score_pairs(single.model, parts["test"])
    assert np.allclose(a.margin, b.margin, atol=1e-6)
    story = training_story({"discovery": sparse.discovery.to_dict(), "best_epoch": sparse.best_epoch})
    assert any("single" in line for line in story)


# ----------------------------------------------------------------------------- written-out gradients


@pytest.mark.parametrize("dense_cells", [0, 10**9])  # the lexical block kept sparse, or multiplied dense
def test_written_out_gradients_equal_autograd(monkeypatch, dense_cells):
    """Discovery's inner fits set their gradients by hand (autograd's per-step cost dominated them): the
    projection, its adjoint and both fits' gradients are what autograd computes on the same loss."""
    from types import SimpleNamespace

    from scipy import sparse

    from moe_reward.train import discovery
    from moe_reward.train.objective import AdamW

    monkeypatch.setattr(discovery, "DENSE_PROJECTION_CELLS", dense_cells)
    g = torch.Generator().manual_seed(0)
    n, d, r = 40, 5, 3
    dense = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    lexical = sparse.random(n, 7, density=0.3, random_state=0, format="csr", dtype=np.float32)
    mean, scale = torch.randn(11, generator=g), torch.rand(11, generator=g) + 0.5
    model = SimpleNamespace(prompt_mean=mean, prompt_scale=scale)
    rows = np.arange(3, n)
    proj = discovery._Projection(model, SimpleNamespace(blocks=[dense, lexical]), rows)  # pyright: ignore[reportArgumentType]
    assert proj.blocks[1][0].is_sparse == (dense_cells == 0)
    x = (torch.from_numpy(np.hstack([dense, lexical.toarray()])[rows]) - mean) / scale
    u = torch.randn(11, r, generator=g, requires_grad=True)
    v = torch.randn(d, r, generator=g, requires_grad=True)
    w0 = torch.randn(d, generator=g, requires_grad=True)
    dd, l2 = torch.randn(len(rows), d, generator=g), 0.03
    assert torch.allclose(proj(u), x @ u, atol=1e-5)
    loss = F.softplus(-((x @ u) * (dd @ v)).sum(-1) - dd @ w0).mean() + l2 * sum(
        (p**2).sum() for p in (u, v, w0)
    )
    want = torch.autograd.grad(loss, [u, v, w0])
    discovery._context_gradients(proj, dd, u, v, w0, l2)
    for p, expected in zip((u, v, w0), want, strict=True):
        assert p.grad is not None and torch.allclose(p.grad, expected, atol=1e-6), p.shape

    # fit_bt_heads against the same fit through autograd
    assign, anchor = torch.randint(0, 3, (len(rows),), generator=g), torch.randn(d, generator=g)
    delta = torch.zeros(3, d, requires_grad=True)
    onehot = F.one_hot(assign, 3).float()
    opt = AdamW([delta], lr=0.05)
    for _ in range(200):
        heads = anchor + delta
        bt = ((onehot * F.softplus(-(dd @ heads.T))).sum(0) / onehot.sum(0).clamp(min=1)).sum()
        opt.zero_grad()
        (bt + l2 * (delta**2).sum()).backward()
        opt.step()
    assert torch.allclose(discovery.fit_bt_heads(dd, assign, 3, anchor, l2), anchor + delta, atol=1e-5)
