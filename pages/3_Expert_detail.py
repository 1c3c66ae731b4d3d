"""Expert detail: one expert on one named subset of pairs: its numbers, description, the pairs it leads, its
margins, whom it agrees with; its name; and a what-if edit of one of its pairs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import ui_common as ui
from moe_reward.app import charts
from moe_reward.app.colors import NEUTRAL
from moe_reward.evaluate.experts import EXPERT_STATS, expert_groups, expert_pairs
from moe_reward.evaluate.metrics import expert_agreement
from moe_reward.model.moe import MAX_EXPERT_NAME, set_expert_name

ui.page_header(
    "Expert detail",
    "Everything about one expert: what it prefers, where the router sends it work, "
    "and which other experts agree with it. Name it, and edit one of its pairs to see what moves.",
)
ctx = ui.require_context()

names, groups = ctx.expert_names(), ctx.groups
labels = ctx.expert_labels()
scopes = {sc.key: sc for sc in ctx.relation.scopes}
ui.init_state("detail_scope", "subset", str, list(scopes))
# The expert shown lives in the plain key SHARED_EXPERT (also set by a link's ?expert=, the Overview's
# cards and the map); the selector is a view of it, re-seeded every run: a name saved for an expert
# changes the selector's labels, and Streamlit then makes it a new widget at its default.
pending = st.session_state.get(ui.URL_STATE) or {}
if "expert" in pending:
    ui.init_state("detail_expert", "expert", int, list(range(ctx.k)))
    if st.session_state.get("detail_expert") in range(ctx.k):
        st.session_state[ui.SHARED_EXPERT] = st.session_state["detail_expert"]
shared = st.session_state.get(ui.SHARED_EXPERT)
st.session_state["detail_expert"] = shared if isinstance(shared, int) and 0 <= shared < ctx.k else 0
if st.session_state.get("detail_scope") not in scopes:
    st.session_state["detail_scope"] = ctx.relation.headline.key
top_row = st.columns([1, 6, 3], vertical_alignment="bottom")
k = top_row[1].selectbox(
    "Expert",
    range(ctx.k),
    format_func=lambda e: labels[e],
    key="detail_expert",
    on_change=lambda: st.session_state.__setitem__(ui.SHARED_EXPERT, st.session_state["detail_expert"]),
)
scope_key = top_row[2].selectbox(
    "Pairs of",
    list(scopes),
    format_func=lambda key: f"{scopes[key].label} ({scopes[key].n})",
    key="detail_scope",
    help="Every number and chart on this page is on these pairs (the held-out test split by default).",
)
top_row[0].image(ui.swatch(ui.expert_color(k), 64, 38), caption=f"E{k}")
st.session_state[ui.SHARED_EXPERT] = int(k)
headline = ctx.relation.headline.key
ui.share_view(expert=k, subset=scope_key if scope_key != headline else None)
scope = scopes[scope_key]
color = ui.expert_color(k)
desc = {d.expert: d for d in ctx.descriptions()}.get(k)
title = ctx.expert_titles()[k]
idx = scope.index
s = ctx.scores.subset(idx)
summary = ctx.expert_summaries(scope)[k]
st.caption(f"Every number and chart below is on the **{ui.md(scope.describe())}**.")
if not scope.n:
    st.warning("No pair in this subset: pick another one.")
    st.stop()

# ----------------------------------------------------------------------------- its numbers
m = st.columns(4)
lead = EXPERT_STATS["top_accuracy"]
m[0].metric(
    f"{lead.label} ({summary.n_top} pairs)",
    ui.fmt(summary.top_accuracy),
    help=f"{lead.definition} On the {scope.label}.",
)
m[1].metric(
    EXPERT_STATS["top_share"].label,
    f"{summary.top_share:.1%}",
    help=f"{EXPERT_STATS['top_share'].definition} {summary.n_top} of {summary.n_pairs} pairs.",
)
m[2].metric(
    EXPERT_STATS["own_top_accuracy"].label,
    ui.fmt(summary.own_top_accuracy),
    help=EXPERT_STATS["own_top_accuracy"].definition,
)
m[3].metric(
    f"Pairs it takes part in (of {summary.n_pairs})",
    f"{summary.n_routed}",
    help=f"Pairs with a non-zero routing weight for this expert (top-{ctx.model.config.top_k} routing). "
    f"{EXPERT_STATS['mean_weight'].definition} Here: {summary.mean_weight:.3f}.",
)
ui.below_chance_caption(summary.top_accuracy, summary.n_top, "its pairs")

# ----------------------------------------------------------------------------- its name
with st.expander(f"Name {title}", expanded=not ctx.names[k]):
    read_only = ctx.ws.read_only
    with st.form(f"name_form_{k}", border=False):
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        new_name = c1.text_input(
            "Name",
            value=ctx.names[k],
            max_chars=MAX_EXPERT_NAME,
            key=f"detail_name_{k}",
            placeholder=f"a short name, e.g. “{desc.prompt_keywords[0][0]}”"
            if desc is not None and desc.prompt_keywords
            else "a short name, e.g. “brevity”",
            help="Stored with the model (its config.json; the weights are not touched) and shown on every "
            "page, in `moe-reward expert` and in the report. Empty removes the name.",
            disabled=bool(read_only),
        )
        save = c2.form_submit_button("Save name", disabled=bool(read_only))
    if read_only:
        st.caption(f"Names cannot be saved: {ui.md(read_only)}.")
    if save:
        try:
            set_expert_name(ctx.model_dir, int(k), new_name)
        except (ValueError, OSError) as exc:
            st.error(ui.md(exc))
        else:
            st.session_state["detail_named"] = (int(k), new_name.strip())
            st.rerun()
named = st.session_state.pop("detail_named", None)
if named is not None:
    st.success(
        f"E{named[0]} is now named “{ui.md(named[1])}”." if named[1] else f"E{named[0]} has no name now."
    )

# ----------------------------------------------------------------------------- description
with st.container(border=True):
    st.markdown("**Description**")
    if desc is None:
        st.caption("No description available (moe_reward.evaluate.describe).")
    else:
        st.caption(f"Drawn from all {len(ctx.features)} pairs of the file (a description, not a score).")
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

# ----------------------------------------------------------------------------- its groups
group_rows = expert_groups(ctx.scores, groups, k, idx, order=ui.natural_sorted(set(groups[idx])))
if len(group_rows) > 1:
    spec = charts.category_bars(
        [r.group for r in group_rows],
        {"pairs": [r.n_top for r in group_rows]},
        colors={"pairs": color},
        title=f"Groups of the {summary.n_top} pairs whose top expert is {title} ({scope.label})",
        x_title="group",
        y_title="pairs",
        integer=True,
        height=300,
    )
    ui.vega(spec, key="detail_contingency")
    st.caption("The model's specialization diagnostics (probe NMI, oracle routing) are on the Overview.")

cols_shown = ["id", "group", "user", "prompt", "chosen", "rejected", "margin", "correct", "top_expert"]
left, right = st.columns(2)
with left:
    st.markdown("**Highest routing weight**")
    top, big = expert_pairs(ctx.scores, k, idx, top=10)
    t = ctx.pair_table(top, routing=False)[cols_shown]
    t.insert(1, "weight", ctx.scores.routing[top, k].round(4))
    ui.table(t)
with right:
    st.markdown("**Largest margins of this expert**")
    t = ctx.pair_table(big, routing=False)[cols_shown]
    t.insert(1, "expert margin", ctx.scores.expert_margins[big, k].round(4))
    ui.table(t)

routed = s.routing[:, k] > 0
left, right = st.columns(2)
with left:
    em = s.expert_margins[:, k]
    spec = charts.histogram(
        {f"E{k} · routed here": em[routed], "not routed here": em[~routed]},
        {f"E{k} · routed here": color, "not routed here": NEUTRAL},
        40,
        title=f"Margin distribution ({scope.n} pairs)",
        x_title="expert margin (chosen − rejected)",
        rule=0.0,
    )
    ui.vega(spec, key="detail_hist")
with right:
    own, leads = "its own margin, all pairs of the group", f"the model, on the group's pairs E{k} leads"
    spec = charts.category_bars(
        [r.group for r in group_rows],
        {own: [r.own_accuracy for r in group_rows], leads: [r.top_accuracy for r in group_rows]},
        colors={own: NEUTRAL, leads: color},
        counts={leads: [r.n_top for r in group_rows]},
        title="Accuracy per group",
        x_title="group",
        y_title="accuracy",
        y_domain=(0, 1),
    )
    ui.vega(spec, key="detail_group")

agree = expert_agreement(s)[k]
others = [j for j in range(ctx.k) if j != k]
if others:
    titles = ctx.expert_titles()
    frame = pd.DataFrame(
        {
            "expert": [names[j] for j in others],
            "title": [titles[j] for j in others],
            "agreement": [float(agree[j]) for j in others],
        }
    )
    frame = frame.sort_values("agreement", ascending=False)
    spec = charts.category_bars(
        list(frame["title"]),
        {"agreement": list(frame["agreement"])},
        bar_colors=[ui.expert_color(int(e[1:])) for e in frame["expert"]],
        title=f"Agreement of {title} with the other experts (share of the {scope.n} pairs with the same winner)",
        x_title="expert",
        y_title="share of pairs on which both pick the same response",
        y_domain=(0, 1),
        horizontal=True,
        rule=0.5,
        height=130 + 32 * len(others),  # (a Vega-Lite height in Streamlit holds the title and axes)
    )
    ui.vega(spec, key="detail_agree")
    st.caption(
        f"Agrees most with {ui.md(frame.loc[frame.agreement.idxmax(), 'title'])}, "
        f"disagrees most with {ui.md(frame.loc[frame.agreement.idxmin(), 'title'])}."
    )

# ----------------------------------------------------------------------------- what-if
st.subheader("What if: edit one of its pairs")
candidates = list(dict.fromkeys([*top.tolist(), *big.tolist()]))
pair_ids = ctx.features.ids
row = st.selectbox(
    "Pair",
    candidates,
    format_func=lambda i: f"{pair_ids[i]} · {ctx.features.pairs[i].prompt[:80]}",
    key=f"detail_whatif_pair_{k}_{scope_key}",
    help="One of the pairs above (highest routing weight, then largest margins).",
)
if row is not None:
    ui.what_if_editor(ctx, int(row), key=f"detail_whatif_{k}")
