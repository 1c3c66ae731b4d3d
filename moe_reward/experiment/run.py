"""The `experiment` pipeline: four model kinds, several seeds, routing quality and few-shot personalization.

This module runs the protocol and measures: `ExperimentConfig` says what to run, `run_experiment`
orchestrates it. Who the users are, how folds hold them out and which pairs may train is protocol.py; the
statistics over seeds and the typed ``results.json`` document are results.py (its docstring has the
shape); results.md and the figures are render.py.

Protocol
--------
- **Users and folds** (protocol.py, `plan_folds`, `training_index`): the values of `user_field` ("user" or
  "group"); one fold holding out every user when some pairs have none, else leave-one-user-out. Held-out
  users' pairs never train, nor any repeat of one of their *test* comparisons. Each fold's training pool
  is reported (``folds``), with a warning when it is under `MIN_TRAIN_POOL` pairs.
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

kinds are sparse/dense/single/drm and adapters hedge/batch/gradient by default.

Cost: on 2 CPU cores with the embeddings cached, seeds=3 on the controlled data (~4.5k pairs) takes about
4 minutes, most of it the gradient adapter's warm-started re-solves (every k, draw, user, kind and seed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.pairs import check_split_field, split_pairs
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
from .protocol import (
    MIN_TRAIN_POOL,
    Fold,
    Protocol,
    UserData,
    label_draws,
    plan_folds,
    training_index,
    user_pool_and_test,
)
from .render import make_figures, results_markdown, write_outputs
from .results import DIAGNOSTIC_KEYS, ExperimentResults, FoldReport, Timings, WeightShift, stat, summarize

__all__ = [  # what this module has always offered; the protocol, results and render modules own most of it
    "DIAGNOSTIC_KEYS",
    "MIN_TRAIN_POOL",
    "ExperimentConfig",
    "ExperimentResults",
    "Fold",
    "Protocol",
    "UserData",
    "label_draws",
    "make_figures",
    "plan_folds",
    "results_markdown",
    "run_experiment",
    "stat",
    "summarize",
    "training_index",
    "user_pool_and_test",
    "write_outputs",
]


DEFAULT_KINDS = ("sparse", "dense", "single", "drm")
DEFAULT_SHOTS = (0, 1, 2, 4, 8, 16, 32)
USER_FIELDS = ("user", "group")


@dataclass
class ExperimentConfig:
    """What `run_experiment` runs (module docstring); checked when made."""

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


# ----------------------------------------------------------------------------- personalization


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
) -> dict[str, WeightShift]:
    """Each user's profile before and after fitting their first `limit` pool labels (`weight_shift`)."""
    report = {}
    for u in users:
        m, a = margins[u.name]
        idx = u.pool[:limit]
        ad = _adapter(adapter, len(prior), prior, scale, cfg)
        ad.fit(m[idx], [u.ids[i] for i in idx], a[idx])
        shift = weight_shift(ad, top=2)
        after = np.asarray(shift["after"])
        top = np.argsort(-after, kind="stable")[:3]
        report[u.name] = WeightShift(
            adapter=adapter,
            n_labels=int(len(idx)),
            before=[round(x, 6) for x in shift["before"]],
            after=[round(x, 6) for x in shift["after"]],
            delta=[round(x, 6) for x in shift["delta"]],
            top_experts=[[int(k), round(float(after[k]), 6)] for k in top],
            top_movers={str(k): [[pid, round(d, 6)] for pid, d in v] for k, v in shift["top_movers"].items()},
        )
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
    fold_reports: list[FoldReport] = []
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
            report = FoldReport(seed, fold.held_users, len(train_index), excluded)
            fold_reports.append(report)
            if len(train_index) < MIN_TRAIN_POOL:
                message = (
                    f"seed {seed}, held out {', '.join(fold.held_users)}: only {len(train_index)} pairs left to "
                    f"train on (fewer than {MIN_TRAIN_POOL}); its numbers mean little"
                )
                report.warning = message
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

    config = config_report(cfg, protocol, features, user_feats, fold_reports)
    summary = summarize(per_seed, cfg.kinds, cfg.adapters, cfg.shots, config, fold_reports, warnings, best)
    summary.timings = Timings(
        embed_s=round(embed_s, 3),
        train_s={k: round(float(np.mean(v)), 3) for k, v in train_s.items() if v},
        personalize_s=round(t_personal, 3),
        total_s=round(time.perf_counter() - t_start, 3),
    )
    results = summary.to_dict()
    if out is not None:
        write_outputs(results, out, figures=cfg.figures)  # may add a warning to `results`
    return results


def config_report(
    cfg: ExperimentConfig,
    protocol: Protocol,
    features: PairFeatures,
    user_feats: dict[str, PairFeatures],
    fold_reports: list[FoldReport],
) -> dict:
    """The results' "config": the configuration, then the held-out users, the protocol and the pair counts."""
    config = asdict(cfg)
    pools = [f.train_pool for f in fold_reports]
    config.update(
        users=sorted(user_feats),
        protocol=protocol.name,
        n_pairs={
            "total": len(features),
            "train_pool": int(np.mean(pools)) if pools else 0,
            "train_pool_min": int(min(pools)) if pools else 0,
            "held_out_users": sum(len(f) for f in user_feats.values()),
            "dropped_duplicates_of_user_pairs": int(
                np.mean([f.excluded_repeats_of_test_comparisons for f in fold_reports])
            )
            if fold_reports
            else 0,
        },
    )
    return config
