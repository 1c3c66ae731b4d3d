"""The experiment's results: typed records of what crosses modules, the statistics over seeds, and
``results.json``.

`ExperimentResults` is the whole document; `ModelResult` one model kind's row, `FoldReport` a fold's
training pool, `ActiveVsRandom` the label-selection study, `WeightShift` one user's profile before and after
adaptation, `Timings` the run's clock. Each has ``to_dict()`` (exactly the keys and values of
``results.json``, in its order) and ``from_dict()``; ``from_dict(d).to_dict() == d`` for every document
this package writes, and for older ones too: keys they lack stay absent (the optional fields are None) and
keys these records do not know are kept in ``extra``. Every statistic is a `Stat`, ``{"mean", "sd"}`` over
seeds (`stat`). `summarize` turns the per-seed measurements of run.py into an `ExperimentResults`.

``results.json`` shape (k is a string; every statistic is ``{"mean": float|None, "sd": float|None}``
over seeds)::

    {"config": {...ExperimentConfig..., "users": [...], "protocol": str, "n_pairs": {...}},
     "models": {"<kind>": {"accuracy": stat, "per_group": {"<group>": stat},
                           "routing_nmi": stat, "routing_nmi_significant": int, "ties": int,
                           "specialization": [verdict per run], "decisions": [decision per run],
                           "untrained_runs": int, "expert_utilization": [mean share of expert k],
                           "personalization": {"<adapter>": {"<k>": stat}},
                           "diagnostics": {"<DIAGNOSTIC_KEYS>": stat},
                           "n_test_pairs": int, "router_inputs": [str]}},
     "oracle": {"<k>": stat, "pool": stat},
     "active_vs_random": {"adapter": str, "model": str, "active": {"<k>": stat}, "random": {"<k>": stat}},
     "personalization_per_user": {"<kind>": {"<adapter>": {"<k>": {"<user>": stat}}}},
     "weight_shift": {"<user>": {"adapter": str, "n_labels": int, "before": [...], "after": [...],
                                 "delta": [...], "top_experts": [[k, weight], ...],
                                 "top_movers": {"<k>": [[pair_id, delta], ...]}}},
     "expert_labels": {"<k>": "prefers: ...; prompts: ..."},   (lead model, first seed; {} if describe off)
     "users_per_k": {"<k>": [users averaged at k]},
     "folds": [{"seed", "held_out", "train_pool", "excluded_repeats_of_test_comparisons", "warning"?}],
     "warnings": [str],
     "timings": {"embed_s": float, "train_s": {"<kind>": mean seconds}, "personalize_s": float,
                 "total_s": float}}

There is no version key: the shape above is the only one written so far, and readers tolerate older
documents by the absent keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np


class Stat(TypedDict):
    """Mean and sd over seeds (None when no seed had a finite value)."""

    mean: float | None
    sd: float | None


Curve = dict[str, Stat]  # "<k>" -> statistic

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


def stat(values: Iterable[float | None]) -> Stat:
    """{"mean", "sd"} of the finite values (sd with ddof=1; 0 for one value; None when empty)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return {"mean": None, "sd": None}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


# ----------------------------------------------------------------------------- records


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """Set an optional key: None means the document has no such key."""
    if value is not None:
        out[key] = value


def _extra(d: dict[str, Any], known: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}


@dataclass
class FoldReport:
    """One fold of one seed: who was held out and how many pairs were left to train on."""

    seed: int
    held_out: list[str]
    train_pool: int
    excluded_repeats_of_test_comparisons: int
    warning: str | None = None  # set when the pool is under protocol.MIN_TRAIN_POOL pairs
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("seed", "held_out", "train_pool", "excluded_repeats_of_test_comparisons", "warning")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seed": self.seed,
            "held_out": list(self.held_out),
            "train_pool": self.train_pool,
            "excluded_repeats_of_test_comparisons": self.excluded_repeats_of_test_comparisons,
        }
        _put(out, "warning", self.warning)
        return out | self.extra

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FoldReport:
        return cls(
            seed=d["seed"],
            held_out=list(d["held_out"]),
            train_pool=d["train_pool"],
            excluded_repeats_of_test_comparisons=d["excluded_repeats_of_test_comparisons"],
            warning=d.get("warning"),
            extra=_extra(d, cls.KEYS),
        )


@dataclass
class WeightShift:
    """A user's profile before and after fitting their first pool labels (lead model, first seed)."""

    adapter: str
    n_labels: int
    before: list[float]
    after: list[float]
    delta: list[float]
    top_experts: list[list[Any]]  # [[expert, weight after], ...], largest first
    top_movers: dict[str, list[list[Any]]]  # "<expert>" -> [[pair_id, delta], ...]
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("adapter", "n_labels", "before", "after", "delta", "top_experts", "top_movers")

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "n_labels": self.n_labels,
            "before": list(self.before),
            "after": list(self.after),
            "delta": list(self.delta),
            "top_experts": [list(x) for x in self.top_experts],
            "top_movers": {k: [list(x) for x in v] for k, v in self.top_movers.items()},
        } | self.extra

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeightShift:
        return cls(
            adapter=d["adapter"],
            n_labels=d["n_labels"],
            before=list(d["before"]),
            after=list(d["after"]),
            delta=list(d["delta"]),
            top_experts=[list(x) for x in d["top_experts"]],
            top_movers={k: [list(x) for x in v] for k, v in d["top_movers"].items()},
            extra=_extra(d, cls.KEYS),
        )


@dataclass
class ModelResult:
    """One model kind over seeds (and folds): test-split quality, routing and personalization."""

    accuracy: Stat
    per_group: dict[str, Stat]
    routing_nmi: Stat
    personalization: dict[str, Curve]  # adapter -> curve over k
    # None: the document has no such key (older results).
    routing_nmi_significant: int | None = None  # runs whose routing NMI beat its permutation null (p < 0.05)
    ties: int | None = None
    specialization: list[str | None] | None = None  # heterogeneity verdict per seed (and fold)
    decisions: list[str | None] | None = None  # discovery decision per seed (and fold)
    untrained_runs: int | None = None  # runs whose checkpoint learnt nothing that holds
    expert_utilization: list[float] | None = None  # mean top-1 share of each expert
    diagnostics: dict[str, Stat] | None = None  # DIAGNOSTIC_KEYS
    n_test_pairs: int | None = None
    router_inputs: list[str | None] | None = None  # per seed (and fold)
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = (
        "accuracy",
        "per_group",
        "routing_nmi",
        "routing_nmi_significant",
        "ties",
        "specialization",
        "decisions",
        "untrained_runs",
        "expert_utilization",
        "personalization",
        "diagnostics",
        "n_test_pairs",
        "router_inputs",
    )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "accuracy": self.accuracy,
            "per_group": dict(self.per_group),
            "routing_nmi": self.routing_nmi,
        }
        _put(out, "routing_nmi_significant", self.routing_nmi_significant)
        _put(out, "ties", self.ties)
        _put(out, "specialization", _copy(self.specialization))
        _put(out, "decisions", _copy(self.decisions))
        _put(out, "untrained_runs", self.untrained_runs)
        _put(out, "expert_utilization", _copy(self.expert_utilization))
        out["personalization"] = {a: dict(c) for a, c in self.personalization.items()}
        _put(out, "diagnostics", None if self.diagnostics is None else dict(self.diagnostics))
        _put(out, "n_test_pairs", self.n_test_pairs)
        _put(out, "router_inputs", _copy(self.router_inputs))
        return out | self.extra

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelResult:
        diagnostics = d.get("diagnostics")
        return cls(
            accuracy=d["accuracy"],
            per_group=dict(d["per_group"]),
            routing_nmi=d["routing_nmi"],
            personalization={a: dict(c) for a, c in d["personalization"].items()},
            routing_nmi_significant=d.get("routing_nmi_significant"),
            ties=d.get("ties"),
            specialization=_copy(d.get("specialization")),
            decisions=_copy(d.get("decisions")),
            untrained_runs=d.get("untrained_runs"),
            expert_utilization=_copy(d.get("expert_utilization")),
            diagnostics=None if diagnostics is None else dict(diagnostics),
            n_test_pairs=d.get("n_test_pairs"),
            router_inputs=_copy(d.get("router_inputs")),
            extra=_extra(d, cls.KEYS),
        )


def _copy(values: list | None) -> Any:
    return None if values is None else list(values)


@dataclass
class ActiveVsRandom:
    """Labels chosen one at a time, actively or at random, for the lead model and one adapter."""

    adapter: str | None
    active: Curve
    random: Curve
    model: str | None = None  # the lead model (absent in older results)
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("adapter", "model", "active", "random")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"adapter": self.adapter}
        _put(out, "model", self.model)
        out["active"], out["random"] = dict(self.active), dict(self.random)
        return out | self.extra

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActiveVsRandom:
        return cls(
            adapter=d["adapter"],
            active=dict(d["active"]),
            random=dict(d["random"]),
            model=d.get("model"),
            extra=_extra(d, cls.KEYS),
        )


@dataclass
class Timings:
    embed_s: float
    train_s: dict[str, float]  # kind -> mean seconds per model
    personalize_s: float
    total_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("embed_s", "train_s", "personalize_s", "total_s")

    def to_dict(self) -> dict[str, Any]:
        return {
            "embed_s": self.embed_s,
            "train_s": dict(self.train_s),
            "personalize_s": self.personalize_s,
            "total_s": self.total_s,
        } | self.extra

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Timings:
        return cls(
            embed_s=d["embed_s"],
            train_s=dict(d["train_s"]),
            personalize_s=d["personalize_s"],
            total_s=d["total_s"],
            extra=_extra(d, cls.KEYS),
        )


@dataclass
class ExperimentResults:
    """The whole ``results.json`` document (module docstring)."""

    config: dict[str, Any]  # ExperimentConfig's fields, then users, protocol and n_pairs
    models: dict[str, ModelResult]
    # None: the document has no such key (older results).
    oracle: Curve | None = None  # "<k>" and "pool"
    active_vs_random: ActiveVsRandom | None = None
    personalization_per_user: dict[str, dict[str, dict[str, dict[str, Stat]]]] | None = None
    weight_shift: dict[str, WeightShift] | None = None
    expert_labels: dict[str, str] | None = None
    users_per_k: dict[str, list[str]] | None = None
    folds: list[FoldReport] | None = None
    warnings: list[str] | None = None
    timings: Timings | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = (
        "config",
        "models",
        "oracle",
        "active_vs_random",
        "personalization_per_user",
        "weight_shift",
        "expert_labels",
        "users_per_k",
        "folds",
        "warnings",
        "timings",
    )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": dict(self.config),
            "models": {k: m.to_dict() for k, m in self.models.items()},
        }
        _put(out, "oracle", None if self.oracle is None else dict(self.oracle))
        _put(
            out,
            "active_vs_random",
            None if self.active_vs_random is None else self.active_vs_random.to_dict(),
        )
        _put(out, "personalization_per_user", self.personalization_per_user)
        if self.weight_shift is not None:
            out["weight_shift"] = {u: w.to_dict() for u, w in self.weight_shift.items()}
        _put(out, "expert_labels", None if self.expert_labels is None else dict(self.expert_labels))
        if self.users_per_k is not None:
            out["users_per_k"] = {k: list(v) for k, v in self.users_per_k.items()}
        if self.folds is not None:
            out["folds"] = [f.to_dict() for f in self.folds]
        _put(out, "warnings", _copy(self.warnings))
        _put(out, "timings", None if self.timings is None else self.timings.to_dict())
        return out | self.extra

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentResults:
        avr, shift, per_k = d.get("active_vs_random"), d.get("weight_shift"), d.get("users_per_k")
        folds, timings, oracle, labels = (
            d.get("folds"),
            d.get("timings"),
            d.get("oracle"),
            d.get("expert_labels"),
        )
        return cls(
            config=dict(d["config"]),
            models={k: ModelResult.from_dict(m) for k, m in d["models"].items()},
            oracle=None if oracle is None else dict(oracle),
            active_vs_random=None if avr is None else ActiveVsRandom.from_dict(avr),
            personalization_per_user=d.get("personalization_per_user"),
            weight_shift=None if shift is None else {u: WeightShift.from_dict(w) for u, w in shift.items()},
            expert_labels=None if labels is None else dict(labels),
            users_per_k=None if per_k is None else {k: list(v) for k, v in per_k.items()},
            folds=None if folds is None else [FoldReport.from_dict(f) for f in folds],
            warnings=_copy(d.get("warnings")),
            timings=None if timings is None else Timings.from_dict(timings),
            extra=_extra(d, cls.KEYS),
        )


def results_json(results: ExperimentResults | dict[str, Any]) -> str:
    """The text of ``results.json``."""
    return json.dumps(results.to_dict() if isinstance(results, ExperimentResults) else results, indent=2)


def read_results(path: str | Path) -> ExperimentResults:
    """An `ExperimentResults` from a ``results.json`` (or the directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    return ExperimentResults.from_dict(json.loads(path.read_text(encoding="utf-8")))


# ----------------------------------------------------------------------------- aggregation over seeds


def _user_mean(by_user: dict[str, float] | None) -> float | None:
    return float(np.mean(list(by_user.values()))) if by_user else None


def _fold_mean(values) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def summarize(
    per_seed: list[dict],
    kinds: Sequence[str],
    adapters: Sequence[str],
    shots: Sequence[int],
    config: dict[str, Any],
    fold_reports: list[FoldReport],
    warnings: list[str],
    adapter: str | None,
) -> ExperimentResults:
    """Means over folds (models) or users (personalization) within a seed; mean and sd over seeds.

    `per_seed` holds run.py's measurements, one row per seed: {"models": {kind: {"evals": [evaluation
    dict per fold], "personalization": {adapter: {k: {user: accuracy}}}}}, "oracle": {k: {user: accuracy}},
    "active_vs_random": {strategy: {k: {user: accuracy}}}, "weight_shift": {user: WeightShift},
    "expert_labels": {k: label}}. `config` is the results' "config" as it stands; `adapter` the one the
    active-vs-random study used. No timings: the caller adds them."""
    models: dict[str, ModelResult] = {}
    users_at_k: dict[str, list[str]] = {}
    for kind in kinds:
        evals = [r["models"][kind]["evals"] for r in per_seed]
        groups = sorted({g for es in evals for e in es for g in e["per_group"]})
        util = np.mean([e["expert_utilization"] for es in evals for e in es], axis=0)
        curves = [r["models"][kind]["personalization"] for r in per_seed]
        models[kind] = ModelResult(
            accuracy=stat(_fold_mean(e["accuracy"] for e in es) for es in evals),
            per_group={
                g: stat(_fold_mean(e["per_group"].get(g, {}).get("accuracy") for e in es) for es in evals)
                for g in groups
            },
            routing_nmi=stat(_fold_mean(e["routing_nmi"] for e in es) for es in evals),
            routing_nmi_significant=sum(
                1
                for es in evals
                for e in es
                if ((e.get("diagnostics") or {}).get("routing_nmi_p") or 1.0) < 0.05
            ),  # runs (seeds x folds) whose routing NMI beat its permutation null at p < 0.05
            ties=int(sum(e.get("ties", 0) for es in evals for e in es)),
            specialization=[e.get("specialization") for es in evals for e in es],  # per seed (and fold)
            decisions=[e.get("decision") for es in evals for e in es],
            untrained_runs=sum(1 for es in evals for e in es if e.get("checkpoint_untrained")),
            expert_utilization=[round(float(x), 6) for x in util],
            personalization={
                a: {
                    str(k): stat(_user_mean(c[a].get(str(k))) for c in curves)
                    for k in shots
                    if any(str(k) in c.get(a, {}) for c in curves)
                }
                for a in adapters
            },
            diagnostics={
                key: stat(_fold_mean((e.get("diagnostics") or {}).get(key) for e in es) for es in evals)
                for key in DIAGNOSTIC_KEYS
            },
            n_test_pairs=int(np.mean([sum(e["n_pairs"] for e in es) for es in evals])),
            router_inputs=[e.get("router_input") for es in evals for e in es],  # per seed (and fold)
        )
        for c in curves:
            for a in c:
                for k, by_user in c[a].items():
                    users_at_k[k] = sorted(set(users_at_k.get(k, [])) | set(by_user))
    oracle_keys = [str(k) for k in shots if k > 0] + ["pool"]
    oracle = {
        k: stat(_user_mean(r["oracle"].get(k)) for r in per_seed)
        for k in oracle_keys
        if any(k in r["oracle"] for r in per_seed)
    }
    lead = "sparse" if "sparse" in kinds else kinds[0]
    by_strategy: dict[str, Curve] = {}
    for strategy in ("active", "random"):
        keys = sorted({k for r in per_seed for k in r["active_vs_random"].get(strategy, {})}, key=int)
        by_strategy[strategy] = {
            k: stat(_user_mean(r["active_vs_random"][strategy].get(k)) for r in per_seed) for k in keys
        }
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
                for k in shots
            }
            for a in adapters
        }
        for kind in kinds
    }
    return ExperimentResults(
        config=config,
        models=models,
        oracle=oracle,
        active_vs_random=ActiveVsRandom(adapter, by_strategy["active"], by_strategy["random"], model=lead),
        personalization_per_user=per_user,
        weight_shift=per_seed[0]["weight_shift"],
        expert_labels=per_seed[0]["expert_labels"],
        users_per_k={k: users_at_k[k] for k in sorted(users_at_k, key=int)},
        folds=fold_reports,
        warnings=warnings,
    )
