"""End-to-end recipes shared by the CLI and the dashboard: data -> features -> model -> metrics -> disk."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core import atomic
from ..data.pairs import LoadResult, Splits, split_pairs, split_value
from ..embed.backbone import Backbone, BackboneSpec
from ..embed.cache import embed_texts
from ..embed.features import PairFeatures, default_cache_dir
from ..embed.pairs import load_features_or_pairs
from ..model.moe import ModelConfig, SparseMoERewardModel

if TYPE_CHECKING:
    from ..train.loop import TrainConfig

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


def split_features(
    features: PairFeatures, validation: float, test: float, seed: int, by: str | None = None
) -> tuple[Splits, dict[str, PairFeatures]]:
    splits = split_pairs(features.pairs, validation=validation, test=test, seed=seed, by=by)
    parts = {name: features.subset(getattr(splits, name)) for name in ("train", "validation", "test")}
    return splits, parts


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
    from ..train.loop import TrainConfig, train_model

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
    cfg = req.train or TrainConfig.for_kind(req.kind)
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
        "discovery": result.discovery,
        "history": result.history,
        "train_seconds": round(result.seconds, 3),
        "total_seconds": round(time.perf_counter() - t0, 3),
        "test_subset": "test" if len(parts["test"]) else "validation",
        "test": evaluate(result.model, held_out, diagnostics=True),
        "train": evaluate(result.model, parts["train"]),
    }
    metrics["warnings"] = [
        w
        for w in (
            small_sample_warning(
                metrics["test"]["n_pairs"], metrics["test"]["accuracy"], metrics["test_subset"]
            ),
        )
        if w
    ]
    if out is not None:
        result.model.save_pretrained(out, metrics)
        atomic.write_text(Path(out) / "split_ids.json", json.dumps({n: parts[n].ids for n in parts}))
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
MAX_SPLIT_FILE_BYTES = 512 * 1024 * 1024


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


def load_split_ids(directory: str | Path) -> dict[str, list[str]]:
    """A saved model's ``split_ids.json`` (pair ids per split), checked; a clear error names the file."""
    path = Path(directory) / "split_ids.json"
    if not path.is_file():
        raise ValueError(
            f"{path}: no saved split (the model was not trained by `moe-reward train`); use --split all"
        )
    size = path.stat().st_size
    if size > MAX_SPLIT_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the limit of {MAX_SPLIT_FILE_BYTES}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not a readable split file ({str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object with train, validation and test id lists")
    for name in ("train", "validation", "test"):
        ids = data.get(name)
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise ValueError(f"{path}: {name}: expected a list of pair ids")
    return {name: data[name] for name in ("train", "validation", "test")}


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


@torch.no_grad()
def score_texts(
    model: SparseMoERewardModel,
    backbone: Backbone,
    prompt: str,
    responses: list[str],
    user_weights: np.ndarray | None = None,
    cache_dir: str | Path | None = "default",
) -> list[ScoredResponse]:
    """Score free text with a saved model: embed (through the cache), route, and mix."""
    from ..data.pairs import PreferencePair
    from ..embed.cache import EmbeddingCache
    from ..model.router_inputs import router_data

    root = default_cache_dir() if cache_dir == "default" else cache_dir
    cache = EmbeddingCache(root, backbone.cache_key)
    emb = embed_texts(backbone, [(prompt, None)] + [(prompt, r) for r in responses], cache)
    n = len(responses)
    # The router reads the prompt the way it was trained to (its channels); one row per response.
    rows = PairFeatures(
        np.repeat(emb[:1], n, 0),
        emb[1:],
        emb[1:],
        [PreferencePair(prompt, "-", "+")] * n,
        backbone.metadata(),
    )
    p = router_data(model, rows, backbone=backbone, cache_dir=root, dense=True).batch(slice(0, n))
    out = model(p, torch.from_numpy(emb[1:]))
    personal = None
    if user_weights is not None:
        personal = model(
            p, torch.from_numpy(emb[1:]), user_weights=torch.as_tensor(user_weights, dtype=torch.float32)
        ).reward
    return [
        ScoredResponse(
            r,
            float(out.reward[i]),
            out.routing[i].tolist(),
            out.router_probs[i].tolist(),
            out.expert_rewards[i].tolist(),
            None if personal is None else float(personal[i]),
        )
        for i, r in enumerate(responses)
    ]
