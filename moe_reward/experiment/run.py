"""The `experiment` pipeline: four model kinds, several seeds, routing quality and few-shot personalization.

Protocol
--------
- **Users** are the values of `user_field` ("user" or "group") of the pairs (`plan_folds`):
  - when some pairs have no user (general pairs plus annotators or personas), one fold holds out every
    user (or the names in `held_out_users`); the user-less pairs and other users' pairs train;
  - when *every* pair has a user, **leave-one-user-out**: one fold per user (or per name in
    `held_out_users`, at most `max_folds` chosen with `user_seed`), trained on the other users' pairs.
  Held-out users' pairs never train, and neither does any pair that repeats a comparison of a held-out
  user's *test* pairs (`data.pair_key`, `training_index`): when several annotators judged the same
  comparisons, the others' labels on the held-out user's adaptation comparisons still train, so the
  training pool does not collapse. Each fold's training pool is reported (``folds``), with a warning
  when it is under `MIN_TRAIN_POOL` pairs.
- **Models**: for each seed s and fold, the training pairs are split by prompt -- or by `split_by`, e.g.
  ``meta.question_id`` for held-out questions -- (`data.split_pairs`, seed s) into train / validation /
  test, identically for every kind, and each kind of `kinds` is trained with
  ``TrainConfig.for_kind(kind, seed=s)`` on the same cached backbone features, its router reading
  `router_input`. Accuracy, per-group accuracy, routing NMI (top-1 expert vs group), expert utilization
  and the specialization diagnostics come from `analysis.evaluate` on the held-out test split, averaged
  over folds.
- **Personalization**: each held-out user's pairs are split (seed s) into an adaptation pool and a test
  set (`user_test_fraction`). For k in `shots`, `draws` seeded draws of k pool labels fit each adapter,
  starting from the model's average routing over its training features (`personalize.profile_prior`),
  with per-expert margin scales from the training features when `margin_scale` is on. The accuracy on
  the user's test set is averaged over draws, then over users; mean and sd are over seeds. k = 0 is the
  prior profile itself. The same draws are used for every kind, adapter and the oracle (paired
  comparison); users whose pool is smaller than k are skipped at that k, and ``users_per_k`` lists who
  was averaged at each k.
- **Oracle**: a single Bradley-Terry head (L2 logistic regression without intercept on the
  standardized chosen-minus-rejected embeddings) trained on the same k labels of the user alone;
  ``"pool"`` is that head trained on the user's whole pool, for reference.
- **Active vs random** (sparse model, the adapter with the best mean accuracy over k >= 1): labels are
  added one at a time from the pool, chosen by `personalize.select_next` ("active": the largest
  expected profile movement) or at random (`draws` orders); accuracy at each k of `shots`.
- **Per user**: ``personalization_per_user`` keeps each user's curve (mean and sd over seeds).
- **Weight shift** (sparse model, first seed, same adapter): the profile before/after fitting each user's
  first min(32, pool) pool labels, its largest experts and the labels that moved them; the experts'
  auto-labels (`describe.describe_experts` on the training split) say what those experts stand for.

``results.json`` shape (k is a string; every statistic is ``{"mean": float|None, "sd": float|None}``
over seeds)::

    {"config": {...ExperimentConfig..., "users": [...], "protocol": str, "n_pairs": {...}},
     "models": {"<kind>": {"accuracy": stat, "per_group": {"<group>": stat},
                           "routing_nmi": stat, "expert_utilization": [mean share of expert k],
                           "personalization": {"<adapter>": {"<k>": stat}},
                           "diagnostics": {"router_probe_nmi": stat, "router_probe_accuracy": stat,
                                           "oracle_routing_accuracy": stat, "discovery_efficiency": stat},
                           "n_test_pairs": int, "router_inputs": [str]}},
     "users_per_k": {"<k>": [users averaged at k]},
     "personalization_per_user": {"<kind>": {"<adapter>": {"<k>": {"<user>": stat}}}},
     "folds": [{"seed", "held_out", "train_pool", "excluded_repeats_of_test_comparisons", "warning"?}],
     "warnings": [str],
     "oracle": {"<k>": stat, "pool": stat},
     "active_vs_random": {"adapter": str, "active": {"<k>": stat}, "random": {"<k>": stat}},
     "weight_shift": {"<user>": {"adapter": str, "n_labels": int, "before": [...], "after": [...],
                                 "delta": [...], "top_experts": [[k, weight], ...],
                                 "top_movers": {"<k>": [[pair_id, delta], ...]}}},
     "expert_labels": {"<k>": "prefers: ...; prompts: ..."},   (lead model, first seed; {} if describe off)
     "timings": {"embed_s": float, "train_s": {"<kind>": mean seconds}, "personalize_s": float,
                 "total_s": float}}

kinds are sparse/dense/single/drm and adapters hedge/batch/gradient by default.

Cost: on 2 CPU cores with the embeddings cached, seeds=3 on the controlled data (~4.5k pairs) takes about
4 minutes, most of it the gradient adapter's warm-started re-solves (every k, draw, user, kind and seed).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..core import atomic
from ..core.pngs import write_pngs
from ..data.pairs import check_split_field, pair_key, split_pairs
from ..embed.backbone import BackboneSpec
from ..embed.features import PairFeatures
from ..embed.pairs import load_features_or_pairs
from ..evaluate.describe import describe_experts
from ..evaluate.metrics import evaluate
from ..model.moe import MODEL_KINDS, ModelConfig
from ..personalize.adapters import (
    ADAPTERS,
    expert_margins_for,
    make_adapter,
    margin_scale_for,
    personalized_accuracy,
    profile_prior,
    weight_shift,
)
from ..personalize.session import label_in_order
from ..train.config import TrainConfig
from ..train.loop import TrainResult, train_model

DEFAULT_KINDS = ("sparse", "dense", "single", "drm")
DEFAULT_SHOTS = (0, 1, 2, 4, 8, 16, 32)
USER_FIELDS = ("user", "group")


@dataclass
class ExperimentConfig:
    data: str = "controlled"
    user_field: str = "user"
    seeds: int = 3
    experts: int = 8
    top_k: int = 2
    max_pairs: int | None = None  # seeded subsample of all pairs (before anything else), None = all
    kinds: tuple[str, ...] = DEFAULT_KINDS
    adapters: tuple[str, ...] = ADAPTERS
    shots: tuple[int, ...] = DEFAULT_SHOTS
    draws: int = 5  # label draws per (user, k)
    user_test_fraction: float = 0.5  # of each held-out user's pairs, kept for testing the profile
    held_out_users: tuple[str, ...] = ()  # the users to hold out (default: every user; see the protocol)
    max_folds: int | None = 10  # leave-one-user-out: at most this many users (seeded by user_seed) get a fold
    user_seed: int = 0
    validation: float = 0.1
    test: float = 0.1
    split_by: str | None = None  # split the training pool by this field (default: the prompt)
    router_input: str = "auto"  # what routed kinds' routers read (router_inputs.py)
    diagnostics: bool = True  # specialization diagnostics per kind (analysis.specialization_diagnostics)
    epochs: int | None = None  # TrainConfig overrides (None: the kind's default)
    min_steps: int | None = None
    margin_scale: bool = True  # normalize each expert's margins by its spread on the training features
    adapter_params: dict = field(default_factory=dict)  # {"hedge": {"eta": 0.5}, ...}
    backbone: str = "all-MiniLM-L6-v2"
    max_length: int = 256
    cache_dir: str | None = "default"
    skip_bad: bool = False
    figures: bool = True
    describe: bool = True  # auto-label the lead model's experts (describe.py), to read the weight shifts

    def __post_init__(self) -> None:
        self.kinds, self.adapters = tuple(self.kinds), tuple(self.adapters)
        self.shots = tuple(sorted({int(k) for k in self.shots}))
        if self.user_field not in USER_FIELDS:
            raise ValueError(f"user_field must be one of {USER_FIELDS}, got {self.user_field!r}")
        if self.seeds < 1 or self.draws < 1:
            raise ValueError("seeds and draws must be >= 1")
        if self.experts < 1 or not 1 <= self.top_k <= self.experts:
            raise ValueError(f"need experts >= 1 and 1 <= top_k <= experts, got {self.experts}, {self.top_k}")
        if self.max_pairs is not None and self.max_pairs < 4:
            raise ValueError("max_pairs must be >= 4")
        bad = [k for k in self.kinds if k not in MODEL_KINDS] + [
            a for a in self.adapters if a not in ADAPTERS
        ]
        if bad or not self.kinds:
            raise ValueError(f"unknown kinds/adapters {bad}; kinds: {MODEL_KINDS}, adapters: {ADAPTERS}")
        if not self.shots or self.shots[0] < 0:
            raise ValueError("shots must be non-negative label counts")
        if not 0 < self.user_test_fraction < 1:
            raise ValueError("user_test_fraction is a fraction in (0, 1)")
        self.held_out_users = tuple(str(u) for u in self.held_out_users)
        if self.max_folds is not None and self.max_folds < 1:
            raise ValueError("max_folds must be >= 1 (or None for every user)")
        check_split_field(self.split_by)


def stat(values) -> dict:
    """{"mean", "sd"} of the finite values (sd with ddof=1; 0 for one value; None when empty)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return {"mean": None, "sd": None}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


# ----------------------------------------------------------------------------- data: users and splits


MIN_TRAIN_POOL = 100  # a fold that trains on fewer pairs than this is reported with a warning


@dataclass
class Fold:
    """Users held out together, and all their pairs. Training for a fold uses every other pair except
    those that repeat a comparison in a held-out user's *test* pairs (`training_index`)."""

    held_users: list[str]
    user_index: dict[str, list[int]]


@dataclass
class Protocol:
    name: str  # "held-out users" or "leave-one-user-out"
    folds: list[Fold]
    users: list[str]  # every held-out user, over all folds (sorted)
    numbers: dict[str, int]  # a stable number per user (seeds each user's splits and label draws)


def plan_folds(
    features: PairFeatures,
    user_field: str,
    held_out_users: tuple[str, ...] = (),
    max_folds: int | None = None,
    seed: int = 0,
) -> Protocol:
    """The experiment's folds.

    - Some pairs have no user (e.g. general pairs plus annotators' or personas' pairs): one fold holds out
      every user (or `held_out_users`); the user-less pairs and any non-held-out user's pairs train.
    - Every pair has a user: **leave-one-user-out**, one fold per user (or per name in `held_out_users`;
      at most `max_folds`, a seeded choice); each fold trains on the other users' pairs.
    """
    users = [getattr(p, user_field) for p in features.pairs]
    names = sorted({u for u in users if u is not None})
    if not names:
        raise ValueError(
            f"no pair has a {user_field!r}: nothing to personalize to "
            f"(try --user-field {'group' if user_field == 'user' else 'user'})"
        )
    unknown = sorted(set(held_out_users) - set(names))
    if unknown:
        raise ValueError(f"held-out users not in the data: {unknown}; the {user_field}s are: {names[:20]}")
    index: dict[str, list[int]] = {u: [] for u in names}
    for i, u in enumerate(users):
        if u is not None:
            index[u].append(i)
    numbers = {u: n for n, u in enumerate(names)}
    held = sorted(held_out_users) if held_out_users else names
    if any(u is None for u in users):
        return Protocol("held-out users", [Fold(held, {u: index[u] for u in held})], held, numbers)
    if len(names) < 2:
        raise ValueError(f"every pair has the same {user_field}: no one is left to train on")
    if max_folds is not None and len(held) > max_folds:
        pick = np.random.default_rng(seed).choice(len(held), max_folds, replace=False)
        held = sorted(held[i] for i in pick)
    return Protocol("leave-one-user-out", [Fold([u], {u: index[u]}) for u in held], held, numbers)


def training_index(
    features: PairFeatures, user_field: str, fold: Fold, test_rows: dict[str, np.ndarray]
) -> tuple[list[int], int]:
    """(pairs that may train this fold, how many were excluded as repeats of a held-out test comparison).

    Held-out users' own pairs never train. Another pair with the same texts as one of their *test* pairs
    (`data.pair_key`: the same comparison, judged by someone else or by no one) never trains either, so
    no test comparison is seen in training; comparisons in their adaptation pools may train (they are the
    labels of other people)."""
    held = set(fold.held_users)
    excluded = {
        pair_key(features.pairs[fold.user_index[u][j]]) for u in fold.held_users for j in test_rows[u]
    }
    train, dropped = [], 0
    for i, p in enumerate(features.pairs):
        if getattr(p, user_field) in held:
            continue
        if pair_key(p) in excluded:
            dropped += 1
        else:
            train.append(i)
    return train, dropped


def user_pool_and_test(
    n: int, test_fraction: float, seed: int, user_number: int
) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([seed, user_number, 7]).permutation(n)
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def label_draws(pool_size: int, k: int, draws: int, seed: int, user_number: int) -> list[np.ndarray]:
    """The seeded k-label draws from a pool (shared by every kind, adapter and the oracle)."""
    if k == 0:
        return [np.zeros(0, dtype=np.int64)]
    return [
        np.random.default_rng([seed, user_number, k, d]).choice(pool_size, k, replace=False)
        for d in range(draws)
    ]


# ----------------------------------------------------------------------------- personalization


@dataclass
class UserData:
    name: str
    number: int
    pool: np.ndarray  # indices into the user's own pairs
    test: np.ndarray
    ids: list[str]


def _adapter(name: str, k: int, prior: np.ndarray, scale: np.ndarray | None, cfg: ExperimentConfig):
    params = dict(cfg.adapter_params.get(name, {}))
    if scale is not None:
        params.setdefault("margin_scale", scale)
    return make_adapter(name, k, prior, **params)


def personalization_curves(
    margins: dict[str, tuple[np.ndarray, np.ndarray]],
    users: list[UserData],
    prior: np.ndarray,
    scale: np.ndarray | None,
    cfg: ExperimentConfig,
    seed: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """{adapter: {k: {user: accuracy averaged over draws}}} for one model and seed (users whose pool has
    fewer than k pairs are absent at that k)."""
    k_experts = len(prior)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in cfg.adapters:
        curve: dict[str, dict[str, float]] = {}
        for k in cfg.shots:
            per_user = {}
            for u in users:
                if k > len(u.pool):
                    continue
                m, a = margins[u.name]
                accs = []
                for draw in label_draws(len(u.pool), k, cfg.draws, seed, u.number):
                    idx = u.pool[draw]
                    ad = _adapter(name, k_experts, prior, scale, cfg)
                    if k:
                        ad.fit(m[idx], [u.ids[i] for i in idx], a[idx])
                    accs.append(personalized_accuracy(ad, m[u.test], a[u.test]))
                per_user[u.name] = float(np.mean(accs))
            if per_user:
                curve[str(k)] = per_user
        out[name] = curve
    return out


def oracle_curve(
    train: PairFeatures,
    user_feats: dict[str, PairFeatures],
    users: list[UserData],
    cfg: ExperimentConfig,
    seed: int,
) -> dict[str, dict[str, float]]:
    """{k: {user: accuracy}} of a user-only BT head (logistic regression on chosen - rejected) trained on k
    of the user's labels, and on the whole pool (k = "pool")."""
    from sklearn.linear_model import LogisticRegression

    scale = (train.chosen - train.rejected).std(0)
    scale = np.clip(scale, max(float(np.median(scale)) / 3, 1e-6), None)

    def head_accuracy(f: PairFeatures, fit_idx: np.ndarray, test_idx: np.ndarray) -> float:
        diff = (f.chosen - f.rejected) / scale
        x = np.concatenate([diff[fit_idx], -diff[fit_idx]])  # both orientations: two classes, no intercept
        y = np.r_[np.ones(len(fit_idx)), np.zeros(len(fit_idx))]
        head = LogisticRegression(C=1.0, fit_intercept=False, max_iter=500).fit(x, y)
        return float((diff[test_idx] @ head.coef_[0] > 0).mean())

    out: dict[str, dict[str, float]] = {}
    for k in [k for k in cfg.shots if k > 0]:
        per_user = {}
        for u in users:
            if k > len(u.pool):
                continue
            f = user_feats[u.name]
            per_user[u.name] = float(
                np.mean(
                    [
                        head_accuracy(f, u.pool[d], u.test)
                        for d in label_draws(len(u.pool), k, cfg.draws, seed, u.number)
                    ]
                )
            )
        if per_user:
            out[str(k)] = per_user
    out["pool"] = {u.name: head_accuracy(user_feats[u.name], u.pool, u.test) for u in users}
    return out


def active_and_random(
    margins: dict[str, tuple[np.ndarray, np.ndarray]],
    users: list[UserData],
    adapter: str,
    prior: np.ndarray,
    scale: np.ndarray | None,
    cfg: ExperimentConfig,
    seed: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """{strategy: {k: {user: accuracy}}} after k sequentially chosen labels, active selection vs random."""
    curves: dict[str, dict[str, dict[str, float]]] = {"active": {}, "random": {}}
    for u in users:
        m, a = margins[u.name]
        mp, ap = m[u.pool], a[u.pool]
        horizon = min(max(cfg.shots), len(u.pool))
        runs = [("active", None)] + [
            ("random", np.random.default_rng([seed, u.number, 99, d])) for d in range(cfg.draws)
        ]
        per_strategy: dict[str, dict[int, list[float]]] = {"active": {}, "random": {}}
        for strategy, rng in runs:
            ad = _adapter(adapter, len(prior), prior, scale, cfg)
            steps = label_in_order(ad, mp, [u.ids[j] for j in u.pool], ap, horizon, strategy, rng)
            for step in range(horizon + 1):
                if step in cfg.shots:
                    per_strategy[strategy].setdefault(step, []).append(
                        personalized_accuracy(ad, m[u.test], a[u.test])
                    )
                if step == horizon:
                    break
                next(steps)
        for strategy, by_k in per_strategy.items():
            for k, accs in by_k.items():
                curves[strategy].setdefault(str(k), {})[u.name] = float(np.mean(accs))
    return curves


def shift_report(
    margins: dict[str, tuple[np.ndarray, np.ndarray]],
    users: list[UserData],
    adapter: str,
    prior: np.ndarray,
    scale: np.ndarray | None,
    cfg: ExperimentConfig,
    limit: int = 32,
) -> dict:
    report = {}
    for u in users:
        m, a = margins[u.name]
        idx = u.pool[:limit]
        ad = _adapter(adapter, len(prior), prior, scale, cfg)
        ad.fit(m[idx], [u.ids[i] for i in idx], a[idx])
        shift = weight_shift(ad, top=2)
        after = np.asarray(shift["after"])
        top = np.argsort(-after, kind="stable")[:3]
        report[u.name] = {
            "adapter": adapter,
            "n_labels": int(len(idx)),
            "before": [round(x, 6) for x in shift["before"]],
            "after": [round(x, 6) for x in shift["after"]],
            "delta": [round(x, 6) for x in shift["delta"]],
            "top_experts": [[int(k), round(float(after[k]), 6)] for k in top],
            "top_movers": {
                str(k): [[pid, round(d, 6)] for pid, d in v] for k, v in shift["top_movers"].items()
            },
        }
    return report


# ----------------------------------------------------------------------------- the run


def _train(
    kind: str, seed: int, parts: dict[str, PairFeatures], cfg: ExperimentConfig, metadata: dict
) -> TrainResult:
    overrides = {k: getattr(cfg, k) for k in ("epochs", "min_steps") if getattr(cfg, k) is not None}
    overrides["split_by"] = cfg.split_by  # cross-validation folds keep the split's units together
    mcfg = ModelConfig(
        kind=kind,
        input_dim=parts["train"].dim,
        num_experts=cfg.experts,
        top_k=cfg.top_k,
        backbone=dict(metadata),
        router_input=cfg.router_input,
    )
    return train_model(
        parts["train"], parts["validation"], mcfg, TrainConfig.for_kind(kind, seed=seed, **overrides)
    )


def _merge(into: dict, part: dict) -> None:
    """Merge nested {...: {user: value}} dicts (one per fold) into one."""
    for key, value in part.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            _merge(into.setdefault(key, {}), value)
        elif isinstance(value, dict):
            into.setdefault(key, {}).update(value)
        else:
            into[key] = value


def run_experiment(
    cfg: ExperimentConfig, out: str | Path | None = None, progress: Callable[[str], None] | None = None
) -> dict:
    """Run the whole protocol (module docstring); write results.json, results.md and figures to `out`."""
    t_start = time.perf_counter()
    say = progress or (lambda _msg: None)
    say("embedding")
    t0 = time.perf_counter()
    features = load_features_or_pairs(
        cfg.data,
        skip_bad=cfg.skip_bad,
        backbone=BackboneSpec(cfg.backbone, max_length=cfg.max_length),
        cache_dir=cfg.cache_dir,
    )
    if cfg.max_pairs is not None and len(features) > cfg.max_pairs:
        keep = np.sort(
            np.random.default_rng(cfg.user_seed).choice(len(features), cfg.max_pairs, replace=False)
        )
        features = features.subset(keep)
    embed_s = time.perf_counter() - t0
    check_split_field(cfg.split_by, features.pairs)
    protocol = plan_folds(features, cfg.user_field, cfg.held_out_users, cfg.max_folds, cfg.user_seed)
    user_feats = {
        u: features.subset(idx)
        for fold in protocol.folds
        for u, idx in fold.user_index.items()
        if len(idx) >= 2
    }
    if not user_feats:
        raise ValueError("no held-out user has at least 2 pairs")

    per_seed: list[dict] = []
    fold_reports: list[dict] = []
    warnings: list[str] = []
    train_s: dict[str, list[float]] = {k: [] for k in cfg.kinds}
    t_personal = 0.0
    lead = "sparse" if "sparse" in cfg.kinds else cfg.kinds[0]  # the model of the selection and shift studies
    best: str | None = None
    bar = tqdm(
        total=cfg.seeds * len(protocol.folds) * len(cfg.kinds),
        desc="experiment",
        unit="model",
        disable=not sys.stderr.isatty(),
    )
    for seed in range(cfg.seeds):
        row: dict = {
            "models": {k: {"evals": [], "personalization": {}} for k in cfg.kinds},
            "oracle": {},
            "active_vs_random": {},
            "weight_shift": {},
            "expert_labels": {},
        }
        for f_no, fold in enumerate(protocol.folds):
            users, test_rows = [], {}
            for name in fold.held_users:
                if name not in user_feats:
                    continue
                pool, test = user_pool_and_test(
                    len(user_feats[name]), cfg.user_test_fraction, seed, protocol.numbers[name]
                )
                users.append(UserData(name, protocol.numbers[name], pool, test, user_feats[name].ids))
                test_rows[name] = test
            if not users:
                continue
            train_index, excluded = training_index(features, cfg.user_field, fold, test_rows)
            report = {
                "seed": seed,
                "held_out": fold.held_users,
                "train_pool": len(train_index),
                "excluded_repeats_of_test_comparisons": excluded,
            }
            fold_reports.append(report)
            if len(train_index) < MIN_TRAIN_POOL:
                message = (
                    f"seed {seed}, held out {', '.join(fold.held_users)}: only {len(train_index)} pairs left to "
                    f"train on (fewer than {MIN_TRAIN_POOL}); its numbers mean little"
                )
                report["warning"] = message
                if message not in warnings:
                    warnings.append(message)
            if len(train_index) < 4:
                continue
            pool_feats = features.subset(train_index)
            splits = split_pairs(pool_feats.pairs, cfg.validation, cfg.test, seed=seed, by=cfg.split_by)
            parts = {n: pool_feats.subset(getattr(splits, n)) for n in ("train", "validation", "test")}
            if len(parts["train"]) < 2:
                continue
            held_out = parts["test"] if len(parts["test"]) else parts["validation"]
            train_pool = pool_feats.subset(
                list(splits.train) + list(splits.validation) if len(parts["test"]) else list(splits.train)
            )
            _merge(row["oracle"], oracle_curve(parts["train"], user_feats, users, cfg, seed))
            for kind in cfg.kinds:
                bar.set_postfix_str(f"seed {seed} fold {f_no} {kind}")
                say(f"seed {seed + 1}/{cfg.seeds}, fold {f_no + 1}/{len(protocol.folds)}: training {kind}")
                trained = _train(kind, seed, parts, cfg, features.metadata)
                model = trained.model
                train_s[kind].append(trained.seconds)
                discovery = trained.discovery.to_dict()
                ev = evaluate(
                    model,
                    held_out,
                    diagnostics=cfg.diagnostics,
                    train_features=train_pool,
                    discovery=discovery,
                ).to_dict()
                ev["router_input"] = model.config.router_input  # resolved: what "auto" chose on validation
                ev["decision"] = discovery.get("decision")
                ev["checkpoint_untrained"] = trained.untrained is not None
                t1 = time.perf_counter()
                train_margins, _ = expert_margins_for(model, parts["train"])
                scale = margin_scale_for(train_margins) if cfg.margin_scale else None
                prior = profile_prior(model, parts["train"])
                margins = {u.name: expert_margins_for(model, user_feats[u.name]) for u in users}
                say(f"seed {seed + 1}/{cfg.seeds}: personalizing {kind}")
                curves = personalization_curves(margins, users, prior, scale, cfg, seed)
                model_row = row["models"][kind]
                model_row["evals"].append(ev)
                _merge(model_row["personalization"], curves)
                if kind == lead:
                    # The adapter for the selection study is picked once, on the first fold of the first seed.
                    best = best or max(
                        cfg.adapters,
                        key=lambda a: np.mean(
                            [np.mean(list(v.values())) for k, v in curves[a].items() if k != "0"] or [0]
                        ),
                    )
                    _merge(
                        row["active_vs_random"],
                        active_and_random(margins, users, best, prior, scale, cfg, seed),
                    )
                    if seed == 0:
                        row["weight_shift"].update(shift_report(margins, users, best, prior, scale, cfg))
                        if cfg.describe and not row["expert_labels"]:
                            say("describing experts")
                            row["expert_labels"] = {
                                str(d.expert): d.label for d in describe_experts(model, parts["train"])
                            }
                t_personal += time.perf_counter() - t1
                bar.update(1)
        per_seed.append(row)
    bar.close()
    if not any(r["models"][k]["evals"] for r in per_seed for k in cfg.kinds):
        raise ValueError("no fold had enough pairs to train on: " + "; ".join(warnings))

    results = summarize(per_seed, cfg, protocol, features, user_feats, fold_reports, warnings, best)
    results["timings"] = {
        "embed_s": round(embed_s, 3),
        "train_s": {k: round(float(np.mean(v)), 3) for k, v in train_s.items() if v},
        "personalize_s": round(t_personal, 3),
        "total_s": round(time.perf_counter() - t_start, 3),
    }
    if out is not None:
        write_outputs(results, out, figures=cfg.figures)
    return results


def _user_mean(by_user: dict[str, float] | None) -> float | None:
    return float(np.mean(list(by_user.values()))) if by_user else None


def _fold_mean(values) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


DIAGNOSTIC_KEYS = (
    "routing_nmi_null",
    "routing_nmi_null_p95",
    "routing_nmi_p",
    "router_probe_nmi",
    "router_probe_accuracy",
    "router_probe_p",
    "oracle_routing_accuracy",
    "pooled_head_accuracy",
    "oracle_gain_p",
    "discovery_efficiency",
)


def summarize(
    per_seed: list[dict],
    cfg: ExperimentConfig,
    protocol: Protocol,
    features: PairFeatures,
    user_feats: dict[str, PairFeatures],
    fold_reports: list[dict],
    warnings: list[str],
    adapter: str | None,
) -> dict:
    """Means over folds (models) or users (personalization) within a seed; mean and sd over seeds."""
    models: dict = {}
    users_at_k: dict[str, list[str]] = {}
    for kind in cfg.kinds:
        evals = [r["models"][kind]["evals"] for r in per_seed]
        groups = sorted({g for es in evals for e in es for g in e["per_group"]})
        util = np.mean([e["expert_utilization"] for es in evals for e in es], axis=0)
        curves = [r["models"][kind]["personalization"] for r in per_seed]
        models[kind] = {
            "accuracy": stat(_fold_mean(e["accuracy"] for e in es) for es in evals),
            "per_group": {
                g: stat(_fold_mean(e["per_group"].get(g, {}).get("accuracy") for e in es) for es in evals)
                for g in groups
            },
            "routing_nmi": stat(_fold_mean(e["routing_nmi"] for e in es) for es in evals),
            "routing_nmi_significant": sum(
                1
                for es in evals
                for e in es
                if ((e.get("diagnostics") or {}).get("routing_nmi_p") or 1.0) < 0.05
            ),  # runs (seeds x folds) whose routing NMI beat its permutation null at p < 0.05
            "ties": int(sum(e.get("ties", 0) for es in evals for e in es)),
            "specialization": [e.get("specialization") for es in evals for e in es],  # per seed (and fold)
            "decisions": [e.get("decision") for es in evals for e in es],
            "untrained_runs": sum(1 for es in evals for e in es if e.get("checkpoint_untrained")),
            "expert_utilization": [round(float(x), 6) for x in util],
            "personalization": {
                a: {
                    str(k): stat(_user_mean(c[a].get(str(k))) for c in curves)
                    for k in cfg.shots
                    if any(str(k) in c.get(a, {}) for c in curves)
                }
                for a in cfg.adapters
            },
            "diagnostics": {
                key: stat(_fold_mean((e.get("diagnostics") or {}).get(key) for e in es) for es in evals)
                for key in DIAGNOSTIC_KEYS
            },
            "n_test_pairs": int(np.mean([sum(e["n_pairs"] for e in es) for es in evals])),
            "router_inputs": [e.get("router_input") for es in evals for e in es],  # per seed (and fold)
        }
        for c in curves:
            for a in c:
                for k, by_user in c[a].items():
                    users_at_k[k] = sorted(set(users_at_k.get(k, [])) | set(by_user))
    oracle_keys = [str(k) for k in cfg.shots if k > 0] + ["pool"]
    oracle = {
        k: stat(_user_mean(r["oracle"].get(k)) for r in per_seed)
        for k in oracle_keys
        if any(k in r["oracle"] for r in per_seed)
    }
    lead = "sparse" if "sparse" in cfg.kinds else cfg.kinds[0]
    active_vs_random: dict = {"adapter": adapter, "model": lead}
    for strategy in ("active", "random"):
        keys = sorted({k for r in per_seed for k in r["active_vs_random"].get(strategy, {})}, key=int)
        active_vs_random[strategy] = {
            k: stat(_user_mean(r["active_vs_random"][strategy].get(k)) for r in per_seed) for k in keys
        }
    config = asdict(cfg)
    pools = [f["train_pool"] for f in fold_reports]
    config.update(
        users=sorted(user_feats),
        protocol=protocol.name,
        n_pairs={
            "total": len(features),
            "train_pool": int(np.mean(pools)) if pools else 0,
            "train_pool_min": int(min(pools)) if pools else 0,
            "held_out_users": sum(len(f) for f in user_feats.values()),
            "dropped_duplicates_of_user_pairs": int(
                np.mean([f["excluded_repeats_of_test_comparisons"] for f in fold_reports])
            )
            if fold_reports
            else 0,
        },
    )
    per_user = {
        kind: {
            a: {
                str(k): {
                    u: stat(
                        r["models"][kind]["personalization"].get(a, {}).get(str(k), {}).get(u)
                        for r in per_seed
                    )
                    for u in users_at_k.get(str(k), [])
                }
                for k in cfg.shots
            }
            for a in cfg.adapters
        }
        for kind in cfg.kinds
    }
    return {
        "config": config,
        "models": models,
        "oracle": oracle,
        "active_vs_random": active_vs_random,
        "personalization_per_user": per_user,
        "weight_shift": per_seed[0]["weight_shift"],
        "expert_labels": per_seed[0]["expert_labels"],
        "users_per_k": {k: users_at_k[k] for k in sorted(users_at_k, key=int)},
        "folds": fold_reports,
        "warnings": warnings,
    }


# ----------------------------------------------------------------------------- outputs


def _fmt(s: dict | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "–"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _router_inputs(found: list | None) -> str:
    """'lexical ×2, pooled' from the router input of each seed (and fold); '–' for results without them."""
    if not found:
        return "–"
    counts = Counter(str(x) for x in found)
    return ", ".join(f"{name} ×{n}" if n > 1 else name for name, n in counts.most_common())


def results_markdown(results: dict) -> str:
    cfg, models = results["config"], results["models"]
    kinds = list(models)
    split = cfg.get("split_by") or "prompt"
    parts = [
        f"# Experiment: {cfg['data']} (users from `{cfg['user_field']}`, {cfg['seeds']} seeds, "
        f"{cfg['experts']} experts, top-{cfg['top_k']}, router input {cfg.get('router_input', 'pooled')})",
        f"Protocol: {cfg.get('protocol', 'held-out users')}. Held-out users ({len(cfg['users'])}): "
        f"{', '.join(cfg['users'])}. Pairs: {cfg['n_pairs']}. Values are mean ± sd over seeds.",
    ]
    for w in results.get("warnings", []):
        parts.append(f"**Warning:** {w}")
    parts.append(
        f"## Models (held-out test split of the training pairs, split by {split}; "
        "about {} test pairs per seed)".format(next(iter(models.values())).get("n_test_pairs", "?"))
    )
    runs = cfg["seeds"]

    def nmi_cell(m: dict) -> str:
        if m["routing_nmi"].get("mean") is None:
            return "– (one expert or no router)"
        null = m.get("diagnostics", {}).get("routing_nmi_null", {})
        return (
            f"{_fmt(m['routing_nmi'])} (chance {_fmt(null)}; p < 0.05 in {m.get('routing_nmi_significant', '?')} "
            f"of {len(m.get('decisions') or []) or runs} runs)"
        )

    parts.append(
        _table(
            [
                "kind",
                "accuracy (ties = ½)",
                "routing NMI (permutation chance)",
                "router reads (per seed)",
                "discovery decision (per seed)",
                "expert utilization (top-1 share)",
            ],
            [
                [
                    k,
                    _fmt(m["accuracy"]) + (f" ({m['ties']} ties)" if m.get("ties") else ""),
                    nmi_cell(m),
                    _router_inputs(m.get("router_inputs")),
                    _router_inputs([d for d in m.get("decisions") or [] if d]),
                    " ".join(f"{u:.2f}" for u in m["expert_utilization"]),
                ]
                for k, m in models.items()
            ],
        )
    )
    untrained = {k: m["untrained_runs"] for k, m in models.items() if m.get("untrained_runs")}
    if untrained:
        parts.append(
            "**Untrained checkpoints:** "
            + ", ".join(f"{k} in {n} run(s)" for k, n in untrained.items())
            + " kept a checkpoint whose validation loss is not below log 2 (they learnt nothing that holds)."
        )
    verdicts = [v for m in models.values() for v in m.get("specialization") or [] if v]
    if verdicts:
        parts.append(
            "**Heterogeneity verdict** (per model and run): " + _router_inputs(verdicts) + ". "
            "routing: the prompt predicts the criterion; personalization: groups prefer differently on prompts "
            "the router cannot tell apart; none: nothing detectable with this backbone."
        )
    if any(
        m.get("diagnostics", {}).get("oracle_routing_accuracy", {}).get("mean") is not None
        for m in models.values()
    ):
        parts.append(
            "## Specialization diagnostics (same test split; probes fitted on the training pairs)\n\n"
            "Routing NMI chance: mean and 95th percentile of the NMI with the groups shuffled, and the p-value. "
            "Router probe: a supervised linear router on the same router input, given the groups, cross-validated "
            "over the training pairs (the NMI routing could reach). Oracle routing: one Bradley-Terry head per "
            "group fitted on the training pairs, the group given, beside one head fitted the same way. Discovery "
            "efficiency: routing NMI / probe NMI (only where the probe beats its chance level)."
        )
        parts.append(
            _table(
                ["kind", *DIAGNOSTIC_KEYS],
                [
                    [k] + [_fmt(m.get("diagnostics", {}).get(key)) for key in DIAGNOSTIC_KEYS]
                    for k, m in models.items()
                ],
            )
        )
    groups = sorted({g for m in models.values() for g in m["per_group"]})
    if groups:
        parts.append("## Accuracy per group")
        parts.append(
            _table(
                ["group"] + kinds,
                [[g] + [_fmt(models[k]["per_group"].get(g)) for k in kinds] for g in groups],
            )
        )
    shots = [str(k) for k in cfg["shots"]]
    per_k = results.get("users_per_k", {})
    parts.append("## Few-shot personalization on held-out users (accuracy on each user's test pairs)")
    rows = []
    for k in kinds:
        for a, curve in models[k]["personalization"].items():
            rows.append([k, a] + [_fmt(curve.get(s)) for s in shots])
    rows.append(["oracle", "user-only BT head"] + [_fmt(results["oracle"].get(s)) for s in shots])
    parts.append(
        _table(["model", "adapter"] + [f"k={s} ({len(per_k.get(s, []))} users)" for s in shots], rows)
    )
    short = {s: sorted(set(cfg["users"]) - set(per_k.get(s, []))) for s in shots}
    missing = [f"k={s}: {', '.join(u)}" for s, u in short.items() if u]
    if missing:
        parts.append(
            "Users left out at a k (their adaptation pool is smaller than k): " + "; ".join(missing) + "."
        )
    parts.append(f"Oracle on each user's whole pool: {_fmt(results['oracle'].get('pool'))}")
    avr = results["active_vs_random"]
    parts.append(f"## Active vs random label selection ({avr.get('model')} model, {avr['adapter']} adapter)")
    keys = [s for s in shots if s in avr["active"]]
    parts.append(
        _table(
            ["strategy"] + [f"k={s}" for s in keys],
            [[s] + [_fmt(avr[s].get(k)) for k in keys] for s in ("active", "random")],
        )
    )
    if results["weight_shift"]:
        parts.append("## Weight shift per user (first seed)")
        rows = []
        for user, ws in results["weight_shift"].items():
            before = np.asarray(ws["before"])
            top = ", ".join(f"e{k} {before[k]:.2f}→{w:.2f}" for k, w in ws["top_experts"])
            label = results.get("expert_labels", {}).get(str(ws["top_experts"][0][0]), "")
            rows.append([user, str(ws["n_labels"]), top, label])
        parts.append(
            _table(["user", "labels", "top experts (before→after)", "top expert's auto-label"], rows)
        )
    if results.get("expert_labels"):
        parts.append("## Expert auto-labels (first seed)")
        parts.append(_table(["expert", "label"], [[f"e{k}", v] for k, v in results["expert_labels"].items()]))
    t = results.get("timings", {})
    if t:
        parts.append("## Timings")
        parts.append(
            f"embedding {t['embed_s']:.1f}s; training per model "
            + ", ".join(f"{k} {v:.1f}s" for k, v in t["train_s"].items())
            + f"; personalization {t['personalize_s']:.1f}s; total {t['total_s']:.1f}s"
        )
    return "\n\n".join(parts) + "\n"


def make_figures(results: dict) -> dict:
    """Plotly figures: personalization curves per kind, routing NMI bars, active vs random."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = results["models"]
    kinds = list(models)
    curves = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds, shared_yaxes=True)
    shot_order = [str(k) for k in results["config"]["shots"]]
    palette = {"hedge": "#1f77b4", "batch": "#ff7f0e", "gradient": "#2ca02c", "oracle": "#7f7f7f"}
    for col, kind in enumerate(kinds, start=1):
        series = dict(models[kind]["personalization"])
        series["oracle"] = {k: v for k, v in results["oracle"].items() if k != "pool"}
        for name, curve in series.items():
            ks = sorted((k for k, v in curve.items() if v["mean"] is not None), key=int)
            curves.add_trace(
                go.Scatter(
                    x=ks,
                    y=[curve[k]["mean"] for k in ks],
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    mode="lines+markers",
                    line=dict(color=palette.get(name), dash="dash" if name == "oracle" else None),
                    error_y=dict(type="data", array=[curve[k]["sd"] for k in ks], visible=True),
                ),
                row=1,
                col=col,
            )
        # Categorical axis: k doubles from 1, and k = 0 (the prior) has no place on a log axis.
        curves.update_xaxes(
            type="category",
            categoryorder="array",
            categoryarray=shot_order,
            title_text="labels k",
            row=1,
            col=col,
        )
    curves.update_layout(
        title="Few-shot personalization accuracy on held-out users",
        yaxis_title="accuracy",
        height=420,
        width=320 * len(kinds) + 120,
    )
    nmi = go.Figure(
        go.Bar(
            x=kinds,
            y=[models[k]["routing_nmi"]["mean"] or 0 for k in kinds],
            error_y=dict(type="data", array=[models[k]["routing_nmi"]["sd"] or 0 for k in kinds]),
        )
    )
    nmi.update_layout(title="Routing NMI (top-1 expert vs group) on the test split", yaxis_title="NMI")
    avr = results["active_vs_random"]
    active = go.Figure()
    for strategy in ("active", "random"):
        ks = sorted(avr[strategy], key=int)
        active.add_trace(
            go.Scatter(
                x=ks,
                y=[avr[strategy][k]["mean"] for k in ks],
                name=strategy,
                mode="lines+markers",
                error_y=dict(type="data", array=[avr[strategy][k]["sd"] for k in ks]),
            )
        )
    active.update_layout(
        title=f"Active vs random label selection ({avr['adapter']} adapter)",
        xaxis_title="labels k",
        yaxis_title="accuracy",
    )
    active.update_xaxes(type="category", categoryorder="array", categoryarray=shot_order)
    return {"personalization_curves": curves, "routing_nmi": nmi, "active_vs_random": active}


def write_outputs(results: dict, out: str | Path, figures: bool = True) -> Path:
    """results.json, results.md and the figures (HTML; PNG too when kaleido and a Chromium can render
    them: otherwise one warning in results["warnings"], never a failure)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if figures:
        figs = make_figures(results)
        for name, fig in figs.items():
            # "directory": one plotly.min.js beside the pages, so they open offline.
            atomic.write_with(
                out / f"{name}.html", lambda tmp, fig=fig: fig.write_html(tmp, include_plotlyjs="directory")
            )
        _, problem = write_pngs(figs, out)
        if problem:
            note = f"no PNG figures ({problem}); the HTML figures are written"
            results.setdefault("warnings", [])
            if note not in results["warnings"]:
                results["warnings"].append(note)
    atomic.write_text(out / "results.json", json.dumps(results, indent=2))
    atomic.write_text(out / "results.md", results_markdown(results))
    return out
