"""End-to-end recipes shared by the CLI and the dashboard: data -> features -> model -> metrics -> disk."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..data.pairs import LoadResult, Splits, split_pairs, split_value
from ..embed.backbone import Backbone, BackboneSpec
from ..embed.cache import EmbeddingCache, TextCache, default_cache_dir, embed_texts
from ..embed.features import PairFeatures
from ..embed.pairs import load_features_or_pairs
from ..model import modeldir
from ..model.moe import ModelConfig, SparseMoERewardModel
from ..train.config import TrainConfig  # (train/config.py is light: the loop's imports stay deferred)

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

    def __post_init__(self) -> None:
        """Every field a user sets (CLI flags, the dashboard's form), checked where it enters."""
        from ..core.limits import MAX_EXPERTS, MAX_MAX_LENGTH
        from ..model.moe import MODEL_KINDS

        def integer(name: str, lo: int, hi: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")

        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError(f"data must be a file, folder or 'controlled', got {self.data!r}")
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}, got {self.kind!r}")
        integer("experts", 1, MAX_EXPERTS)
        integer("top_k", 1, max(self.experts, 1) if isinstance(self.experts, int) else 1)
        integer("hidden_dim", 0, 1 << 16)
        integer("max_length", 1, MAX_MAX_LENGTH)
        integer("split_seed", 0, 2**63 - 1)
        for name in ("validation", "test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} is a share of the pairs in [0, 1), got {value!r}")
        if self.validation + self.test >= 1:
            raise ValueError(
                f"validation + test must leave pairs to train on, got {self.validation} + {self.test}"
            )
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise ValueError(f"backbone must be a model name or path, got {self.backbone!r}")
        if self.split_by is not None and (not isinstance(self.split_by, str) or not self.split_by.strip()):
            raise ValueError(f"split_by must be a field name, got {self.split_by!r}")
        if self.train is not None and not isinstance(self.train, TrainConfig):
            raise ValueError("train must be a TrainConfig")


def split_features(
    features: PairFeatures, validation: float, test: float, seed: int, by: str | None = None
) -> tuple[Splits, dict[str, PairFeatures]]:
    splits = split_pairs(features.pairs, validation=validation, test=test, seed=seed, by=by)
    parts = {name: features.subset(getattr(splits, name)) for name in ("train", "validation", "test")}
    return splits, parts


def train_config_for(req: TrainRequest) -> TrainConfig:
    """The training configuration a request trains with: its own (or the kind's default), its
    cross-validation folds keeping the split's units together (`split_by`)."""
    cfg = req.train or TrainConfig.for_kind(req.kind)
    if cfg.split_by is None and req.split_by:
        cfg = replace(cfg, split_by=req.split_by)
    return cfg


def train_from_data(
    req: TrainRequest,
    out: str | Path | None,
    stage: StageFn | None = None,
    features: PairFeatures | None = None,
    on_loaded: Callable[[LoadResult], None] | None = None,
) -> tuple[SparseMoERewardModel, dict]:
    """Load (or reuse) features, split by prompt, train, evaluate on the held-out test split, save.
    `on_loaded` sees the data file's load result (rows dropped by ``skip_bad`` are also in the metrics)."""
    # (imported here: scoring with a saved model, `moe-reward score`, never pays for training's imports)
    from ..evaluate.metrics import evaluate
    from ..train.loop import train_model

    say = stage or (lambda _msg, _frac: None)
    t0 = time.perf_counter()
    skipped: dict = {}

    def loaded(res: LoadResult) -> None:
        skipped.update(rows=res.rows, skipped=len(res.errors), first=[str(e) for e in res.errors[:5]])
        if on_loaded is not None:
            on_loaded(res)

    if features is None:
        say("embedding", 0.0)
        features = load_features_or_pairs(
            req.data,
            skip_bad=req.skip_bad,
            backbone=BackboneSpec(req.backbone, max_length=req.max_length),
            progress=lambda done, total: say(f"embedding {done}/{total} texts", 0.5 * done / max(total, 1)),
            on_loaded=loaded,
        )
    if req.exclude_user_pairs:
        features = features.subset([i for i, p in enumerate(features.pairs) if p.user is None])
        if not len(features):
            raise ValueError(f"{req.data}: every pair has a user; nothing left to train on without them")
    splits, parts = split_features(features, req.validation, req.test, req.split_seed, req.split_by)
    check_training_split(req, features, {name: len(part) for name, part in parts.items()})
    cfg = train_config_for(req)
    mcfg = ModelConfig(
        kind=req.kind,
        input_dim=features.dim,
        num_experts=req.experts,
        top_k=req.top_k,
        hidden_dim=req.hidden_dim,
        backbone=dict(features.metadata),
        router_input=req.router_input,
    )

    def on_epoch(epoch: int, epochs: int, row: dict) -> None:
        acc = row.get("val_accuracy", row.get("train_accuracy", float("nan")))
        say(
            f"training: epoch {epoch} of at most {epochs}{schedule_note(cfg.epochs, epochs, cfg.min_steps, len(parts['train']))}"
            f" · validation accuracy {acc:.3f}",
            0.5 + 0.45 * epoch / epochs,
        )

    say(
        f"training on {len(parts['train'])} pairs ({len(parts['validation'])} validate, {len(parts['test'])} test)",
        0.5,
    )
    result = train_model(parts["train"], parts["validation"], mcfg, cfg, progress=on_epoch)
    epochs_run = len(result.history) - 1
    say(
        f"evaluating (trained {epochs_run} of at most {result.epochs_planned} epochs, kept epoch {result.best_epoch})",
        0.95,
    )
    held_out = parts["test"] if len(parts["test"]) else parts["validation"]
    pool = features.subset(
        np.concatenate([splits.train, splits.validation]) if len(parts["test"]) else splits.train
    )
    discovery = result.discovery.to_dict()
    test_eval = evaluate(result.model, held_out, diagnostics=True, train_features=pool, discovery=discovery)
    metrics = {
        "data": str(req.data),
        "load": skipped,  # rows read and rows dropped by skip_bad (empty for a features file)
        "request": {k: v for k, v in asdict(req).items() if k != "train"},
        "train_config": asdict(cfg),
        "splits": {name: len(getattr(splits, name)) for name in ("train", "validation", "test")},
        "best_epoch": result.best_epoch,  # 0: the warm start was kept
        "epochs_requested": cfg.epochs,
        "epochs_planned": result.epochs_planned,  # raised above the request to reach min_steps on small data
        "epochs_run": epochs_run,  # fewer than planned: early stopping
        "discovery": discovery,
        "checkpoint_untrained": result.untrained is not None,
        "history": result.history,
        "train_seconds": round(result.seconds, 3),
        "total_seconds": round(time.perf_counter() - t0, 3),
        "test_subset": "test" if len(parts["test"]) else "validation",
        "test": test_eval.to_dict(),
        "train": evaluate(result.model, parts["train"], discovery=discovery).to_dict(),
    }
    metrics["warnings"] = [
        w
        for w in (
            result.untrained and f"untrained model: {result.untrained}",
            small_sample_warning(test_eval.n_pairs, test_eval.accuracy, metrics["test_subset"]),
        )
        if w
    ]
    if out is not None:
        result.model.save_pretrained(out, metrics)
        modeldir.write_split_ids(out, {n: parts[n].ids for n in parts})
    say("done", 1.0)
    return result.model, metrics


MIN_HELD_OUT_PAIRS = 100  # below this, a held-out accuracy's 95% interval is wider than +-0.10


def schedule_note(requested: int, planned: int, min_steps: int, n_train: int) -> str:
    """Why the schedule has more epochs than were asked for (empty when it has not)."""
    if planned <= requested:
        return ""
    return (
        f" ({requested} requested; raised so that {n_train} training pairs get at least {min_steps} optimizer "
        "steps; early stopping ends it sooner when validation stops improving)"
    )


def small_sample_warning(n_pairs: int, accuracy: float | None, subset: str = "test") -> str | None:
    """A warning when a held-out number rests on too few pairs to mean much (fewer than
    MIN_HELD_OUT_PAIRS), with the 95% Wilson interval of the accuracy."""
    if n_pairs >= MIN_HELD_OUT_PAIRS:
        return None
    if not n_pairs or accuracy is None or accuracy != accuracy:
        return f"no {subset} pairs: there is no held-out number; use more data or a larger --test share"
    z = 1.96
    centre = (accuracy + z * z / (2 * n_pairs)) / (1 + z * z / n_pairs)
    half = (
        z
        * np.sqrt(accuracy * (1 - accuracy) / n_pairs + z * z / (4 * n_pairs * n_pairs))
        / (1 + z * z / n_pairs)
    )
    return (
        f"{subset} accuracy {accuracy:.3f} on only {n_pairs} pairs: its 95% interval is "
        f"{max(0.0, centre - half):.2f}-{min(1.0, centre + half):.2f}, too wide to compare models "
        f"(at least {MIN_HELD_OUT_PAIRS} held-out pairs are needed for +-0.10); routing NMI on so few pairs "
        "means as little"
    )


MIN_TRAINING_PAIRS = 2


def check_training_split(req: TrainRequest, features: PairFeatures, sizes: dict[str, int]) -> None:
    """Say precisely why a split leaves too few pairs to train on, and how to fix it."""
    if sizes["train"] >= MIN_TRAINING_PAIRS:
        return
    n_pairs, n_values = len(features), len({split_value(p, req.split_by) for p in features.pairs})
    by = req.split_by or "prompt"
    held = f"validation {req.validation:g} and test {req.test:g}"
    fix = (
        "add data"
        if n_pairs < MIN_TRAINING_PAIRS
        else f"pass --validation 0 --test 0 to train on all {n_pairs} pairs (no held-out evaluation), or add data"
    )
    raise ValueError(
        f"{req.data}: {n_pairs} pairs over {n_values} distinct {by} values; the split ({held}, at "
        f"least one {by} value on each held-out side) left {sizes['train']} training pairs "
        f"(validation {sizes['validation']}, test {sizes['test']}) and training needs at least "
        f"{MIN_TRAINING_PAIRS}: {fix}"
    )


def load_model(directory: str | Path) -> SparseMoERewardModel:
    return SparseMoERewardModel.from_pretrained(directory)


def backbone_spec_for(model: SparseMoERewardModel) -> BackboneSpec:
    """The backbone a saved model's features came from (recorded in its config at training time)."""
    return BackboneSpec.from_metadata(model.config.backbone or {})  # runtime and template included


def backbone_for(model: SparseMoERewardModel) -> Backbone:
    return Backbone(backbone_spec_for(model))


def features_for_model(
    model: SparseMoERewardModel,
    data: str | Path,
    skip_bad: bool = False,
    on_loaded: Callable[[LoadResult], None] | None = None,
) -> PairFeatures:
    """A data or features file as the model sees it: embedded (through the cache) with its own backbone."""
    return load_features_or_pairs(
        data, skip_bad=skip_bad, backbone=backbone_spec_for(model), on_loaded=on_loaded
    )


@dataclass
class ScoredResponse:
    response: str
    reward: float
    routing: list[float]
    router_probs: list[float]
    expert_rewards: list[float]
    personalized_reward: float | None = None


def score_texts(
    model: SparseMoERewardModel,
    backbone: Backbone,
    prompt: str,
    responses: list[str],
    user_weights: np.ndarray | None = None,
    cache_dir: str | Path | None = "default",
) -> list[ScoredResponse]:
    """Score free text with a saved model: embed (through the cache), route, and mix."""
    root = default_cache_dir() if cache_dir == "default" else cache_dir
    return score_responses(
        model,
        backbone,
        [prompt] * len(responses),
        responses,
        None if user_weights is None else [user_weights] * len(responses),
        cache=EmbeddingCache(root, backbone.cache_key),
        router_cache_dir=root,
    )


@torch.no_grad()
def score_responses(
    model: SparseMoERewardModel,
    backbone: Backbone,
    prompts: Sequence[str],
    responses: Sequence[str],
    user_weights: Sequence[np.ndarray | None] | None = None,
    cache: TextCache | None = None,
    router_cache_dir: str | Path | None = None,
) -> list[ScoredResponse]:
    """Score (prompt, response) rows in one forward pass: embed every distinct text once (through
    `cache`), route each prompt, mix. `user_weights[i]` (K weights, or None for the router's own mix)
    sets row i's `personalized_reward`, exactly as `model(..., user_weights=w)` mixes them. The CLI's
    `score`, the dashboard and the reward server all score through here."""
    from ..data.pairs import PreferencePair
    from ..model.router_inputs import router_data

    n = len(prompts)
    if len(responses) != n or (user_weights is not None and len(user_weights) != n):
        raise ValueError(f"{n} prompts, {len(responses)} responses and user weights must be as many")
    if not n:
        return []
    distinct = list(dict.fromkeys(prompts))
    emb = embed_texts(
        backbone, [(p, None) for p in distinct] + list(zip(prompts, responses, strict=True)), cache
    )
    row = {p: i for i, p in enumerate(distinct)}
    prompt_emb = emb[[row[p] for p in prompts]]
    response_emb = torch.from_numpy(np.ascontiguousarray(emb[len(distinct) :]))
    # The router reads each prompt the way it was trained to (its channels); one row per response.
    rows = PairFeatures(
        prompt_emb,
        emb[len(distinct) :],
        emb[len(distinct) :],
        [PreferencePair(p, "-", "+") for p in prompts],
        backbone.metadata(),
    )
    p = router_data(model, rows, backbone=backbone, cache_dir=router_cache_dir, dense=True).batch(slice(0, n))
    out = model(p, response_emb)
    personal = None
    wanted = [] if user_weights is None else [i for i, w in enumerate(user_weights) if w is not None]
    if wanted:
        w = np.zeros((n, model.num_experts), np.float32)
        for i in wanted:
            wi = np.asarray(user_weights[i], dtype=np.float32).reshape(-1)  # type: ignore[index]
            if len(wi) != model.num_experts:
                raise ValueError(f"{len(wi)} user weights for a model of {model.num_experts} experts")
            w[i] = wi
        personal = model(p, response_emb, user_weights=torch.from_numpy(w)).reward
    chosen = set(wanted)
    return [
        ScoredResponse(
            r,
            float(out.reward[i]),
            out.routing[i].tolist(),
            out.router_probs[i].tolist(),
            out.expert_rewards[i].tolist(),
            float(personal[i]) if personal is not None and i in chosen else None,
        )
        for i, r in enumerate(responses)
    ]
