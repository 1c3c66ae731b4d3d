"""MoE Reward Lens dashboard: `streamlit run app.py` (or `moe-reward app`).

This file is the entry point of every page: it builds the default model on a fresh clone, draws the
shared sidebar (so the model and dataset picked stay picked across pages) and routes to the page.
"""

from __future__ import annotations

from pathlib import Path

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
    """A fresh clone has no model: install the default model the repository ships (or train it, when the
    shipped one does not match this code; moe_reward.app.shipped). One session builds; any other session
    that opens meanwhile waits for it (a lock shared by sessions). The Expert map's views are prepared
    after the first page is drawn (`prepare_default_map`)."""
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
            out = ws.ensure_default(
                progress=lambda msg, frac: bar.progress(min(max(frac, 0.0), 1.0), text=msg)
            )
            st.session_state[DEFAULT_MAP_PENDING] = str(out)
        except Exception as exc:
            note.empty()
            bar.empty()
            st.error(
                f"Could not build the default model: {ui.md(exc)}. Upload data and train one in **Data & training**."
            )
            return
    bar.empty()
    note.empty()


DEFAULT_MAP_PENDING = "_default_map_pending"


def prepare_default_map() -> None:
    """After the first page of a fresh start is drawn: the map's instant views now, UMAP in the background
    (computed before the page, they held the Overview back for seconds)."""
    pending = st.session_state.pop(DEFAULT_MAP_PENDING, None)
    if pending:
        try:
            ui.precompute_default_map(ui.workspace(), Path(pending))
        except Exception as exc:  # noqa: BLE001 - the map page computes what it misses itself
            st.caption(f"The Expert map's views will be computed when opened ({ui.md(exc)}).")


def expert_cards(ctx, used: np.ndarray) -> None:
    descriptions = {d.expert: d for d in ctx.descriptions()}
    if not descriptions:
        st.caption("Expert descriptions are unavailable (moe_reward.evaluate.describe is not installed).")
    s = ctx.scores
    routed = s.routing > 0
    # An expert is judged where the router uses it (its accuracy on all pairs mixes in other contexts).
    acc_routed = [
        float(s.expert_correct[routed[:, k], k].mean()) if routed[:, k].any() else float("nan")
        for k in range(ctx.k)
    ]
    cols = st.columns(min(4, ctx.k))
    for k in range(ctx.k):
        with cols[k % len(cols)].container(border=True):
            d = descriptions.get(k)
            st.image(ui.swatch(ui.expert_color(k)), width=48)
            st.markdown(f"**E{k}**")
            if d is not None and d.label:
                st.text(d.label)
            st.caption(
                f"top expert for {used[k]:.0%} of the {len(s.margin)} pairs · accuracy where routed "
                f"{ui.fmt(acc_routed[k], 2)}"
            )
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
            if st.button(
                f"E{k} in detail",
                key=f"ov_open_{k}",
                icon=":material/arrow_forward:",
                type="tertiary",
                on_click=ui.open_expert,
                args=(k,),
            ):
                st.switch_page("pages/3_Expert_detail.py")


def overview() -> None:
    ui.page_header(
        "Overview",
        "A sparse Mixture-of-Experts reward model: what each expert prefers and how "
        "prompts are routed to them.",
    )
    ctx = ui.context()
    if ctx is None:
        return
    ui.share_view()
    rel = ctx.relation
    scope, ev = ctx.scope_evaluation()
    st.write(
        f"**{ui.md(ctx.model_name)}**: {ui.md(ctx.model.describe())} — on {ui.md(ctx.data.label)} "
        f"({len(ctx.features)} pairs)"
    )
    if scope.key == "test":
        st.caption(
            f"Headline numbers are on the held-out test split: {scope.n} pairs of the training data that "
            "the model never saw while training or choosing its checkpoint."
        )
    values = ui.summary.headline_values(ev)
    cols = st.columns(4)
    ui.stat_metric(cols[0], "accuracy", values["accuracy"], scope)
    ui.stat_metric(cols[1], "routing_nmi", values["routing_nmi"], scope)
    ui.stat_metric(cols[2], "routing_entropy_normalized", values["routing_entropy_normalized"], scope)
    ui.stat_metric(
        cols[3],
        "experts_in_use",
        values["experts_in_use"],
        scope,
        text=f"{values['experts_in_use']} / {ctx.k}",
    )

    rows = []
    for sc in rel.scopes:
        _, e = ctx.scope_evaluation(sc.key)
        v = ui.summary.headline_values(e)
        rows.append(
            {
                "subset": sc.label,
                "pairs": sc.n,
                "accuracy": v["accuracy"],
                "routing NMI": v["routing_nmi"],
                "routing entropy": v["routing_entropy_normalized"],
            }
        )
    if len(rows) > 1:
        st.markdown("**The same statistics on every subset of this file**")
        ui.table(pd.DataFrame(rows).round(4))
        st.caption(
            "A model is only as good as its held-out numbers; the training split shows how much it fits "
            "the pairs it learned from."
        )

    names = ctx.expert_names()
    used = np.asarray(ev["expert_utilization"])
    fig = go.Figure(
        go.Bar(x=names, y=used, marker_color=[ui.expert_color(k) for k in range(ctx.k)], name="top-1 share")
    )
    fig.add_scatter(
        x=names,
        y=ev["expert_load"],
        mode="markers",
        name="mean routing weight",
        marker=dict(symbol="diamond", size=10, color="black"),
    )
    fig.update_layout(
        height=280,
        margin=dict(l=10, r=10, t=40, b=10),
        title=f"Expert utilization ({scope.label}, {scope.n} pairs)",
        xaxis_title="expert",
        yaxis_title="share of pairs",
    )
    ui.expert_axis(fig, "x", ctx.k)
    st.plotly_chart(fig, width="stretch", key="ov_util")

    ui.diagnostics_section(
        ui.summary.diagnostics_of(ev) or ui.summary.diagnostics_of(ui.model_metrics(ctx.model_dir)), ctx.k
    )
    story = ui.summary.training_story(ui.model_metrics(ctx.model_dir))
    if story:
        with st.expander("How training found these experts", expanded=False):
            for line in story:
                st.markdown("- " + ui.md(line))

    st.subheader("Experts")
    expert_cards(ctx, np.asarray(ctx.evaluation["expert_utilization"]))
    if ev["per_group"]:
        st.subheader(f"Accuracy per group ({scope.label})")
        ui.table(
            pd.DataFrame(
                [
                    {"group": g, "accuracy": round(v["accuracy"], 4), "pairs": v["n"]}
                    for g, v in ev["per_group"].items()
                ]
            )
        )
    with st.expander("Stakeholder report"):
        ui.report_button(ctx)


st.set_page_config(page_title=ui.PAGE_TITLE, page_icon=str(ui.ICON), layout="wide")
build_default_if_missing()
ui.sidebar(ui.workspace())
st.session_state[ui.ENTRY_SIDEBAR] = True
navigation = st.navigation(
    [st.Page(overview, title="Overview", icon=":material/dashboard:", default=True)]
    + [st.Page(path, title=title, icon=icon) for path, title, icon in PAGES]
)
navigation.run()
prepare_default_map()
