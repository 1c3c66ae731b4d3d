"""Compare models: two saved models on the same pairs, their routing, and their personalization curves."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import ui_common as ui
from moe_reward.app import charts
from moe_reward.core.csvsafe import frame_csv
from moe_reward.evaluate.compare import comparison_scope
from moe_reward.evaluate.metrics import Evaluation, disagreements, evaluate, score_pairs

ui.page_header(
    "Compare models",
    "Two models on the dataset picked in the sidebar: accuracy, per-group accuracy, "
    "routing NMI, the pairs they disagree on, and personalization curves from experiments.",
)
ctx = ui.require_context()

models = ctx.ws.list_models()
others = [m for m in models if m != ctx.model_name]  # never a model with itself
if not others:
    st.info(
        f"{ui.md(ctx.model_name)} is the only model in the workspace: train another one in **Data & training** "
        "(or `moe-reward train`) to compare them."
    )
    st.stop()
ui.init_state("cmp_other", "other", str, others)
if st.session_state.get("cmp_other") not in others:
    st.session_state["cmp_other"] = others[0]
other = st.selectbox("Compare with", others, key="cmp_other")
ui.share_view(other=other)
b_dir = ctx.ws.model_path(other)
b_model = ui.load_model(b_dir)
b_features = ui.load_features(ctx.ws, ctx.data.path, ui.backbone_spec(b_model))
if b_features.dim != b_model.config.input_dim or [p.id for p in b_features.pairs] != ctx.features.ids:
    st.error(
        f"{ui.md(other)} cannot be scored on {ui.md(ctx.data.label)} (different backbone or input width)."
    )
    st.stop()


@st.cache_resource(show_spinner=False, max_entries=32)
def scored_subset(
    model_fid: str, data_fid: str, scope: str, _model, _features, _scores, _index
) -> Evaluation:
    return evaluate(_model, _features.subset(_index), _scores.subset(_index))


@st.cache_resource(show_spinner=False, max_entries=16)
def scored(model_fid: str, data_fid: str, _model, _features):
    s = score_pairs(_model, _features)
    return s, evaluate(_model, _features, s)


a_scores = ctx.scores
b_scores, _ = scored(ui.model_id(b_dir), ctx.data_fid, b_model, b_features)
label_a, label_b = f"A: {ctx.model_name}", f"B: {other}"


@st.cache_resource(show_spinner=False, max_entries=16)
def relation_of(model_fid: str, data_fid: str, model_dir: str, _features):
    return ui.summary.relate(model_dir, _features)


# One subset for both models: the page model's held-out test split (or the pairs it never trained on),
# less any pair the other model trained on. Without a saved split that cannot be told: all pairs, said so.
rel_a = relation_of(ctx.model_fid, ctx.data_fid, str(ctx.model_dir), ctx.features)
rel_b = relation_of(ui.model_id(b_dir), ctx.data_fid, str(b_dir), ctx.features)
scope, warning = comparison_scope(
    rel_a, rel_b, len(ctx.features), ctx.slice_rows, ctx.slice.name if ctx.slice is not None else ""
)
if warning:
    st.warning(warning)
st.caption(f"Both models, every number and chart below: the **{ui.md(scope.describe())}**.")
if not scope.n:
    st.warning("No pair to compare on.")
    st.stop()
scope_id = f"{scope.key}|{scope.label}|{scope.n}"
a_eval = scored_subset(ctx.model_fid, ctx.data_fid, scope_id, ctx.model, ctx.features, a_scores, scope.index)
b_eval = scored_subset(
    ui.model_id(b_dir), ctx.data_fid, scope_id, b_model, ctx.features, b_scores, scope.index
)

rows = []
for label, model, ev in ((label_a, ctx.model, a_eval), (label_b, b_model, b_eval)):
    v = ui.summary.headline_values(ev)
    rows.append(
        {
            "model": label,
            "kind": model.describe(),
            "accuracy": v["accuracy"],
            "routing NMI": v["routing_nmi"],
            "routing entropy": v["routing_entropy_normalized"],
            "active experts / pair": v["active_experts_per_pair"],
        }
    )
ui.table(pd.DataFrame(rows).round(4))
st.caption(
    " ".join(
        f"{s.label}: {s.definition}"
        for s in (ui.summary.STATS[key] for key in ("accuracy", "routing_nmi", "routing_entropy_normalized"))
    )
)
for r in rows:
    ui.below_chance_caption(r["accuracy"], scope.n, f"{r['model']}'s pairs")

groups = sorted(set(a_eval["per_group"]) | set(b_eval["per_group"]))
if groups:
    spec = charts.category_bars(
        groups,
        {
            label: [ev["per_group"].get(g, {}).get("accuracy") for g in groups]
            for label, ev in ((label_a, a_eval), (label_b, b_eval))
        },
        colors={label_a: "#4C78A8", label_b: "#F58518"},
        title=f"Accuracy per group ({scope.describe()})",
        x_title="group",
        y_title="accuracy",
        y_domain=(0, 1),
    )
    ui.vega(spec, key="cmp_groups")

st.subheader("Personalization curves")
experiments = ctx.ws.list_experiments()
if not experiments:
    st.caption(
        f"No experiment results yet: run `moe-reward experiment` with its output under {ctx.ws.experiments_dir}."
    )
else:
    labels = [p.parent.name for p in experiments]
    pick = st.selectbox("Experiment", labels, key="cmp_experiment")
    try:
        results = json.loads(experiments[labels.index(pick)].read_text())
    except (OSError, ValueError) as exc:
        st.error(f"Could not read {ui.md(pick)}/results.json: {ui.md(exc)}")
        results = {}
    kinds = {ctx.model.config.kind, b_model.config.kind}
    xs: dict[str, list[int]] = {}
    ys: dict[str, list[float]] = {}
    sds: dict[str, list[float]] = {}
    widths: dict[str, float] = {}
    for kind, res in results.get("models", {}).items():
        for adapter, curve in res.get("personalization", {}).items():
            name = f"{kind} · {adapter}"
            ks = sorted(curve, key=int)
            xs[name] = [int(k) for k in ks]
            ys[name] = [curve[k]["mean"] for k in ks]
            sds[name] = [curve[k]["sd"] or 0 for k in ks]
            widths[name] = 3 if kind in kinds else 1
    oracle = {k: v for k, v in results.get("oracle", {}).items() if k.isdigit()}
    dashed = []
    if oracle:
        name = "oracle (user-only head)"
        ks = sorted(oracle, key=int)
        xs[name], ys[name] = [int(k) for k in ks], [oracle[k]["mean"] for k in ks]
        widths[name], dashed = 2, [name]
    spec = charts.lines(
        [],
        ys,
        xs=xs,
        errors=sds,
        widths=widths,
        dashed=dashed,
        colors={name: "black" for name in dashed} or None,
        title=f"{pick}: accuracy after k labels (mean ± sd over seeds)",
        x_title="labels from the user (k)",
        y_title="accuracy on the user's held-out pairs",
        height=400,
    )
    ui.vega(spec, key="cmp_curves")
    st.caption("Thick lines: the kinds of the two models compared. Mean ± sd over seeds.")

st.subheader("Pairs they disagree on")
a_sub, b_sub = a_scores.subset(scope.index), b_scores.subset(scope.index)
idx = scope.index[disagreements(a_sub, b_sub, limit=200)]
st.caption(
    f"{int((a_sub.correct != b_sub.correct).sum())} of the {scope.describe()} where exactly one model picks "
    "the chosen response; the most confident disagreements first."
)
if len(idx):
    table = ctx.pair_table(idx, routing=False)[["id", "group", "user", "prompt", "chosen", "rejected"]]
    table.insert(1, "A correct", a_scores.correct[idx])
    table.insert(2, "A P(chosen)", a_scores.prob_chosen[idx].round(3))
    table.insert(3, "B P(chosen)", b_scores.prob_chosen[idx].round(3))
    b_names = list(b_model.config.expert_names or [])
    table.insert(4, "A top expert", [ui.expert_title(e, ctx.names) for e in a_scores.top_expert[idx]])
    table.insert(5, "B top expert", [ui.expert_title(e, b_names) for e in b_scores.top_expert[idx]])
    ui.table(table, max_rows=12)
    st.download_button(
        "Download (CSV)",
        frame_csv(table),  # safe to open in a spreadsheet
        "disagreements.csv",
        "text/csv",
        key="cmp_dl",
    )
