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
from moe_reward.train.loop import TrainConfig

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
upload = st.file_uploader(
    "Preference file",
    type=["jsonl", "ndjson", "json", "csv", "parquet", "gz"],
    key="dt_upload",
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
    backbone = c3.text_input(
        "Backbone",
        value=DEFAULT_BACKBONE,
        key="dt_backbone",
        help="The shipped MiniLM, or a local path to any transformers encoder/decoder",
    )
    c1, c2, c3, c4 = st.columns(4)
    kind = c1.selectbox("Model kind", MODEL_KINDS, key="dt_kind")
    experts = c2.number_input("Experts (K)", 1, 64, 8, key="dt_k")
    top_k = c3.number_input("Top-k (sparse)", 1, 64, 2, key="dt_topk")
    epochs = c4.number_input("Epochs", 1, 500, TrainConfig().epochs, key="dt_epochs")
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
        value="prompt",
        key="dt_split_by",
        help="keep every value of this field on one side of train / validation / test: prompt, "
        "group, user, id or meta.<key> (e.g. meta.question_id for held-out questions)",
    )
    overwrite = st.checkbox("Replace a model with the same name", key="dt_overwrite")
    start = st.form_submit_button("Train", type="primary")

TRAIN_JOB = "dt_job"  # this session's training job key (the job runs on when the user leaves the page)

if start:
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


def finish_training(job, model_name: str) -> None:
    """This session's training ended: keep its result (or error) for the page, select the new model."""
    from moe_reward.app import jobs

    st.session_state.pop(TRAIN_JOB, None)
    jobs.forget(job.key)
    if job.status == jobs.FAILED:
        st.session_state["dt_failed"] = (model_name, job.error, job.details)
        return
    m = job.result
    test = m["test"]
    schedule = f"{m['epochs_run']} epochs run of at most {m['epochs_planned']}"
    if m["epochs_planned"] > m.get("epochs_requested", m["epochs_planned"]):
        schedule += (
            f" ({m['epochs_requested']} requested; raised so that {m['splits']['train']} training pairs get "
            f"at least {m['train_config']['min_steps']} optimizer steps)"
        )
    st.session_state["_pending_model"] = model_name
    st.session_state["dt_message"] = (
        f"Trained {model_name}: {m['test_subset']} accuracy {test['accuracy']:.3f} on {test['n_pairs']} pairs, "
        f"routing NMI {ui.fmt(test['routing_nmi'])}; {schedule}, kept epoch {m['best_epoch']}; "
        f"{m['train_seconds']:.1f} s. It is now selected in the sidebar."
    )
    st.session_state["dt_warnings"] = list(m.get("warnings") or [])


def training_progress() -> None:
    """Live progress of this session's training (a fragment: reruns itself; the page reruns when it ends)."""
    from moe_reward.app import jobs

    key, model_name = st.session_state.get(TRAIN_JOB, (None, None))
    job = jobs.get(key) if key else None
    if job is None or not job.active:
        st.rerun()  # the whole page: it shows the result
    st.progress(
        min(job.fraction, 1.0),
        text=f"Training {ui.md(model_name)}: {ui.md(job.message or 'starting')} "
        f"({job.elapsed:.0f} s so far; runs on if you leave this page)",
    )


if TRAIN_JOB in st.session_state:
    from moe_reward.app import jobs as _jobs

    _key, _name = st.session_state[TRAIN_JOB]
    _job = _jobs.get(_key)
    if _job is None:
        st.session_state.pop(TRAIN_JOB, None)
    elif not _job.active:
        finish_training(_job, _name)
        st.rerun()
    else:
        st.fragment(run_every=0.5)(training_progress)()
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
            "data": metrics.get("data", ""),
            "warning": "; ".join(metrics.get("warnings") or []),
        }
    )
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
for skipped, why in ws.model_notes.items():
    st.caption(f"Skipped {ui.md(skipped)}: {ui.md(why)}")
