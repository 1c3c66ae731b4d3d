"""The default model that ships in the repository: `data/controlled/default-model/`.

A fresh clone shows the Overview at once because `Workspace.ensure_default` installs this model instead of
training one (about two minutes on 2 cores). It is what `ensure_default` would train, saved:

    config.json, model.safetensors, metrics.json, split_ids.json   the model directory (train_from_data)
    descriptions.json                                             its experts described on the data (describe.py)
    shipped.json                                                  the SHA-256 of the features file it was trained on

`problem` says why the shipped model cannot stand in for training *now* (None when it can): a file is
missing or does not load, it was trained on another features file, or by another recipe (the request and
the training configuration recorded in its metrics.json differ from `default_request` and
`TrainConfig.for_kind` today). Then `ensure_default` trains as before, and `make default-model` (which runs
`build`) makes the shipped copy match the code again; tests/integration/test_default_model.py fails until
it does. A change to the training code that keeps its configuration is caught by that test's slow part
(a fresh training must reproduce the shipped config and its held-out accuracy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

from ..core import atomic
from ..embed.features import PairFeatures
from .pipeline import TrainRequest, train_config_for

SHIPPED_DIR = "default-model"  # next to the controlled data's features file
MODEL_FILES = ("config.json", "model.safetensors", "metrics.json", "split_ids.json")
DESCRIPTIONS = "descriptions.json"
MANIFEST = "shipped.json"
DATA_NAME = "controlled"  # what its metrics.json records as its data: the controlled dataset, wherever it is


def default_request(feats: PairFeatures) -> TrainRequest:
    """How the default model is trained on the controlled data (`feats`).

    Persona pairs are the held-out users of the Personalize page: never trained on. One expert per criterion
    pole of the controlled data (12), two active per prompt. The test split holds whole questions (as the
    README's experiment does), so the headline numbers are on questions the model never saw."""
    held_out = any(p.user is None for p in feats.pairs)  # only when something is left to train on
    by_question = bool(feats.pairs) and all("question_id" in p.meta for p in feats.pairs)
    return TrainRequest(
        data=DATA_NAME,
        experts=12,
        top_k=2,
        exclude_user_pairs=held_out,
        split_by="meta.question_id" if by_question else None,
        validation=0.15 if by_question else 0.1,
        test=0.25 if by_question else 0.1,
    )


def features_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_dir(features_path: str | Path) -> Path:
    return Path(features_path).parent / SHIPPED_DIR


def recipe_differences(metrics: dict, req: TrainRequest) -> list[str]:
    """What differs between the recipe a model's metrics.json records and `req` (with its training config)."""

    want = {k: v for k, v in asdict(req).items() if k != "train"}
    have = metrics.get("request") or {}
    out = [f"request.{k}: {have.get(k)!r} != {v!r}" for k, v in want.items() if have.get(k) != v]
    config = asdict(train_config_for(req))
    recorded = metrics.get("train_config") or {}
    for k in sorted(set(config) | set(recorded)):
        if _jsonable(config.get(k)) != recorded.get(k):
            out.append(f"train_config.{k}: {recorded.get(k)!r} != {config.get(k)!r}")
    return out


def _jsonable(value):
    return json.loads(json.dumps(value))  # tuples as lists, as metrics.json holds them


def problem(shipped: Path, features_path: Path, feats: PairFeatures) -> str | None:
    """Why the model in `shipped` cannot stand in for training the default model on `features_path`
    (whose loaded features are `feats`) with today's recipe; None when it can."""
    from .workspace import model_problem

    missing = [f for f in (*MODEL_FILES, MANIFEST) if not (shipped / f).is_file()]
    if missing:
        return f"{shipped}: no {', '.join(missing)}"
    broken = model_problem(shipped)
    if broken:
        return broken
    try:
        manifest = json.loads((shipped / MANIFEST).read_text())
        metrics = json.loads((shipped / "metrics.json").read_text())
        config = json.loads((shipped / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"{shipped}: {exc}"
    if manifest.get("features_sha256") != features_digest(features_path):
        return f"{shipped} was trained on another version of {features_path.name}"
    if {k: v for k, v in (config.get("backbone") or {}).items()} != dict(feats.metadata):
        return f"{shipped}/config.json: its backbone differs from {features_path.name}'s"
    differences = recipe_differences(metrics, default_request(feats))
    if differences:
        return f"{shipped} was built by another recipe ({'; '.join(differences[:3])})"
    return None


def install(shipped: Path, staging: Path) -> Path:
    """Copy the shipped model's files into `staging` (a new directory the caller moves into place)."""
    staging.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copyfile(shipped / name, staging / name)
    return staging


def descriptions(shipped: Path):
    """The shipped expert descriptions (describe.py), or None when they are missing or unreadable."""
    from ..evaluate.describe import load_descriptions

    try:
        return load_descriptions(shipped / DESCRIPTIONS)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build(features_path: str | Path, out: str | Path | None = None, stage=None) -> tuple[Path, dict]:
    """Train the default model on the controlled data's features file with `default_request`, describe its
    experts and write all of it, with the features' digest, to `out` (default: next to the features,
    `default-model/`), replacing what was there in one rename. Returns (out, metrics)."""
    from ..evaluate.describe import describe_experts, save_descriptions
    from ..evaluate.metrics import score_pairs
    from .pipeline import train_from_data

    features_path = Path(features_path)
    out = Path(out) if out is not None else shipped_dir(features_path)
    feats = PairFeatures.load(features_path)
    staging = out.parent / f".{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        model, metrics = train_from_data(default_request(feats), staging, stage=stage, features=feats)
        save_descriptions(describe_experts(model, feats, score_pairs(model, feats)), staging / DESCRIPTIONS)
        atomic.write_text(
            staging / MANIFEST,
            json.dumps({"features": features_path.name, "features_sha256": features_digest(features_path)}),
        )
        if out.exists():
            old = out.parent / f".{out.name}-old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out, metrics
