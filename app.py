"""MoE Reward Lens dashboard: `streamlit run app.py` (or `moe-reward app`).

This file is the entry point of every page: it builds the default model on a fresh clone, draws the
shared sidebar (so the model and dataset picked stay picked across pages) and routes to the page.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

import ui_common as ui
from moe_reward.app import charts

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


def expert_cards(ctx, scope) -> None:
    """One card per expert, its numbers on `scope` (the headline subset); experts that lead no pair of the
    file are one line, not a card each."""
    from moe_reward.evaluate.experts import EXPERT_STATS, describe_unused, unused_experts

    descriptions = {d.expert: d for d in ctx.descriptions()}
    if not descriptions:
        st.caption("Expert descriptions are unavailable (moe_reward.evaluate.describe is not installed).")
    rows = ctx.expert_summaries(scope)
    unused = set(unused_experts(ctx.scores)) if ctx.k > 1 else set()
    shown = [r for r in rows if r.expert not in unused]
    lead = EXPERT_STATS["top_accuracy"]
    st.caption(
        f"Each card's numbers are on the {ui.md(scope.label)} ({scope.n} pairs). {ui.md(lead.label)}: "
        f"{ui.md(lead.definition)} Descriptions are drawn from all {len(ctx.features)} pairs of the file."
    )
    cols = st.columns(min(4, max(len(shown), 1)))
    for i, r in enumerate(shown):
        k = r.expert
        with cols[i % len(cols)].container(border=True):
            d = descriptions.get(k)
            st.image(ui.swatch(ui.expert_color(k)), width=48)
            label = f"  \n{ui.md(d.label)}" if d is not None and d.label else ""
            st.markdown(f"**{ui.md(r.title)}**{label}")  # a new tab draws every element of 12 cards
            st.metric(
                lead.label,
                ui.fmt(r.top_accuracy),
                delta=f"{scope.label} · {r.n_top} pairs",
                delta_color="off",
                delta_arrow="off",
                help=f"{lead.definition} On the {scope.label}.",
            )
            st.caption(
                f"top expert for {r.n_top} of the {r.n_pairs} pairs ({r.top_share:.0%})",
                help=EXPERT_STATS["top_share"].definition,
            )
            ui.below_chance_caption(r.top_accuracy, r.n_top, "its pairs")
            if d is not None:  # one text element
                lines = []
                if d.prompt_keywords:
                    lines.append("prompt words: " + ", ".join(t for t, _ in d.prompt_keywords[:5]))
                if d.chosen_keywords:
                    lines.append("words it rewards: " + ", ".join(t for t, _ in d.chosen_keywords[:5]))
                if d.groups:
                    top = sorted(d.groups.items(), key=lambda kv: -kv[1])[:3]
                    lines.append("groups: " + ", ".join(f"{g} ({n})" for g, n in top))
                if d.feature_correlations:
                    best = sorted(d.feature_correlations.items(), key=lambda kv: -abs(kv[1]))[:3]
                    lines.append("features: " + ", ".join(f"{f} {c:+.2f}" for f, c in best))
                if lines:
                    st.text("\n".join(lines))
            if st.button(
                f"E{k} in detail",
                key=f"ov_open_{k}",
                icon=":material/arrow_forward:",
                type="tertiary",
                on_click=ui.open_expert,
                args=(k,),
            ):
                st.switch_page("pages/3_Expert_detail.py")
    if unused:
        st.caption(ui.md(describe_unused(sorted(unused), len(ctx.features))))


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
            f"Headline numbers are on the {ui.md(scope.label)}: {scope.n} "
            f"pair{'s' if scope.n != 1 else ''} of the training data that the model never saw while training "
            "or choosing its checkpoint."
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

    read_against = [
        f"{label}: {note}"
        for label, note in (
            ("accuracy", ui.summary.chance_note("accuracy", values)),
            ("routing NMI", ui.summary.chance_note("routing_nmi", values)),
        )
        if note
    ]
    if read_against:  # every headline number beside what it is read against (its interval, its chance level)
        st.caption(ui.md("Read against chance: " + "; ".join(read_against) + "."))
    ui.below_chance_caption(values["accuracy"], scope.n, scope.label)
    saved = ui.model_metrics(ctx.model_dir) or {}
    if saved.get("checkpoint_untrained"):
        st.error(
            "Untrained model: the checkpoint this model kept learnt nothing that holds on its validation "
            "pairs (neither its loss beat log 2 nor its accuracy beat ½ significantly). Its experts and "
            "routing below describe noise; retrain with more data or another setting.",
            icon=":material/warning:",
        )
    verdict = ui.summary.verdict_of(ev)
    if verdict:
        st.markdown(f"**Heterogeneity: {ui.md(verdict[0])}.** {ui.md(verdict[1])}")

    rows, notes = [], []
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
        notes.append((sc.label, ui.summary.subset_note(sc, e)))
    if len(rows) > 1:
        st.markdown("**The same statistics on every subset of this file**")
        ui.table(pd.DataFrame(rows).round(4))
        st.caption(
            "A model is only as good as its held-out numbers. What the other subsets are for, and why a "
            "number on them is low:"
        )
        st.markdown("\n".join(f"- *{ui.md(label)}*: {ui.md(note)}" for label, note in notes if note))

    used = np.asarray(ev["expert_utilization"])
    spec = charts.expert_bars(
        ctx.expert_titles(),
        [ui.expert_color(k) for k in range(ctx.k)],
        {"top-1 share": used},
        points={"mean routing weight": ev["expert_load"]},
        title=f"Expert utilization ({scope.label}, {scope.n} pairs)",
        subtitle="bars: the share of pairs each expert leads (top-1), in the expert's colour",
        y_title="share of pairs",
        height=360,  # (the whole chart: titles, axes and legend included)
    )
    ui.vega(spec, key="ov_util")

    ui.diagnostics_section(
        ui.summary.scope_diagnostics(ev, ui.model_metrics(ctx.model_dir), on_test_split=scope.key == "test"),
        ctx.k,
        "held-out test split" if ctx.slice is None else "whole held-out test split (not only the slice)",
        ctx.names,
    )
    story = ui.summary.training_story(ui.model_metrics(ctx.model_dir))
    if story:
        with st.expander("How training found these experts", expanded=False):
            for line in story:
                st.markdown("- " + ui.md(line))

    st.subheader("Experts")
    expert_cards(ctx, scope)
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
# The navigation first: until st.navigation runs, Streamlit lists the raw files of pages/ ("app",
# "Data and training") in the sidebar, which a first start (building the default model) would show.
navigation = st.navigation(
    [st.Page(overview, title="Overview", icon=":material/dashboard:", default=True)]
    + [st.Page(path, title=title, icon=icon) for path, title, icon in PAGES]
)
build_default_if_missing()
ui.sidebar(ui.workspace())
st.session_state[ui.ENTRY_SIDEBAR] = True
navigation.run()
prepare_default_map()
