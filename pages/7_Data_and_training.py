"""Data & training: upload a preference file (validated row by row) and train a model on any data file."""

from __future__ import annotations

import shutil
import uuid

import pandas as pd
import streamlit as st

import ui_common as ui
from moe_reward.app.pipeline import TrainRequest
from moe_reward.app.workspace import UploadExists, check_name, is_data_file
from moe_reward.data.pairs import DataError, check_split_field, load_pairs, save_jsonl
from moe_reward.embed.backbone import DEFAULT_BACKBONE
from moe_reward.model.moe import MODEL_KINDS
from moe_reward.train.config import TrainConfig

ROUTER_INPUTS = ("auto", "pooled", "lexical", "pooled+lexical", "attention", "lexical+attention")

ui.page_header(
    "Data & training",
    "Upload preference pairs (JSONL, JSON, CSV or Parquet: plain, TRL conversational, "
    "HH-RLHF or HelpSteer2 rows) and train a model on them.",
)
ws = ui.workspace()
ui.current_selection(ws)  # draws the sidebar when this page runs on its own (tests)

# ----------------------------------------------------------------------------- upload
st.subheader("1 · Upload")
if ws.read_only:
    st.warning(
        f"{ui.md(ws.read_only)}: uploads and training are off; everything here can still be read.",
        icon=":material/lock:",
    )
# After a save the uploader starts empty (a new key): the saved file is not checked again, so "will be
# replaced" never shows next to "Saved".
upload = st.file_uploader(
    "Preference file",
    type=["jsonl", "ndjson", "json", "csv", "parquet", "gz"],
    key=f"dt_upload_{st.session_state.get('dt_upload_round', 0)}",
    disabled=bool(ws.read_only),
)
if upload is not None and not ws.read_only:
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
    try:
        probe.parent.mkdir()
        probe.write_bytes(upload.getvalue())
    except OSError as exc:
        shutil.rmtree(probe.parent, ignore_errors=True)
        st.error(f"Could not store the upload for checking: {ui.md(exc.strerror or exc)}")
        st.stop()
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
            st.dataframe(
                pd.DataFrame(
                    [{"row (line)": e.line, "field": e.field or "", "problem": e.reason} for e in errors]
                ),
                hide_index=True,
                width="stretch",
                height=240,
            )
        if pairs:
            groups = sorted({p.group for p in pairs if p.group})
            users = sorted({p.user for p in pairs if p.user})
            st.write(f"{len(pairs)} valid pairs · {len(groups)} groups · {len(users)} users")
            st.dataframe(
                pd.DataFrame([{k: v for k, v in p.to_dict().items() if k != "meta"} for p in pairs[:50]]),
                hide_index=True,
                width="stretch",
                height=240,
            )
            label = "Add to datasets" if not errors else "Add the valid rows only (as JSONL)"
            target = ws.upload_target(upload.name, valid_rows_only=bool(errors))  # the file the button writes
            replace = target.exists() and st.checkbox(
                f"Replace uploads/{target.name}: it exists and will be deleted",
                key=f"dt_replace_{target.name}",
            )
            if st.button(label, type="primary", key="dt_save"):
                try:
                    ws.save_upload(
                        target,
                        (lambda tmp: save_jsonl(pairs, tmp))
                        if errors
                        else (lambda tmp: shutil.copyfile(probe, tmp)),
                        replace=target.name if replace else None,
                    )
                except UploadExists as exc:
                    st.error(ui.md(exc))
                except OSError as exc:
                    st.error(
                        f"Could not save uploads/{ui.md(target.name)}: {ui.md(exc.strerror or exc)}; nothing "
                        "was added."
                    )
                else:
                    st.session_state["dt_message"] = f"Saved uploads/{target.name} ({len(pairs)} pairs)."
                    st.session_state["dt_upload_round"] = st.session_state.get("dt_upload_round", 0) + 1
                    st.session_state["dt_data"] = f"uploads/{target.name}"  # train on it next
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
TRAIN_JOB = ui.TRAIN_JOB  # this session's training job (it runs on when the user leaves the page)
FORM_DEFAULTS = {
    "dt_name": "my-sparse",
    "dt_backbone": DEFAULT_BACKBONE,
    "dt_kind": MODEL_KINDS[0],
    "dt_k": 8,
    "dt_topk": 2,
    "dt_epochs": TrainConfig().epochs,
    "dt_router_input": ROUTER_INPUTS[0],
    "dt_split_by": "prompt",
    "dt_overwrite": False,
}
# What was entered is kept across page changes and runs (Streamlit drops a widget's state when its page
# is left): the widgets are views of these values.
KEPT = "_dt_form"
for key, value in {**FORM_DEFAULTS, **(st.session_state.get(KEPT) or {})}.items():
    if key not in st.session_state:
        st.session_state[key] = value
labels = [d.label for d in data]
if st.session_state.get("dt_data") not in labels:
    st.session_state["dt_data"] = labels[0]


def own_job():
    """This session's training job while it runs (or None)."""
    from moe_reward.app import jobs

    key, _ = st.session_state.get(TRAIN_JOB, (None, None))
    job = jobs.get(key) if key else None
    return job if job is not None and job.active else None


running = own_job()
# Enter in a text field does not submit: training starts from the button only.
with st.form("train_form", enter_to_submit=False):
    c1, c2, c3 = st.columns(3)
    data_label = c1.selectbox("Data", labels, key="dt_data")
    name = c2.text_input("Model name", key="dt_name")
    backbone = c3.text_input(
        "Backbone",
        key="dt_backbone",
        help="The shipped MiniLM, or a local path to any transformers encoder/decoder",
    )
    c1, c2, c3, c4 = st.columns(4)
    kind = c1.selectbox("Model kind", MODEL_KINDS, key="dt_kind")
    experts = c2.number_input("Experts (K)", 1, 64, key="dt_k")
    top_k = c3.number_input("Top-k (sparse)", 1, 64, key="dt_topk")
    epochs = c4.number_input("Epochs", 1, 500, key="dt_epochs")
    c1, c2 = st.columns(2)
    router_input = c1.selectbox(
        "Router reads",
        ROUTER_INPUTS,
        key="dt_router_input",
        help="auto: chosen on validation likelihood among pooled, lexical and pooled+lexical; "
        "attention runs the backbone over the prompts (see the README)",
    )
    split_by = c2.text_input(
        "Split by",
        key="dt_split_by",
        help="keep every value of this field on one side of train / validation / test: prompt, "
        "group, user, id or meta.<key> (e.g. meta.question_id for held-out questions)",
    )
    overwrite = st.checkbox("Replace a model with the same name", key="dt_overwrite")
    start = st.form_submit_button(
        "Train",
        type="primary",
        disabled=running is not None,
        help="Your training runs below; one at a time per session." if running is not None else None,
    )
st.session_state[KEPT] = {
    key: st.session_state[key] for key in ["dt_data", *FORM_DEFAULTS] if key in st.session_state
}

if start and running is None:
    try:
        check_name(name, "model name")
        req = TrainRequest(
            data=str(data[[d.label for d in data].index(data_label)].path),
            kind=kind,
            experts=int(experts),
            top_k=min(int(top_k), int(experts)),
            backbone=backbone.strip(),
            router_input=router_input,
            split_by=split_by.strip() or None,
            train=TrainConfig.for_kind(kind, epochs=int(epochs)),
        )
        check_split_field(req.split_by)
        job = ws.train_in_background(name, req, overwrite=overwrite)
    except (ValueError, OSError) as exc:  # a taken or bad name, a read-only workspace
        st.error(ui.md(exc))
    else:
        st.session_state[TRAIN_JOB] = (job.key, name)
        st.rerun()  # the form shows the button off while this session's training runs


def training_progress() -> None:
    """Live progress of this session's training (a fragment: reruns itself; the page reruns when it ends)."""
    from moe_reward.app import jobs

    key, model_name = st.session_state.get(TRAIN_JOB, (None, None))
    job = jobs.get(key) if key else None
    if job is None or not job.active:
        st.rerun()  # the whole app: the sidebar selects the new model, this page shows the result
    st.progress(
        min(job.fraction, 1.0),
        text=f"Training {ui.md(model_name)}: {ui.md(job.message or 'starting')} "
        f"({job.elapsed:.0f} s so far; runs on if you leave this page)",
    )


if running is not None:
    st.fragment(run_every=0.5)(training_progress)()
if st.session_state.get("dt_trained"):
    st.success(ui.md(st.session_state.pop("dt_trained")))
for w in st.session_state.pop("dt_warnings", []):
    st.warning(ui.md(w), icon=":material/warning:")
if "dt_failed" in st.session_state:
    failed, error, details = st.session_state.pop("dt_failed")
    st.error(
        f"Training {ui.md(failed)} failed: {ui.md(error)}. The workspace, its models and the stored labels are "
        "as they were."
    )
    if details:
        with st.expander("Details"):
            st.code(details, language=None)

st.subheader("Models in the workspace")
rows = []
for m in ws.list_models():
    metrics = ui.model_metrics(ws.model_path(m))
    test = metrics.get("test", {})
    rows.append(
        {
            "model": m,
            "kind": test.get("model", ""),
            "test accuracy": test.get("accuracy"),
            "test pairs": test.get("n_pairs"),
            "routing NMI": test.get("routing_nmi"),
            "epochs run": metrics.get("epochs_run"),
            "data": ui.data_label_of(ws, ws.model_path(m)),
            "warning": "; ".join(metrics.get("warnings") or []),
        }
    )
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
for skipped, why in ws.model_notes.items():
    st.caption(f"Skipped {ui.md(skipped)}: {ui.md(why)}")
