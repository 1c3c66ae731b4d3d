"""Expert detail: one expert's description, the pairs it handles, its margins and whom it agrees with."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

import ui_common as ui
from moe_reward.analysis import expert_agreement

ui.page_header("Expert detail", "Everything about one expert: what it prefers, where the router sends it work, "
               "and which other experts agree with it.")
ctx = ui.context()
if ctx is None:
    st.stop()

s, names, groups = ctx.scores, ctx.expert_names(), ctx.groups
labels = ctx.expert_labels()
k = st.selectbox("Expert", range(ctx.k), format_func=lambda e: labels[e], key="detail_expert")
desc = {d.expert: d for d in ctx.descriptions()}.get(k)
routed = s.routing[:, k] > 0

m = st.columns(4)
m[0].metric("Pairs routed here", f"{int(routed.sum())}", help="Pairs whose routing weight for this expert is > 0")
m[1].metric("Top expert for", f"{(s.top_expert == k).mean():.1%}")
m[2].metric("Accuracy where routed", ui.fmt(float(s.expert_correct[routed, k].mean()) if routed.any() else None))
m[3].metric("Accuracy on all pairs", ui.fmt(float(s.expert_correct[:, k].mean())))

with st.container(border=True):
    st.markdown("**Description**")
    if desc is None:
        st.caption("No description available (moe_reward.describe).")
    else:
        st.text(desc.label or f"E{k}")
        cols = st.columns(3)
        with cols[0]:
            st.caption("Prompt keywords (what routes here)")
            st.dataframe(pd.DataFrame(desc.prompt_keywords, columns=["term", "score"]), hide_index=True, height=220)
        with cols[1]:
            st.caption("Keywords of the responses it prefers")
            st.dataframe(pd.DataFrame(desc.chosen_keywords, columns=["term", "score"]), hide_index=True, height=220)
        with cols[2]:
            st.caption("Correlation of its reward with text features")
            corr = sorted(desc.feature_correlations.items(), key=lambda kv: -abs(kv[1]))
            st.dataframe(pd.DataFrame(corr, columns=["feature", "r"]), hide_index=True, height=220)

cols_shown = ["id", "group", "user", "prompt", "chosen", "rejected", "margin", "correct", "top_expert"]
left, right = st.columns(2)
with left:
    st.markdown("**Highest routing weight**")
    top = np.argsort(-s.routing[:, k], kind="stable")[:10]
    t = ctx.pair_table(top, routing=False)[cols_shown]
    t.insert(1, "weight", s.routing[top, k].round(4))
    st.dataframe(t, hide_index=True, width="stretch", height=320)
with right:
    st.markdown("**Largest margins of this expert**")
    big = np.argsort(-np.abs(s.expert_margins[:, k]), kind="stable")[:10]
    t = ctx.pair_table(big, routing=False)[cols_shown]
    t.insert(1, "expert margin", s.expert_margins[big, k].round(4))
    st.dataframe(t, hide_index=True, width="stretch", height=320)

left, right = st.columns(2)
with left:
    frame = pd.DataFrame({"expert margin (chosen − rejected)": s.expert_margins[:, k],
                          "pairs": np.where(routed, "routed here", "not routed here")})
    fig = px.histogram(frame, x="expert margin (chosen − rejected)", color="pairs", nbins=40, barmode="overlay",
                       title="Margin distribution", height=340)
    fig.add_vline(x=0, line_dash="dash", line_color="grey")
    fig.update_layout(margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="detail_hist")
with right:
    rows = []
    for g in sorted(set(groups)):
        gm = groups == g
        rows.append({"group": ui.chart(g), "all pairs": float(s.expert_correct[gm, k].mean()),
                     "routed here": float(s.expert_correct[gm & routed, k].mean()) if (gm & routed).any() else None,
                     "pairs routed": int((gm & routed).sum())})
    acc = pd.DataFrame(rows)
    fig = go.Figure([go.Bar(x=acc["group"], y=acc["all pairs"], name="all pairs of the group", marker_color="#BAB0AC"),
                     go.Bar(x=acc["group"], y=acc["routed here"], name="pairs routed here", marker_color="#4C78A8")])
    fig.update_layout(title="Accuracy per group", barmode="group", yaxis_range=[0, 1], height=340, margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="detail_group")

agree = expert_agreement(s)[k]
others = [j for j in range(ctx.k) if j != k]
if others:
    frame = pd.DataFrame({"expert": [names[j] for j in others], "agreement": [float(agree[j]) for j in others]})
    fig = px.bar(frame.sort_values("agreement"), x="agreement", y="expert", orientation="h", range_x=[0, 1],
                 title=f"Agreement of {names[k]} with the other experts (share of pairs with the same winner)",
                 height=80 + 40 * len(others))
    fig.add_vline(x=0.5, line_dash="dot", line_color="grey")
    fig.update_layout(margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="detail_agree")
    st.caption(f"Agrees most with {frame.loc[frame.agreement.idxmax(), 'expert']}, "
               f"disagrees most with {frame.loc[frame.agreement.idxmin(), 'expert']}.")
