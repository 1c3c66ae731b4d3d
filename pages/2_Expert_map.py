"""Expert map: a 2-D map of the pairs, coloured by routing or outcome; select regions to inspect them."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import ui_common as ui
from moe_reward.projection import METRICS, ProjectionParams, is_cached, project

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC"]

ui.page_header("Expert map", "Each point is a pair, placed by its prompt embedding (what the router sees) or by its "
               "preference direction. Drag a box or lasso to list the pairs inside.")
ctx = ui.context()
if ctx is None:
    st.stop()

s, names = ctx.scores, ctx.expert_names()
key_parts = (ctx.model_fid, ctx.data_fid)
proj_dir = ctx.ws.projections_dir

c1, c2, c3 = st.columns([1, 1, 2])
method = c1.radio("Projection", ["PCA", "UMAP"], horizontal=True, key="map_method")
source = c2.radio("Embedding", ["prompt", "pair"], horizontal=True, key="map_source",
                  help="prompt: the router's input. pair: the direction chosen − rejected.")
color_by = c3.radio("Colour by", ["top expert", "group", "reward margin", "correct"], horizontal=True, key="map_color")

params = ProjectionParams(method="pca", source=source)
if method == "UMAP":
    with st.form("umap_params"):
        u1, u2, u3, u4 = st.columns(4)
        n_neighbors = u1.number_input("n_neighbors", 2, 200, 15, key="umap_nn")
        min_dist = u2.number_input("min_dist", 0.0, 1.0, 0.1, 0.05, key="umap_md")
        metric = u3.selectbox("metric", METRICS, key="umap_metric")
        seed = u4.number_input("seed", 0, 10_000, 0, key="umap_seed")
        requested = st.form_submit_button("Compute UMAP", type="primary")
    params = ProjectionParams("umap", source, int(n_neighbors), float(min_dist), metric, int(seed))
    if not is_cached(ctx.features, params, proj_dir, key_parts):
        if not requested:
            st.info("UMAP for these parameters is not computed yet (the first run takes about a minute: "
                    "import and compilation). Press **Compute UMAP**; showing PCA meanwhile.")
            params = ProjectionParams(method="pca", source=source)
        else:
            bar = st.progress(0.0, text="starting UMAP")
            project(ctx.features, params, proj_dir, key_parts,
                    progress=lambda msg, frac: bar.progress(min(frac, 1.0), text=msg))
            bar.empty()


@st.cache_resource(show_spinner=False, max_entries=16)
def coords_for(_features, params: ProjectionParams, key_parts: tuple, cache_dir: str) -> np.ndarray:
    return project(_features, params, cache_dir, key_parts).coords


xy = coords_for(ctx.features, params, key_parts, str(proj_dir))
pairs = ctx.features.pairs
n = len(pairs)
hover = [ui.chart(f"{p.id} · {p.group or ''} · {p.prompt[:80]}") for p in pairs]  # escaped: plotly reads HTML
row = np.arange(n)

fig = go.Figure()
if color_by in ("top expert", "group", "correct"):
    if color_by == "top expert":
        cats = np.array([names[e] for e in s.top_expert])
    elif color_by == "group":
        cats = ctx.groups
    else:
        cats = np.where(s.correct, "correct", "incorrect")
    for j, cat in enumerate(sorted(set(cats))):
        m = cats == cat
        fig.add_trace(go.Scattergl(x=xy[m, 0], y=xy[m, 1], mode="markers", name=ui.chart(cat), customdata=row[m],
                                   text=[hover[i] for i in row[m]], hovertemplate="%{text}<extra></extra>",
                                   marker=dict(size=7, opacity=0.8, color=PALETTE[j % len(PALETTE)])))
else:
    lim = float(np.percentile(np.abs(s.margin), 98)) or 1.0
    fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", name="pairs", customdata=row, text=hover,
                               hovertemplate="%{text}<br>margin %{marker.color:.3f}<extra></extra>",
                               marker=dict(size=7, color=s.margin, colorscale="RdBu", cmin=-lim, cmax=lim,
                                           colorbar=dict(title="margin"))))
fig.update_layout(height=560, margin=dict(l=10, r=10, t=30, b=10), dragmode="select",
                  title=f"{params.method.upper()} of {source} embeddings ({n} pairs)", legend=dict(itemsizing="constant"))
event = st.plotly_chart(fig, width="stretch", key="expert_map", on_select="rerun", selection_mode=("box", "lasso"))

points = (event or {}).get("selection", {}).get("points", []) if event else []
selected = sorted({int(p["customdata"] if not isinstance(p["customdata"], list) else p["customdata"][0])
                   for p in points if p.get("customdata") is not None})
st.subheader(f"Selection: {len(selected)} pairs")
if not selected:
    st.caption("Drag a box or a lasso on the map to select pairs; their routing weights appear here.")
    st.stop()
table = ctx.pair_table(np.array(selected))
st.dataframe(table, hide_index=True, width="stretch", height=360)
c1, c2 = st.columns(2)
c1.download_button("Download selection (CSV)", table.to_csv(index=False).encode("utf-8"), "selection.csv",
                   "text/csv", key="dl_csv")
jsonl = "\n".join(json.dumps({**pairs[i].to_dict(), "routing": s.routing[i].round(6).tolist(),
                              "margin": float(s.margin[i])}, ensure_ascii=False) for i in selected)
c2.download_button("Download selection (JSONL)", (jsonl + "\n").encode("utf-8"), "selection.jsonl",
                   "application/jsonl", key="dl_jsonl")
