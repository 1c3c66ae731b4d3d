"""Compare models: two saved models on the same pairs, their routing, and their personalization curves."""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import ui_common as ui
from moe_reward.evaluate.metrics import disagreements, evaluate, score_pairs

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
def scored_subset(model_fid: str, data_fid: str, scope: str, _model, _features, _scores, _index) -> dict:
    return evaluate(_model, _features.subset(_index), _scores.subset(_index))


@st.cache_resource(show_spinner=False, max_entries=16)
def scored(model_fid: str, data_fid: str, _model, _features):
    s = score_pairs(_model, _features)
    return s, evaluate(_model, _features, s)


a_scores, a_eval = ctx.scores, ctx.evaluation
b_scores, b_eval = scored(ui.file_id(b_dir), ctx.data_fid, b_model, b_features)
label_a, label_b = f"A: {ctx.model_name}", f"B: {other}"


@st.cache_resource(show_spinner=False, max_entries=16)
def relation_of(model_fid: str, data_fid: str, model_dir: str, _features):
    return ui.summary.relate(model_dir, _features)


# Each model on its own held-out pairs of this file when it has some (its test split), else on all pairs.
rows = []
for label, model, mdir, scores_ in (
    (label_a, ctx.model, ctx.model_dir, a_scores),
    (label_b, b_model, b_dir, b_scores),
):
    rel = relation_of(ui.file_id(mdir), ctx.data_fid, str(mdir), ctx.features)
    scope = rel.headline
    ev = scored_subset(ui.file_id(mdir), ctx.data_fid, scope.key, model, ctx.features, scores_, scope.index)
    v = ui.summary.headline_values(ev)
    rows.append(
        {
            "model": label,
            "kind": model.describe(),
            "pairs of": scope.label,
            "pairs": scope.n,
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
if len({r["pairs of"] for r in rows}) > 1 or len({r["pairs"] for r in rows}) > 1:
    st.caption(
        "The two models are on different pairs of this file (each on its own held-out test split); the "
        "charts below use all pairs of the file for both."
    )

groups = sorted(set(a_eval["per_group"]) | set(b_eval["per_group"]))
if groups:
    fig = go.Figure(
        [
            go.Bar(
                x=[ui.chart(g) for g in groups],
                y=[ev["per_group"].get(g, {}).get("accuracy") for g in groups],
                name=label,
            )
            for label, ev in ((label_a, a_eval), (label_b, b_eval))
        ]
    )
    fig.update_layout(
        title=f"Accuracy per group (all {len(ctx.features)} pairs of the file)",
        barmode="group",
        yaxis_range=[0, 1],
        height=340,
        margin=dict(t=40, b=10),
        xaxis_title="group",
        yaxis_title="accuracy",
    )
    st.plotly_chart(fig, width="stretch", key="cmp_groups")

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
    fig = go.Figure()
    for kind, res in results.get("models", {}).items():
        for adapter, curve in res.get("personalization", {}).items():
            ks = sorted(curve, key=int)
            mean = [curve[k]["mean"] for k in ks]
            sd = [curve[k]["sd"] or 0 for k in ks]
            fig.add_trace(
                go.Scatter(
                    x=[int(k) for k in ks],
                    y=mean,
                    error_y=dict(type="data", array=sd, visible=True),
                    mode="lines+markers",
                    name=ui.chart(f"{kind} · {adapter}"),
                    line=dict(width=3 if kind in kinds else 1),
                )
            )
    oracle = {k: v for k, v in results.get("oracle", {}).items() if k.isdigit()}
    if oracle:
        ks = sorted(oracle, key=int)
        fig.add_trace(
            go.Scatter(
                x=[int(k) for k in ks],
                y=[oracle[k]["mean"] for k in ks],
                mode="lines",
                name="oracle (user-only head)",
                line=dict(dash="dash", color="black"),
            )
        )
    fig.update_layout(
        xaxis_title="labels from the user (k)",
        yaxis_title="accuracy on the user's held-out pairs",
        height=400,
        margin=dict(t=30, b=10),
    )
    st.plotly_chart(fig, width="stretch", key="cmp_curves")
    st.caption("Thick lines: the kinds of the two models compared. Mean ± sd over seeds.")

st.subheader("Pairs they disagree on")
idx = disagreements(a_scores, b_scores, limit=200)
st.caption(
    f"{int((a_scores.correct != b_scores.correct).sum())} pairs where exactly one model picks the chosen "
    "response; the most confident disagreements first."
)
if len(idx):
    table = ctx.pair_table(idx, routing=False)[["id", "group", "user", "prompt", "chosen", "rejected"]]
    table.insert(1, "A correct", a_scores.correct[idx])
    table.insert(2, "A P(chosen)", a_scores.prob_chosen[idx].round(3))
    table.insert(3, "B P(chosen)", b_scores.prob_chosen[idx].round(3))
    table.insert(4, "A top expert", [f"E{e}" for e in a_scores.top_expert[idx]])
    table.insert(5, "B top expert", [f"E{e}" for e in b_scores.top_expert[idx]])
    ui.table(table, max_rows=12)
    st.download_button(
        "Download (CSV)",
        table.to_csv(index=False).encode("utf-8"),
        "disagreements.csv",
        "text/csv",
        key="cmp_dl",
    )
