"""Expert detail: one expert's description, the pairs it handles, its margins and whom it agrees with."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

import ui_common as ui
from moe_reward.app.colors import NEUTRAL
from moe_reward.evaluate.metrics import expert_agreement

ui.page_header(
    "Expert detail",
    "Everything about one expert: what it prefers, where the router sends it work, "
    "and which other experts agree with it.",
)
ctx = ui.require_context()

s, names, groups = ctx.scores, ctx.expert_names(), ctx.groups
labels = ctx.expert_labels()
ui.init_state("detail_expert", "expert", int, list(range(ctx.k)))
shared = st.session_state.get(ui.SHARED_EXPERT)
if "detail_expert" not in st.session_state and isinstance(shared, int) and 0 <= shared < ctx.k:
    st.session_state["detail_expert"] = shared
if st.session_state.get("detail_expert") not in range(ctx.k):
    st.session_state["detail_expert"] = 0
top_row = st.columns([1, 8])
k = top_row[1].selectbox("Expert", range(ctx.k), format_func=lambda e: labels[e], key="detail_expert")
top_row[0].image(ui.swatch(ui.expert_color(k), 64, 38), caption=f"E{k}")
st.session_state[ui.SHARED_EXPERT] = int(k)
ui.share_view(expert=k)
color = ui.expert_color(k)
desc = {d.expert: d for d in ctx.descriptions()}.get(k)
routed = s.routing[:, k] > 0
n = len(s.margin)

m = st.columns(4)
m[0].metric(
    f"Pairs routed here (of {n})",
    f"{int(routed.sum())}",
    help="Pairs whose routing weight for this expert is > 0",
)
m[1].metric(f"Top expert for (all {n} pairs)", f"{(s.top_expert == k).mean():.1%}")
m[2].metric(
    f"Accuracy where routed ({int(routed.sum())} pairs)",
    ui.fmt(float(s.expert_correct[routed, k].mean()) if routed.any() else None),
    help="How often this expert's own margin picks the chosen response, on the pairs routed to it",
)
m[3].metric(
    f"Accuracy on all {n} pairs",
    ui.fmt(float(s.expert_correct[:, k].mean())),
    help="Its own margin's sign on every pair, including contexts the router never sends it",
)

with st.container(border=True):
    st.markdown("**Description**")
    if desc is None:
        st.caption("No description available (moe_reward.evaluate.describe).")
    else:
        st.text(desc.label or f"E{k}")
        cols = st.columns(3)
        with cols[0]:
            st.caption("Prompt keywords (what routes here)")
            ui.table(pd.DataFrame(desc.prompt_keywords, columns=["term", "score"]).round(4))
        with cols[1]:
            st.caption("Keywords of the responses it prefers")
            ui.table(pd.DataFrame(desc.chosen_keywords, columns=["term", "score"]).round(4))
        with cols[2]:
            st.caption("Correlation of its reward with text features")
            corr = sorted(desc.feature_correlations.items(), key=lambda kv: -abs(kv[1]))
            ui.table(pd.DataFrame(corr, columns=["feature", "r"]).round(3))

diagnostics = ui.summary.diagnostics_of(ctx.scope_evaluation()[1]) or ui.summary.diagnostics_of(
    ui.model_metrics(ctx.model_dir)
)
if diagnostics:
    contingency = diagnostics.get("contingency") or {}
    with st.container(border=True):
        st.markdown("**Specialization diagnostics** (the model's held-out evaluation)")
        keys = [key for key in ui.summary.DIAGNOSTICS if diagnostics.get(key) is not None]
        if keys:
            cols = st.columns(len(keys))
            for col, key in zip(cols, keys, strict=True):
                ui.stat_metric(col, key, diagnostics[key])
                col.caption(ui.summary.DIAGNOSTICS[key].definition)
        if contingency:
            col_k = {g: (v[k] if k < len(v) else 0) for g, v in contingency.items()}
            total = sum(col_k.values())
            frame = pd.DataFrame(
                {
                    "group": [ui.chart(g) for g in col_k],
                    "pairs whose top expert is this one": list(col_k.values()),
                }
            )
            fig = px.bar(
                frame,
                x="group",
                y="pairs whose top expert is this one",
                color_discrete_sequence=[color],
                title=f"Groups of the {total} test pairs whose top expert is E{k}",
                height=300,
            )
            fig.update_layout(margin=dict(t=40, b=10), xaxis_title="group", yaxis_title="pairs")
            st.plotly_chart(fig, width="stretch", key="detail_contingency")

cols_shown = ["id", "group", "user", "prompt", "chosen", "rejected", "margin", "correct", "top_expert"]
left, right = st.columns(2)
with left:
    st.markdown("**Highest routing weight**")
    top = np.argsort(-s.routing[:, k], kind="stable")[:10]
    t = ctx.pair_table(top, routing=False)[cols_shown]
    t.insert(1, "weight", s.routing[top, k].round(4))
    ui.table(t)
with right:
    st.markdown("**Largest margins of this expert**")
    big = np.argsort(-np.abs(s.expert_margins[:, k]), kind="stable")[:10]
    t = ctx.pair_table(big, routing=False)[cols_shown]
    t.insert(1, "expert margin", s.expert_margins[big, k].round(4))
    ui.table(t)

left, right = st.columns(2)
with left:
    frame = pd.DataFrame(
        {
            "expert margin (chosen − rejected)": s.expert_margins[:, k],
            "pairs": np.where(routed, f"E{k} · routed here", "not routed here"),
        }
    )
    fig = px.histogram(
        frame,
        x="expert margin (chosen − rejected)",
        color="pairs",
        nbins=40,
        barmode="overlay",
        title="Margin distribution",
        height=340,
        opacity=0.7,
        color_discrete_map={f"E{k} · routed here": color, "not routed here": NEUTRAL},
        category_orders={"pairs": [f"E{k} · routed here", "not routed here"]},
    )
    fig.add_vline(x=0, line_dash="dash", line_color="grey")
    fig.update_layout(margin=dict(t=40, b=10), yaxis_title="pairs")
    st.plotly_chart(fig, width="stretch", key="detail_hist")
with right:
    rows = []
    for g in ui.natural_sorted(set(groups)):
        gm = groups == g
        rows.append(
            {
                "group": ui.chart(g),
                "all pairs": float(s.expert_correct[gm, k].mean()),
                "routed here": float(s.expert_correct[gm & routed, k].mean())
                if (gm & routed).any()
                else None,
                "pairs routed": int((gm & routed).sum()),
            }
        )
    acc = pd.DataFrame(rows)
    fig = go.Figure(
        [
            go.Bar(x=acc["group"], y=acc["all pairs"], name="all pairs of the group", marker_color=NEUTRAL),
            go.Bar(
                x=acc["group"], y=acc["routed here"], name=f"E{k} · pairs routed here", marker_color=color
            ),
        ]
    )
    fig.update_layout(
        title="This expert's accuracy per group",
        barmode="group",
        yaxis_range=[0, 1],
        height=340,
        margin=dict(t=40, b=10),
        xaxis_title="group",
        yaxis_title="accuracy (its own margin's sign)",
    )
    st.plotly_chart(fig, width="stretch", key="detail_group")

agree = expert_agreement(s)[k]
others = [j for j in range(ctx.k) if j != k]
if others:
    frame = pd.DataFrame(
        {"expert": [names[j] for j in others], "agreement": [float(agree[j]) for j in others]}
    )
    frame = frame.sort_values("agreement")
    fig = go.Figure(
        go.Bar(
            x=frame["agreement"],
            y=frame["expert"],
            orientation="h",
            marker_color=[ui.expert_color(int(e[1:])) for e in frame["expert"]],
        )
    )
    fig.update_layout(
        title=f"Agreement of {names[k]} with the other experts (share of pairs with the same winner)",
        height=80 + 40 * len(others),
        xaxis_range=[0, 1],
        margin=dict(t=40, b=10),
        xaxis_title="share of pairs on which both pick the same response",
        yaxis_title="expert",
    )
    fig.add_vline(x=0.5, line_dash="dot", line_color="grey")
    st.plotly_chart(fig, width="stretch", key="detail_agree")
    st.caption(
        f"Agrees most with {frame.loc[frame.agreement.idxmax(), 'expert']}, "
        f"disagrees most with {frame.loc[frame.agreement.idxmin(), 'expert']}."
    )
