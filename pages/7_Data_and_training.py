"""Data & training: upload a preference file (validated row by row) and train a model on any data file."""

from __future__ import annotations

import shutil
import traceback
import uuid

import pandas as pd
import streamlit as st

import ui_common as ui
from moe_reward.data import DataError, load_pairs, save_jsonl
from moe_reward.embed import DEFAULT_BACKBONE, BackboneSpec
from moe_reward.model import MODEL_KINDS
from moe_reward.pipeline import TrainRequest, train_from_data
from moe_reward.train import TrainConfig
from moe_reward.workspace import check_name, is_data_file

ui.page_header("Data & training", "Upload preference pairs (JSONL, JSON, CSV or Parquet: plain, TRL conversational, "
               "HH-RLHF or HelpSteer2 rows) and train a model on them.")
ws = ui.workspace()
ui.current_selection(ws)  # draws the sidebar when this page runs on its own (tests)

# ----------------------------------------------------------------------------- upload
st.subheader("1 · Upload")
upload = st.file_uploader("Preference file", type=["jsonl", "ndjson", "json", "csv", "parquet", "gz"], key="dt_upload")
if upload is not None:
    try:
        target = ws.upload_path(upload.name)
    except ValueError as exc:
        st.error(ui.md(exc))
        st.stop()
    # Validate a hidden copy first: a bad file never shows up among the datasets.
    if not is_data_file(target.name):
        st.error("Use a .jsonl, .json, .csv or .parquet file (optionally gzipped: .jsonl.gz, .csv.gz).")
        st.stop()
    # (under its own name, in a hidden folder: row ids default to "<file stem>-<line>")
    probe = ws.uploads_dir / f".check-{uuid.uuid4().hex}" / target.name
    probe.parent.mkdir()
    probe.write_bytes(upload.getvalue())
    try:
        errors, pairs = [], []
        try:
            pairs = load_pairs(probe).pairs
        except DataError as exc:
            errors = exc.errors
            try:
                pairs = load_pairs(probe, skip_bad=True).pairs
            except DataError:
                pairs = []
        except (ValueError, OSError) as exc:
            st.error(f"Could not read {ui.md(upload.name)}: {ui.md(exc)}")
            st.stop()
        for e in errors:
            e.file = upload.name  # the hidden copy's name means nothing to the user
        if errors:
            st.error(f"{len(errors)} malformed rows in {ui.md(upload.name)}; {len(pairs)} rows are valid.")
            st.dataframe(pd.DataFrame([{"row (line)": e.line, "field": e.field or "", "problem": e.reason}
                                       for e in errors]), hide_index=True, width="stretch", height=240)
        if pairs:
            groups = sorted({p.group for p in pairs if p.group})
            users = sorted({p.user for p in pairs if p.user})
            st.write(f"{len(pairs)} valid pairs · {len(groups)} groups · {len(users)} users")
            st.dataframe(pd.DataFrame([{k: v for k, v in p.to_dict().items() if k != "meta"} for p in pairs[:50]]),
                         hide_index=True, width="stretch", height=240)
            label = "Add to datasets" if not errors else "Add the valid rows only (as JSONL)"
            if target.exists():
                st.warning(f"uploads/{target.name} exists and will be replaced.")
            if st.button(label, type="primary", key="dt_save"):
                if errors:
                    target = ws.upload_path(target.name.split(".")[0] + ".jsonl")
                    save_jsonl(pairs, target)
                else:
                    shutil.copyfile(probe, target)
                st.session_state["dt_message"] = f"Saved uploads/{target.name} ({len(pairs)} pairs)."
                st.rerun()
    finally:
        shutil.rmtree(probe.parent, ignore_errors=True)
if st.session_state.get("dt_message"):
    st.success(st.session_state.pop("dt_message"))

# ----------------------------------------------------------------------------- train
st.subheader("2 · Train")
data = ws.list_data()
if not data:
    st.info("No data file yet: upload one above.")
    st.stop()
with st.form("train_form"):
    c1, c2, c3 = st.columns(3)
    data_label = c1.selectbox("Data", [d.label for d in data], key="dt_data")
    name = c2.text_input("Model name", value="my-sparse", key="dt_name")
    backbone = c3.text_input("Backbone", value=DEFAULT_BACKBONE, key="dt_backbone",
                             help="The shipped MiniLM, or a local path to any transformers encoder/decoder")
    c1, c2, c3, c4 = st.columns(4)
    kind = c1.selectbox("Model kind", MODEL_KINDS, key="dt_kind")
    experts = c2.number_input("Experts (K)", 1, 64, 8, key="dt_k")
    top_k = c3.number_input("Top-k (sparse)", 1, 64, 2, key="dt_topk")
    epochs = c4.number_input("Epochs", 1, 500, TrainConfig().epochs, key="dt_epochs")
    overwrite = st.checkbox("Replace a model with the same name", key="dt_overwrite")
    start = st.form_submit_button("Train", type="primary")

if start:
    try:
        check_name(name, "model name")
        out = ws.model_path(name)
        if out.exists() and not overwrite:
            raise ValueError(f"a model named {name!r} exists; tick 'Replace' or pick another name")
        req = TrainRequest(data=str(data[[d.label for d in data].index(data_label)].path), kind=kind,
                           experts=int(experts), top_k=min(int(top_k), int(experts)), backbone=backbone.strip(),
                           train=TrainConfig.for_kind(kind, epochs=int(epochs)))
    except ValueError as exc:
        st.error(ui.md(exc))
        st.stop()
    bar = st.progress(0.0, text="starting")
    staging = ws.models_dir / f".training-{uuid.uuid4().hex}"  # invisible until complete
    try:
        feats = ws.features_for(req.data, BackboneSpec(req.backbone),
                                progress=lambda msg, frac: bar.progress(min(0.5 * frac, 1.0), text=msg))
        _, metrics = train_from_data(req, staging, features=feats,
                                     stage=lambda msg, frac: bar.progress(min(max(frac, 0.5), 1.0), text=msg))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except Exception as exc:  # the app, its models and the stored labels stay as they were
        shutil.rmtree(staging, ignore_errors=True)
        bar.empty()
        st.error(f"Training failed: {ui.md(exc)}")
        with st.expander("Details"):
            st.code(traceback.format_exc(), language=None)
        st.stop()
    bar.empty()
    test = metrics["test"]
    st.session_state["_pending_model"] = name
    st.session_state["dt_message"] = (f"Trained {name}: test accuracy {test['accuracy']:.3f} on {test['n_pairs']} pairs, "
                                      f"routing NMI {ui.fmt(test['routing_nmi'])}, {metrics['train_seconds']:.1f} s. "
                                      "It is now selected in the sidebar.")
    st.rerun()

st.subheader("Models in the workspace")
rows = []
for m in ws.list_models():
    metrics = ui.model_metrics(ws.model_path(m))
    test = metrics.get("test", {})
    rows.append({"model": m, "kind": test.get("model", ""), "test accuracy": test.get("accuracy"),
                 "routing NMI": test.get("routing_nmi"), "data": metrics.get("data", "")})
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
