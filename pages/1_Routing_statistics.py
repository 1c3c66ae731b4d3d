"""Routing statistics: how pairs are spread over experts, filtered by subset, group, correctness and confidence."""

from __future__ import annotations

from typing import cast

import numpy as np
import pandas as pd
import streamlit as st

import ui_common as ui
from moe_reward.app import charts
from moe_reward.evaluate.metrics import Evaluation, evaluate

ui.page_header(
    "Routing statistics",
    "Which experts the router uses, for which groups, how confidently, "
    "and how accurate each expert is where it is used.",
)
ctx = ui.require_context()

s, groups = ctx.scores, ctx.groups
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
    c0, c1, c2, c3, c4 = st.columns([2, 2, 1, 2, 2])
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
    ui.init_state("rs_search", "q", str)
    with c4:
        query, found = ui.search_box(ctx, "rs_search")
ui.share_view(
    q=query or None,
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
if query:
    matched = np.zeros(len(s.margin), dtype=bool)
    if found is not None:
        matched[found] = True
    mask &= matched
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
) -> Evaluation:
    """Statistics of the filtered pairs, cached per filter setting (a rerun recomputes nothing)."""
    return evaluate(_model, _features.subset(_idx), _scores.subset(_idx))


sub = s.subset(idx)
if unfiltered:  # exactly the Overview's numbers (same cache entry)
    _, ev = ctx.scope_evaluation(scope_key)
else:
    ev = filtered_evaluation(
        ctx.model_fid,
        ctx.data_fid,
        (scope_key, ctx.slice_key, tuple(picked_groups), correctness, conf_lo, conf_hi, query),
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
ui.below_chance_caption(values["accuracy"], len(idx), where.label)

colors = [ui.expert_color(k) for k in range(ctx.k)]
titles = ctx.expert_titles()
left, right = st.columns(2)
with left:
    spec = charts.expert_bars(
        titles,
        colors,
        {"top-1 share": ev["expert_utilization"]},
        points={"mean routing weight": ev["expert_load"]},
        title="Expert utilization",
        subtitle="bars: the share of pairs each expert leads (top-1), in the expert's colour",
        y_title="share of pairs",
    )
    ui.vega(spec, key="rs_util")
with right:
    k = max(ctx.k, 2)
    ent = -(sub.router_probs * np.log(np.clip(sub.router_probs, 1e-12, None))).sum(-1) / np.log(k)
    present = ui.natural_sorted(set(groups[idx]))
    gcol = ui.group_colors(all_groups)
    spec = charts.histogram(
        {str(g): ent[groups[idx] == g] for g in present},
        {str(g): gcol[g] for g in present},
        30,
        domain=(0.0, 1.0),
        title="Routing entropy per pair (normalized: 0 = one expert, 1 = all equal)",
        x_title="routing entropy / log K",
    )
    ui.vega(spec, key="rs_entropy")

left, right = st.columns(2)
counts = pd.DataFrame(ev["group_expert_counts"], index=titles).T
with left:
    spec = charts.heatmap(
        counts.to_numpy(),
        [str(g) for g in counts.index],
        titles,
        title="Group × top expert (pairs)",
        x_title="top expert",
        y_title="group",
        color_title="pairs",
        fmt="d",
    )
    ui.vega(spec, key="rs_heat")
with right:
    acc = pd.DataFrame(ev["per_expert_group_accuracy"]).rename(columns=lambda e: titles[int(e)])
    spec = charts.heatmap(
        acc.to_numpy(dtype=float),
        [str(g) for g in acc.index],
        list(acc.columns),
        title="Each expert's accuracy per group (its own margin's sign)",
        x_title="expert",
        y_title="group",
        color_title="accuracy",
        scheme="redyellowgreen",
        domain=(0, 1),
    )
    ui.vega(spec, key="rs_acc")

left, right = st.columns([2, 3])
with left:
    spec = charts.heatmap(
        np.asarray(ev["coactivation"], dtype=float),
        titles,
        titles,
        title="Top-k co-activation (share of pairs using both experts)",
        x_title="expert",
        y_title="expert",
        color_title="share",
        scheme="purples",
        height=360,
    )
    ui.vega(spec, key="rs_co")
with right:
    from moe_reward.evaluate.experts import EXPERT_STATS, summarize_experts

    rows = [
        {
            "expert": r.title,
            "leads": r.n_top,
            "accuracy on its pairs": None if r.top_accuracy is None else round(r.top_accuracy, 3),
            "own margin on them": None if r.own_top_accuracy is None else round(r.own_top_accuracy, 3),
            "takes part in": r.n_routed,
            "mean weight": round(r.mean_weight, 3),
        }
        for r in summarize_experts(s, idx, ctx.names)
    ]
    st.markdown(f"**Each expert on the {len(idx)} pairs**")
    ui.table(pd.DataFrame(rows))
    st.caption(
        "leads: pairs whose top expert it is. takes part in: pairs with a non-zero routing weight. "
        + " ".join(
            f"{EXPERT_STATS[key].label}: {EXPERT_STATS[key].definition}"
            for key in ("top_accuracy", "own_top_accuracy", "mean_weight")
        )
    )

filters = [scope.label]
if len(picked_groups) < len(all_groups):
    filters.append("groups " + ", ".join(picked_groups))
if correctness != "all":
    filters.append(f"{correctness} pairs")
if (conf_lo, conf_hi) != (0.0, 1.0):
    filters.append(f"top-expert weight {conf_lo:g}–{conf_hi:g}")
if query:
    from moe_reward.evaluate.search import describe_query

    filters.append(describe_query(query))
ui.save_slice_form(ctx, idx, "search" if query else "filter", "; ".join(filters), "rs_slice")
# Drawn when opened (a lazy expander: opening it reruns the page): up to 1000 rows of texts were sent and
# drawn on every run, closed or not.
pairs_box = st.expander(f"Filtered pairs ({len(idx)})", key="rs_pairs_open", on_change="rerun")
if pairs_box.open:
    shown = idx[:1000]  # a table is for reading; `moe-reward select` exports them all
    if len(idx) > len(shown):
        pairs_box.caption(
            f"First {len(shown)} of {len(idx)}; `moe-reward select` with the same filters exports all."
        )
    pairs_box.dataframe(ctx.pair_table(shown), hide_index=True, width="stretch", height=320)
