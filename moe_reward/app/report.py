"""The stakeholder report: one self-contained HTML file (plus PNG figures when kaleido can drive a Chromium).

    build_report(model_dir, data, out_html)   # moe-reward report --model DIR --out FILE; the Overview's button

It holds the held-out headline numbers (summary.STATS, on the test split of the model's saved split), the
experts with their descriptions (describe.py), the specialization diagnostics when the model's evaluation
has them, and a personalization example (a held-out user, or a group standing in for one, labels 8 pairs
with Hedge). The prose lives in templates/report.html; every dataset or user string is HTML-escaped.
Figures are interactive plotly charts inside the HTML (plotly.js inlined once, so the file works
offline); with kaleido and a Chromium (``$BROWSER_PATH`` or /usr/bin/chromium) they are also written as
PNG files next to it.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import numpy as np

from ..core.atomic import write_text
from ..evaluate import summary
from .colors import NEUTRAL, expert_color

TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.html"
EXAMPLE_LABELS = 8
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


@dataclass
class Report:
    html: Path
    pngs: list[Path] = field(default_factory=list)
    png_error: str | None = None  # why no PNGs were written, if none were


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    """An HTML table; keys and cells are HTML already (callers escape any dataset text they put in)."""
    if not rows:
        return ""
    cols = columns or list(rows[0])
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{r.get(c, '')}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.{digits}f}"


def _swatch(k: int) -> str:
    return f'<span class="swatch" style="background:{expert_color(k)}"></span>'


# ----------------------------------------------------------------------------- figures


def _utilization_figure(ev: dict, k: int, scope: summary.Scope):
    import plotly.graph_objects as go

    names = [f"E{e}" for e in range(k)]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=ev["expert_utilization"],
            marker_color=[expert_color(e) for e in range(k)],
            name="top-1 share",
        )
    )
    fig.add_scatter(
        x=names,
        y=ev["expert_load"],
        mode="markers",
        name="mean routing weight",
        marker=dict(symbol="diamond", size=10, color="black"),
    )
    fig.update_layout(
        title=f"Expert utilization ({scope.label}, {scope.n} pairs)",
        height=320,
        width=900,
        xaxis_title="expert",
        yaxis_title="share of pairs",
        template="plotly_white",
        margin=dict(l=60, r=20, t=50, b=50),
    )
    fig.update_xaxes(categoryorder="array", categoryarray=names)
    return fig


def _weights_figure(before, after, who: str, n_labels: int):
    import plotly.graph_objects as go

    k = len(before)
    names = [f"E{e}" for e in range(k)]
    fig = go.Figure(
        [
            go.Bar(x=names, y=before, name="before (model's average routing)", marker_color=NEUTRAL),
            go.Bar(
                x=names,
                y=after,
                name=f"after {n_labels} labels",
                marker_color=[expert_color(e) for e in range(k)],
            ),
        ]
    )
    fig.update_layout(
        title=f"Profile of {who}: weight of each expert",
        barmode="group",
        height=320,
        width=900,
        xaxis_title="expert",
        yaxis_title="weight in the profile",
        template="plotly_white",
        margin=dict(l=60, r=20, t=50, b=50),
    )
    fig.update_xaxes(categoryorder="array", categoryarray=names)
    return fig


def find_chromium() -> str | None:
    path = os.environ.get("BROWSER_PATH")
    if path and Path(path).exists():
        return path
    for c in CHROMIUM_CANDIDATES:
        if Path(c).exists():
            return c
    return shutil.which("chromium")


def write_pngs(figures: Mapping[str, object], out_dir: Path) -> tuple[list[Path], str | None]:
    """Each figure as PNG through kaleido (one browser for all); ([], reason) when that is not possible."""
    try:
        import kaleido
    except ImportError:
        return [], "kaleido is not installed"
    chromium = find_chromium()
    if chromium is None:
        return [], "no Chromium found (set BROWSER_PATH)"
    os.environ.setdefault("BROWSER_PATH", chromium)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".render-") as tmp:
        staged = [Path(tmp) / f"{name}.png" for name in figures]
        try:
            kaleido.write_fig_from_object_sync(
                [
                    {"fig": fig, "path": str(p), "opts": {"width": 900, "height": 320}}
                    for fig, p in zip(figures.values(), staged, strict=True)
                ]
            )
        except Exception as exc:  # noqa: BLE001 - the HTML report stands without its PNG copies
            return [], f"kaleido could not render: {type(exc).__name__}: {str(exc)[:200]}"
        written = []
        for p in staged:
            if p.is_file():
                os.replace(p, out_dir / p.name)  # whole files only, never a half-written PNG
                written.append(out_dir / p.name)
    return written, None if written else "kaleido wrote nothing"


# ----------------------------------------------------------------------------- sections


def _headline_cards(values: dict, scope: summary.Scope, k: int) -> str:
    cards = []
    for key in ("accuracy", "routing_nmi", "routing_entropy_normalized", "experts_in_use"):
        stat = summary.STATS[key]
        value = f"{values[key]} / {k}" if key == "experts_in_use" else stat.format(values[key])
        cards.append(
            f'<div class="metric"><div class="label">{esc(stat.label)}</div><div class="value">{esc(value)}</div>'
            f'<div class="def">{esc(stat.definition)} On the {esc(scope.label)}, {scope.n} pairs.</div></div>'
        )
    return "".join(cards)


def _experts_table(descriptions: list, ev: dict, scores, k: int) -> str:
    by = {d.expert: d for d in descriptions}
    routed = scores.routing > 0
    rows = []
    for e in range(k):
        d = by.get(e)
        acc = float(scores.expert_correct[routed[:, e], e].mean()) if routed[:, e].any() else float("nan")
        corr = sorted((d.feature_correlations if d else {}).items(), key=lambda kv: -abs(kv[1]))[:3]
        rows.append(
            {
                "expert": _swatch(e) + f"<b>E{e}</b>",
                "description": esc(d.label if d and d.label else "—"),
                "top expert for": f"{ev['expert_utilization'][e]:.0%}",
                "accuracy where routed": _num(acc, 2),
                "prompt words": esc(", ".join(t for t, _ in (d.prompt_keywords if d else [])[:5])),
                "words it rewards": esc(", ".join(t for t, _ in (d.chosen_keywords if d else [])[:5])),
                "text features": esc(", ".join(f"{f} {r:+.2f}" for f, r in corr)),
            }
        )
    return _table(rows)


def _diagnostics_html(diag: dict | None, k: int) -> str:
    if not diag:
        return (
            '<p class="note">This model\'s evaluation has no specialization diagnostics (they need groups in '
            "the data and a version of moe-reward that computes them).</p>"
        )
    cards = "".join(
        f'<div class="metric"><div class="label">{esc(s.label)}</div><div class="value">{esc(s.format(diag.get(key)))}</div>'
        f'<div class="def">{esc(s.definition)}</div></div>'
        for key, s in summary.DIAGNOSTICS.items()
        if diag.get(key) is not None
    )
    out = f'<div class="cards">{cards}</div>'
    contingency = diag.get("contingency")
    if isinstance(contingency, dict) and contingency:
        rows = [
            {"group": esc(g), **{_swatch(e) + f"E{e}": str(v[e]) if e < len(v) else "0" for e in range(k)}}
            for g, v in contingency.items()
        ]
        out += "<p><b>Group × top expert</b> (pairs of the test split):</p>" + _table(rows)
    return out


def _story_html(lines: list[str]) -> str:
    if not lines:
        return ""
    return (
        "<p><b>How training found these experts</b></p><ul>"
        + "".join(f"<li>{esc(line)}</li>" for line in lines)
        + "</ul>"
    )


def personalization_example(
    scores, features, exclude: np.ndarray | None = None, n_labels: int = EXAMPLE_LABELS, seed: int = 0
) -> dict | None:
    """A held-out user (else a group standing in for one) labels `n_labels` of their pairs with Hedge;
    accuracy on their other pairs before and after, and the profile's shift. None if nobody qualifies."""
    from ..personalize.adapters import (
        make_adapter,
        margin_scale_for,
        personalized_accuracy,
        prior_from_routing,
    )

    pairs = features.pairs
    allowed = np.ones(len(pairs), dtype=bool)
    if exclude is not None and len(exclude):
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    field_name = "user" if any(p.user for p in pairs) else "group"
    who: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        name = getattr(p, field_name)
        if name and allowed[i]:
            who.setdefault(name, []).append(i)
    candidates = {u: idx for u, idx in who.items() if len(idx) >= n_labels + 10}
    if not candidates:
        return None
    user = max(sorted(candidates), key=lambda u: len(candidates[u]))
    idx = np.random.default_rng(seed).permutation(candidates[user])
    labeled, rest = idx[:n_labels], idx[n_labels:]
    margins = np.asarray(scores.expert_margins, dtype=np.float64)
    prior = prior_from_routing(scores.routing)
    adapter = make_adapter("hedge", margins.shape[1], prior, margin_scale=margin_scale_for(margins))
    adapter.fit(margins[labeled], [pairs[i].id for i in labeled])
    before, after = adapter.initial_weights, adapter.weights
    delta = after - before
    return {
        "who": user,
        "field": field_name,
        "n_labels": n_labels,
        "n_eval": len(rest),
        "routed_accuracy": float(scores.correct[rest].mean()),
        "prior_accuracy": personalized_accuracy(prior, margins[rest]),
        "profile_accuracy": personalized_accuracy(adapter, margins[rest]),
        "before": before.tolist(),
        "after": after.tolist(),
        "gained": [int(e) for e in np.argsort(-delta)[:2] if delta[e] > 0],
        "lost": [int(e) for e in np.argsort(delta)[:2] if delta[e] < 0],
    }


def _personalization_html(ex: dict | None, descriptions: list) -> str:
    if ex is None:
        return (
            '<p class="note">No user or group in this data has enough pairs outside the training split for an '
            "example (it needs 18).</p>"
        )
    label = {d.expert: d.label for d in descriptions}
    who = esc(ex["who"])
    kind = "user" if ex["field"] == "user" else "group (standing in for a user whose taste is that group's)"

    def names(experts):
        return (
            ", ".join(f"{_swatch(e)}E{e}" + (f" ({esc(label[e])})" if label.get(e) else "") for e in experts)
            or "none"
        )

    rows = [
        {"profile": "the model's own routing", "accuracy": _num(ex["routed_accuracy"])},
        {
            "profile": "the starting profile (average routing, before any label)",
            "accuracy": _num(ex["prior_accuracy"]),
        },
        {"profile": f"after {ex['n_labels']} labels", "accuracy": f"<b>{_num(ex['profile_accuracy'])}</b>"},
    ]
    return (
        f"<p>Example: the {kind} <b>{who}</b> labels {ex['n_labels']} of their pairs. Accuracy on their other "
        f"{ex['n_eval']} pairs, which the profile never saw:</p>"
        + _table(rows)
        + f"<p>Experts that gained weight: {names(ex['gained'])}. Experts that lost weight: {names(ex['lost'])}.</p>"
    )


def _figure_html(fig, first: bool) -> str:
    return fig.to_html(
        full_html=False,
        include_plotlyjs="inline" if first else False,
        config={"displaylogo": False, "responsive": True},
    )


# ----------------------------------------------------------------------------- the report


def build_report(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    model=None,
    features=None,
    scores=None,
    descriptions: list | None = None,
    same_file: bool | None = None,
    data_name: str | None = None,
    pngs: bool = True,
) -> Report:
    """Write the report of the model in `model_dir`, evaluated on `data` (its training data for held-out
    numbers), to `out` (HTML; PNG figures into `<out stem>_figures/` when possible). Atomic writes."""
    from ..evaluate.metrics import evaluate, score_pairs
    from .pipeline import features_for_model, load_model

    model_dir, out = Path(model_dir), Path(out)
    model = model if model is not None else load_model(model_dir)
    features = features if features is not None else features_for_model(model, data)
    if features.dim != model.config.input_dim:
        raise ValueError(
            f"{data}: {features.dim}-d features, but the model expects {model.config.input_dim}-d inputs"
        )
    scores = scores if scores is not None else score_pairs(model, features)
    data_name = data_name or Path(str(data)).name
    if descriptions is None:
        from ..evaluate.describe import describe_experts

        descriptions = describe_experts(model, features, scores)
    rel = summary.relate(model_dir, features, same_file=same_file, data_name=data_name)
    scope = rel.headline
    ev = evaluate(model, features.subset(scope.index), scores.subset(scope.index))
    values = summary.headline_values(ev)
    k = model.num_experts

    subsets = []
    for sc in rel.scopes:
        e = ev if sc.key == scope.key else evaluate(model, features.subset(sc.index), scores.subset(sc.index))
        v = summary.headline_values(e)
        subsets.append(
            {
                "subset": esc(sc.label),
                "pairs": str(sc.n),
                "accuracy": _num(v["accuracy"]),
                "routing NMI": _num(v["routing_nmi"]),
                "routing entropy": _num(v["routing_entropy_normalized"]),
            }
        )
    subsets_html = (
        (
            "<p>The same statistics on every subset of the data (the training split shows how closely the "
            "model fits the pairs it learned from):</p>" + _table(subsets)
        )
        if len(subsets) > 1
        else ""
    )

    metrics_path = model_dir / "metrics.json"
    saved = {}
    if metrics_path.is_file():
        from ..model.moe import load_metrics

        saved = load_metrics(model_dir)
    diag = summary.diagnostics_of(ev) or summary.diagnostics_of(saved)
    outside = [i for sc in rel.scopes if sc.key in ("train", "validation") for i in sc.index]
    example = personalization_example(scores, features, exclude=np.asarray(outside, dtype=np.int64))

    all_ev = evaluate(model, features, scores)
    figures = {"utilization": _utilization_figure(ev, k, scope)}
    if example is not None:
        figures["personalization"] = _weights_figure(
            example["before"], example["after"], example["who"], example["n_labels"]
        )
    warning = f'<div class="warning">{esc(rel.warning)}</div>' if rel.warning else ""
    body = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=esc(f"{model_dir.name}: what this reward model learned"),
        subtitle=esc(f"{model.describe()} · evaluated on {data_name}"),
        warning=warning,
        scope=esc(scope.label),
        n_pairs=scope.n,
        headline=_headline_cards(values, scope, k),
        subsets=subsets_html,
        k=k,
        top_k=model.config.top_k,
        utilization=_figure_html(figures["utilization"], first=True),
        experts=_experts_table(descriptions, all_ev, scores, k),
        diagnostics=_diagnostics_html(diag, k) + _story_html(summary.training_story(saved)),
        personalization=_personalization_html(example, descriptions)
        + (_figure_html(figures["personalization"], first=False) if "personalization" in figures else ""),
        n_all=len(features),
        date=_dt.date.today().isoformat(),
        model_dir=esc(model_dir),
        data_name=esc(data_name),
    )
    write_text(out, body)
    report = Report(out)
    if pngs:
        fig_dir = out.parent / f"{out.stem}_figures"
        report.pngs, report.png_error = write_pngs(figures, fig_dir)
    return report
