"""What every dashboard page shares: the workspace, the sidebar selectors and the cached heavy objects.

Everything heavy is cached with `st.cache_resource` keyed on paths + modification times: objects are
kept in memory as they are (`st.cache_data` would pickle them), and a rerun never recomputes them.
User and dataset text is only ever shown through `st.text`/`st.code`/dataframes, never as HTML.
"""

from __future__ import annotations

import html
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from moe_reward import pipeline
from moe_reward.analysis import PairScores, evaluate, groups_of, score_pairs
from moe_reward.embed import BackboneSpec, PairFeatures
from moe_reward.model import SparseMoERewardModel, load_metrics
from moe_reward.store import LabelStore
from moe_reward.workspace import DataFile, Workspace, default_root, file_id, model_training_data

PAGE_TITLE = "MoE Reward Lens"
ENTRY_SIDEBAR = "_sidebar_drawn_by_app"  # set by app.py: the sidebar is drawn before each page runs


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
    """Features of a data file; the first time, embed it with a progress bar (then it is on disk)."""
    if data.suffix != ".safetensors" and not ws.features_file(data, spec).is_file():
        bar = st.progress(0.0, text=f"Embedding {data.name} with {spec.name} (once; cached afterwards)")
        ws.features_for(data, spec, progress=lambda msg, frac: bar.progress(min(frac, 1.0), text=msg))
        bar.empty()
    return _load_features(str(ws.root), str(data), file_id(data), (spec.name, spec.pooling, spec.max_length))


@st.cache_resource(show_spinner=False, max_entries=16)
def _scores(model_fid: str, data_fid: str, _model: SparseMoERewardModel, _features: PairFeatures) -> PairScores:
    return score_pairs(_model, _features)


@st.cache_resource(show_spinner=False, max_entries=16)
def _evaluation(model_fid: str, data_fid: str, _model, _features, _scores) -> dict:
    return evaluate(_model, _features, _scores)


@st.cache_resource(show_spinner="Describing experts…", max_entries=8)
def _descriptions(model_fid: str, data_fid: str, cache_dir: str, _model, _features, _scores) -> list:
    """describe.py's expert descriptions, kept as JSON in the workspace (a few seconds on 10k pairs)."""
    import hashlib

    from moe_reward.describe import describe_experts, load_descriptions, save_descriptions

    path = Path(cache_dir) / f"{hashlib.sha1(f'{model_fid}|{data_fid}'.encode()).hexdigest()[:20]}.json"
    if path.is_file():
        try:
            return load_descriptions(path)
        except (ValueError, KeyError, TypeError):
            pass  # an older format: describe again
    out = describe_experts(_model, _features, _scores)
    save_descriptions(out, path)
    return out


@st.cache_resource(show_spinner=False, max_entries=8)
def _margins(model_fid: str, data_fid: str, _model, _features) -> tuple[np.ndarray, np.ndarray]:
    from moe_reward.personalize import expert_margins_for

    return expert_margins_for(_model, _features)


@st.cache_resource(show_spinner=False, max_entries=4)
def _backbone(spec: tuple):
    from moe_reward.embed import Backbone

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
        return _evaluation(self.model_fid, self.data_fid, self.model, self.features, self.scores)

    def descriptions(self) -> list:
        """describe.py's expert descriptions; [] if that module is unavailable."""
        try:
            return _descriptions(self.model_fid, self.data_fid, str(self.ws.descriptions_dir), self.model,
                                 self.features, self.scores)
        except ImportError:
            return []

    def margins(self) -> tuple[np.ndarray, np.ndarray]:
        return _margins(self.model_fid, self.data_fid, self.model, self.features)

    def backbone(self):
        spec = backbone_spec(self.model)
        return _backbone((spec.name, spec.pooling, spec.max_length))

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
        frame = pd.DataFrame({
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
        })
        if routing:
            for k in range(self.k):
                frame[f"w_E{k}"] = s.routing[idx, k].round(4)
        return frame


def _default_data_label(ws: Workspace, model_dir: Path, data: list[DataFile]) -> str:
    """The data file the model was trained on, when it is listed; else the first one."""
    trained_on = model_training_data(model_dir)
    if trained_on:
        for d in data:
            if str(d.path) == str(Path(trained_on).resolve()) or str(d.path) == trained_on:
                return d.label
    return data[0].label


def sidebar(ws: Workspace) -> tuple[str, DataFile] | None:
    """Model + dataset selectors (keys shared by every page through `st.session_state`)."""
    models = ws.list_models()
    data = ws.list_data()
    with st.sidebar:
        st.subheader("Model and data")
        if not models or not data:
            st.warning("No model or no data file yet: see **Data & training**.")
            return None
        pending = st.session_state.pop("_pending_model", None)  # e.g. just trained (set before the widget exists)
        if pending in models:
            st.session_state["model_name"] = pending
        if st.session_state.get("model_name") not in models:
            st.session_state["model_name"] = models[0]
        name = st.selectbox("Model", models, key="model_name", help=f"Saved models under {ws.models_dir}")
        labels = [d.label for d in data]
        if st.session_state.get("data_label") not in labels:
            st.session_state["data_label"] = _default_data_label(ws, ws.model_path(name), data)
        label = st.selectbox("Dataset", labels, key="data_label", help="The repository's data/ folder and your uploads")
    return name, data[labels.index(label)]


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
        st.error(f"{md(data.label)} has {features.dim}-d features but {md(name)} expects {model.config.input_dim}-d inputs "
                 "(a different backbone); pick another dataset or model.")
        return None
    return Context(ws, name, model_dir, model, data, features, file_id(model_dir), file_id(data.path))


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
