"""What a number means and which pairs it is on: one definition per statistic, one named subset per number.

Every page, the stakeholder report and the CLI take their statistics from here, so that a name never
shows two values: `STATS` defines each headline statistic once (label + one sentence), `relate` says
how a data file relates to a model's training data (its saved ``split_ids.json``) and which subsets of
pairs a number can be on, headline first (the held-out test split when the file is the training data).

    rel = relate(model_dir, features, same_file=...)
    rel.headline          # Scope("test", "held-out test split", index)
    rel.message           # a plain sentence when the data is not (only) the model's test data
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..embed.features import PairFeatures
from ..model import modeldir

TOO_FEW_PAIRS = 30  # below this a held-out accuracy means little (binomial sd > 0.09)


@dataclass(frozen=True)
class Stat:
    key: str
    label: str
    definition: str
    digits: int = 3

    def format(self, value) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return "n/a"
        return f"{value:.{self.digits}f}"


STATS: dict[str, Stat] = {
    s.key: s
    for s in (
        Stat(
            "accuracy",
            "Accuracy",
            "Share of pairs on which the model's reward of the chosen response is above that of the rejected one "
            "(0.5 is chance).",
        ),
        Stat(
            "routing_nmi",
            "Routing NMI",
            "Normalized mutual information between each pair's top expert and its group: 0 when routing ignores "
            "the groups, 1 when every group has experts of its own.",
        ),
        Stat(
            "routing_entropy_normalized",
            "Routing entropy",
            "Mean entropy of the router's softmax over the K experts, divided by log K: 0 when each prompt goes "
            "to one expert with certainty, 1 when the router spreads every prompt evenly.",
        ),
        Stat(
            "experts_in_use",
            "Experts in use",
            "Experts that are the top choice for more than 1% of the pairs.",
            0,
        ),
        Stat(
            "active_experts_per_pair",
            "Active experts per pair",
            "Mean number of experts with a non-zero routing weight (top-k for a sparse model).",
            2,
        ),
        Stat(
            "routing_purity",
            "Routing purity",
            "Share of pairs whose top expert's most frequent group is their own group.",
        ),
    )
}

# Specialization diagnostics (analysis.evaluate(...)["diagnostics"], metrics.json["test"]["diagnostics"]).
DIAGNOSTICS: dict[str, Stat] = {
    s.key: s
    for s in (
        Stat(
            "router_probe_nmi",
            "Router probe NMI",
            "NMI reached by a cross-validated supervised linear probe that is given the groups and sees the same "
            "router inputs: the ceiling that unsupervised routing could reach with this representation.",
        ),
        Stat(
            "router_probe_accuracy",
            "Router probe accuracy",
            "How often that supervised probe predicts a pair's group from the router's inputs; low means the "
            "representation itself hides the groups.",
        ),
        Stat(
            "oracle_routing_accuracy",
            "Oracle-routing accuracy",
            "Pairwise accuracy of one reward head per group with the group given: what routing by the true "
            "criterion would achieve.",
        ),
        Stat(
            "discovery_efficiency",
            "Discovery efficiency",
            "Routing NMI divided by the probe's NMI: the share of the discoverable group structure that "
            "unsupervised training found (1 = all of it).",
        ),
    )
}


def headline_values(ev: dict) -> dict[str, float | int | None]:
    """The STATS values of one `analysis.evaluate` result."""
    used = np.asarray(ev.get("expert_utilization") or [], dtype=float)
    return {
        "accuracy": ev.get("accuracy"),
        "routing_nmi": ev.get("routing_nmi"),
        "routing_entropy_normalized": ev.get("routing_entropy_normalized"),
        "experts_in_use": int((used > 0.01).sum()),
        "active_experts_per_pair": ev.get("active_experts_per_pair"),
        "routing_purity": ev.get("routing_purity"),
    }


def diagnostics_of(metrics_or_eval: dict | None) -> dict | None:
    """The diagnostics dict of an evaluation or of a saved model's metrics.json, if there is one."""
    if not metrics_or_eval:
        return None
    found = metrics_or_eval.get("diagnostics")
    if found is None and isinstance(metrics_or_eval.get("test"), dict):
        found = metrics_or_eval["test"].get("diagnostics")
    return found if isinstance(found, dict) and found else None


def training_story(metrics: dict | None) -> list[str]:
    """How training found the experts, in plain sentences, from a saved model's metrics.json: what the
    router reads and why, whether the prompt predicted the preference, how the experts started, and which
    checkpoint was kept. Empty for kinds without discovery (or metrics from older versions)."""
    if not metrics:
        return []
    disc = metrics.get("discovery") or {}
    lines: list[str] = []
    losses = disc.get("validation_loss") or {}
    best: dict[str, float] = {}  # each router input's best validation loss over its penalties
    if disc.get("router_input"):
        line = f"The router reads {disc['router_input']}"
        for key, value in losses.items():
            name = str(key).split(" l2=")[0]
            if isinstance(value, (int, float)):
                best[name] = min(best.get(name, float("inf")), float(value))
        if len(best) > 1:
            line += (
                ", chosen on validation likelihood (validation BT loss of the context model: "
                + ", ".join(f"{k} {v:.3f}" for k, v in sorted(best.items(), key=lambda kv: kv[1]))
                + ")"
            )
        lines.append(line + ".")
    free = disc.get("context_free_loss")
    helps = disc.get("context_helps")
    if helps is False:
        lines.append(
            "The prompt did not predict the preference on validation pairs beyond what every prompt shares"
            + (f" (context-free loss {free:.3f})" if isinstance(free, (int, float)) else "")
            + ": every expert started as the single-head model, and training had to earn any "
            "specialization on the validation loss."
        )
    elif disc.get("clusters_rejected"):
        lines.append(
            "The prompt predicts the preference beyond what every prompt shares, but "
            f"{disc['clusters_rejected']}: every expert started as the single-head model."
        )
    elif disc.get("warm_start") == "clusters":
        sizes = [n for n in disc.get("cluster_sizes") or [] if n]
        line = (
            "The prompt predicts the preference beyond what every prompt shares"
            + (
                f" (validation loss {min(best.values()):.3f} vs {free:.3f} context-free)"
                if losses and isinstance(free, (int, float)) and best
                else ""
            )
            + f": the experts started from {disc.get('clusters', len(sizes))} groups of preference codes"
            + (f" (training pairs per group: {', '.join(str(n) for n in sizes)})" if sizes else "")
        )
        if disc.get("head_anchor"):
            line += f", each head shrunk toward the {disc['head_anchor']} (penalty {disc.get('head_l2')})"
        lines.append(line + ".")
    if disc.get("warm_start"):
        if disc.get("kept_warm_start") or metrics.get("best_epoch") == 0:
            lines.append(
                "The kept checkpoint is the warm start (epoch 0): no later epoch beat it on validation "
                "loss by more than one standard error."
            )
        elif metrics.get("best_epoch") is not None:
            lines.append(
                f"The kept checkpoint is epoch {metrics['best_epoch']} of {metrics.get('epochs_run', '?')}, "
                "the lowest validation loss of the run."
            )
    return lines


# ----------------------------------------------------------------------------- subsets


@dataclass
class Scope:
    """A named subset of the pairs of a data file."""

    key: str  # test | validation | train | unsplit | unseen | all
    label: str  # "held-out test split"
    index: np.ndarray

    @property
    def n(self) -> int:
        return len(self.index)

    def describe(self) -> str:
        """'held-out test split, 349 pairs'."""
        return f"{self.label}, {self.n} pairs"


@dataclass
class DataRelation:
    """How a data file relates to a model's training data."""

    kind: str  # training | partial | foreign | unsplit | unknown
    trained_on: str | None
    scopes: list[Scope]
    message: str = ""  # a plain sentence for the page; "" when the headline is the held-out test split
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def headline(self) -> Scope:
        return self.scopes[0]

    def scope(self, key: str) -> Scope:
        return next((s for s in self.scopes if s.key == key), self.headline)

    @property
    def warning(self) -> str:
        """Something the reader must know before quoting a number ('' if nothing)."""
        notes = [self.message] if self.message else []
        if self.headline.key == "test" and self.headline.n < TOO_FEW_PAIRS:
            notes.append(
                f"The test split has only {self.headline.n} pairs: its accuracy can be off by "
                f"{1 / (2 * max(self.headline.n, 1) ** 0.5):.2f} or more either way."
            )
        return " ".join(notes)


def relate(
    model_dir: str | Path, features: PairFeatures, same_file: bool | None = None, data_name: str = "this data"
) -> DataRelation:
    """Which pairs of `features` the model trained on, and the subsets a number can honestly be on.

    `same_file`: whether the file is the one recorded in the model's metrics.json (None: unknown); used
    only when the model has no saved split."""
    n = len(features)
    everything = np.arange(n)
    source = modeldir.trained_on(model_dir)
    source_name = Path(source).name if source and source != "controlled" else (source or "unrecorded data")
    splits = modeldir.read_split_ids(model_dir, strict=False)
    if splits is None:
        if same_file:
            return DataRelation(
                "unsplit",
                source,
                [Scope("all", "all pairs (training pairs included)", everything)],
                "This model saved no train/test split, so these numbers include the pairs it was "
                "trained on and overstate how it does on new data.",
            )
        return DataRelation(
            "unknown",
            source,
            [Scope("all", "all pairs", everything)],
            f"This model saved no train/test split; it was trained on {source_name}. Numbers on "
            f"{data_name} may include pairs it was trained on.",
        )
    member = {name: set(ids) for name, ids in splits.items()}
    ids = features.ids
    where = {
        name: np.array([i for i, pid in enumerate(ids) if pid in s], dtype=np.int64)
        for name, s in member.items()
    }
    seen = set().union(*member.values()) if member else set()
    outside = np.array([i for i, pid in enumerate(ids) if pid not in seen], dtype=np.int64)
    counts = {name: len(idx) for name, idx in where.items()} | {"outside": len(outside), "all": n}
    train_like = counts.get("train", 0) + counts.get("validation", 0)
    if counts.get("test", 0):
        scopes = [Scope("test", "held-out test split", where["test"])]
        if counts.get("validation", 0):
            scopes.append(Scope("validation", "validation split (chose the checkpoint)", where["validation"]))
        if counts.get("train", 0):
            scopes.append(Scope("train", "training split (seen in training)", where["train"]))
        if len(outside):
            scopes.append(Scope("unsplit", "pairs outside the splits (e.g. held-out users)", outside))
        scopes.append(Scope("all", "all pairs (training pairs included)", everything))
        return DataRelation("training", source, scopes, "", counts)
    if train_like:
        scopes = ([Scope("unseen", "pairs the model never trained on", outside)] if len(outside) else []) + [
            Scope("all", "all pairs (training pairs included)", everything)
        ]
        msg = (
            f"{train_like} of these {n} pairs were used to train this model (trained on {source_name}) and none "
            f"is from its test split; "
            + (
                f"the headline numbers are on the {len(outside)} pairs it never saw."
                if len(outside)
                else "every number here includes training pairs."
            )
        )
        return DataRelation("partial", source, scopes, msg, counts)
    msg = (
        f"This is not the data the model was trained on ({source_name}): all {n} pairs of {data_name} are new "
        f"to it. These numbers measure transfer to other data, not its held-out test accuracy."
    )
    return DataRelation(
        "foreign", source, [Scope("all", "all pairs (data the model never saw)", everything)], msg, counts
    )
