"""Expert map: a 2-D map of the pairs, of what the model sees (routing, expert margins) or of the text
embeddings, coloured by expert, group, margin or correctness; select a region to list and export its pairs.

Scale: at most `cap` points are drawn (a stratified sample, every expert kept visible), over a density
layer of all of them; a box or lasso selects among *all* pairs on the server, and the table pages through
them. Non-linear layouts (UMAP) run as background jobs (moe_reward.app.jobs) with progress and an estimate.
"""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

import ui_common as ui
from moe_reward.app import charts, jobs, map_chart
from moe_reward.app.colors import NEUTRAL, expert_symbol
from moe_reward.core.csvsafe import frame_csv
from moe_reward.evaluate.projection import (
    METRICS,
    ProjectionParams,
    anchor_positions,
    density_grid,
    draw_sample,
    estimate_seconds,
    is_cached,
    points_in_box,
    points_in_polygon,
    project,
    umap_is_warm,
    umap_path,
    warm_up_umap,
)
from moe_reward.evaluate.search import narrow_selection

SOURCES = {
    "router": "routing (router logits)",
    "margins": "expert margins",
    "prompt": "prompt text",
    "pair": "preference direction",
}
LAYOUTS = {"anchors": "experts as anchors", "pca": "PCA", "umap": "UMAP"}
COLOURS = ["top expert", "group", "reward margin", "correct"]
DEFAULT_CAP = 20_000
MAX_CAP = 1_000_000
TABLE_PAGE = 500
MAP_HEIGHT = 640

ui.page_header(
    "Expert map",
    "Each point is a pair. By default it is placed by how the router routes its prompt, "
    "so that each expert is a region; other views place it by how the experts judge it or by its text. "
    "Pick the box or lasso tool at the map's top right and drag to list the pairs inside.",
)
ctx = ui.require_context()

s, names = ctx.scores, ctx.expert_names()
n, k_experts = len(ctx.features), ctx.k
routed_model = ctx.model.config.kind in ("sparse", "dense", "micro")
proj_dir = ctx.ws.projections_dir
parts = ui.map_key(ctx)

# ----------------------------------------------------------------------------- controls (restored from a link)
source_options = list(SOURCES) if routed_model else ["margins", "prompt", "pair"]
ui.init_state("map_source", "view", str, source_options)
ui.init_state("map_layout", "layout", str, list(LAYOUTS))
ui.init_state("map_color", "color", str, COLOURS)
ui.init_state("map_expert", "expert", int, list(range(k_experts)))
if (
    "map_expert" not in st.session_state
    and isinstance(st.session_state.get(ui.SHARED_EXPERT), int)
    and st.session_state[ui.SHARED_EXPERT] < k_experts
):
    st.session_state["map_expert"] = st.session_state[ui.SHARED_EXPERT]
st.session_state.setdefault("map_source", source_options[0])
c1, c2, c3, c4 = st.columns([2, 2, 3, 1])
source = c1.radio(
    "Show",
    source_options,
    format_func=SOURCES.get,
    horizontal=True,
    key="map_source",
    help="routing: the router's logits (experts appear as regions). expert margins: how each expert "
    "judges the pair. prompt text: the prompt's embedding (its topic). preference direction: "
    "the text embedding of chosen − rejected.",
)
layouts = ["anchors", "pca", "umap"] if source == "router" else ["pca", "umap"]
if st.session_state.get("map_layout") not in layouts:
    st.session_state["map_layout"] = layouts[0]
layout = c2.radio(
    "Layout",
    layouts,
    format_func=LAYOUTS.get,
    horizontal=True,
    key="map_layout",
    help="experts as anchors: each expert a point on a circle, each pair at the mix of its routing "
    "probabilities (instant). PCA: instant. UMAP: non-linear, computed in the background.",
)
color_by = c3.radio("Colour by", COLOURS, horizontal=True, key="map_color")
highlight = c4.selectbox(
    "Expert",
    [None, *range(k_experts)],
    key="map_expert",
    format_func=lambda e: "all" if e is None else ctx.expert_titles()[e],
    help="Bring one expert's pairs forward",
)
if highlight is not None:
    st.session_state[ui.SHARED_EXPERT] = int(highlight)

ui.init_state("map_cap", "cap", int)
st.session_state["map_cap"] = min(max(int(st.session_state.get("map_cap", DEFAULT_CAP)), 1000), MAX_CAP)
with st.expander("Drawing and UMAP settings"):
    d1, d2, d3, d4, d5 = st.columns(5)
    cap = int(
        d1.number_input(
            "Points drawn at most",
            1000,
            MAX_CAP,
            step=1000,
            key="map_cap",
            help="A stratified sample of this size is drawn over a density layer of all pairs; "
            "selections always cover all pairs.",
        )
    )
    n_neighbors = int(d2.number_input("UMAP n_neighbors", 2, 200, 15, key="umap_nn"))
    min_dist = float(d3.number_input("UMAP min_dist", 0.0, 1.0, 0.1, 0.05, key="umap_md"))
    metric = d4.selectbox(
        "UMAP metric",
        METRICS,
        index=METRICS.index("euclidean" if source in ("router", "margins") else "cosine"),
        key=f"umap_metric_{source}",
    )
    seed = int(d5.number_input("UMAP seed", 0, 10_000, 0, key="umap_seed"))

query, found = ui.map_search(ctx, "map_search")  # matches are ringed on the map and selected below
wanted = ProjectionParams(layout, source, n_neighbors, min_dist, metric, seed)
params, note = wanted, None
warmup_key = ui.umap_warmup_key(n)  # a small map compiles only the code that small maps run
warmup = jobs.get(warmup_key)
if (
    layout == "umap" and not umap_is_warm(n) and warmup is None
):  # compile it while the user sets the parameters
    warmup = jobs.submit(
        warmup_key,
        lambda report, n=n: warm_up_umap(report, proj_dir, n),
        f"compiling UMAP for {'small' if umap_path(n) == 'exact' else 'large'} maps (once per server)",
    )
if layout == "umap" and not is_cached(ctx.features, wanted, proj_dir, parts):
    params = ProjectionParams("anchors" if source == "router" else "pca", source)
    job_key = ui.projection_job_key(ctx, wanted)
    job = jobs.get(job_key)
    if job is not None and job.status == jobs.FAILED:
        st.error(f"UMAP failed: {ui.md(job.error)}")
        jobs.forget(job_key)
        job = None
    if job is None:
        dim = {"router": k_experts, "margins": k_experts}.get(source, ctx.features.dim)
        compiling = warmup.elapsed if warmup is not None and warmup.active else 0.0
        eta = estimate_seconds(wanted, n, dim, proj_dir, compiling_for=compiling)
        st.info(
            f"UMAP of the {SOURCES[source]} for these settings is not computed yet: about {eta:.0f} s here "
            f"({n} pairs), in the background. Showing {LAYOUTS[params.method]} meanwhile."
        )
        if st.button("Compute UMAP", type="primary", key="umap_go"):
            job = ui.submit_projection(ctx, wanted)
    if job is not None and job.active:

        @st.fragment(run_every=1.0)
        def umap_progress(key: str) -> None:
            current = jobs.get(key)
            if current is None or current.status == jobs.DONE:
                st.rerun()  # the whole page, now with the UMAP from the cache
            elif current.status == jobs.FAILED:
                st.rerun()
            else:
                ui.job_progress(current, "UMAP")

        umap_progress(job_key)
        note = f"Showing {LAYOUTS[params.method]} until UMAP is ready; the page stays usable."


@st.cache_resource(show_spinner=False, max_entries=16)
def coords_for(_features, _scores, params: ProjectionParams, key_parts: tuple, cache_dir: str) -> np.ndarray:
    return project(_features, params, cache_dir, key_parts, scores=_scores).coords


@st.cache_resource(show_spinner=False, max_entries=8)
def hover_texts(data_fid: str, _pairs) -> list[str]:
    return [f"{p.id} · {p.group or ''} · {p.prompt[:70]}" for p in _pairs]  # text: the tooltip escapes HTML


@st.cache_resource(show_spinner=False, max_entries=8)
def margin_labels(model_fid: str, data_fid: str, _hover: list[str], _margin: np.ndarray) -> list[str]:
    return [f"{h} · margin {m:+.3f}" for h, m in zip(_hover, _margin, strict=True)]


@st.cache_resource(show_spinner=False, max_entries=16)
def categories(model_fid: str, data_fid: str, color_by: str, _ctx) -> np.ndarray:
    if color_by == "top expert":
        return np.array([f"E{e}" for e in _ctx.scores.top_expert])
    if color_by == "group":
        return _ctx.groups
    if color_by == "correct":
        return np.where(_ctx.scores.correct, "correct", "incorrect")
    return np.array([f"E{e}" for e in _ctx.scores.top_expert])  # margin colouring samples by expert


def legend_order(layers: list[map_chart.Points], drawn: np.ndarray) -> list[str]:
    """Legend entries: the categories in natural order ('E2' before 'E10'), then rings and the pair."""
    names = [p.name for p in layers]
    cats = [c for c in ui.natural_sorted(set(drawn)) if c in names]
    return cats + [name for name in names if name not in cats]


@st.fragment
def map_and_selection() -> None:
    """The map, the selected pair and the linked table: a box, a lasso or a row click reruns only this
    (the map's controls above rerun the page)."""
    xy = coords_for(ctx.features, s, params, parts, str(proj_dir))
    if note:
        st.caption(note)

    # ----------------------------------------------------------------------------- selection state (all pairs)
    view_id = f"{params.method}-{params.source}-{params.n_neighbors}-{params.min_dist}-{params.metric}-{params.seed}"
    pair_ids = ctx.features.ids
    ui.init_state("map_box", "box", lambda v: [float(x) for x in str(v).split(",")][:4])
    ui.init_state("map_pair", "pair", str)
    if (
        "map_box" in st.session_state
        and len(st.session_state["map_box"]) == 4
        and st.session_state.get("map_box_view") is None
    ):
        st.session_state["map_box_view"] = view_id  # restored from a link: meant for this view
    selected_pair = st.session_state.get("map_pair")
    sel_row = pair_ids.index(selected_pair) if selected_pair in pair_ids else None

    cats = categories(ctx.model_fid, ctx.data_fid, color_by, ctx)
    draw = draw_sample(cats, cap, seed=0, keep=None if sel_row is None else np.array([sel_row]))
    hover = hover_texts(ctx.data_fid, ctx.features.pairs)
    big = len(draw) < n or n > 5000
    size, opacity = (4, 0.45) if n > 20_000 else (5, 0.6) if n > 2_000 else (7, 0.8)

    layers: list[map_chart.Points] = []
    lim = 1.0  # the margin scale's limit (reward margin colouring)
    if color_by == "reward margin":
        lim = float(np.percentile(np.abs(s.margin), 98)) or 1.0
        labels = margin_labels(ctx.model_fid, ctx.data_fid, hover, s.margin)
        layers.append(
            map_chart.Points("pairs", draw, size=size, opacity=opacity, labels=labels, values=s.margin)
        )
    else:
        palette = ui.category_colors(set(cats))
        order = ui.natural_sorted(set(cats[draw]))
        sizes = {c: int((cats[draw] == c).sum()) for c in order}
        by_size = sorted(order, key=lambda c: -sizes[c])  # large groups first: small ones stay visible on top
        if highlight is not None and color_by == "top expert":  # the one brought forward drawn last
            by_size.sort(key=lambda c: c == f"E{highlight}")
        for cat in by_size:
            faded = highlight is not None and color_by == "top expert" and cat != f"E{highlight}"
            layers.append(
                map_chart.Points(
                    cat,
                    draw[cats[draw] == cat],
                    color=NEUTRAL if faded else palette[cat],
                    symbol=expert_symbol(int(cat[1:]))
                    if cat.startswith("E") and cat[1:].isdigit()
                    else "circle",
                    size=size,
                    opacity=0.25 if faded else opacity,
                    labels=hover,
                )
            )
    if highlight is not None and color_by != "top expert":
        layers.append(
            map_chart.Points(
                f"top expert E{highlight}",
                draw[s.top_expert[draw] == highlight],
                color=ui.expert_color(highlight),
                size=size + 5,
                ring=True,
            )
        )
    if found is not None and len(found):
        layers.append(
            map_chart.Points(f"search: {query}"[:60], found[:cap], color="#000000", size=size + 6, ring=True)
        )
    elif ctx.slice is not None and ctx.slice_rows is not None and len(ctx.slice_rows):
        layers.append(
            map_chart.Points(
                f"slice {ctx.slice.name}"[:60],
                ctx.slice_rows[:cap],
                color="#000000",
                size=size + 6,
                ring=True,
            )
        )
    if sel_row is not None:
        layers.append(
            map_chart.Points(
                f"pair {selected_pair}",
                np.array([sel_row]),
                color="#FFD700",
                symbol=map_chart.STAR,
                size=22,
                opacity=1.0,
            )
        )
    axis = {
        "anchors": ("← routing mix →", "← routing mix →"),
        "pca": ("PC 1", "PC 2"),
        "umap": ("UMAP 1", "UMAP 2"),
    }
    drawn = f"{len(draw)} of {n} pairs drawn over the density of all" if len(draw) < n else f"{n} pairs"
    option = map_chart.expert_map(
        xy,
        layers,
        title=f"{params.title()} ({drawn})",
        subtitle=f"colour: {color_by} · pick the box or lasso tool (top right), then drag to select",
        axes=axis[params.method],
        density=map_chart.Density(*density_grid(xy, bins=150)) if big else None,
        scale=("margin", lim) if color_by == "reward margin" else None,
        anchors=map_chart.Anchors(
            anchor_positions(k_experts) * 1.08, names, [ui.expert_color(e) for e in range(k_experts)]
        )
        if params.method == "anchors"
        else None,
        square=params.method == "anchors",
        legend=legend_order(layers, cats[draw]),  # experts and groups in numeric order, then the marks
        height=MAP_HEIGHT,
    )
    event = st.echarts_chart(option, height=MAP_HEIGHT, key=f"map_{view_id}", on_select="rerun")

    # A box or lasso selects among all pairs (not only the drawn ones), on the server.
    region_drawn = map_chart.selected_region((event or {}).get("selection") if event else None)
    if region_drawn is not None and region_drawn[0] == "box":
        (x0, x1), (y0, y1) = region_drawn[1]
        st.session_state["map_box"] = [x0, x1, y0, y1]
        st.session_state["map_box_view"] = view_id
        st.session_state.pop("map_lasso", None)
    elif region_drawn is not None:
        corners = region_drawn[1]
        st.session_state["map_lasso"] = (view_id, [c[0] for c in corners], [c[1] for c in corners])
        st.session_state.pop("map_box", None)
    elif st.session_state.get("map_sel_event"):
        for key in ("map_box", "map_lasso"):  # the selection was cleared on the chart
            st.session_state.pop(key, None)
    st.session_state["map_sel_event"] = region_drawn is not None

    selected = np.zeros(0, dtype=np.int64)
    box = st.session_state.get("map_box")
    lasso = st.session_state.get("map_lasso")
    if box and len(box) == 4 and st.session_state.get("map_box_view") == view_id:
        selected = points_in_box(xy, box[:2], box[2:])
    elif lasso and lasso[0] == view_id:
        selected = points_in_polygon(xy, lasso[1], lasso[2])

    # A text search selects too: with a box or lasso, the pairs in both.
    region = bool(
        (box and len(box) == 4 and st.session_state.get("map_box_view") == view_id)
        or (lasso and lasso[0] == view_id)
    )
    selected = narrow_selection(selected, region, found, ctx.slice_rows)  # the search and the slice narrow it
    ui.share_view(
        q=query or None,
        view=source,
        layout=layout,
        color=color_by if color_by != COLOURS[0] else None,
        cap=cap if cap != DEFAULT_CAP else None,
        expert=highlight,
        box=",".join(f"{v:.4g}" for v in box) if box and len(selected) else None,
        pair=selected_pair if sel_row is not None else None,
    )

    # ----------------------------------------------------------------------------- the selected pair
    if sel_row is not None:
        p = ctx.features.pairs[sel_row]
        with st.container(border=True):
            st.markdown(
                f"**Pair {ui.md(p.id)}**"
                + (f" · group {ui.md(p.group)}" if p.group else "")
                + f" · top expert E{int(s.top_expert[sel_row])} · margin {s.margin[sel_row]:+.3f} · "
                + (
                    "the model prefers the chosen response"
                    if s.correct[sel_row]
                    else "the model prefers the rejected response"
                )
            )
            st.text("Prompt: " + p.prompt)
            a, b = st.columns(2)
            a.text("Chosen: " + p.chosen)
            b.text("Rejected: " + p.rejected)
            spec = charts.expert_bars(
                ctx.expert_titles(),
                [ui.expert_color(e) for e in range(k_experts)],
                {"router softmax": s.router_probs[sel_row]},
                points={"expert margin": s.expert_margins[sel_row]},
                points_axis="margin (chosen − rejected)",
                title="Routing and each expert's margin",
                subtitle="bars: router softmax, in each expert's colour (left axis); diamonds: margins (right)",
                y_title="routing probability",
                height=380,  # (in Streamlit a Vega-Lite height holds the titles, axes and legend)
            )
            ui.vega(spec, key="map_pair_chart")
            if st.button("Clear the pair", key="map_pair_clear"):
                st.session_state.pop("map_pair", None)
                st.rerun()

    # ----------------------------------------------------------------------------- the linked table
    st.subheader(f"Selection: {len(selected)} pairs")
    if query:
        st.caption(
            ui.md(f"{'The region ∩ ' if region else ''}pairs whose texts contain every word of “{query}”.")
        )
    if not len(selected):
        st.caption(
            "Pick the box or lasso tool at the map's top right and drag to select pairs (all pairs in the region, "
            "drawn or not; the eraser beside them clears it); their "
            "routing weights appear here. Click a row to see the pair."
        )
        return
    pages = (len(selected) - 1) // TABLE_PAGE + 1
    page = (
        int(st.number_input(f"Page (of {pages}, {TABLE_PAGE} rows each)", 1, pages, 1, key="map_page"))
        if pages > 1
        else 1
    )
    rows = selected[(page - 1) * TABLE_PAGE : page * TABLE_PAGE]
    table = ctx.pair_table(rows)
    picked = st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        height=360,
        key=f"map_table_{view_id}_{page}",
        on_select="rerun",
        selection_mode="single-row",
    )
    chosen_rows = (picked or {}).get("selection", {}).get("rows", []) if picked else []
    if chosen_rows:
        pid = str(table.iloc[chosen_rows[0]]["id"])  # the id the user saw, not a position that may have moved
        if pid != st.session_state.get("map_pair"):
            st.session_state["map_pair"] = pid
            st.rerun()

    def _csv() -> bytes:
        return frame_csv(ctx.pair_table(selected))  # safe to open in a spreadsheet

    def _jsonl() -> bytes:
        pairs = ctx.features.pairs
        lines = (
            json.dumps(
                {
                    **pairs[i].to_dict(),
                    "routing": s.routing[i].round(6).tolist(),
                    "margin": float(s.margin[i]),
                },
                ensure_ascii=False,
            )
            for i in selected
        )
        return ("\n".join(lines) + "\n").encode("utf-8")

    c1, c2 = st.columns(2)
    c1.download_button(f"Download all {len(selected)} (CSV)", _csv, "selection.csv", "text/csv", key="dl_csv")
    c2.download_button(
        f"Download all {len(selected)} (JSONL)",
        _jsonl,
        "selection.jsonl",
        "application/jsonl",
        key="dl_jsonl",
    )
    ui.save_slice_form(
        ctx,
        selected,
        "search" if query and not region else ("lasso" if lasso else "box") if region else "filter",
        ui.selection_description(query, params.title() if region else ""),
        "map_slice",
    )


map_and_selection()
