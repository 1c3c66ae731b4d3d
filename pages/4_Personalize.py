"""Personalize: label a few pairs and watch a profile (weights over the frozen experts) move.

Each label is oriented "preferred minus other": if the user prefers the response shown as A, the
adapter sees r_k(A) - r_k(B) for every expert k. Which dataset response is shown as A is random, so the
position of a response never tells the user which one the dataset preferred. The label, the updated
profile and its history row are committed to SQLite before the page confirms them.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import ui_common as ui
from moe_reward.data import split_pairs
from moe_reward.personalize import (
    ADAPTERS,
    Adapter,
    make_adapter,
    margin_scale_for,
    personalized_accuracy,
    prior_from_routing,
    select_next,
    weight_shift,
)
from moe_reward.store import Label

NEW_PROFILE = "＋ new profile"
MODES = ("Active choice", "Random", "Type your own pair")

ui.page_header("Personalize", "Label a few pairs: your profile re-weights the experts after every label.")
ctx = ui.context()
if ctx is None:
    st.stop()
store = ui.label_store(str(ctx.ws.labels_db))
margins, logits = ctx.margins()
names = ctx.expert_names()
pairs = ctx.features.pairs


@st.cache_resource(show_spinner=False, max_entries=8)
def starting_point(model_fid: str, data_fid: str, _routing: np.ndarray, _margins: np.ndarray):
    """A new profile starts at the model's average routing; margins are scaled per expert."""
    return prior_from_routing(_routing), margin_scale_for(_margins)


prior, scale = starting_point(ctx.model_fid, ctx.data_fid, ctx.scores.routing, margins)


def fresh_adapter(name: str) -> Adapter:
    return make_adapter(name, ctx.k, prior, margin_scale=scale)


def adapter_from_record(rec) -> Adapter:
    if rec.profile.get("num_experts") == ctx.k:
        try:
            return Adapter.from_dict(rec.profile)
        except (KeyError, ValueError) as exc:
            st.warning(f"Stored profile could not be restored ({exc}); starting afresh.")
    return fresh_adapter(rec.adapter)


# ----------------------------------------------------------------------------- who is labeling
with st.container(border=True):
    c1, c2, c3 = st.columns([1, 1, 1])
    annotator = c1.text_input("Annotator", value="guest", key="pz_annotator").strip() or "guest"
    existing = [p.name for p in store.profiles(annotator=annotator, model=ctx.model_name)]
    if "pz_pending_profile" in st.session_state:  # just created: select it (before the widget exists)
        st.session_state["pz_profile"] = st.session_state.pop("pz_pending_profile")
    choice = c2.selectbox("Profile", existing + [NEW_PROFILE], key="pz_profile")
    if choice == NEW_PROFILE:
        new_name = c3.text_input("New profile name", value=f"profile-{len(existing) + 1}", key="pz_new_name")
        new_adapter = c3.selectbox("Adapter", ADAPTERS, key="pz_new_adapter")
        if c3.button("Create profile", type="primary", key="pz_create"):
            rec = store.get_or_create_profile(annotator, new_name.strip() or "profile", ctx.model_name, new_adapter,
                                              fresh_adapter(new_adapter).to_dict())
            st.session_state["pz_pending_profile"] = rec.name
            st.rerun()
        st.info("Create a profile (or pick one) to start labeling.")
        st.stop()

rec = store.get_or_create_profile(annotator, choice, ctx.model_name, ADAPTERS[0])
state_key = (ctx.model_fid, ctx.data_fid, rec.id)
S = st.session_state.setdefault("pz", {})
if S.get("key") != state_key:  # a different profile, model or dataset: load it
    S.clear()
    S.update(key=state_key, adapter=adapter_from_record(rec), idx=None, a_is_chosen=True, skipped=set(),
             typed=None, rng=np.random.default_rng(), message=None, update_ms=None)
adapter: Adapter = S["adapter"]

# ----------------------------------------------------------------------------- options
with st.container(border=True):
    c1, c2, c3 = st.columns([1, 1, 1])
    adapter_name = c1.selectbox("Adapter", ADAPTERS, index=ADAPTERS.index(adapter.name), key=f"pz_adapter_{rec.id}",
                                help="hedge: multiplicative weights · batch: closed form over all labels · "
                                     "gradient: Bradley-Terry on the mixed margin")
    users = sorted({p.user for p in pairs if p.user})
    persona = c2.selectbox("Persona (simulated user)", ["(none)"] + users, key="pz_persona",
                           help="The dataset's `user` field. Its held-out pairs measure the profile's accuracy.")
    mode = c3.radio("Next pair", MODES, key="pz_mode", horizontal=False)

if adapter_name != adapter.name:  # refit the same labels with another adapter
    old = adapter.to_dict()["labels"]
    adapter = fresh_adapter(adapter_name)
    if old["expert_margins"]:
        adapter.fit(np.asarray(old["expert_margins"]), old["pair_ids"],
                    None if old.get("router_logits") is None else np.asarray(old["router_logits"]))
    S["adapter"] = adapter
    store.save_profile(rec.id, adapter.to_dict(), adapter=adapter_name)



@st.cache_resource(show_spinner=False, max_entries=32)
def persona_split(data_fid: str, persona: str, _pairs) -> tuple[np.ndarray, np.ndarray]:
    """(pool to label from, held-out pairs) of one persona: 70/30 by prompt, so no prompt is on both sides."""
    if persona == "(none)":
        return np.arange(len(_pairs)), np.array([], dtype=np.int64)
    mine = np.array([i for i, p in enumerate(_pairs) if p.user == persona])
    split = split_pairs([_pairs[i] for i in mine], validation=0.0, test=0.3, seed=0)
    return mine[split.train], mine[split.test]


pool, held_out = persona_split(ctx.data_fid, persona, pairs)
id_to_row = {p.id: i for i, p in enumerate(pairs)}


def blocked_rows() -> np.ndarray:
    """Pool positions already labeled (in this profile) or skipped (in this session)."""
    done = set(adapter.labeled_ids) | S["skipped"]
    return np.array([pairs[i].id in done for i in pool], dtype=bool)


def next_pair(strategy: str) -> int | None:
    blocked = blocked_rows()
    if blocked.all():
        return None
    return int(pool[select_next(adapter, margins[pool], exclude=blocked, strategy=strategy, rng=S["rng"])])


def commit(m_pref: np.ndarray, pair_id: str, prompt: str, preferred: str, other: str, source: str,
           router_logits: np.ndarray | None) -> None:
    """Update the profile, then write label + profile + history in one transaction."""
    t0 = time.perf_counter()
    weights = adapter.update(m_pref, pair_id, router_logits)
    try:
        label_id = store.record_label(Label(annotator, pair_id, prompt, preferred, other, profile_id=rec.id,
                                            source=source), adapter.to_dict(), weights.tolist(), adapter.n_labels)
    except Exception:
        adapter.undo()  # not stored: not applied
        raise
    S["update_ms"] = (time.perf_counter() - t0) * 1000
    S["message"] = f"Saved label #{label_id} ({adapter.n_labels} labels in this profile)."


def on_label(a_preferred: bool) -> None:
    if mode == MODES[2]:
        t = S["typed"]
        sign = 1.0 if a_preferred else -1.0
        pref, other = (t["a"], t["b"]) if a_preferred else (t["b"], t["a"])
        commit(sign * t["margins"], t["id"], t["prompt"], pref, other, "typed", t["logits"])
        S["typed"] = None
        return
    i = S["idx"]
    p = pairs[i]
    chose_dataset_chosen = a_preferred == S["a_is_chosen"]
    m = margins[i] if chose_dataset_chosen else -margins[i]
    pref, other = (p.chosen, p.rejected) if chose_dataset_chosen else (p.rejected, p.chosen)
    commit(m, p.id, p.prompt, pref, other, "manual", logits[i])
    S["idx"] = None


def on_skip() -> None:
    if mode == MODES[2]:
        S["typed"] = None
    elif S["idx"] is not None:
        S["skipped"].add(pairs[S["idx"]].id)
        S["idx"] = None


def on_undo() -> None:
    if adapter.n_labels:
        adapter.undo()
        store.undo_last(rec.id, adapter.to_dict())
        S["message"] = f"Undone; {adapter.n_labels} labels left."


def on_reset() -> None:
    adapter.reset()
    n = store.reset_profile(rec.id, adapter.to_dict())
    S.update(idx=None, skipped=set(), message=f"Profile reset ({n} stored labels removed).")


def on_simulate(steps: int) -> None:
    """The persona labels: it prefers what the dataset says it chose (margins as stored: chosen - rejected)."""
    strategy = "random" if mode == MODES[1] else "active"
    for _ in range(steps):
        i = next_pair(strategy)
        if i is None:
            S["message"] = f"{ui.md(persona)} has no unlabeled pair left."
            return
        p = pairs[i]
        commit(margins[i], p.id, p.prompt, p.chosen, p.rejected, "simulated", logits[i])
    S["idx"] = None


# ----------------------------------------------------------------------------- the pair to label
left, right = st.columns([3, 2])
with left:
    if mode == MODES[2]:
        with st.form("typed_pair"):
            prompt = st.text_area("Prompt", key="pz_typed_prompt")
            a = st.text_area("Response A", key="pz_typed_a")
            b = st.text_area("Response B", key="pz_typed_b")
            use = st.form_submit_button("Use this pair")
        if use:
            if not (prompt.strip() and a.strip() and b.strip()) or a.strip() == b.strip():
                st.error("Give a prompt and two different responses.")
            else:
                from moe_reward.pipeline import score_texts

                with st.spinner("Embedding the pair…"):
                    scored = score_texts(ctx.model, ctx.backbone(), prompt, [a, b])
                digest = hashlib.sha1(f"{prompt}\x00{a}\x00{b}".encode()).hexdigest()[:12]
                S["typed"] = dict(id=f"typed-{digest}", prompt=prompt, a=a, b=b,
                                  margins=np.subtract(scored[0].expert_rewards, scored[1].expert_rewards),
                                  logits=np.log(np.clip(scored[0].router_probs, 1e-12, None)))
        shown = S["typed"]
        if shown:
            st.caption("Your pair")
            st.code(shown["prompt"], language=None, wrap_lines=True)
            ca, cb = st.columns(2)
            ca.markdown("**A**")
            ca.code(shown["a"], language=None, wrap_lines=True)
            cb.markdown("**B**")
            cb.code(shown["b"], language=None, wrap_lines=True)
    else:
        if S["idx"] is None or pairs[S["idx"]].id in set(adapter.labeled_ids):
            S["idx"] = next_pair("active" if mode == MODES[0] else "random")
            S["a_is_chosen"] = bool(S["rng"].random() < 0.5)  # randomize the side
        shown = S["idx"] is not None
        if shown:
            p = pairs[S["idx"]]
            a_text, b_text = (p.chosen, p.rejected) if S["a_is_chosen"] else (p.rejected, p.chosen)
            st.caption(f"Pair {ui.md(p.id)}" + (f" · group {ui.md(p.group)}" if p.group else ""))
            st.code(p.prompt, language=None, wrap_lines=True)
            ca, cb = st.columns(2)
            ca.markdown("**A**")
            ca.code(a_text, language=None, wrap_lines=True)
            cb.markdown("**B**")
            cb.code(b_text, language=None, wrap_lines=True)
        else:
            st.success("Every pair in the pool is labeled or skipped.")
    b1, b2, b3, b4, b5 = st.columns(5)
    b1.button("A is better", key="pz_a", on_click=on_label, args=(True,), disabled=not shown, type="primary",
              width="stretch")
    b2.button("B is better", key="pz_b", on_click=on_label, args=(False,), disabled=not shown, type="primary",
              width="stretch")
    b3.button("Skip", key="pz_skip", on_click=on_skip, disabled=not shown, width="stretch")
    b4.button("Undo", key="pz_undo", on_click=on_undo, disabled=not adapter.n_labels, width="stretch")
    b5.button("Reset", key="pz_reset", on_click=on_reset, disabled=not adapter.n_labels, width="stretch",
              help="Forget this profile's labels")
    if S["message"]:
        st.success(S["message"])
        S["message"] = None
    if persona != "(none)":
        with st.container(border=True):
            st.markdown(f"**Simulate {ui.md(persona)}**: the persona labels pairs from its pool by itself.")
            s1, s2, s3 = st.columns([2, 3, 2])
            n_steps = s2.slider("Steps", 1, 50, 10, key="pz_sim_steps", label_visibility="collapsed")
            s1.button(f"Simulate {n_steps} step(s)", key="pz_simulate", on_click=on_simulate, args=(n_steps,),
                      width="stretch")
            autoplay = s3.toggle("Auto-play", key="pz_autoplay", help="One simulated label about every second")

# ----------------------------------------------------------------------------- the profile
with right:
    shift = weight_shift(adapter, top=1)
    st.metric("Labels in this profile", adapter.n_labels)
    fig = go.Figure([go.Bar(x=names, y=shift["before"], name="before", marker_color="#BAB0AC"),
                     go.Bar(x=names, y=shift["after"], name="now", marker_color="#4C78A8")])
    fig.update_layout(title="Profile: expert weights", barmode="group", height=300, margin=dict(t=40, b=10),
                      yaxis_range=[0, max(1e-9, max(shift["before"] + shift["after"])) * 1.15])
    st.plotly_chart(fig, width="stretch", key="pz_weights")
    st.caption("weights now: " + " · ".join(f"E{k} {w:.3f}" for k, w in enumerate(shift["after"])))
    if S["update_ms"] is not None:
        st.caption(f"last update + save: {S['update_ms']:.1f} ms")

history = np.array([adapter.initial_weights] + [h.weights for h in adapter.history])
c1, c2 = st.columns(2)
with c1:
    frame = pd.DataFrame(history, columns=names).rename_axis("labels").reset_index().melt(
        id_vars="labels", var_name="expert", value_name="weight")
    fig = go.Figure([go.Scatter(x=g["labels"], y=g["weight"], name=e, mode="lines+markers")
                     for e, g in frame.groupby("expert", sort=False)])
    fig.update_layout(title="Weight history", xaxis_title="labels", yaxis_title="weight", height=320,
                      margin=dict(t=40, b=10), xaxis=dict(tickformat="d", rangemode="tozero"))
    st.plotly_chart(fig, width="stretch", key="pz_history")
with c2:
    if len(held_out):
        # Accuracy of every profile in the history on the persona's held-out pairs (weights-only mix).
        accs = ((margins[held_out] @ history.T) > 0).mean(0)
        base = float(ctx.scores.correct[held_out].mean())
        now = personalized_accuracy(adapter, margins[held_out], logits[held_out])
        m1, m2, m3 = st.columns(3)
        m1.metric("Held-out accuracy now", f"{now:.3f}", delta=f"{now - accs[0]:+.3f} vs start")
        m2.metric("Starting profile", f"{accs[0]:.3f}")
        m3.metric("Model's own routing", f"{base:.3f}")
        fig = go.Figure(go.Scatter(x=np.arange(len(accs)), y=accs, mode="lines+markers", name="profile"))
        fig.add_hline(y=base, line_dash="dot", annotation_text="model routing")
        fig.update_layout(title=f"Accuracy on {ui.chart(persona)}'s {len(held_out)} held-out pairs", xaxis_title="labels",
                          yaxis_range=[0, 1.05], height=260, margin=dict(t=40, b=10), xaxis=dict(tickformat="d"))
        st.plotly_chart(fig, width="stretch", key="pz_accuracy")
    else:
        st.caption("Pick a persona to measure the profile on that persona's held-out pairs.")

if adapter.n_labels:
    st.markdown("**The label that moved each expert most**")
    rows = []
    for k, movers in shift["top_movers"].items():
        for pid, delta in movers:
            r = id_to_row.get(pid)
            rows.append({"expert": names[int(k)], "pair": pid, "weight change": round(delta, 4),
                         "prompt": pairs[r].prompt if r is not None else ""})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

# ----------------------------------------------------------------------------- export / import (then auto-play)
with st.expander("Export / import profile"):
    exported = {**adapter.to_dict(), "model": ctx.model_name, "annotator": annotator, "profile": rec.name}
    st.download_button("Download profile JSON", json.dumps(exported, indent=2).encode("utf-8"),
                       f"{annotator}-{rec.name}.profile.json", "application/json", key="pz_export")
    upload = st.file_uploader("Import a profile JSON", type=["json"], key="pz_import")
    if upload is not None and st.button("Replace this profile with the file", key="pz_import_go"):
        try:
            imported = Adapter.from_dict(json.loads(upload.getvalue().decode("utf-8")))
            if imported.num_experts != ctx.k:
                raise ValueError(f"the file has {imported.num_experts} experts, this model {ctx.k}")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            st.error(f"Not a usable profile: {exc}")
        else:
            S["adapter"] = imported
            store.save_profile(rec.id, imported.to_dict(), adapter=imported.name)
            st.session_state.pop(f"pz_adapter_{rec.id}", None)  # the selector follows the imported adapter
            S["message"] = f"Imported a {imported.name} profile with {imported.n_labels} labels."
            st.rerun()

if persona != "(none)" and st.session_state.get("pz_autoplay") and not blocked_rows().all():
    # Demo mode: the page is drawn, pause, label one more pair as the persona, draw again. Any click
    # (or switching the toggle off) interrupts the pause, so the user stays in control.
    time.sleep(0.8)
    on_simulate(1)
    st.rerun()
