"""Routing statistics: how pairs are spread over experts, filtered by subset, group, correctness and confidence."""

from __future__ import annotations

from typing import cast

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

import ui_common as ui
from moe_reward.evaluate.metrics import evaluate

ui.page_header(
    "Routing statistics",
    "Which experts the router uses, for which groups, how confidently, "
    "and how accurate each expert is where it is used.",
)
ctx = ui.require_context()

s, groups, names = ctx.scores, ctx.groups, ctx.expert_names()
all_groups = ui.natural_sorted(set(groups))
scopes = {sc.key: sc for sc in ctx.relation.scopes}


def _conf(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in str(text).split(","))
    return (round(min(max(lo, 0.0), 1.0), 2), round(min(max(hi, 0.0), 1.0), 2))


ui.init_state("rs_scope", "subset", str, list(scopes))
ui.init_state("rs_groups", "group", lambda v: v if isinstance(v, list) else [v], all_groups)
ui.init_state("rs_correct", "correct", str, ["all", "correct", "incorrect"])
ui.init_state("rs_conf", "conf", _conf)
st.session_state.setdefault("rs_groups", all_groups)
st.session_state.setdefault("rs_conf", (0.0, 1.0))
st.session_state["rs_groups"] = [
    g for g in st.session_state["rs_groups"] if g in all_groups
]  # another dataset
with st.container(border=True):
    c0, c1, c2, c3 = st.columns([2, 2, 1, 2])
    scope_key = c0.selectbox(
        "Pairs of",
        list(scopes),
        format_func=lambda k: f"{scopes[k].label} ({scopes[k].n})",
        key="rs_scope",
        help="The held-out test split is what the Overview's headline uses.",
    )
    picked_groups = c1.multiselect("Groups", all_groups, key="rs_groups")
    correctness = c2.radio("Pairs", ["all", "correct", "incorrect"], horizontal=True, key="rs_correct")
    # (a range slider: its value, a pair, comes from session state, which streamlit's types cannot see)
    conf_lo, conf_hi = cast(
        "tuple[float, float]",
        c3.slider("Routing confidence (weight of the top expert)", 0.0, 1.0, step=0.05, key="rs_conf"),
    )
ui.share_view(
    subset=scope_key,
    group=picked_groups if len(picked_groups) < len(all_groups) else None,
    correct=correctness if correctness != "all" else None,
    conf=f"{conf_lo:g},{conf_hi:g}" if (conf_lo, conf_hi) != (0.0, 1.0) else None,
)
scope = scopes[scope_key]
in_scope = np.zeros(len(s.margin), dtype=bool)
in_scope[scope.index] = True
mask = (
    in_scope
    & np.isin(groups, picked_groups)
    & (s.confidence >= conf_lo - 1e-9)
    & (s.confidence <= conf_hi + 1e-9)
)
if correctness != "all":
    mask &= s.correct if correctness == "correct" else ~s.correct
idx = np.flatnonzero(mask)
unfiltered = len(idx) == scope.n
st.caption(
    f"{len(idx)} pairs match the filters, of the {scope.n} pairs of the {scope.label} "
    f"({len(s.margin)} pairs in the file)."
)
if not len(idx):
    st.warning("No pair matches these filters.")
    st.stop()


@st.cache_resource(show_spinner=False, max_entries=32)
def filtered_evaluation(
    model_fid: str, data_fid: str, filters: tuple, _model, _features, _scores, _idx
) -> dict:
    """Statistics of the filtered pairs, cached per filter setting (a rerun recomputes nothing)."""
    return evaluate(_model, _features.subset(_idx), _scores.subset(_idx))


sub = s.subset(idx)
if unfiltered:  # exactly the Overview's numbers (same cache entry)
    _, ev = ctx.scope_evaluation(scope_key)
else:
    ev = filtered_evaluation(
        ctx.model_fid,
        ctx.data_fid,
        (scope_key, tuple(picked_groups), correctness, conf_lo, conf_hi),
        ctx.model,
        ctx.features,
        s,
        idx,
    )
where = ui.summary.Scope(scope.key, scope.label if unfiltered else f"{scope.label}, filtered", idx)
values = ui.summary.headline_values(ev)
m = st.columns(4)
ui.stat_metric(m[0], "accuracy", values["accuracy"], where)
ui.stat_metric(m[1], "routing_nmi", values["routing_nmi"], where)
ui.stat_metric(m[2], "routing_entropy_normalized", values["routing_entropy_normalized"], where)
ui.stat_metric(m[3], "active_experts_per_pair", values["active_experts_per_pair"], where)

colors = [ui.expert_color(k) for k in range(ctx.k)]
left, right = st.columns(2)
with left:
    fig = go.Figure()
    fig.add_bar(x=names, y=ev["expert_utilization"], name="top-1 share", marker_color=colors)
    fig.add_scatter(
        x=names,
        y=ev["expert_load"],
        name="mean routing weight",
        mode="markers",
        marker=dict(symbol="diamond", size=10, color="black"),
    )
    fig.update_layout(
        title="Expert utilization",
        height=340,
        margin=dict(t=40, b=10),
        xaxis_title="expert",
        yaxis_title="share of pairs",
    )
    ui.expert_axis(fig, "x", ctx.k)
    st.plotly_chart(fig, width="stretch", key="rs_util")
with right:
    k = max(ctx.k, 2)
    ent = -(sub.router_probs * np.log(np.clip(sub.router_probs, 1e-12, None))).sum(-1) / np.log(k)
    present = ui.natural_sorted(set(groups[idx]))
    gcol = ui.category_colors(all_groups)
    fig = go.Figure(
        [
            go.Histogram(
                x=ent[groups[idx] == g],
                name=ui.chart(g),
                opacity=0.6,
                nbinsx=30,
                marker_color=gcol[g],
                xbins=dict(start=0, end=1, size=1 / 30),
            )
            for g in present
        ]
    )
    fig.update_layout(
        title="Routing entropy per pair (normalized: 0 = one expert, 1 = all equal)",
        height=340,
        margin=dict(t=40, b=10),
        barmode="overlay",
        xaxis_title="routing entropy / log K",
        yaxis_title="pairs",
        xaxis_range=[0, 1],
    )
    st.plotly_chart(fig, width="stretch", key="rs_entropy")

left, right = st.columns(2)
counts = pd.DataFrame(ev["group_expert_counts"], index=names).T.rename(index=ui.chart)
with left:
    fig = px.imshow(
        counts,
        text_auto=True,
        aspect="auto",
        color_continuous_scale="Blues",
        labels=dict(x="top expert", y="group", color="pairs"),
        title="Group × top expert (pairs)",
    )
    fig.update_layout(height=max(360, 60 + 26 * len(counts)), margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="rs_heat")
with right:
    acc = pd.DataFrame(ev["per_expert_group_accuracy"]).rename(
        columns=lambda e: names[int(e)], index=ui.chart
    )
    fig = px.imshow(
        acc,
        text_auto=".2f",  # pyright: ignore[reportArgumentType] (plotly is untyped: a format is allowed)
        aspect="auto",
        zmin=0,
        zmax=1,
        color_continuous_scale="RdYlGn",
        labels=dict(x="expert", y="group", color="accuracy"),
        title="Each expert's accuracy per group (its own margin's sign)",
    )
    fig.update_layout(height=max(360, 60 + 26 * len(acc)), margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="rs_acc")

left, right = st.columns(2)
with left:
    co = pd.DataFrame(ev["coactivation"], index=names, columns=names)
    fig = px.imshow(
        co,
        text_auto=".2f",  # pyright: ignore[reportArgumentType] (plotly is untyped: a format is allowed)
        aspect="auto",
        color_continuous_scale="Purples",
        labels=dict(x="expert", y="expert", color="share"),
        title="Top-k co-activation (share of pairs using both experts)",
    )
    fig.update_layout(height=360, margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="rs_co")
with right:
    routed = sub.routing > 0
    rows = []
    for k, name in enumerate(names):
        use = routed[:, k]
        rows.append(
            {
                "expert": name,
                "pairs routed": int(use.sum()),
                "accuracy where routed": round(float(sub.expert_correct[use, k].mean()), 4)
                if use.any()
                else None,
                "mean weight where routed": round(float(sub.routing[use, k].mean()), 4)
                if use.any()
                else None,
            }
        )
    st.markdown("**Experts where they are used**")
    ui.table(pd.DataFrame(rows))

with st.expander(f"Filtered pairs ({len(idx)})"):
    shown = idx[:1000]  # a table is for reading; `moe-reward select` exports them all
    if len(idx) > len(shown):
        st.caption(
            f"First {len(shown)} of {len(idx)}; `moe-reward select` with the same filters exports all."
        )
    st.dataframe(ctx.pair_table(shown), hide_index=True, width="stretch", height=320)
