"""End-to-end recipes shared by the CLI and the dashboard: data -> features -> model -> metrics -> disk."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .analysis import evaluate
from .data import Splits, split_pairs
from .embed import (
    Backbone,
    BackboneSpec,
    PairFeatures,
    default_cache_dir,
    embed_texts,
    load_features_or_pairs,
)
from .model import ModelConfig, SparseMoERewardModel
from .train import TrainConfig, train_model

StageFn = Callable[[str, float], None]  # (stage description, fraction done in [0, 1])


@dataclass
class TrainRequest:
    data: str
    kind: str = "sparse"
    experts: int = 8
    top_k: int = 2
    hidden_dim: int = 0
    backbone: str = "all-MiniLM-L6-v2"
    max_length: int = 256
    validation: float = 0.1
    test: float = 0.1
    split_seed: int = 0
    skip_bad: bool = False
    exclude_user_pairs: bool = False  # keep annotator-labelled pairs out (e.g. held-out personas)
    router_input: str = "auto"  # what the router reads (router_inputs.py); auto: chosen on validation
    split_by: str | None = None  # keep every value of this field on one side (default: the prompt)
    train: TrainConfig | None = None


def split_features(features: PairFeatures, validation: float, test: float, seed: int,
                   by: str | None = None) -> tuple[Splits, dict[str, PairFeatures]]:
    splits = split_pairs(features.pairs, validation=validation, test=test, seed=seed, by=by)
    parts = {name: features.subset(getattr(splits, name)) for name in ("train", "validation", "test")}
    return splits, parts


def train_from_data(req: TrainRequest, out: str | Path | None, stage: StageFn | None = None,
                    features: PairFeatures | None = None) -> tuple[SparseMoERewardModel, dict]:
    """Load (or reuse) features, split by prompt, train, evaluate on the held-out test split, save."""
    say = stage or (lambda _msg, _frac: None)
    t0 = time.perf_counter()
    if features is None:
        say("embedding", 0.0)
        features = load_features_or_pairs(
            req.data, skip_bad=req.skip_bad, backbone=BackboneSpec(req.backbone, max_length=req.max_length),
            progress=lambda done, total: say(f"embedding {done}/{total} texts", 0.5 * done / max(total, 1)),
        )
    if req.exclude_user_pairs:
        features = features.subset([i for i, p in enumerate(features.pairs) if p.user is None])
        if not len(features):
            raise ValueError(f"{req.data}: every pair has a user; nothing left to train on without them")
    splits, parts = split_features(features, req.validation, req.test, req.split_seed, req.split_by)
    cfg = req.train or TrainConfig.for_kind(req.kind)
    mcfg = ModelConfig(kind=req.kind, input_dim=features.dim, num_experts=req.experts, top_k=req.top_k,
                       hidden_dim=req.hidden_dim, backbone=dict(features.metadata), router_input=req.router_input)

    def on_epoch(epoch: int, epochs: int, row: dict) -> None:
        acc = row.get("val_accuracy", row.get("train_accuracy", float("nan")))
        say(f"training epoch {epoch}/{epochs} (validation accuracy {acc:.3f})", 0.5 + 0.45 * epoch / epochs)

    result = train_model(parts["train"], parts["validation"], mcfg, cfg, progress=on_epoch)
    say("evaluating", 0.95)
    held_out = parts["test"] if len(parts["test"]) else parts["validation"]
    metrics = {
        "data": str(req.data),
        "request": {k: v for k, v in asdict(req).items() if k != "train"},
        "train_config": asdict(cfg),
        "splits": {name: len(getattr(splits, name)) for name in ("train", "validation", "test")},
        "best_epoch": result.best_epoch,  # 0: the warm start was kept
        "epochs_planned": result.epochs_planned,
        "epochs_run": len(result.history) - 1,
        "discovery": result.discovery,
        "history": result.history,
        "train_seconds": round(result.seconds, 3),
        "total_seconds": round(time.perf_counter() - t0, 3),
        "test_subset": "test" if len(parts["test"]) else "validation",
        "test": evaluate(result.model, held_out, diagnostics=True),
        "train": evaluate(result.model, parts["train"]),
    }
    if out is not None:
        result.model.save_pretrained(out, metrics)
        (Path(out) / "split_ids.json").write_text(json.dumps({n: parts[n].ids for n in parts}))
    say("done", 1.0)
    return result.model, metrics


def load_model(directory: str | Path) -> SparseMoERewardModel:
    return SparseMoERewardModel.from_pretrained(directory)


def backbone_spec_for(model: SparseMoERewardModel) -> BackboneSpec:
    """The backbone a saved model's features came from (recorded in its config at training time)."""
    return BackboneSpec.from_metadata(model.config.backbone or {})  # runtime and template included


def backbone_for(model: SparseMoERewardModel) -> Backbone:
    return Backbone(backbone_spec_for(model))


def features_for_model(model: SparseMoERewardModel, data: str | Path, skip_bad: bool = False) -> PairFeatures:
    """A data or features file as the model sees it: embedded (through the cache) with its own backbone."""
    return load_features_or_pairs(data, skip_bad=skip_bad, backbone=backbone_spec_for(model))


@dataclass
class ScoredResponse:
    response: str
    reward: float
    routing: list[float]
    router_probs: list[float]
    expert_rewards: list[float]
    personalized_reward: float | None = None


@torch.no_grad()
def score_texts(model: SparseMoERewardModel, backbone: Backbone, prompt: str, responses: list[str],
                user_weights: np.ndarray | None = None, cache_dir: str | Path | None = "default") -> list[ScoredResponse]:
    """Score free text with a saved model: embed (through the cache), route, and mix."""
    from .data import PreferencePair
    from .embed import EmbeddingCache
    from .router_inputs import router_data

    root = default_cache_dir() if cache_dir == "default" else cache_dir
    cache = EmbeddingCache(root, backbone.cache_key)
    emb = embed_texts(backbone, [(prompt, None)] + [(prompt, r) for r in responses], cache)
    n = len(responses)
    # The router reads the prompt the way it was trained to (its channels); one row per response.
    rows = PairFeatures(np.repeat(emb[:1], n, 0), emb[1:], emb[1:], [PreferencePair(prompt, "-", "+")] * n,
                        backbone.metadata())
    p = router_data(model, rows, backbone=backbone, cache_dir=root).batch(slice(0, n))
    out = model(p, torch.from_numpy(emb[1:]))
    personal = None
    if user_weights is not None:
        personal = model(p, torch.from_numpy(emb[1:]), user_weights=torch.as_tensor(user_weights, dtype=torch.float32)).reward
    return [
        ScoredResponse(r, float(out.reward[i]), out.routing[i].tolist(), out.router_probs[i].tolist(),
                       out.expert_rewards[i].tolist(), None if personal is None else float(personal[i]))
        for i, r in enumerate(responses)
    ]
