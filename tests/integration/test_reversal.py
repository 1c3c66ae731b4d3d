"""The defaults must make experts specialize where it matters: a preference that reverses with context.

Data: the length criterion of the controlled dataset (written by `moe_reward.controlled`): the same
short and long answers, preferred under "I'm in a hurry" cues and dispreferred under "explain in depth"
cues. Held-out *questions* (not just held-out prompts) keep a single head from memorizing per-question
quirks, so what is measured is whether the model reads the context.
"""

import numpy as np
import pytest

from moe_reward.app.pipeline import TrainRequest, train_from_data
from moe_reward.embed.backbone import BackboneSpec
from moe_reward.embed.pairs import embed_pairs, load_features_or_pairs
from moe_reward.evaluate.metrics import evaluate, routing_purity, score_pairs


@pytest.fixture(scope="module")
def length_split():
    # The controlled data ships embedded (data/controlled/features.safetensors): nothing to embed here.
    shipped = load_features_or_pairs("controlled")
    features = shipped.subset([i for i, p in enumerate(shipped.pairs) if p.meta.get("criterion") == "length"])
    pairs = features.pairs
    assert 300 <= len(pairs) <= 800 and {p.group for p in pairs} == {"concise", "detailed"}
    reversed_ids = {p.meta["reversal_of"] for p in pairs if p.meta.get("reversal_of")}
    assert len(reversed_ids) > 100  # same two texts, opposite labels under opposite cues
    questions = sorted({p.meta["question_id"] for p in pairs})
    held_out = {q for i, q in enumerate(questions) if i % 5 == 0}
    test = [i for i, p in enumerate(pairs) if p.meta["question_id"] in held_out]
    train = [i for i, p in enumerate(pairs) if p.meta["question_id"] not in held_out]
    return features.subset(train), features.subset(test)


def fit(kind, features):
    # Defaults of `moe-reward train --model KIND` (the pipeline splits off validation by prompt itself).
    model, _ = train_from_data(TrainRequest(data="(in memory)", kind=kind, test=0.0), None, features=features)
    return model


def test_default_sparse_routes_contexts_apart_and_beats_single(length_split):
    train, test = length_split
    sparse, single = fit("sparse", train), fit("single", train)
    groups = np.array([p.group for p in train.pairs])
    top = score_pairs(sparse, train).top_expert
    # the two contexts go to different experts: (almost) no expert serves both
    assert routing_purity(top, groups) >= 0.95
    sparse_acc, single_acc = evaluate(sparse, test)["accuracy"], evaluate(single, test)["accuracy"]
    assert sparse_acc >= single_acc + 0.10, (sparse_acc, single_acc)
    assert sparse_acc >= 0.65


@pytest.mark.parametrize("split_seed", [0, 2])
def test_sparse_matches_dense_on_unseen_questions_of_a_reversal_set(split_seed):
    """On a set whose preference reverses with the cue (tests/support/reversal_data.py), the sparse model routes the
    two cues apart on unseen questions and is as accurate there as the vanilla MoE, with the defaults.
    Each expert sees only its side of the reversal, so its head starts from the context model's prediction,
    which learnt the shared direction from both sides. (Before: on split seed 2 heads started from the
    shared head lost 3 of 60 pairs, and on split seed 0 a validation gain of 1e-6 nats chose 4 clusters,
    splitting each cue between two experts: NMI 0.67.)"""
    from reversal_data import reversal_pairs

    pairs = reversal_pairs(0, cues_per_side=5)
    for p in pairs:
        p.meta["question_id"] = p.id.split("-")[1]
    features = embed_pairs(pairs, BackboneSpec(runtime="torch"))  # (the fp32 embeddings it was tuned on)
    got = {}
    for kind in ("sparse", "dense"):
        req = TrainRequest(
            data="(in memory)",
            kind=kind,
            experts=4,
            top_k=1,
            split_seed=split_seed,
            split_by="meta.question_id",
            validation=0.15,
            test=0.25,
        )
        _, metrics = train_from_data(req, None, features=features)
        got[kind] = metrics
    sparse, dense = got["sparse"]["test"], got["dense"]["test"]
    assert sparse["n_pairs"] == dense["n_pairs"] >= 50
    assert got["sparse"]["discovery"]["head_anchor"] == "context model"
    assert got["sparse"]["discovery"]["clusters"] == 2
    assert sparse["routing_nmi"] >= 0.95 and sparse["routing_nmi"] >= dense["routing_nmi"]
    assert sparse["accuracy"] >= dense["accuracy"], (sparse["accuracy"], dense["accuracy"])
