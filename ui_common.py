"""What every dashboard page shares: the workspace, the sidebar selectors and the cached heavy objects.

Everything heavy is cached with `st.cache_resource` keyed on paths + modification times: objects are
kept in memory as they are (`st.cache_data` would pickle them), and a rerun never recomputes them.
User and dataset text is only ever shown through `st.text`/`st.code`/dataframes, never as HTML.
"""

from __future__ import annotations

import gc
import html
import re
import threading
from collections.abc import Callable, Collection
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import streamlit as st

from moe_reward.app import pipeline
from moe_reward.app.colors import EXPERT_COLORS, category_colors, expert_color, hex_to_rgb, natural_sorted
from moe_reward.app.workspace import DataFile, Workspace, default_root, file_id, model_training_data
from moe_reward.embed.backbone import BackboneSpec
from moe_reward.embed.features import PairFeatures
from moe_reward.evaluate import summary
from moe_reward.evaluate.metrics import PairScores, evaluate, groups_of, score_pairs
from moe_reward.model.moe import SparseMoERewardModel, load_metrics
from moe_reward.personalize.store import LabelStore

# What is imported by now (torch, transformers, pandas, plotly, streamlit: about a million objects) lives as
# long as the server: out of the garbage collector's sight, a full collection, which holds the GIL and so
# every session, scans only what the sessions create (see also runner.postScriptGC in .streamlit/config.toml).
gc.freeze()

PAGE_TITLE = "MoE Reward Lens"
ENTRY_SIDEBAR = "_sidebar_drawn_by_app"  # set by app.py: the sidebar is drawn before each page runs
ICON = Path(__file__).resolve().parent / "assets" / "icon.png"  # a local file: no request to a font host
URL_STATE = "_url_view"  # the query parameters this session was opened with, consumed once by the pages
SHARED_EXPERT = "expert"  # the expert picked on any page (Expert map, Expert detail), an int
__all__ = ["EXPERT_COLORS", "category_colors", "expert_color", "natural_sorted", "summary"]


# ----------------------------------------------------------------------------- cached resources


@st.cache_resource(show_spinner=False)
def _workspace(root: str) -> Workspace:
    return Workspace(root)


def workspace() -> Workspace:
    return _workspace(str(default_root()))


@st.cache_resource(show_spinner=False)
def default_build_lock() -> threading.Lock:
    """One lock per server process: only one session builds the default model."""
    return threading.Lock()


@st.cache_resource(show_spinner=False)
def label_store(db_path: str) -> LabelStore:
    return LabelStore(db_path)


@st.cache_resource(show_spinner=False, max_entries=8)
def _load_model(path: str, _fid: str) -> SparseMoERewardModel:
    return SparseMoERewardModel.from_pretrained(path)


def load_model(path: Path) -> SparseMoERewardModel:
    return _load_model(str(path), file_id(path))


def backbone_spec(model: SparseMoERewardModel) -> BackboneSpec:
    return pipeline.backbone_spec_for(model)


@st.cache_resource(show_spinner=False, max_entries=8)
def _load_features(root: str, data: str, _fid: str, spec: tuple) -> PairFeatures:
    return Workspace(root).features_for(data, BackboneSpec(*spec))


def load_features(ws: Workspace, data: Path, spec: BackboneSpec) -> PairFeatures:
    """Features of a data file. The first time, the file is embedded once in the background
    (`Workspace.features_in_background`, keyed by file and backbone): this page shows its progress, and
    leaving the page neither stops nor restarts it (any page asking for the file waits for the same job)."""
    from moe_reward.app import jobs

    job = ws.features_in_background(data, spec)
    if job is not None:
        bar = st.progress(0.0, text=f"Embedding {data.name} with {spec.name} (once; cached afterwards)")
        while job.active:
            bar.progress(
                min(job.fraction, 1.0),
                text=f"Embedding {data.name}: {job.message or 'starting'} "
                f"({job.elapsed:.0f} s so far; runs on if you leave this page)",
            )
            jobs.wait(job.key, timeout=0.3)
        bar.empty()
        if job.status == jobs.FAILED:
            raise RuntimeError(f"embedding {data.name} failed: {job.error}")
        if job.result is not None:  # embedded but not saved (a read-only workspace)
            return job.result
    return _load_features(str(ws.root), str(data), file_id(data), astuple(spec))


def background_jobs() -> None:
    """Embedding and training that run in the background (moe_reward.app.jobs), with live progress, on every
    page; when the last one ends the page reruns to show its result."""
    from moe_reward.app import jobs

    def running():
        return [j for j in jobs.all_jobs(active_only=True) if j.key.startswith(("embed:", "train:"))]

    if not running():
        return

    @st.fragment(run_every=1.0)
    def panel():
        now = running()
        if not now:
            st.rerun()
        st.caption("Running in the background")
        for j in now:
            st.progress(
                min(j.fraction, 1.0),
                text=f"{md(j.description)}: {md(j.message or j.status)} ({j.elapsed:.0f} s)",
            )

    panel()


@st.cache_resource(show_spinner=False, max_entries=16)
def _scores(
    model_fid: str, data_fid: str, _model: SparseMoERewardModel, _features: PairFeatures
) -> PairScores:
    return score_pairs(_model, _features)


@st.cache_resource(show_spinner=False, max_entries=16)
def _evaluation(model_fid: str, data_fid: str, _model, _features, _scores) -> dict:
    return evaluate(_model, _features, _scores)


@st.cache_resource(show_spinner=False, max_entries=16)
def _relation(
    model_fid: str,
    data_fid: str,
    model_dir: str,
    same_file: bool | None,
    data_name: str,
    _features: PairFeatures,
) -> summary.DataRelation:
    return summary.relate(model_dir, _features, same_file=same_file, data_name=data_name)


@st.cache_resource(show_spinner=False, max_entries=64)
def _scope_evaluation(model_fid: str, data_fid: str, scope: str, _model, _features, _scores, _index) -> dict:
    return evaluate(_model, _features.subset(_index), _scores.subset(_index))


@st.cache_resource(show_spinner="Describing experts…", max_entries=8)
def _descriptions(
    model_fid: str, data_fid: str, _ws: Workspace, _model_dir: Path, _data: Path, _model, _features, _scores
) -> list:
    """describe.py's expert descriptions, kept as JSON in the workspace (a few seconds on 10k pairs)."""
    return _ws.descriptions_for(_model_dir, _data, _model, _features, _scores)


@st.cache_resource(show_spinner=False, max_entries=8)
def _margins(model_fid: str, data_fid: str, _model, _features) -> tuple[np.ndarray, np.ndarray]:
    from moe_reward.personalize.adapters import expert_margins_for

    return expert_margins_for(_model, _features)


@st.cache_resource(show_spinner=False, max_entries=4)
def _backbone(spec: tuple):
    from moe_reward.embed.backbone import Backbone

    return Backbone(BackboneSpec(*spec))


# ----------------------------------------------------------------------------- the shared context


@dataclass
class Context:
    """The model and dataset picked in the sidebar, with everything derived from them (all cached)."""

    ws: Workspace
    model_name: str
    model_dir: Path
    model: SparseMoERewardModel
    data: DataFile
    features: PairFeatures
    model_fid: str
    data_fid: str

    @property
    def k(self) -> int:
        return self.model.num_experts

    @property
    def scores(self) -> PairScores:
        return _scores(self.model_fid, self.data_fid, self.model, self.features)

    @property
    def evaluation(self) -> dict:
        """Statistics on all pairs of the file (training pairs included when it is the training data)."""
        return _evaluation(self.model_fid, self.data_fid, self.model, self.features, self.scores)

    @property
    def relation(self) -> summary.DataRelation:
        """How this data relates to the model's training data, and the subsets a number can be on."""
        return _relation(
            self.model_fid,
            self.data_fid,
            str(self.model_dir),
            same_data(self.ws, self.model_dir, self.data),
            self.data.label,
            self.features,
        )

    def scope_evaluation(self, key: str | None = None) -> tuple[summary.Scope, dict]:
        """(scope, statistics on it); the headline scope (held-out test split when there is one) by default."""
        scope = self.relation.scope(key) if key else self.relation.headline
        if scope.key == "all":
            return scope, self.evaluation
        return scope, _scope_evaluation(
            self.model_fid, self.data_fid, scope.key, self.model, self.features, self.scores, scope.index
        )

    def descriptions(self) -> list:
        """describe.py's expert descriptions; [] if that module is unavailable."""
        try:
            return _descriptions(
                self.model_fid,
                self.data_fid,
                self.ws,
                self.model_dir,
                self.data.path,
                self.model,
                self.features,
                self.scores,
            )
        except ImportError:
            return []

    def margins(self) -> tuple[np.ndarray, np.ndarray]:
        return _margins(self.model_fid, self.data_fid, self.model, self.features)

    def backbone(self):
        spec = backbone_spec(self.model)
        return _backbone(astuple(spec))

    @property
    def groups(self) -> np.ndarray:
        g = groups_of(self.features)
        return g if g is not None else np.array(["(none)"] * len(self.features))

    def expert_names(self) -> list[str]:
        """Short names for chart axes and legends: 'E0', 'E1', ..."""
        return [f"E{k}" for k in range(self.k)]

    def expert_labels(self) -> list[str]:
        """'E3 · prefers: shorter, …' when the model or the descriptions name an expert, else 'E3'."""
        names = list(self.model.config.expert_names or [])
        if not names:
            names = [getattr(d, "label", "") for d in self.descriptions()]
        return [f"E{k} · {names[k]}" if k < len(names) and names[k] else f"E{k}" for k in range(self.k)]

    def pair_table(self, index: np.ndarray | None = None, routing: bool = True) -> pd.DataFrame:
        """One row per pair: id, group, user, texts, margin, correctness, top expert (+ routing weights)."""
        idx = np.arange(len(self.features)) if index is None else np.asarray(index, dtype=np.int64)
        s = self.scores
        pairs = self.features.pairs
        frame = pd.DataFrame(
            {
                "row": idx,
                "id": [pairs[i].id for i in idx],
                "group": [pairs[i].group or "" for i in idx],
                "user": [pairs[i].user or "" for i in idx],
                "prompt": [pairs[i].prompt for i in idx],
                "chosen": [pairs[i].chosen for i in idx],
                "rejected": [pairs[i].rejected for i in idx],
                "margin": s.margin[idx].round(4),
                "correct": s.correct[idx],
                "top_expert": [f"E{e}" for e in s.top_expert[idx]],
            }
        )
        if routing:
            for k in range(self.k):
                frame[f"w_E{k}"] = s.routing[idx, k].round(4)
        return frame


def _matches(ws: Workspace, recorded: str | None, path: Path) -> bool:
    """Whether a model's recorded training data (metrics.json "data") is this file."""
    if not recorded:
        return False
    if recorded == "controlled":
        return path.resolve().parent == ws.default_data_path().resolve().parent
    try:
        return Path(recorded).resolve() == path.resolve() or str(path) == recorded
    except OSError:
        return False


def same_data(ws: Workspace, model_dir: Path, data: DataFile) -> bool:
    return _matches(ws, model_training_data(model_dir), data.path)


def training_data_label(ws: Workspace, model_dir: Path, data: list[DataFile]) -> str:
    """The data file the model was trained on, when it is listed; else the first one."""
    recorded = model_training_data(model_dir)
    for d in data:
        if _matches(ws, recorded, d.path):
            return d.label
    return data[0].label


_default_data_label = training_data_label  # (older name)


# The sidebar's choice lives in these plain keys; the widgets are views of them. (A widget drawn by the
# entry script before st.navigation can come back as a new widget on the first rerun after a page load,
# at its default; re-seeding it from the plain key every run keeps the user's choice.)
MODEL_CHOICE, DATA_CHOICE = "_chosen_model", "_chosen_data"


def _on_model_change() -> None:
    """Selecting a model selects the data it was trained on (the dataset selector can still change it)."""
    ws = workspace()
    name = st.session_state.get("model_name")
    st.session_state[MODEL_CHOICE] = name
    data = ws.list_data()
    if name in ws.list_models() and data:
        label = training_data_label(ws, ws.model_path(name), data)
        st.session_state["data_label"] = st.session_state[DATA_CHOICE] = label


def _on_data_change() -> None:
    st.session_state[DATA_CHOICE] = st.session_state.get("data_label")


def _restore_from_url(models: list[str], labels: list[str]) -> None:
    """A link's view becomes the selection, on the session's first run (opening a link starts a session).
    Model, data and expert are applied here; the rest wait in URL_STATE for the page they belong to (see
    `init_state`). Later runs never read the address back: the browser's copy of it can lag behind what
    the session wrote, and must not undo a choice the user just made."""
    if URL_STATE in st.session_state:
        return
    current = {k: st.query_params.get_all(k) for k in st.query_params}
    st.session_state[URL_STATE] = {k: (v[0] if len(v) == 1 else v) for k, v in current.items() if v}
    model = st.query_params.get("model")
    if model in models:
        st.session_state[MODEL_CHOICE] = model
        st.session_state.pop(DATA_CHOICE, None)  # the model's own data, unless the link names one
    data = st.query_params.get("data")
    if data in labels:
        st.session_state[DATA_CHOICE] = data
    expert = st.query_params.get("expert")
    if expert is not None and str(expert).isdigit():
        st.session_state[SHARED_EXPERT] = int(expert)


def open_expert(k: int) -> None:
    """A button callback: show expert k on Expert detail (and the map's highlight)."""
    st.session_state[SHARED_EXPERT] = int(k)
    st.session_state["detail_expert"] = int(k)
    (st.session_state.get(URL_STATE) or {}).pop("expert", None)  # an older link's expert no longer applies


def url_value(name: str, default=None):
    """A query parameter of the link this session was opened with (for the page it belongs to)."""
    return (st.session_state.get(URL_STATE) or {}).get(name, default)


def init_state(
    key: str, url_name: str, convert: Callable[[Any], object] = str, valid: Collection[object] | None = None
) -> None:
    """Before a widget exists: give it the link's value (once per link; afterwards the widget rules)."""
    pending = st.session_state.get(URL_STATE) or {}
    if url_name not in pending:
        return
    try:
        value = convert(pending.pop(url_name))
    except (TypeError, ValueError):
        return
    if valid is None or (value in valid if not isinstance(value, list) else all(v in valid for v in value)):
        st.session_state[key] = value


def share_view(**params) -> None:
    """Write the current view into the URL (model, data and the page's own parameters), so that the
    address bar is a link that reopens this view."""
    base = {"model": st.session_state.get("model_name"), "data": st.session_state.get("data_label")}
    wanted: dict[str, list[str]] = {}
    for k, v in {**base, **params}.items():
        if v is None or v == "" or (isinstance(v, (list, tuple)) and not v):
            continue
        wanted[k] = [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
    current = {k: st.query_params.get_all(k) for k in st.query_params}
    if current != wanted:
        st.query_params.from_dict({k: v if len(v) > 1 else v[0] for k, v in wanted.items()})


def view_link(**params) -> str:
    """The query string of a view (for the 'link to this view' caption)."""
    return "?" + urlencode(
        [
            (k, x)
            for k, v in params.items()
            if v not in (None, "")
            for x in (v if isinstance(v, (list, tuple)) else [v])
        ]
    )


def sidebar(ws: Workspace) -> tuple[str, DataFile] | None:
    """Model + dataset selectors (keys shared by every page through `st.session_state`)."""
    models = ws.list_models()
    data = ws.list_data()
    with st.sidebar:
        background_jobs()
        st.subheader("Model and data")
        if not models or not data:
            st.warning("No model or no data file yet: see **Data & training**.")
            return None
        labels = [d.label for d in data]
        _restore_from_url(models, labels)
        pending = st.session_state.pop(
            "_pending_model", None
        )  # e.g. just trained (set before the widget exists)
        if pending in models:
            st.session_state[MODEL_CHOICE] = pending
            st.session_state.pop(DATA_CHOICE, None)  # and its data
        if st.session_state.get(MODEL_CHOICE) not in models:
            st.session_state[MODEL_CHOICE] = models[0]
            st.session_state.pop(DATA_CHOICE, None)
        st.session_state["model_name"] = st.session_state[MODEL_CHOICE]
        name = st.selectbox(
            "Model",
            models,
            key="model_name",
            help=f"Saved models under {ws.models_dir}",
            on_change=_on_model_change,
        )
        if st.session_state.get(DATA_CHOICE) not in labels:
            st.session_state[DATA_CHOICE] = training_data_label(ws, ws.model_path(name), data)
        st.session_state["data_label"] = st.session_state[DATA_CHOICE]
        label = st.selectbox(
            "Dataset",
            labels,
            key="data_label",
            on_change=_on_data_change,
            help="Selecting a model selects the data it was trained on; pick another file to see "
            "how it transfers.",
        )
        picked = data[labels.index(label)]
        if not same_data(ws, ws.model_path(name), picked):
            st.caption(
                f"Trained on {md(Path(model_training_data(ws.model_path(name)) or 'unrecorded data').name)}, "
                "not on this file."
            )
    return name, picked


def current_selection(ws: Workspace) -> tuple[str, DataFile] | None:
    """The sidebar's selection. app.py draws the sidebar before routing to a page (so the choice survives
    page switches); a page run on its own (tests) draws it itself."""
    if not st.session_state.get(ENTRY_SIDEBAR):
        return sidebar(ws)
    models, data = ws.list_models(), ws.list_data()
    name, label = st.session_state.get("model_name"), st.session_state.get("data_label")
    by_label = {d.label: d for d in data}
    if name not in models or label not in by_label:
        return None
    return name, by_label[label]


def context() -> Context | None:
    """The current selection, loaded (cached). Shows what is missing and returns None if nothing fits."""
    ws = workspace()
    picked = current_selection(ws)
    if picked is None:
        st.info("Pick a model and a dataset in the sidebar (or train one in **Data & training**).")
        return None
    name, data = picked
    model_dir = ws.model_path(name)
    try:
        model = load_model(model_dir)
        features = load_features(ws, data.path, backbone_spec(model))
    except Exception as exc:  # a broken file must not take the dashboard down
        st.error(f"Could not load {md(name)} / {md(data.label)}: {md(exc)}")
        return None
    if features.dim != model.config.input_dim:
        st.error(
            f"{md(data.label)} has {features.dim}-d features but {md(name)} expects {model.config.input_dim}-d inputs "
            "(a different backbone); pick another dataset or model."
        )
        return None
    ctx = Context(ws, name, model_dir, model, data, features, file_id(model_dir), file_id(data.path))
    if ctx.relation.warning:
        st.warning(md(ctx.relation.warning), icon=":material/warning:")
    return ctx


def require_context() -> Context:
    """`context()`, or the end of this page run when there is none (what it shows says why). Typed as a
    Context, so that functions a page defines see one (a module variable is not narrowed inside them)."""
    ctx = context()
    if ctx is None:
        st.stop()
    return ctx


def model_metrics(model_dir: Path) -> dict:
    return load_metrics(model_dir)


def page_header(title: str, what: str) -> None:
    st.title(title)
    st.caption(what)


_MD_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text) -> str:
    """Dataset, file or user text made inert inside markdown-rendering calls (st.write, st.caption, ...)."""
    return _MD_SPECIALS.sub(r"\\\1", str(text))


def chart(text) -> str:
    """Dataset text made inert inside plotly labels and hover text (plotly renders a subset of HTML)."""
    return html.escape(str(text), quote=False)


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.{digits}f}"


def stat_metric(container, key: str, value, scope: summary.Scope | None = None, **kwargs) -> None:
    """st.metric of a summary.STATS statistic: one label and one definition on every page; the subset and
    its pair count written under the value (a grey note, no arrow) when given."""
    stat = summary.STATS.get(key) or summary.DIAGNOSTICS[key]
    shown = kwargs.pop("text", None) or stat.format(value)
    if scope is None:
        container.metric(stat.label, shown, help=stat.definition, **kwargs)
    else:
        container.metric(
            stat.label,
            shown,
            delta=scope_note(scope),
            delta_color="off",
            delta_arrow="off",
            help=f"{stat.definition} On the {scope.label}, {scope.n} pairs.",
            **kwargs,
        )


def scope_note(scope: summary.Scope) -> str:
    return f"{scope.label} · {scope.n} pairs"


def table(frame: pd.DataFrame | pd.Series, max_rows: int = 60, **kwargs) -> None:
    """A small table shown whole (no inner scroll bar) up to `max_rows` rows."""
    rows = len(frame)
    height = 35 * (min(rows, max_rows) + 1) + 3
    st.dataframe(frame, hide_index=True, width=kwargs.pop("width", "stretch"), height=height, **kwargs)


def swatch(color: str, width: int = 48, height: int = 10) -> np.ndarray:
    """A solid colour bar (an image: shows an expert's colour next to its name without any HTML)."""
    return np.tile(np.array(hex_to_rgb(color), dtype=np.uint8), (height, width, 1))


def expert_axis(fig, axis: str = "x", k: int | None = None) -> None:
    """Experts in numeric order on a categorical axis (E0, E1, …, E10, not E0, E1, E10)."""
    names = [f"E{i}" for i in range(k)] if k else None
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    if names:
        update(categoryorder="array", categoryarray=names)


def diagnostics_section(diagnostics: dict | None, k: int, where: str = "held-out test split") -> None:
    """The specialization diagnostics of a model (when its evaluation has them): one sentence per number,
    and the group × expert contingency table."""
    if not diagnostics:
        return
    st.subheader("Specialization diagnostics")
    st.caption(
        f"From the model's evaluation on its {where}: whether a failure to specialize lies in what the "
        "router can see or in how training found the groups."
    )
    keys = [key for key in summary.DIAGNOSTICS if diagnostics.get(key) is not None]
    if keys:
        cols = st.columns(len(keys))
        for col, key in zip(cols, keys, strict=True):
            stat_metric(col, key, diagnostics[key])
            col.caption(summary.DIAGNOSTICS[key].definition)
    contingency = diagnostics.get("contingency")
    if isinstance(contingency, dict) and contingency:
        frame = pd.DataFrame(
            {g: list(v) + [0] * (k - len(v)) for g, v in contingency.items()},
            index=[f"E{e}" for e in range(k)],
        ).T
        frame.index.name = "group"
        st.markdown("**Group × top expert** (pairs)")
        table(frame.reset_index())


# ----------------------------------------------------------------------------- maps and background work


def map_key(ctx: Context) -> tuple[str, str]:
    """The cache key parts of a model's maps on a dataset (also used by `precompute_default_map`)."""
    return ctx.model_fid, ctx.data_fid


def projection_job_key(ctx: Context, params) -> str:
    from moe_reward.evaluate.projection import cache_key

    return f"project:{cache_key(params, map_key(ctx), len(ctx.features))}"


def submit_projection(ctx: Context, params):
    """Compute a map in the background (moe_reward.app.jobs): one job per (model, data, parameters) per server."""
    from moe_reward.app import jobs
    from moe_reward.evaluate.projection import project

    features, scores, cache_dir, parts = ctx.features, ctx.scores, ctx.ws.projections_dir, map_key(ctx)

    def run(report):
        warmup = jobs.get("umap-warmup")
        if params.method == "umap" and warmup is not None and warmup.active:
            # one compilation at a time: wait for the warm-up instead of competing with it for the cores
            while warmup.active:
                report(f"compiling UMAP (once per server): {warmup.message}", 0.02)
                jobs.wait("umap-warmup", timeout=0.5)
        return project(features, params, cache_dir, parts, progress=report, scores=scores)

    return jobs.submit(projection_job_key(ctx, params), run, f"{params.title()} of {len(features)} pairs")


def precompute_default_map(ws: Workspace, model_dir: Path, progress=None) -> None:
    """After the default model is built: the map's instant views now, its UMAP view in the background."""
    from moe_reward.app import jobs
    from moe_reward.evaluate.projection import PRECOMPUTED_UMAP, cache_key, precompute_views, project

    data = next((d for d in ws.list_data() if d.path == ws.default_data_path()), None)
    if data is None:
        return
    model = load_model(model_dir)
    features = load_features(ws, data.path, backbone_spec(model))
    parts = (file_id(model_dir), file_id(data.path))
    scores = _scores(parts[0], parts[1], model, features)
    precompute_views(features, scores, ws.projections_dir, parts, umap=False, progress=progress)
    for params in PRECOMPUTED_UMAP:
        jobs.submit(
            f"project:{cache_key(params, parts, len(features))}",
            lambda report, p=params: project(
                features, p, ws.projections_dir, parts, progress=report, scores=scores
            ),
            f"{params.title()} of {len(features)} pairs",
        )


def job_progress(job, what: str) -> None:
    """A running background job's progress bar; its message carries the job's own time estimate."""
    st.progress(job.fraction, text=f"{what}: {job.message or job.status} ({job.elapsed:.0f} s so far)")


def report_button(ctx: Context) -> None:
    """Write the stakeholder report (moe_reward.app.report) of the selected model and offer it for download."""
    from moe_reward.app.report import build_report

    st.caption(
        "One self-contained HTML file with the held-out headline numbers, the experts and their "
        "descriptions, the specialization diagnostics and a personalization example "
        "(`moe-reward report --model DIR --out FILE` writes the same)."
    )
    if st.button("Write the stakeholder report", key="report_build", icon=":material/description:"):
        with st.spinner("Writing the report…"):
            out = ctx.ws.root / "reports" / f"{ctx.model_name}.html"
            result = build_report(
                ctx.model_dir,
                ctx.data.path,
                out,
                model=ctx.model,
                features=ctx.features,
                scores=ctx.scores,
                descriptions=ctx.descriptions(),
                same_file=same_data(ctx.ws, ctx.model_dir, ctx.data),
                data_name=ctx.data.label,
            )
        st.session_state["report_path"] = str(result.html)
        st.session_state["report_pngs"] = [str(p) for p in result.pngs]
    path = st.session_state.get("report_path")
    if path and Path(path).is_file():
        pngs = st.session_state.get("report_pngs") or []
        st.success(
            f"Wrote {md(path)}"
            + (f" and {len(pngs)} PNG figures" if pngs else " (PNG figures need kaleido and a Chromium)")
        )
        st.download_button(
            "Download the report (HTML)",
            Path(path).read_bytes(),
            Path(path).name,
            "text/html",
            key="report_download",
            icon=":material/download:",
        )
