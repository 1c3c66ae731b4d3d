"""What every dashboard page shares: the workspace, the sidebar selectors and the cached heavy objects.

Everything heavy is cached with `st.cache_resource` keyed on paths + modification times: objects are
kept in memory as they are (`st.cache_data` would pickle them), and a rerun never recomputes them.
User and dataset text is only ever shown through `st.text`/`st.code`/dataframes, never as HTML.
"""

from __future__ import annotations

import gc
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

from moe_reward.app import charts, pipeline
from moe_reward.app.colors import (
    EXPERT_COLORS,
    NEUTRAL,
    category_colors,
    expert_color,
    group_colors,
    hex_to_rgb,
    natural_sorted,
)
from moe_reward.app.query import parse_query_value
from moe_reward.app.slices import Slice, list_slices, slice_index
from moe_reward.app.workspace import DataFile, Workspace, default_root, file_id, model_id
from moe_reward.core.limits import MAX_EXPERTS
from moe_reward.embed.backbone import BackboneSpec
from moe_reward.embed.features import PairFeatures
from moe_reward.evaluate import summary
from moe_reward.evaluate.experts import ExpertSummary, expert_title, summarize_experts
from moe_reward.evaluate.metrics import Evaluation, PairScores, evaluate, groups_of, score_pairs
from moe_reward.model import modeldir
from moe_reward.model.moe import SparseMoERewardModel
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
__all__ = [
    "EXPERT_COLORS",
    "NEUTRAL",
    "category_colors",
    "expert_color",
    "group_colors",
    "natural_sorted",
    "summary",
]


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
def _load_model(path: str, fid: str) -> SparseMoERewardModel:
    return SparseMoERewardModel.from_pretrained(path)


def load_model(path: Path) -> SparseMoERewardModel:
    return _load_model(str(path), file_id(path))


def backbone_spec(model: SparseMoERewardModel) -> BackboneSpec:
    return pipeline.backbone_spec_for(model)


@st.cache_resource(show_spinner=False, max_entries=8)
def _load_features(root: str, data: str, fid: str, spec: tuple) -> PairFeatures:
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
        return jobs.visible(
            [j for j in jobs.all_jobs(active_only=True) if j.key.startswith(("embed:", "train:"))]
        )

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
def _evaluation(model_fid: str, data_fid: str, _model, _features, _scores) -> Evaluation:
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
def _scope_evaluation(
    model_fid: str, data_fid: str, scope: str, _model, _features, _scores, _index
) -> Evaluation:
    return evaluate(_model, _features.subset(_index), _scores.subset(_index))


@st.cache_resource(show_spinner=False, max_entries=64)
def _expert_summaries(
    model_fid: str, data_fid: str, scope: str, names: tuple, _scores: PairScores, _index
) -> list[ExpertSummary]:
    return summarize_experts(_scores, _index, list(names))


@st.cache_resource(show_spinner=False, max_entries=32)
def _slice_rows(data_fid: str, slice_key: str, _slice: Slice, _ids: list[str]) -> np.ndarray:
    return slice_index(_slice, _ids)


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
    slice: Slice | None = None  # the saved slice picked in the sidebar: every subset is narrowed to it

    @property
    def k(self) -> int:
        return self.model.num_experts

    @property
    def scores(self) -> PairScores:
        return _scores(self.model_fid, self.data_fid, self.model, self.features)

    @property
    def evaluation(self) -> Evaluation:
        """Statistics on all pairs of the file (training pairs included when it is the training data)."""
        return _evaluation(self.model_fid, self.data_fid, self.model, self.features, self.scores)

    @property
    def slice_key(self) -> str:
        """'' without a slice; else what identifies the slice's content (part of cache keys)."""
        s = self.slice
        return "" if s is None else f"{s.name}|{s.created}|{s.n}"

    @property
    def slice_rows(self) -> np.ndarray | None:
        """Rows of the data file in the picked slice (None: no slice picked)."""
        if self.slice is None:
            return None
        return _slice_rows(self.data_fid, self.slice_key, self.slice, self.features.ids)

    @property
    def unsliced_relation(self) -> summary.DataRelation:
        """How this data relates to the model's training data, whatever the slice."""
        return _relation(
            self.model_fid,
            self.data_fid,
            str(self.model_dir),
            same_data(self.ws, self.model_dir, self.data),
            self.data.label,
            self.features,
        )

    @property
    def relation(self) -> summary.DataRelation:
        """How this data relates to the model's training data, and the subsets a number can be on (each
        narrowed to the slice picked in the sidebar, and named so)."""
        rel = self.unsliced_relation
        rows = self.slice_rows
        return rel if rows is None or self.slice is None else summary.restrict(rel, rows, self.slice.name)

    def scope_evaluation(self, key: str | None = None) -> tuple[summary.Scope, Evaluation]:
        """(scope, statistics on it); the headline scope (held-out test split when there is one) by default."""
        scope = self.relation.scope(key) if key else self.relation.headline
        if scope.key == "all" and self.slice is None:
            return scope, self.evaluation
        return scope, _scope_evaluation(
            self.model_fid,
            self.data_fid,
            f"{scope.key}|{self.slice_key}",
            self.model,
            self.features,
            self.scores,
            scope.index,
        )

    def expert_summaries(self, scope: summary.Scope) -> list[ExpertSummary]:
        """Every expert's statistics on one subset (moe_reward.evaluate.experts: one definition each)."""
        return _expert_summaries(
            self.model_fid,
            self.data_fid,
            f"{scope.key}|{self.slice_key}",
            tuple(self.names),
            self.scores,
            scope.index,
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
        """Short ids for chart categories and legends: 'E0', 'E1', ... (names go on the tick labels)."""
        return [f"E{k}" for k in range(self.k)]

    @property
    def names(self) -> list[str]:
        """The analyst's names of the experts ('' where unnamed), stored in the model's config.json."""
        given = list(self.model.config.expert_names or [])
        return [given[k] if k < len(given) else "" for k in range(self.k)]

    def expert_titles(self) -> list[str]:
        """'E3 · brevity' where the analyst named expert 3, else 'E3'."""
        return [expert_title(k, self.names) for k in range(self.k)]

    def expert_labels(self) -> list[str]:
        """For selectors: 'E3 · brevity' when named, else 'E3 · prefers: shorter, …' from the
        descriptions, else 'E3'."""
        described = {d.expert: getattr(d, "label", "") for d in self.descriptions()}
        out = []
        for k in range(self.k):
            name = self.names[k] or described.get(k, "")
            out.append(f"E{k} · {name}" if name else f"E{k}")
        return out

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
    return _matches(ws, modeldir.trained_on(model_dir), data.path)


def training_data_label(ws: Workspace, model_dir: Path, data: list[DataFile]) -> str:
    """The data file the model was trained on, when it is listed; else the first one."""
    recorded = modeldir.trained_on(model_dir)
    for d in data:
        if _matches(ws, recorded, d.path):
            return d.label
    return data[0].label


_default_data_label = training_data_label  # (older name)


def data_label_of(ws: Workspace, model_dir: Path) -> str:
    """The data a model was trained on, as the dataset selector names it (a file name when it is not
    listed; never a local absolute path)."""
    recorded = modeldir.trained_on(model_dir)
    if not recorded:
        return "unrecorded"
    for d in ws.list_data():
        if _matches(ws, recorded, d.path):
            return d.label
    return "controlled" if recorded == "controlled" else Path(recorded).name


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
    model = query_param("model", str, models)
    if model is not None:
        st.session_state[MODEL_CHOICE] = model
        st.session_state.pop(DATA_CHOICE, None)  # the model's own data, unless the link names one
    data = query_param("data", str, labels)
    if data is not None:
        st.session_state[DATA_CHOICE] = data
    expert = query_param("expert", int, lambda k: 0 <= k < MAX_EXPERTS)
    if expert is not None:
        st.session_state[SHARED_EXPERT] = expert
    picked = query_param("slice", str)
    if picked:
        st.session_state[SLICE_CHOICE] = picked  # kept only if such a slice exists (slice_selector)


def clicked(*keys: str) -> list[str]:
    """Which of these buttons were clicked in this page run (for a callback). Streamlit merges clicks that
    arrive faster than the page redraws into one run and keeps no order between them, so a callback that
    finds another answer clicked with it cannot tell which came first."""
    return [k for k in keys if st.session_state.get(k) is True]


def open_expert(k: int) -> None:
    """A button callback: show expert k on Expert detail (and the map's highlight)."""
    st.session_state[SHARED_EXPERT] = int(k)
    st.session_state["detail_expert"] = int(k)
    (st.session_state.get(URL_STATE) or {}).pop("expert", None)  # an older link's expert no longer applies


def query_param(
    name: str,
    parse: Callable[[Any], object] = str,
    valid: Collection[object] | Callable[[Any], bool] | None = None,
):
    """The one reader of a query parameter of the link this session was opened with: `parse` (``int``,
    ``float``, ``str`` or any function) applied to it, a valid value or None, never an exception
    (`moe_reward.app.query.parse_query_value`: ASCII digits only, finite numbers, `valid` a collection
    or a predicate)."""
    link = st.session_state.get(URL_STATE)
    raw = link.get(name) if isinstance(link, dict) else st.query_params.get(name)
    return parse_query_value(raw, parse, valid)


def url_value(name: str, default=None):
    """A query parameter of the link this session was opened with, as text (for the page it belongs to)."""
    value = query_param(name, str)
    return default if value is None else value


def init_state(
    key: str,
    url_name: str,
    convert: Callable[[Any], object] = str,
    valid: Collection[object] | Callable[[Any], bool] | None = None,
) -> None:
    """Before a widget exists: give it the link's value (once per link; afterwards the widget rules). The
    value goes through `query_param`'s parser: an invalid one is dropped, never raised."""
    pending = st.session_state.get(URL_STATE) or {}
    if url_name not in pending:
        return
    value = parse_query_value(pending.pop(url_name), convert, valid)
    if value is not None:
        st.session_state[key] = value


def share_view(**params) -> None:
    """Write the current view into the URL (model, data and the page's own parameters), so that the
    address bar is a link that reopens this view."""
    picked = st.session_state.get("slice_name")
    base = {
        "model": st.session_state.get("model_name"),
        "data": st.session_state.get("data_label"),
        "slice": picked if picked and picked != NO_SLICE else None,
    }
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


TRAIN_JOB = "dt_job"  # (job key, model name) of the training this session started on Data & training


def finish_own_training() -> None:
    """When this session's training has ended (on whatever page the user is): select the new model and
    its data, and keep the result (or the error) for Data & training to show."""
    from moe_reward.app import jobs

    key, name = st.session_state.get(TRAIN_JOB, (None, None))
    if key is None:
        return
    job = jobs.get(key)
    if job is not None and job.active:
        return
    st.session_state.pop(TRAIN_JOB, None)
    if job is None:
        return
    jobs.forget(key)
    if job.status == jobs.FAILED:
        st.session_state["dt_failed"] = (name, job.error, job.details)
        st.toast(f"Training {name} failed: see Data & training.", icon=":material/error:")
        return
    m = job.result
    test = m["test"]
    schedule = f"{m['epochs_run']} epochs run of at most {m['epochs_planned']}"
    if m["epochs_planned"] > m.get("epochs_requested", m["epochs_planned"]):
        schedule += (
            f" ({m['epochs_requested']} requested; raised so that {m['splits']['train']} training pairs get "
            f"at least {m['train_config']['min_steps']} optimizer steps)"
        )
    st.session_state["_pending_model"] = name
    st.session_state["dt_trained"] = (
        f"Trained {name}: {m['test_subset']} accuracy {test['accuracy']:.3f} on {test['n_pairs']} pairs, "
        f"routing NMI {fmt(test['routing_nmi'])}; {schedule}, kept epoch {m['best_epoch']}; "
        f"{m['train_seconds']:.1f} s. It is now selected in the sidebar, with the data it was trained on."
    )
    st.session_state["dt_warnings"] = list(m.get("warnings") or [])
    st.toast(f"Trained {name}: it is now selected.", icon=":material/check_circle:")


def sidebar(ws: Workspace) -> tuple[str, DataFile] | None:
    """Model + dataset selectors (keys shared by every page through `st.session_state`)."""
    finish_own_training()
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
            format_func=short_data_label,
            help="Selecting a model selects the data it was trained on; pick another file to see "
            "how it transfers.",
        )
        picked = data[labels.index(label)]
        if short_data_label(label) != label:
            st.caption(f"File: {md(label)}")
        if not same_data(ws, ws.model_path(name), picked):
            st.caption(
                f"Trained on {md(Path(modeldir.trained_on(ws.model_path(name)) or 'unrecorded data').name)}, "
                "not on this file."
            )
        slice_selector(ws)
    return name, picked


def short_data_label(label: str) -> str:
    """What the dataset selector shows (it cuts long text): 'controlled (features)' for
    'data/controlled/features.safetensors', the path under data/ or uploads/ otherwise."""
    short = label.split("/", 1)[1] if label.startswith(("data/", "uploads/")) else label
    folder, _, leaf = short.rpartition("/")
    if leaf == "features.safetensors" and folder:
        return f"{folder} (features)"
    return short


NO_SLICE = "(all pairs)"
SLICE_CHOICE = "_chosen_slice"  # the sidebar's slice (a plain key, re-seeded into the widget every run)


@st.cache_resource(show_spinner=False, max_entries=8)
def _slices(folder: str, stamp: tuple) -> tuple[dict[str, Slice], dict[str, str]]:
    found, problems = list_slices(folder)
    return {s.name: s for s in found}, problems


def saved_slices(ws: Workspace) -> tuple[dict[str, Slice], dict[str, str]]:
    """The workspace's saved slices by name (read again only when a slice file changes), and the files
    that do not load, with why."""
    folder = ws.slices_dir
    try:
        stamp = tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*.json")))
    except OSError:
        stamp = ()
    return _slices(str(folder), stamp)


def slice_selector(ws: Workspace) -> None:
    """The sidebar's slice: a saved selection that narrows every page's numbers to its pairs."""
    by_name, problems = saved_slices(ws)
    options = [NO_SLICE, *sorted(by_name)]
    pending = st.session_state.pop("_pending_slice", None)  # e.g. just saved (before the widget exists)
    if pending in by_name:
        st.session_state[SLICE_CHOICE] = pending
    if st.session_state.get(SLICE_CHOICE) not in options:
        st.session_state[SLICE_CHOICE] = NO_SLICE
    st.session_state["slice_name"] = st.session_state[SLICE_CHOICE]
    st.selectbox(
        "Slice",
        options,
        key="slice_name",
        on_change=lambda: st.session_state.__setitem__(SLICE_CHOICE, st.session_state.get("slice_name")),
        format_func=lambda n: n if n == NO_SLICE else f"{n} ({by_name[n].n} pairs)",
        help="A saved selection of pairs (a search, a map selection, filters). Picked, every page shows "
        "its numbers on the slice's pairs only, and says so.",
    )
    picked = by_name.get(st.session_state["slice_name"])
    if picked is not None:
        st.caption(f"{md(picked.how)}: {md(picked.description or 'pairs picked by id')}")
    for file, why in problems.items():
        st.caption(f"Skipped slice {md(file)}: {md(why)}")


def current_slice(ws: Workspace) -> Slice | None:
    name = st.session_state.get("slice_name")
    if not name or name == NO_SLICE:
        return None
    return saved_slices(ws)[0].get(name)


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
    ctx = Context(
        ws, name, model_dir, model, data, features, model_id(model_dir), file_id(data.path), current_slice(ws)
    )
    if ctx.relation.warning:
        st.warning(md(ctx.relation.warning), icon=":material/warning:")
    rows = ctx.slice_rows
    if ctx.slice is not None and rows is not None:
        st.info(
            f"Slice **{md(ctx.slice.name)}**: {len(rows)} of its {ctx.slice.n} pairs are in this file; "
            "the numbers on this page are on them only. Pick “(all pairs)” in the sidebar to see everything.",
            icon=":material/filter_alt:",
        )
    return ctx


def require_context() -> Context:
    """`context()`, or the end of this page run when there is none (what it shows says why). Typed as a
    Context, so that functions a page defines see one (a module variable is not narrowed inside them)."""
    ctx = context()
    if ctx is None:
        st.stop()
    return ctx


def model_metrics(model_dir: Path) -> dict:
    return modeldir.read_metrics(model_dir)


def page_header(title: str, what: str) -> None:
    _through_the_entry_script()
    st.title(title)
    st.caption(what)


def _through_the_entry_script() -> None:
    """A fresh server whose first visitor opens a page's own address (/Data_and_training) runs that page
    file alone, in Streamlit's old pages/ mode: the sidebar lists the raw files ("app", "Data and
    training") and app.py's navigation and sidebar never run. Leave that mode for good (it is one flag per
    server, which app.py's st.navigation also clears) and run again, now through app.py."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory and not st.session_state.get(ENTRY_SIDEBAR):
        PagesManager.uses_pages_directory = False
        st.rerun()


_MD_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text) -> str:
    """Dataset, file or user text made inert inside markdown-rendering calls (st.write, st.caption, ...)."""
    return _MD_SPECIALS.sub(r"\\\1", str(text))


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.{digits}f}"


def stat_metric(
    container, key: str, value, scope: summary.Scope | None = None, note: str | None = None, **kwargs
) -> None:
    """st.metric of a summary.STATS statistic: one label and one definition on every page; the subset and
    its pair count (or another `note` naming what the number rests on) written under the value (a grey
    note, no arrow) when given."""
    stat = summary.STATS.get(key) or summary.DIAGNOSTICS[key]
    shown = kwargs.pop("text", None) or stat.format(value)
    if scope is not None:
        note = scope_note(scope)
        kwargs["help"] = f"{stat.definition} On the {scope.label}, {scope.n} pairs."
    if note:
        container.metric(
            stat.label,
            shown,
            delta=note,
            delta_color="off",
            delta_arrow="off",
            **{"help": stat.definition, **kwargs},
        )
    else:
        container.metric(stat.label, shown, help=stat.definition, **kwargs)


def scope_note(scope: summary.Scope) -> str:
    return f"{scope.label} · {scope.n} pairs"


def table(frame: pd.DataFrame | pd.Series, max_rows: int = 60, **kwargs) -> None:
    """A small table shown whole (no inner scroll bar) up to `max_rows` rows."""
    rows = len(frame)
    height = 35 * (min(rows, max_rows) + 1) + 3
    st.dataframe(frame, hide_index=True, width=kwargs.pop("width", "stretch"), height=height, **kwargs)


def swatch(color: str, width: int = 48, height: int = 10) -> str:
    """A solid colour bar: an expert's colour next to its name, without any HTML in the page. An SVG image
    (Streamlit inlines it as a data URI: no request per card when a page opens)."""
    r, g, b = hex_to_rgb(color)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{int(width)}" height="{int(height)}">'
        f'<rect width="{int(width)}" height="{int(height)}" fill="#{r:02X}{g:02X}{b:02X}"/></svg>'
    )


def vega(spec: dict, key: str, container=None) -> None:
    """A Vega-Lite chart of moe_reward.app.charts, as wide as its column."""
    (container or st).vega_lite_chart(spec, width="stretch", key=key)


def diagnostics_section(
    diagnostics: dict | None, k: int, where: str = "held-out test split", names: list[str] | None = None
) -> None:
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
            stat_metric(col, key, diagnostics[key], note=summary.diagnostic_subset(key, diagnostics))
            col.caption(summary.DIAGNOSTICS[key].definition)
    contingency = diagnostics.get("contingency")
    if isinstance(contingency, dict) and contingency:
        frame = pd.DataFrame(
            {g: list(v) + [0] * (k - len(v)) for g, v in contingency.items()},
            index=[expert_title(e, names) for e in range(k)],
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


def umap_warmup_key(n: int) -> str:
    """The background job that compiles UMAP for maps of n pairs (one per code path and server)."""
    from moe_reward.evaluate.projection import umap_path

    return f"umap-warmup-{umap_path(n)}"


def submit_projection(ctx: Context, params):
    """Compute a map in the background (moe_reward.app.jobs): one job per (model, data, parameters) per server."""
    from moe_reward.app import jobs
    from moe_reward.evaluate.projection import project

    features, scores, cache_dir, parts = ctx.features, ctx.scores, ctx.ws.projections_dir, map_key(ctx)

    def run(report):
        warmup_key = umap_warmup_key(len(features))
        warmup = jobs.get(warmup_key)
        if params.method == "umap" and warmup is not None and warmup.active:
            # one compilation at a time: wait for the warm-up instead of competing with it for the cores
            while warmup.active:
                report(f"compiling UMAP (once per server): {warmup.message}", 0.02)
                jobs.wait(warmup_key, timeout=0.5)
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
    parts = (model_id(model_dir), file_id(data.path))
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


SNIPPETS_OPEN = "rlhf_snippets_open"  # (the state of rlhf_snippets' expander)


def rlhf_snippets(
    ctx: Context,
    profile: str | None = None,
    weights=None,
    prompt: str | None = None,
    response: str | None = None,
) -> None:
    """The exact server command, curl call and Python call that score with a stored profile
    (``annotator/name``), with explicit weights, or for the crowd, on the page's texts (default: the
    dataset's first pair). Texts are shown as code, never rendered."""
    from moe_reward.serve.snippets import client_snippets

    w = None if profile is not None or weights is None else [float(x) for x in weights]
    whose = f"profile {profile}" if profile else "these weights" if w is not None else "the crowd's reward"
    # Drawn when opened (a lazy expander: its opening reruns the page): a code block loads the syntax
    # highlighter's script, ~0.3 s of every new tab in Chromium even inside a closed expander.
    box = st.expander(
        f"Score with {md(whose)} from a script or an RLHF trainer",
        icon=":material/terminal:",
        key=SNIPPETS_OPEN,
        on_change="rerun",
    )
    if not box.open:
        return
    first = ctx.features.pairs[0]
    s = client_snippets(
        ctx.model_dir,
        first.prompt if prompt is None else prompt,
        first.chosen if response is None else response,
        profile=profile,
        weights=w,
    )
    with box:
        st.caption(
            (
                "The server reads this profile from the label store at every request: labels added here "
                "change its rewards at once. "
                if profile
                else "These are the weights now (not yet a stored profile): the calls score with a copy. "
                if w is not None
                else ""
            )
            + "Start the server, then call it, or score in a Python process (TRL's reward-function "
            "signature); README: Use it in RLHF."
        )
        st.code(s["serve"], language="bash", wrap_lines=True)
        st.code(s["curl"], language="bash", wrap_lines=True)
        st.code(s["python"], language="python", wrap_lines=True)


# ----------------------------------------------------------------------------- small shared views


def below_chance_caption(accuracy, n: int, what: str) -> None:
    """A caption that says why an accuracy under 0.5 is there (nothing when it is not)."""
    note = summary.below_chance_note(accuracy, n)
    if note:
        st.caption(f"Accuracy on {md(what)} is under 0.5: {md(note)}.")


def what_if_view(
    ctx: Context,
    w,
    key: str,
    sides: tuple[str, str] = ("original", "edited"),
    responses: tuple[str, str] = ("chosen", "rejected"),
) -> None:
    """A what-if (moe_reward.app.whatif.WhatIf): one sentence, the model's margin before and after, and
    the routing and every expert's margin side by side (`responses` names the two responses)."""
    before, after = sides
    first, second = responses
    o, e = w.original, w.edited
    st.markdown(md(w.summary(responses)))
    m = st.columns(3)
    m[0].metric(
        f"Margin ({before})", f"{o.margin:+.3f}", help="reward(chosen) − reward(rejected), routed mix"
    )
    m[1].metric(
        f"Margin ({after})",
        f"{e.margin:+.3f}",
        delta=round(e.margin - o.margin, 3),
        help=f"reward(chosen) − reward(rejected), routed mix; the delta is {after} − {before}",
    )
    titles = ctx.expert_titles()
    m[2].metric(
        f"Top expert ({after})",
        titles[e.top_expert],
        delta=None if e.top_expert == o.top_expert else f"was {titles[o.top_expert]}",
        delta_color="off",
    )
    colors = [expert_color(k) for k in range(ctx.k)]
    left, right = st.columns(2)
    for col, title, ytitle, a, b, name in (
        (left, "Routing of the prompt", "weight", o.routing, e.routing, "routing"),
        (
            right,
            f"Each expert's margin ({first} − {second})",
            "margin",
            o.expert_margins,
            e.expert_margins,
            "margins",
        ),
    ):
        spec = charts.expert_bars(
            titles,
            colors,
            {before: a, after: b},
            title=title,
            subtitle=f"{before} faded, {after} solid, in each expert's colour",
            y_title=ytitle,
            y_domain=(0, 1) if name == "routing" else None,
            height=360,
        )
        vega(spec, key=f"{key}_{name}", container=col)
    arrow = lambda x, y: f"{x:+.3f} → {y:+.3f}"  # noqa: E731
    table(
        pd.DataFrame(
            {
                "expert": ctx.expert_titles(),
                f"routing ({before} → {after})": [
                    f"{x:.3f} → {y:.3f}" for x, y in zip(o.routing, e.routing, strict=True)
                ],
                f"reward of {first}": [
                    arrow(x, y) for x, y in zip(o.chosen_rewards, e.chosen_rewards, strict=True)
                ],
                f"reward of {second}": [
                    arrow(x, y) for x, y in zip(o.rejected_rewards, e.rejected_rewards, strict=True)
                ],
                f"margin ({first} − {second})": [
                    arrow(x, y) for x, y in zip(o.expert_margins, e.expert_margins, strict=True)
                ],
            }
        )
    )


def what_if_compare(
    ctx: Context, before: tuple[str, str, str], after: tuple[str, str, str], key: str
) -> None:
    """Score your own: the pair scored now beside the one scored before it (A and B)."""
    from moe_reward.app.whatif import what_if

    wanted = (ctx.model_fid, tuple(before), tuple(after))
    kept = st.session_state.get(f"{key}_result")
    if kept is None or kept[0] != wanted:
        try:
            kept = (wanted, what_if(ctx.model, ctx.backbone(), before, after))
        except (ValueError, OSError, RuntimeError) as exc:
            st.error(md(exc))
            return
        st.session_state[f"{key}_result"] = kept
    what_if_view(ctx, kept[1], key, sides=("before", "now"), responses=("A", "B"))


def expert_weights_table(ctx: Context, weights, start=None) -> None:
    """Each expert's name and description beside its weight in a profile (Personalize)."""
    described = {d.expert: getattr(d, "label", "") for d in ctx.descriptions()}
    frame = pd.DataFrame(
        {
            "expert": ctx.expert_titles(),
            "what it prefers": [described.get(k, "") for k in range(ctx.k)],
            **(
                {"weight at the start": np.round(np.asarray(start, dtype=float), 3)}
                if start is not None
                else {}
            ),
            "weight now": np.round(np.asarray(weights, dtype=float), 3),
        }
    )
    table(frame)


def expert_rewards_table(ctx: Context, a, b) -> None:
    """Each expert's name and description beside its rewards of two responses (Score your own)."""
    from moe_reward.app.whatif import compare_responses

    described = {d.expert: getattr(d, "label", "") for d in ctx.descriptions()}
    frame = pd.DataFrame(
        {
            "expert": ctx.expert_titles(),
            "what it prefers": [described.get(k, "") for k in range(ctx.k)],
            **compare_responses(a, b),
        }
    )
    table(frame)


def what_if_editor(ctx: Context, row: int, key: str) -> None:
    """Edit pair `row`'s prompt or responses and score the edit against the original (Expert detail)."""
    from moe_reward.app.whatif import what_if

    p = ctx.features.pairs[row]
    with st.form(f"{key}_form_{row}"):
        prompt = st.text_area("Prompt", value=p.prompt, key=f"{key}_prompt_{row}")
        c1, c2 = st.columns(2)
        chosen = c1.text_area("Chosen response", value=p.chosen, height=150, key=f"{key}_chosen_{row}")
        rejected = c2.text_area(
            "Rejected response", value=p.rejected, height=150, key=f"{key}_rejected_{row}"
        )
        go_score = st.form_submit_button("Score the edit", type="primary")
    if go_score:
        try:
            with st.spinner("Embedding both versions (the backbone loads once)…"):
                result = what_if(
                    ctx.model, ctx.backbone(), (p.prompt, p.chosen, p.rejected), (prompt, chosen, rejected)
                )
        except (ValueError, OSError, RuntimeError) as exc:
            st.error(md(exc))
            return
        st.session_state[f"{key}_result"] = (ctx.model_fid, row, result)
    found = st.session_state.get(f"{key}_result")
    if found is None or found[0] != ctx.model_fid or found[1] != row:
        st.caption(
            "Change any of the three texts and press **Score the edit**: both versions are embedded the same "
            "way, so what moves comes from the edit alone."
        )
        return
    what_if_view(ctx, found[2], key)


def search_box(ctx: Context, key: str, label: str = "Search the texts") -> tuple[str, np.ndarray | None]:
    """A text search over the pairs' prompt and responses (moe_reward.evaluate.search): (query, rows of
    every pair of the file that match), or (query, None) when the box is empty or the query is invalid
    (the error is shown)."""
    from moe_reward.evaluate.search import MAX_QUERY

    query = st.text_input(
        label,
        key=key,
        max_chars=MAX_QUERY,
        placeholder='words or "a phrase"',
        help="Pairs whose prompt, chosen or rejected response contains every word (case-insensitive); "
        "put a phrase in double quotes. `moe-reward search` does the same.",
    ).strip()
    if not query:
        return "", None
    try:
        return query, _search(ctx.data_fid, query, ctx.features.pairs)
    except ValueError as exc:
        st.error(md(exc))
        return query, None


@st.cache_resource(show_spinner="Searching…", max_entries=32)
def _search(data_fid: str, query: str, _pairs) -> np.ndarray:
    from moe_reward.evaluate.search import search_pairs

    return search_pairs(_pairs, query)


def save_slice_form(ctx: Context, rows: np.ndarray, how: str, description: str, key: str) -> None:
    """'Save these pairs as a slice': a name, an explicit choice to replace a slice of that name, and the
    slice saved in the workspace (moe_reward.app.slices), then picked in the sidebar."""
    from moe_reward.app.slices import Slice, SliceError, save_slice

    if ctx.ws.read_only:
        st.caption(f"Slices cannot be saved: {md(ctx.ws.read_only)}.")
        return
    with st.expander(f"Save these {len(rows)} pairs as a slice", icon=":material/bookmark_add:"):
        with st.form(f"{key}_form", border=False):
            name = st.text_input("Slice name", key=f"{key}_name", placeholder="e.g. step-prompts")
            replace = st.checkbox("Replace a slice with the same name", key=f"{key}_replace")
            st.caption(f"{how}: {md(description)}")
            save = st.form_submit_button("Save slice", type="primary")
        if save:
            ids = ctx.features.ids
            slc = Slice(
                name.strip(), [ids[i] for i in rows], how, description, ctx.data.label, ctx.model_name
            )
            try:
                save_slice(ctx.ws.slices_dir, slc, overwrite=replace)
            except (SliceError, OSError) as exc:
                st.error(md(exc))
            else:
                st.session_state["_pending_slice"] = slc.name
                st.session_state["_slice_saved"] = (
                    f"Saved slice {slc.name} ({slc.n} pairs); it is now picked in the sidebar."
                )
                st.rerun()
    saved = st.session_state.pop("_slice_saved", None)
    if saved:
        st.success(md(saved))


def map_search(ctx: Context, key: str) -> tuple[str, np.ndarray | None]:
    """The Expert map's search box (its query is part of the link: `q`)."""
    init_state(key, "q", str)
    return search_box(ctx, key, label="Search the texts (selects the matching pairs)")


def selection_description(query: str, region: str) -> str:
    """How a map selection was made, in words: 'a box on PCA of …; prompt, chosen or rejected contains "x"'."""
    from moe_reward.evaluate.search import describe_query

    parts = [f"a region of the {region}"] if region else []
    if query:
        try:
            parts.append(describe_query(query))
        except ValueError:
            pass
    return "; ".join(parts) or "pairs picked on the map"
