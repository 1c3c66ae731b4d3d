"""Routing statistics: how pairs are spread over experts, filtered by group, correctness and confidence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

import ui_common as ui
from moe_reward.analysis import evaluate

ui.page_header("Routing statistics", "Which experts the router uses, for which groups, how confidently, "
               "and how accurate each expert is where it is used.")
ctx = ui.context()
if ctx is None:
    st.stop()

s, groups, names = ctx.scores, ctx.groups, ctx.expert_names()
all_groups = sorted(set(groups))
with st.container(border=True):
    c1, c2, c3 = st.columns([2, 1, 2])
    picked_groups = c1.multiselect("Groups", all_groups, default=all_groups, key="rs_groups")
    correctness = c2.radio("Pairs", ["all", "correct", "incorrect"], horizontal=True, key="rs_correct")
    conf_lo, conf_hi = c3.slider("Routing confidence (weight of the top expert)", 0.0, 1.0, (0.0, 1.0), 0.05,
                                 key="rs_conf")
mask = np.isin(groups, picked_groups) & (s.confidence >= conf_lo - 1e-9) & (s.confidence <= conf_hi + 1e-9)
if correctness != "all":
    mask &= s.correct if correctness == "correct" else ~s.correct
idx = np.flatnonzero(mask)
st.caption(f"{len(idx)} of {len(s.margin)} pairs match the filters.")
if not len(idx):
    st.warning("No pair matches these filters.")
    st.stop()



@st.cache_resource(show_spinner=False, max_entries=32)
def filtered_evaluation(model_fid: str, data_fid: str, filters: tuple, _model, _features, _scores, _idx) -> dict:
    """Statistics of the filtered pairs, cached per filter setting (a rerun recomputes nothing)."""
    return evaluate(_model, _features.subset(_idx), _scores.subset(_idx))


sub = s.subset(idx)
ev = filtered_evaluation(ctx.model_fid, ctx.data_fid, (tuple(picked_groups), correctness, conf_lo, conf_hi),
                         ctx.model, ctx.features, s, idx)
m = st.columns(4)
m[0].metric("Accuracy", ui.fmt(ev["accuracy"]))
m[1].metric("Routing entropy", ui.fmt(ev["routing_entropy"]), help="Mean entropy of the router's full softmax (nats)")
m[2].metric("Active experts per pair", ui.fmt(ev["active_experts_per_pair"], 2))
m[3].metric("Routing NMI", ui.fmt(ev["routing_nmi"]))

left, right = st.columns(2)
with left:
    fig = go.Figure()
    fig.add_bar(x=names, y=ev["expert_utilization"], name="top-1 share", marker_color="#4C78A8")
    fig.add_bar(x=names, y=ev["expert_load"], name="mean routing weight", marker_color="#F58518")
    fig.update_layout(title="Expert utilization", barmode="group", height=340, margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="rs_util")
with right:
    ent = -(sub.router_probs * np.log(np.clip(sub.router_probs, 1e-12, None))).sum(-1)
    fig = go.Figure([go.Histogram(x=ent[groups[idx] == g], name=ui.chart(g), opacity=0.7, nbinsx=30)
                     for g in sorted(set(groups[idx]))])
    fig.update_layout(title="Routing entropy per pair", height=340, margin=dict(t=40, b=10), barmode="overlay",
                      xaxis_title="entropy (nats)", yaxis_title="pairs")
    st.plotly_chart(fig, width="stretch", key="rs_entropy")

left, right = st.columns(2)
counts = pd.DataFrame(ev["group_expert_counts"], index=names).T.rename(index=ui.chart)
with left:
    fig = px.imshow(counts, text_auto=True, aspect="auto", color_continuous_scale="Blues",
                    labels=dict(x="top expert", y="group", color="pairs"), title="Group × top expert (pairs)")
    fig.update_layout(height=360, margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="rs_heat")
with right:
    acc = pd.DataFrame(ev["per_expert_group_accuracy"]).rename(columns=lambda e: names[int(e)], index=ui.chart)
    fig = px.imshow(acc, text_auto=".2f", aspect="auto", zmin=0, zmax=1, color_continuous_scale="RdYlGn",
                    labels=dict(x="expert", y="group", color="accuracy"),
                    title="Each expert's accuracy per group (its own margin's sign)")
    fig.update_layout(height=360, margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="rs_acc")

left, right = st.columns(2)
with left:
    co = pd.DataFrame(ev["coactivation"], index=names, columns=names)
    fig = px.imshow(co, text_auto=".2f", aspect="auto", color_continuous_scale="Purples",
                    title="Top-k co-activation (share of pairs using both experts)")
    fig.update_layout(height=360, margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="rs_co")
with right:
    routed = sub.routing > 0
    rows = []
    for k, name in enumerate(names):
        use = routed[:, k]
        rows.append({"expert": name, "pairs routed": int(use.sum()),
                     "accuracy where routed": round(float(sub.expert_correct[use, k].mean()), 4) if use.any() else None,
                     "mean weight where routed": round(float(sub.routing[use, k].mean()), 4) if use.any() else None})
    st.markdown("**Experts where they are used**")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

with st.expander(f"Filtered pairs ({len(idx)})"):
    shown = idx[:1000]  # a table is for reading; `moe-reward select` exports them all
    if len(idx) > len(shown):
        st.caption(f"First {len(shown)} of {len(idx)}; `moe-reward select` with the same filters exports all.")
    st.dataframe(ctx.pair_table(shown), hide_index=True, width="stretch", height=320)
