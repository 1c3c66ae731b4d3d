"""The experiment's reports: results.md (`results_markdown`) and the plotly figures (`make_figures`: HTML,
and PNG when kaleido and a Chromium can render them) from a results document, as run.py returns it, as
``results.json`` holds it, or as an `ExperimentResults`; `write_outputs` writes all three to a folder.

Nothing here computes a statistic: the numbers come from results.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..core import atomic
from ..core.pngs import write_pngs
from .results import DIAGNOSTIC_KEYS, ExperimentResults, results_json


def _as_dict(results: ExperimentResults | dict[str, Any]) -> dict[str, Any]:
    return results.to_dict() if isinstance(results, ExperimentResults) else results


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


def results_markdown(results: ExperimentResults | dict[str, Any]) -> str:
    """results.md: the configuration, warnings, and one table per study (mean ± sd over seeds)."""
    results = _as_dict(results)
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


def make_figures(results: ExperimentResults | dict[str, Any]) -> dict:
    """Plotly figures: personalization curves per kind, routing NMI bars, active vs random."""
    results = _as_dict(results)
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


def write_outputs(results: ExperimentResults | dict[str, Any], out: str | Path, figures: bool = True) -> Path:
    """results.json, results.md and the figures (HTML; PNG too when kaleido and a Chromium can render
    them: otherwise one warning in results' warnings, never a failure)."""
    if isinstance(results, ExperimentResults):
        document = results.to_dict()
        path = write_outputs(document, out, figures)
        results.warnings = document.get("warnings")
        return path
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
    atomic.write_text(out / "results.json", results_json(results))
    atomic.write_text(out / "results.md", results_markdown(results))
    return out
