"""MoE Reward Lens dashboard: `streamlit run app.py` (or `moe-reward app`).

This file is the entry point of every page: it builds the default model on a fresh clone, draws the
shared sidebar (so the model and dataset picked stay picked across pages) and routes to the page.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import ui_common as ui

PAGES = [
    ("pages/1_Routing_statistics.py", "Routing statistics", ":material/bar_chart:"),
    ("pages/2_Expert_map.py", "Expert map", ":material/scatter_plot:"),
    ("pages/3_Expert_detail.py", "Expert detail", ":material/person_search:"),
    ("pages/4_Personalize.py", "Personalize", ":material/tune:"),
    ("pages/5_Compare_models.py", "Compare models", ":material/compare_arrows:"),
    ("pages/6_Score_your_own.py", "Score your own", ":material/edit_note:"),
    ("pages/7_Data_and_training.py", "Data & training", ":material/upload_file:"),
]


def build_default_if_missing() -> None:
    """A fresh clone has no model: embed the controlled dataset, train the default model, project it.
    One session builds; any other session that opens meanwhile waits for it (a lock shared by sessions)."""
    ws = ui.workspace()
    if ws.list_models():
        return
    note = st.info("First start: building the default model on the controlled dataset (once).")
    with ui.default_build_lock():
        if ws.list_models():  # another session built it while this one waited
            note.empty()
            return
        bar = st.progress(0.0, text="starting")
        try:
            ws.ensure_default(progress=lambda msg, frac: bar.progress(min(max(frac, 0.0), 1.0), text=msg))
        except Exception as exc:
            note.empty()
            bar.empty()
            st.error(f"Could not build the default model: {ui.md(exc)}. Upload data and train one in **Data & training**.")
            return
    bar.empty()
    note.empty()


def overview() -> None:
    ui.page_header("Overview", "A sparse Mixture-of-Experts reward model: what each expert prefers and how "
                   "prompts are routed to them.")
    ctx = ui.context()
    if ctx is None:
        return
    ev, metrics = ctx.evaluation, ui.model_metrics(ctx.model_dir)
    st.write(f"**{ui.md(ctx.model_name)}**: {ui.md(ctx.model.describe())} — evaluated on {ui.md(ctx.data.label)} "
             f"({len(ctx.features)} pairs)")
    cols = st.columns(5)
    cols[0].metric("Accuracy (all pairs)", ui.fmt(ev["accuracy"]))
    cols[1].metric("Held-out test accuracy", ui.fmt(metrics.get("test", {}).get("accuracy")),
                   help="From training: the prompt-disjoint test split of the training data")
    cols[2].metric("Routing NMI (expert, group)", ui.fmt(ev["routing_nmi"]))
    used = np.asarray(ev["expert_utilization"])
    cols[3].metric("Experts in use", f"{int((used > 0.01).sum())} / {ctx.k}",
                   help="Experts that are the top choice for more than 1% of pairs")
    cols[4].metric("Routing entropy (normalized)", ui.fmt(ev["routing_entropy_normalized"]))

    names = ctx.expert_names()
    fig = go.Figure(go.Bar(x=names, y=used, marker_color="#4C78A8", name="top-1 share"))
    fig.add_bar(x=names, y=ev["expert_load"], marker_color="#F58518", name="mean routing weight")
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title="Expert utilization", barmode="group")
    st.plotly_chart(fig, width="stretch")

    st.subheader("Experts")
    descriptions = {d.expert: d for d in ctx.descriptions()}
    if not descriptions:
        st.caption("Expert descriptions are unavailable (moe_reward.describe is not installed).")
    s = ctx.scores
    routed = s.routing > 0
    # An expert is judged where the router uses it (its accuracy on all pairs mixes in other contexts).
    acc_routed = [float(s.expert_correct[routed[:, k], k].mean()) if routed[:, k].any() else float("nan")
                  for k in range(ctx.k)]
    cols = st.columns(min(4, ctx.k))
    for k in range(ctx.k):
        with cols[k % len(cols)].container(border=True):
            d = descriptions.get(k)
            st.markdown(f"**E{k}**")
            if d is not None and d.label:
                st.text(d.label)
            st.caption(f"top expert for {used[k]:.0%} of pairs · accuracy where routed {ui.fmt(acc_routed[k], 2)}")
            if d is not None:
                if d.prompt_keywords:
                    st.text("prompt words: " + ", ".join(t for t, _ in d.prompt_keywords[:5]))
                if d.chosen_keywords:
                    st.text("words it rewards: " + ", ".join(t for t, _ in d.chosen_keywords[:5]))
                if d.groups:
                    top = sorted(d.groups.items(), key=lambda kv: -kv[1])[:3]
                    st.text("groups: " + ", ".join(f"{g} ({n})" for g, n in top))
                if d.feature_correlations:
                    best = sorted(d.feature_correlations.items(), key=lambda kv: -abs(kv[1]))[:3]
                    st.text("features: " + ", ".join(f"{f} {r:+.2f}" for f, r in best))
    if ev["per_group"]:
        st.subheader("Accuracy per group")
        st.dataframe(pd.DataFrame([{"group": g, "accuracy": round(v["accuracy"], 4), "pairs": v["n"]}
                                   for g, v in ev["per_group"].items()]), hide_index=True, width="stretch")


st.set_page_config(page_title=ui.PAGE_TITLE, page_icon=":material/hub:", layout="wide")
build_default_if_missing()
ui.sidebar(ui.workspace())
st.session_state[ui.ENTRY_SIDEBAR] = True
navigation = st.navigation([st.Page(overview, title="Overview", icon=":material/dashboard:", default=True)]
                           + [st.Page(path, title=title, icon=icon) for path, title, icon in PAGES])
navigation.run()
