"""A tiny dashboard workspace for the app, browser and bench tests: no backbone, trained in seconds.

The features are synthetic 384-d vectors (the MiniLM width, so free-text scoring still fits the model):
prompts cluster by a brief/deep cue, and the preferred response's length direction flips with the cue,
so a routed model learns two experts. The texts are real (tests/support/reversal_data.py) so pages show text.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from reversal_data import reversal_pairs

from moe_reward.app.pipeline import TrainRequest, train_from_data
from moe_reward.app.workspace import DEFAULT_MODEL, Workspace
from moe_reward.data.pairs import PreferencePair
from moe_reward.embed.features import PairFeatures
from moe_reward.model import modeldir
from moe_reward.model.moe import SparseMoERewardModel
from moe_reward.train.config import TrainConfig

DIM = 384
PERSONAS = {"brief": "terse-tess", "deep": "thorough-theo"}


def _repeat_id(pair_id: str, i: int, n_base: int) -> str:
    """The first pass keeps the base ids (tests name pairs such as 'rev-0-brief-0'); repeats get a suffix."""
    return pair_id if i < n_base else f"{pair_id}-{i}"


TINY_PAIRS = 192  # enough training pairs (>= TrainConfig.min_discovery_pairs) for discovery to test routing


def tiny_features(seed: int = 0, n_pairs: int | None = TINY_PAIRS) -> PairFeatures:
    """96 reversal pairs (groups brief/deep) repeated to `n_pairs` (fresh noise; repeats get unique ids);
    None keeps the 96."""
    rng = np.random.default_rng(seed)
    pairs = reversal_pairs(seed=seed, cues_per_side=2)
    if n_pairs is not None:
        base = pairs
        pairs = [
            PreferencePair(
                **{**base[i % len(base)].to_dict(), "id": _repeat_id(base[i % len(base)].id, i, len(base))}
            )
            for i in range(n_pairs)
        ]
    n = len(pairs)
    cue_dir, length_dir = np.eye(DIM)[0], np.eye(DIM)[1]
    # Noise lives in a few dimensions only, so that standardization keeps the two signal axes visible.
    # (So free text typed on "Score your own" gets out-of-range rewards from these synthetic models.)
    prompt, chosen, rejected = (
        np.pad(rng.normal(scale=0.5, size=(n, 14)), ((0, 0), (2, DIM - 16))) for _ in range(3)
    )
    for i, p in enumerate(pairs):
        p.user = PERSONAS[p.group]
        deep = p.group == "deep"
        prompt[i] += (2.0 if deep else -2.0) * cue_dir
        long_is_chosen = deep
        chosen[i] += (1.5 if long_is_chosen else -1.5) * length_dir
        rejected[i] += (-1.5 if long_is_chosen else 1.5) * length_dir
    as32 = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    meta = {"backbone": "all-MiniLM-L6-v2", "pooling": "mean", "max_length": 256, "dim": DIM}
    return PairFeatures(as32(prompt), as32(chosen), as32(rejected), pairs, meta)


_templates: dict[tuple, Path] = {}  # (n_pairs, experts) -> a workspace built once in this process
# Where processes that run tests side by side (pytest-xdist workers) share the workspaces they built; set by
# tests/conftest.py. None: each process builds its own.
SHARED_DIR: Path | None = None


def build_tiny_workspace(root: str | Path, n_pairs: int | None = TINY_PAIRS, experts: int = 4) -> Workspace:
    """models/default-sparse (4 experts, top-2) and models/tiny-dense on uploads/tiny.safetensors,
    plus an experiments/tiny/results.json for the comparison page.

    Trained once per process and size (and once per test run where `SHARED_DIR` is set): later calls copy
    that workspace (its models then record the copy's upload as their data, saved through the model's own
    save_pretrained), so the test modules that each want a fresh tiny workspace do not each train the same
    two models again."""
    key = (n_pairs, experts)
    template = _templates.get(key)
    if template is None or not (template / "models").is_dir():
        template = _shared_template(key) if SHARED_DIR is not None else None
        if template is None:
            template = Path(tempfile.mkdtemp(prefix="tiny-workspace-"))
            atexit.register(shutil.rmtree, template, True)
            _train_tiny_workspace(template, n_pairs, experts)
        _templates[key] = template
    return _copy_workspace(template, Path(root))


def _shared_template(key: tuple) -> Path:
    """The workspace of `key` under SHARED_DIR: trained in a private folder and renamed into place, so a
    process sees either none or a whole one; when two processes race, the first rename wins and the
    other's copy is dropped (training is seeded: both are the same)."""
    assert SHARED_DIR is not None
    final = SHARED_DIR / f"tiny-{key[0]}-{key[1]}"
    if not (final / "models").is_dir():
        SHARED_DIR.mkdir(parents=True, exist_ok=True)
        mine = Path(tempfile.mkdtemp(prefix="building-", dir=SHARED_DIR))
        _train_tiny_workspace(mine, *key)
        try:
            mine.rename(final)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(mine, ignore_errors=True)
    return final


def _copy_workspace(template: Path, root: Path) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("models", "uploads", "experiments"):
        shutil.copytree(template / sub, root / sub, dirs_exist_ok=True)
    ws = Workspace(root)
    trained_in = Path((template / "trained-in.txt").read_text())  # (a shared template was renamed after)
    old, new = str(trained_in / "uploads" / "tiny.safetensors"), str(ws.uploads_dir / "tiny.safetensors")
    for name in ws.list_models():
        model_dir = ws.model_path(name)
        metrics = modeldir.read_metrics(model_dir)
        if metrics.get("data") == old:
            metrics["data"] = new
            metrics["request"]["data"] = new
            SparseMoERewardModel.from_pretrained(model_dir).save_pretrained(model_dir, metrics)
    return ws


def _train_tiny_workspace(root: Path, n_pairs: int | None, experts: int) -> Workspace:
    ws = Workspace(root)
    (root / "trained-in.txt").write_text(str(root))
    feats = tiny_features(n_pairs=n_pairs)
    data = ws.uploads_dir / "tiny.safetensors"
    feats.save(data)
    for name, kind in ((DEFAULT_MODEL, "sparse"), ("tiny-dense", "dense")):
        req = TrainRequest(
            data=str(data),
            kind=kind,
            experts=experts,
            top_k=2,
            train=TrainConfig.for_kind(kind, epochs=15, min_steps=60, patience=15),
        )
        train_from_data(req, ws.model_path(name), features=feats)
    stat = lambda m: {"mean": m, "sd": 0.02}  # noqa: E731
    results = {
        "config": {"users": list(PERSONAS.values())},
        "models": {
            kind: {
                "accuracy": stat(acc),
                "routing_nmi": stat(nmi),
                "per_group": {},
                "personalization": {
                    "hedge": {str(k): stat(min(0.5 + 0.05 * k * gain, 0.99)) for k in (0, 1, 2, 4, 8)}
                },
            }
            for kind, acc, nmi, gain in (("sparse", 0.95, 0.9, 1.0), ("dense", 0.9, 0.3, 0.6))
        },
        "oracle": {str(k): stat(0.5 + 0.04 * k) for k in (0, 1, 2, 4, 8)},
    }
    (ws.experiments_dir / "tiny").mkdir(parents=True, exist_ok=True)
    (ws.experiments_dir / "tiny" / "results.json").write_text(json.dumps(results))
    return ws
