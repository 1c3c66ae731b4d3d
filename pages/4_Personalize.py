"""Personalize: label a few pairs and watch a profile (weights over the frozen experts) move.

Each label is oriented "preferred minus other" (moe_reward.personalize.session): if the user prefers the
response shown as A, the adapter sees r_k(A) - r_k(B) for every expert k. Which dataset response is shown
as A is random, so the position of a response never tells the user which one the dataset preferred.

The stored labels are the profile (moe_reward.personalize.store): two browser sessions on one profile see
each other's labels, and Undo removes this session's newest label only. A click carries the pair it was
shown with (the buttons' key and callback arguments: a `Shown`), so a click that arrives while the page is
still redrawing labels exactly the pair on screen, or is refused with a note when that pair already has its
label; the store holds one label per pair and profile.

Speed: the pair, its buttons, the weights and the history are one fragment (`labeling`): a click reruns
that fragment only, not the page, and everything heavy (model, scores, margins, the pair index, a
persona's split) is computed once per server process and shared by every session. The page reads state,
calls `LabelSession` and draws.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any, TypedDict

import numpy as np
import pandas as pd
import streamlit as st

import ui_common as ui
from moe_reward.app import charts
from moe_reward.data.pairs import split_pairs
from moe_reward.personalize.adapters import (
    ADAPTERS,
    Adapter,
    margin_scale_for,
    prior_from_routing,
    sigmoid,
    span_report,
    weight_shift,
)
from moe_reward.personalize.session import (
    LabelSession,
    ScreenClaims,
    Shown,
    TypedPair,
    persona_accuracy,
    typed_pair,
)
from moe_reward.personalize.store import (
    MAX_IMPORT_LABELS,
    DuplicateLabel,
    Label,
    StaleClick,
    StoreError,
    adapter_from_spec,
    adapter_spec,
    new_profile_spec,
)


class ShownPair(TypedDict):
    """The pair on screen: texts as shown (A and B in display order) and its scores for A over B."""

    prompt: str
    a: str
    b: str
    caption: str
    m_a: np.ndarray  # [K] expert margins of A over B
    logits: np.ndarray  # [K] router logits of the prompt


NEW_PROFILE = "New profile…"  # plain text (a "＋" glyph is a missing-font box in Debian's Chromium)
FIRST_PROFILE = "default"  # what a new annotator's first label creates
MODES = ("Active choice", "Random", "Type your own pair")
ADAPTER_SHORT = {
    "hedge": "hedge (online)",
    "batch": "batch (DRM)",
    "gradient": "gradient (LoRe)",
    "signed": "signed (±)",
}
ADAPTER_HELP = {
    "hedge": "multiplicative weights, one label at a time",
    "batch": "closed form over all labels (DRM)",
    "gradient": "Bradley-Terry on the mixed margin (LoRe)",
    "signed": "weights in R^K, can reverse experts",
}
AUTOPLAY_SECONDS = 1.0  # one simulated label about every second

ui.page_header("Personalize", "Label a few pairs: your profile re-weights the experts after every label.")
ctx = ui.require_context()
try:
    store = ui.label_store(str(ctx.ws.labels_db))
except StoreError as exc:
    st.error(f"The label store cannot be opened: {ui.md(exc)}")
    st.stop()
if store.read_only:
    st.warning(
        f"Labels cannot be saved: {ui.md(store.read_only)}. Stored profiles can still be looked at.",
        icon=":material/lock:",
    )
margins, logits = ctx.margins()
pairs = ctx.features.pairs
SESSION = st.session_state.setdefault(
    "pz_session", uuid.uuid4().hex[:16]
)  # this browser session: what Undo undoes


@st.cache_resource(show_spinner=False, max_entries=8)
def starting_point(model_fid: str, data_fid: str, _routing: np.ndarray, _margins: np.ndarray):
    """A new profile starts at the model's average routing; margins are scaled per expert."""
    return prior_from_routing(_routing), margin_scale_for(_margins)


@st.cache_resource(show_spinner=False, max_entries=8)
def pair_index(data_fid: str, _pairs) -> tuple[dict[str, int], list[str]]:
    """(pair id -> row, the dataset's users): once per data file and server, not per click."""
    return {p.id: i for i, p in enumerate(_pairs)}, sorted({p.user for p in _pairs if p.user})


@st.cache_resource(show_spinner=False, max_entries=32)
def persona_split(data_fid: str, persona: str, _pairs) -> tuple[np.ndarray, np.ndarray]:
    """(pool to label from, held-out pairs) of one persona: 70/30 by prompt, so no prompt is on both sides."""
    if persona == "(none)":
        return np.arange(len(_pairs)), np.array([], dtype=np.int64)
    mine_rows = np.array([i for i, p in enumerate(_pairs) if p.user == persona])
    split = split_pairs([_pairs[i] for i in mine_rows], validation=0.0, test=0.3, seed=0)
    return mine_rows[split.train], mine_rows[split.test]


@st.cache_resource(show_spinner=False)
def screen_claims() -> ScreenClaims:
    """The pair each browser session shows, per profile (one per server): two sessions labeling one
    profile are shown different pairs instead of racing for the same one."""
    return ScreenClaims(ttl=900)


prior, scale = starting_point(ctx.model_fid, ctx.data_fid, ctx.scores.routing, margins)
id_to_row, users = pair_index(ctx.data_fid, pairs)


def fresh_spec(adapter_name: str, **params) -> dict:
    return new_profile_spec(adapter_name, ctx.k, prior, margin_scale=scale, **params)


def flash(kind: str, text: str) -> None:
    """A message for the next run (callbacks run before the page is drawn)."""
    st.session_state.setdefault("pz", {})["flash"] = (kind, text)


# ----------------------------------------------------------------------------- who is labeling
def on_annotator_change() -> None:
    st.session_state.pop("pz_profile", None)  # land on that annotator's last profile


ui.init_state("pz_annotator", "annotator", str)
ui.init_state("pz_profile", "profile", str)
top = st.container(border=True)
c1, c2, c_adapter, c_mode, c_rates = top.columns([1.1, 1.1, 1.5, 1.2, 0.8], vertical_alignment="bottom")
with top:
    st.session_state.setdefault("pz_annotator", "guest")
    annotator = (
        c1.text_input(
            "Annotator",
            key="pz_annotator",
            on_change=on_annotator_change,
            help="Your name: your profiles and labels are kept under it. The address bar then "
            "holds a link that reopens your last profile.",
        ).strip()
        or "guest"
    )
    mine = store.profiles(annotator=annotator, model=ctx.model_name, recent_first=True)
    existing = [p.name for p in mine]
    options = (existing or [FIRST_PROFILE]) + [NEW_PROFILE]
    if st.session_state.get("pz_pending_profile"):  # just created: select it (before the widget exists)
        st.session_state["pz_profile"] = st.session_state.pop("pz_pending_profile")
    asked = st.session_state.get("pz_profile")
    if asked not in options:
        st.session_state["pz_profile"] = options[0]  # the most recently used profile, or a first one
        if asked:  # a link (or an earlier choice) named a profile this annotator does not have here
            st.warning(
                f"{ui.md(annotator)} has no profile “{ui.md(asked)}” on {ui.md(ctx.model_name)}; showing "
                f"“{ui.md(options[0])}”. Pick “{NEW_PROFILE}” to create it."
            )
    choice = c2.selectbox(
        "Profile",
        options,
        key="pz_profile",
        help="Most recently used first. A new annotator's first label creates 'default'.",
    )
    if choice == NEW_PROFILE:
        n1, n2, n3 = st.columns([1.2, 1.5, 1], vertical_alignment="bottom")
        new_name = n1.text_input("New profile name", value=f"profile-{len(existing) + 1}", key="pz_new_name")
        new_adapter = n2.selectbox(
            "Adapter",
            ADAPTERS,
            key="pz_new_adapter",
            format_func=lambda a: ADAPTER_SHORT.get(a) or str(a),
            help=" · ".join(f"{a}: {h}" for a, h in ADAPTER_HELP.items()),
        )
        if n3.button("Create profile", type="primary", key="pz_create", disabled=bool(store.read_only)):
            try:
                rec = store.get_or_create_profile(
                    annotator,
                    new_name.strip() or "profile",
                    ctx.model_name,
                    new_adapter,
                    fresh_spec(new_adapter),
                )
            except StoreError as exc:
                st.error(ui.md(exc))
                st.stop()
            st.session_state["pz_pending_profile"] = rec.name
            st.rerun()
        st.info("Name the new profile and create it (or pick one) to start labeling.")
        st.stop()

profile_name = choice
ui.share_view(annotator=annotator, profile=profile_name)  # the address bar reopens this profile
ident = (annotator, profile_name, ctx.model_name)
state_key = (ctx.model_fid, ctx.data_fid, ident)
S = st.session_state.setdefault("pz", {})
if S.get("key") != state_key:  # a different profile, model or dataset
    S.clear()
    S.update(
        key=state_key,
        state=None,
        shown=None,
        skipped=set(),
        typed=None,
        rng=np.random.default_rng(),
        flash=None,
        update_ms=None,
        confirm_reset=False,
    )
session = LabelSession(
    store,
    annotator,
    profile_name,
    ctx.model_name,
    pairs,
    margins,
    logits,
    prior,
    scale,
    session=SESSION,
    adapter=S.get("pending_adapter", ADAPTERS[0]),
)


def load_state():
    """This profile rebuilt from its labels (only those stored since this session's last look are replayed);
    None before its first label. Draws the error (and stops) when it cannot be rebuilt."""
    try:
        state = session.load(S.get("state"))
    except (ValueError, KeyError, TypeError) as exc:
        st.error(
            f"Profile {ui.md(annotator)}/{ui.md(profile_name)} cannot be rebuilt from its settings ({ui.md(exc)})."
        )
        rec = session.record()
        if rec is not None and st.button(
            "Start it afresh with hedge (keeps its labels)", key="pz_repair", disabled=bool(store.read_only)
        ):
            store.save_profile(rec.id, fresh_spec("hedge"), adapter="hedge")
            st.rerun()
        st.stop()
    if state is not None and state.adapter.num_experts != ctx.k:
        st.error(
            f"Profile {ui.md(annotator)}/{ui.md(profile_name)} is over {state.adapter.num_experts} experts; "
            f"{ui.md(ctx.model_name)} has {ctx.k}. Pick or create another profile."
        )
        st.stop()
    S["state"] = state
    return state


state = load_state()
adapter: Adapter = state.adapter if state is not None else session.fresh_adapter()
spec_hash = hashlib.sha1(json.dumps(adapter_spec(adapter), sort_keys=True).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- the actions (button callbacks)
def both_answers(pair_id: str, keys: tuple[str, ...]) -> bool:
    """Whether A and B of one pair arrived in one run (Streamlit merged the clicks and kept no order, so
    neither can be taken for the user's answer); says so when they did."""
    if len(ui.clicked(*keys)) < 2:
        return False
    flash(
        "info",
        f"Both A and B arrived for pair {pair_id} at once: neither was stored. Click the one you mean.",
    )
    return True


def shown_now(state_now: dict, typed: bool) -> str:
    """The pair this session shows now ("" for none): the typed pair, or the drawn one unless skipped (in
    the mode the page is in now). The store refuses a click on any other pair (`StaleClick`), or says it
    has its label (`DuplicateLabel`)."""
    if typed != (st.session_state.get("pz_mode", MODES[0]) == MODES[2]):
        return ""  # the mode changed: the pair this button was drawn with is no longer on screen
    if typed:
        cur_typed: TypedPair | None = state_now.get("typed")
        return "" if cur_typed is None else cur_typed.pair_id
    cur: Shown | None = state_now.get("shown")
    return "" if cur is None or cur.pair_id in state_now.get("skipped", ()) else cur.pair_id


def stale_note(exc: StaleClick) -> None:
    """The page had moved on (or the pair was skipped) before the click arrived: nothing was stored."""
    flash("info", f"{str(exc)[:1].upper()}{str(exc)[1:]}.")


def store_label(store_it, which: str, keys: tuple[str, ...], pair_id: str) -> bool:
    """Run `store_it()` (one LabelSession call for the pair that was on screen with the clicked button) and
    say what happened; `which` names the pair in messages. True when the label was stored."""
    if both_answers(pair_id, keys):
        return False
    state_now = st.session_state.setdefault("pz", {})
    t0 = time.perf_counter()
    try:
        stored = store_it()
    except DuplicateLabel as exc:
        flash(
            "info",
            f"{which} already has a label in this profile (#{exc.existing_id}): that click was ignored.",
        )
        return False
    except StaleClick as exc:
        stale_note(exc)
        return False
    except StoreError as exc:  # says what happened to the label
        flash("error", str(exc)[:1].upper() + str(exc)[1:])
        return False
    except ValueError as exc:
        flash("error", f"The label of {which[:1].lower()}{which[1:]} was not saved: {exc}")
        return False
    state_now["update_ms"] = (time.perf_counter() - t0) * 1000
    flash("success", f"Saved label {stored.count} of this profile, for pair {stored.pair_id}.")
    return True


def on_label(shown: Shown, a_preferred: bool, keys: tuple[str, ...] = ()) -> None:
    """Store one label for the pair in `shown`, which is the pair that was on screen with this button
    (`keys`: both answer buttons of that pair)."""
    state_now = st.session_state.setdefault("pz", {})
    store_label(
        lambda: session.label(shown, a_preferred, showing=shown_now(state_now, typed=False)),
        f"Pair {shown.pair_id}",
        keys,
        shown.pair_id,
    )


def on_label_typed(typed: TypedPair, a_preferred: bool, keys: tuple[str, ...] = ()) -> None:
    """Store one label for the typed pair `typed` (the one on screen with this button; `keys`: both answer
    buttons)."""
    state_now = st.session_state.setdefault("pz", {})
    if store_label(
        lambda: session.label_typed(typed, a_preferred, showing=shown_now(state_now, typed=True)),
        "Your pair",
        keys,
        typed.pair_id,
    ):
        state_now["typed"] = None


def on_skip(pair_id: str) -> None:
    state_now = st.session_state.setdefault("pz", {})
    typed = state_now.get("typed")
    if typed is not None and typed.pair_id == pair_id:
        state_now["typed"] = None
    else:
        state_now.setdefault("skipped", set()).add(pair_id)


def on_undo() -> None:
    try:
        gone = session.undo()
    except StoreError as exc:
        flash("error", f"Nothing was undone: {exc}")
        return
    if gone is None:
        flash(
            "info",
            "This browser session has no label left in this profile to undo (other sessions' labels are "
            "theirs to undo).",
        )
    else:
        left = store.count_labels(gone.profile_id) if gone.profile_id is not None else 0
        flash("success", f"Undone: your last label (pair {gone.pair_id}); {left} labels left.")


def on_reset(profile_id: int) -> None:
    try:
        n = store.reset_profile(profile_id)
    except StoreError as exc:
        flash("error", f"Nothing was reset: {exc}")
        return
    st.session_state.setdefault("pz", {}).update(skipped=set(), confirm_reset=False)
    flash("success", f"Profile reset: {n} stored labels removed.")


def on_adapter_change(widget_key: str) -> None:
    """Another adapter for the same labels: every session on the profile follows (the spec is stored)."""
    name = str(st.session_state.get(widget_key) or ADAPTERS[0])
    rec = session.record()
    if rec is None:
        st.session_state.setdefault("pz", {})["pending_adapter"] = name
        return
    try:
        store.save_profile(rec.id, fresh_spec(name), adapter=name)
    except StoreError as exc:
        flash("error", f"The adapter was not changed: {exc}")


def on_params(form_keys: dict) -> None:
    """New rates for the profile's adapter (any parameter its `defaults` has), validated before saving."""
    params = {}
    try:
        for pname, key in form_keys.items():
            value = st.session_state.get(key)
            if isinstance(value, str):  # a text field: empty is None, JSON where it parses, else the word
                text = value.strip()
                try:
                    value = None if not text else json.loads(text)
                except ValueError:
                    value = text
            params[pname] = value
        spec = new_profile_spec(
            adapter.name, ctx.k, adapter.initial_weights, margin_scale=adapter.margin_scale, **params
        )
        store.save_profile(session.profile_id(), spec, adapter=adapter.name)
    except StoreError as exc:  # (a ValueError too: caught first)
        flash("error", f"Settings not saved: {exc}")
    except (ValueError, TypeError) as exc:
        flash("error", f"Settings not applied: {exc}")
    else:
        flash("success", "Settings applied: the profile was refitted on its labels.")


def on_simulate(steps: int, who: str, strategy: str) -> None:
    """The persona labels: it prefers what the dataset says it chose."""
    state_now = st.session_state.setdefault("pz", {})
    try:
        done, exhausted = session.simulate(
            steps, strategy, state_now.get("rng"), state_now.get("skipped", set()), pool
        )
    except StoreError as exc:
        flash("error", f"Simulation stopped: {exc}")
        return
    if exhausted and not done:
        flash("info", f"{who} has no unlabeled pair left.")
        return
    count = store.count_labels(session.profile_id())
    flash("success", f"{who} labeled {done} pairs ({count} labels in this profile).")


# ----------------------------------------------------------------------------- options (a change reruns the page)
tunable = {k: v for k, v in type(adapter).defaults.items() if not isinstance(v, bool)}
param_keys = {pname: f"pz_param_{adapter.name}_{pname}" for pname in tunable}
if S.get("widgets_for") != spec_hash:  # the stored settings changed (here or in another session): show them
    st.session_state["pz_adapter_choice"] = adapter.name
    for pname, key in param_keys.items():
        current = adapter.params.get(pname, tunable[pname])
        if isinstance(tunable[pname], (int, float)):
            st.session_state[key] = int(current) if isinstance(tunable[pname], int) else float(current)
        else:
            st.session_state[key] = "" if current is None else str(current)
    S["widgets_for"] = spec_hash
adapter_key = "pz_adapter_choice"
c_adapter.selectbox(
    "Adapter",
    ADAPTERS,
    key=adapter_key,
    on_change=on_adapter_change,
    args=(adapter_key,),
    disabled=bool(store.read_only),
    format_func=lambda a: ADAPTER_SHORT.get(a) or str(a),
    help="Changing it refits the same labels with the other adapter (for every session on this profile). "
    + " · ".join(f"{a}: {h}" for a, h in ADAPTER_HELP.items()),
)
mode = c_mode.selectbox(
    "Next pair",
    MODES,
    key="pz_mode",
    help="Active: the pair whose label should move the profile most. Or type a pair of your own.",
)
with c_rates.popover("Rates", width="stretch", help="The adapter's parameters (rates, shares)"):
    with st.form("pz_params", border=False):
        for pname, default in tunable.items():  # whatever the adapter's `defaults` holds
            if isinstance(default, (int, float)):
                is_int = isinstance(default, int)
                st.number_input(
                    pname,
                    key=param_keys[pname],
                    step=1 if is_int else None,
                    format=None if is_int else "%.4g",
                )
            else:
                st.text_input(pname, key=param_keys[pname], help="empty: none" if default is None else None)
        st.form_submit_button("Apply", on_click=on_params, args=(param_keys,), disabled=bool(store.read_only))
    st.caption(f"{adapter.name}: " + ", ".join(f"{k}={v}" for k, v in adapter.params.items()))
can_write = not store.read_only
with st.expander(
    "Persona: let a user of the dataset label, and measure held-out accuracy",
    expanded=st.session_state.get("pz_persona", "(none)") != "(none)",
):
    p1, p2 = st.columns([3, 1], vertical_alignment="bottom")
    persona = p1.selectbox(
        "Persona (simulated user)",
        ["(none)"] + users,
        key="pz_persona",
        help="The dataset's `user` field. Its held-out pairs measure the profile's accuracy; the persona "
        "labels pairs from its pool by itself (below the pair).",
    )
    autoplay = (
        p2.toggle(
            "Auto-play",
            key="pz_autoplay",
            help="The persona labels one pair about every second, until you switch it off",
            disabled=not can_write or persona == "(none)",
        )
        and persona != "(none)"
        and can_write
    )
pool, held_out = persona_split(ctx.data_fid, persona, pairs)
strategy = "random" if mode == MODES[1] else "active"


def show_text(text: str, height: int | None = None) -> None:
    """Dataset text as plain, wrapped prose (never markdown or HTML), scrolling inside a box when long."""
    box = st.container(height=height, border=False) if height else st.container(border=False)
    box.text(text)


def box_height(*texts: str) -> int | None:
    """A shared height for both responses: their longer text, capped so that the buttons stay in view."""
    lines = max(sum(len(line) // 45 + 1 for line in t.splitlines() or [""]) for t in texts)
    return None if lines <= 6 else 170


def token(*parts) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- the labeling fragment
def pick_pair(adapter: Adapter, labeled: set[str]) -> tuple[dict | None, tuple | None]:
    """(what to show, the arguments its label buttons carry) for the pair on screen: the one this session
    drew, unless it has been labeled, skipped or left the pool since; then the next one."""
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
                from moe_reward.app.pipeline import score_texts
                from moe_reward.app.workspace import preload_backbone_imports

                with st.spinner("Embedding the pair…"):
                    preload_backbone_imports()
                    scored = score_texts(ctx.model, ctx.backbone(), prompt, [a, b])
                digest = hashlib.sha1(f"{prompt}\x00{a}\x00{b}".encode()).hexdigest()[:12]
                S["typed"] = typed_pair(f"typed-{digest}", prompt, a, b, scored)
        typed = S.get("typed")
        if typed is None or typed.pair_id in labeled:
            return None, None
        shown = dict(
            prompt=typed.prompt,
            a=typed.a,
            b=typed.b,
            caption="Your pair · the prompt:",
            m_a=np.asarray(typed.margins),
            logits=np.asarray(typed.logits),
            pair=typed.pair_id,
            tok=token(ident, typed.pair_id),
        )
        return shown, ("typed", typed)
    cur: Shown | None = S.get("shown")
    stale = (
        cur is None
        or cur.pair_id in labeled
        or cur.pair_id in S["skipped"]
        or id_to_row.get(cur.pair_id) != cur.row
        or cur.row not in pool_rows
    )
    if stale:
        done = labeled | S["skipped"]
        i = session.next_row(
            adapter, done | screen_claims().elsewhere(ident, SESSION), strategy, S["rng"], pool
        )
        if i is None:  # only pairs another session shows are left: share them
            i = session.next_row(adapter, done, strategy, S["rng"], pool)
        # one assignment: a run cut short never leaves half a pair behind
        S["shown"] = cur = None if i is None else Shown(pairs[i].id, i, bool(S["rng"].random() < 0.5))
    screen_claims().claim(ident, SESSION, None if cur is None else cur.pair_id)
    if cur is None:
        st.success("Every pair in the pool is labeled or skipped.")
        return None, None
    p = pairs[cur.row]
    a_text, b_text = (p.chosen, p.rejected) if cur.a_is_chosen else (p.rejected, p.chosen)
    shown = dict(
        prompt=p.prompt,
        a=a_text,
        b=b_text,
        caption=f"Pair {p.id}" + (f" · group {p.group}" if p.group else "") + " · the prompt:",
        m_a=margins[cur.row] if cur.a_is_chosen else -margins[cur.row],
        logits=logits[cur.row],
        pair=p.id,
        tok=token(ident, p.id, cur.a_is_chosen),
    )
    return shown, ("pair", cur)


def draw_pair(shown: dict, carried: tuple, adapter: Adapter) -> None:
    tok = shown["tok"]
    # One keyed block per pair shown: a new pair replaces the whole block, texts and buttons together.
    block = st.container(key=f"pz_pair_{tok}")
    block.caption(ui.md(shown["caption"]))
    with block.container(border=True):
        show_text(shown["prompt"], 120 if len(shown["prompt"]) > 400 else None)
    pm = float(adapter.predict_margin(shown["m_a"][None, :], shown["logits"][None, :])[0])
    favourite = "A" if pm > 0 else "B" if pm < 0 else None
    height = box_height(shown["a"], shown["b"])
    callback = on_label_typed if carried[0] == "typed" else on_label
    cards, buttons = block.columns(2), block.columns(2)  # buttons on one row, under their response
    for card, button, letter, text in zip(cards, buttons, "AB", (shown["a"], shown["b"]), strict=True):
        with card.container(border=True, key=f"pz_card_{letter.lower()}_{tok}"):
            head = f"**{letter}**"
            if favourite == letter:
                p_pref = float(sigmoid(np.array(abs(pm))))
                head += f" :green-badge[:material/thumb_up: your profile prefers {letter}, p = {p_pref:.2f}]"
            st.markdown(head)
            show_text(text, height)
        button.button(
            f"{letter} is better",
            key=f"pz_{letter.lower()}_{tok}",
            on_click=callback,
            args=(carried[1], letter == "A", (f"pz_a_{tok}", f"pz_b_{tok}")),
            disabled=not can_write,
            type="primary",
            width="stretch",
        )


def draw_actions(shown: dict | None, adapter: Adapter, state) -> None:
    rec = state.profile if state is not None else None
    b1, b2, b3, _ = st.columns([1, 1, 1, 3])
    b1.button(
        "Skip",
        key=f"pz_skip_{token(ident, shown['pair'] if shown else None)}",
        on_click=on_skip,
        args=(shown["pair"] if shown else "",),
        disabled=shown is None,
        width="stretch",
    )
    mine_here = store.count_labels(rec.id, session=SESSION) if rec is not None else 0
    b2.button(
        "Undo my last label",
        key="pz_undo",
        on_click=on_undo,
        disabled=not (mine_here and can_write),
        width="stretch",
        help="Removes the newest label this browser session stored in this profile",
    )
    if b3.button(
        "Reset profile",
        key="pz_reset",
        disabled=not (adapter.n_labels and can_write),
        width="stretch",
        help="Forget all labels of this profile (every session's)",
    ):
        S["confirm_reset"] = True
    if S.get("confirm_reset") and rec is not None and adapter.n_labels:
        st.warning(
            f"Forget all {store.count_labels(rec.id)} labels of {ui.md(annotator)}/{ui.md(profile_name)}, "
            "every session's? This cannot be undone."
        )
        y, n = st.columns(2)
        y.button("Yes, forget them", key="pz_reset_yes", on_click=on_reset, args=(rec.id,), type="primary")
        if n.button("Cancel", key="pz_reset_no"):
            S["confirm_reset"] = False
            st.rerun(scope="fragment")
    st.caption(
        f"{mine_here} of this profile's {adapter.n_labels} labels are from this browser session (Undo removes "
        "only those)"
        if rec is not None
        else f"A new profile '{ui.md(profile_name)}' starts with your first label."
    )
    message = S.get("flash")
    if message:
        kind, text = message
        {"success": st.success, "info": st.info, "error": st.error}[kind](ui.md(text))
        S["flash"] = None
    if persona != "(none)":
        with st.container(border=True):
            st.markdown(
                f"**Simulate {ui.md(persona)}**: the persona labels pairs from its pool by itself"
                + (" (auto-play: one about every second)." if autoplay else ".")
            )
            s1, s2, s3 = st.columns([2, 3, 2], vertical_alignment="center")
            n_steps = s2.slider("Steps", 1, 50, 10, key="pz_sim_steps", label_visibility="collapsed")
            s1.button(
                f"Simulate {n_steps} step(s)",
                key="pz_simulate",
                on_click=on_simulate,
                args=(n_steps, persona, strategy),
                width="stretch",
                disabled=not can_write,
            )
            s3.caption(f"{len(pool)} pairs in its pool, {len(held_out)} held out")


def draw_profile(adapter: Adapter, state) -> None:
    right, c1, c2 = st.columns([2, 2, 3])
    with right:
        shift = weight_shift(adapter, top=1)
        m1, m2 = st.columns(2)
        m1.metric("Labels in this profile", adapter.n_labels)
        if state is not None and state.unusable:
            m2.metric(
                "Stored without margins",
                state.unusable,
                help="Labels stored by an older version that the profile cannot replay",
            )
        top = max(1e-9, max(shift["before"] + shift["after"])) * 1.15
        spec = charts.expert_bars(
            ctx.expert_titles(),
            expert_colors,
            {"start": shift["before"], "now": shift["after"]},
            title="Profile: expert weights",
            subtitle="start faded, now solid, in each expert's colour",
            y_title="weight",
            y_domain=(min(0.0, min(shift["after"]) * 1.15), top),
            height=340,  # (the whole chart: titles, axes and legend included)
        )
        ui.vega(spec, key="pz_weights")
        st.caption("weights now: " + " · ".join(f"E{k} {w:.3f}" for k, w in enumerate(shift["after"])))
        span = span_report(adapter)
        if span["outside"]:
            st.warning(
                f"Outside what the experts span: every expert disagrees with most of these {span['n_labels']} "
                f"labels (the best agrees with {span['best_expert_agreement']:.0%}). A mix of experts cannot "
                "follow this annotator"
                + (
                    "; the signed weights here reverse them."
                    if adapter.name == "signed"
                    else "; switch the adapter to 'signed', whose negative weights reverse the experts."
                )
            )
        if S.get("update_ms") is not None:
            st.caption(f"last label saved in {S['update_ms']:.1f} ms")

    history = np.array([adapter.initial_weights] + [h.weights for h in adapter.history])
    titles = ctx.expert_titles()  # 'E3 · brevity' where the analyst named the expert
    with c1:
        spec = charts.lines(
            list(range(len(history))),
            {titles[k]: history[:, k] for k in range(ctx.k)},
            colors={titles[k]: expert_colors[k] for k in range(ctx.k)},
            title="Weight history",
            x_title="labels",
            y_title="weight",
            height=max(320, 90 + 21 * ctx.k),  # room for every expert in the legend
        )
        ui.vega(spec, key="pz_history")
    with c2:
        if len(held_out):
            # Accuracy of every profile in the history on the persona's held-out pairs (weights-only mix).
            measured = persona_accuracy(
                adapter, margins[held_out], logits[held_out], ctx.scores.correct[held_out]
            )
            accs, base, now = measured.curve, measured.model, measured.now
            m1, m2, m3 = st.columns(3)
            m1.metric("Held-out accuracy now", f"{now:.3f}", delta=f"{now - accs[0]:+.3f} vs start")
            m2.metric("Starting profile", f"{accs[0]:.3f}")
            m3.metric("Model's own routing", f"{base:.3f}")
            spec = charts.lines(
                list(range(len(accs))),
                {"profile": accs},
                title=f"Accuracy on {persona}'s {len(held_out)} held-out pairs",
                x_title="labels",
                y_title="accuracy",
                y_domain=(0, 1.05),
                hline=(base, "model routing"),
                height=260,
            )
            ui.vega(spec, key="pz_accuracy")
        else:
            st.caption("Pick a persona to measure the profile on that persona's held-out pairs.")

    ui.expert_weights_table(ctx, shift["after"], shift["before"])  # names and descriptions beside the weights
    if adapter.n_labels:
        st.markdown("**The label that moved each expert most**")
        rows = []
        for k, movers in shift["top_movers"].items():
            for pid, delta in movers:
                r = id_to_row.get(pid)
                rows.append(
                    {
                        "expert": titles[int(k)],
                        "pair": pid,
                        "weight change": round(delta, 4),
                        "prompt": pairs[r].prompt if r is not None else "",
                    }
                )
        ui.table(pd.DataFrame(rows))


def import_labels(d: dict) -> tuple[dict, list[Label]]:
    """A profile file's spec and labels, checked before anything is allocated from it or stored."""
    if not isinstance(d, dict) or d.get("num_experts") != ctx.k:
        raise ValueError(
            f"the file's profile is over {d.get('num_experts') if isinstance(d, dict) else '?'} experts, "
            f"this model has {ctx.k}"
        )
    stored = d.get("labels") or {}
    ids, ms = list(stored.get("pair_ids") or []), list(stored.get("expert_margins") or [])
    lg: list[Any] = stored.get("router_logits") or [None] * len(ms)
    if len(ids) != len(ms) or len(lg) != len(ms):
        raise ValueError(f"{len(ids)} pair ids for {len(ms)} rows of margins")
    if len(ms) > MAX_IMPORT_LABELS:
        raise ValueError(f"{len(ms)} labels: at most {MAX_IMPORT_LABELS}")
    spec = adapter_spec(
        adapter_from_spec(
            {k: d[k] for k in ("format", "name", "num_experts", "params", "initial_weights") if k in d}
        )
    )
    out = []
    for pid, m, a in zip(ids, ms, lg, strict=True):
        r = id_to_row.get(str(pid))
        p = pairs[r] if r is not None else None
        out.append(
            Label(
                annotator,
                str(pid),
                p.prompt if p else "",
                "",
                "",
                source="import",
                margins=[float(x) for x in m],
                logits=None if a is None else [float(x) for x in a],
            )
        )
    return spec, out


def exported_profile() -> bytes:
    """The profile as it is when the download is clicked (rebuilt from its labels, whoever stored them)."""
    state_now = session.load()
    adapter_now = state_now.adapter if state_now is not None else session.fresh_adapter()
    exported = {
        **adapter_now.to_dict(),
        "model": ctx.model_name,
        "annotator": annotator,
        "profile": profile_name,
    }
    return json.dumps(exported, indent=2).encode("utf-8")


def draw_export_import() -> None:
    """Outside the labeling fragment: the download is made when clicked; an import reruns the page."""
    with st.expander("Export / import profile"):
        st.download_button(
            "Download profile JSON",
            exported_profile,
            f"{annotator}-{profile_name}.profile.json",
            "application/json",
            key="pz_export",
        )
        upload = st.file_uploader(
            "Import a profile JSON", type=["json"], key="pz_import", disabled=not can_write
        )
        if upload is not None and st.button(
            "Replace this profile with the file", key="pz_import_go", disabled=not can_write
        ):
            try:
                spec, new_labels = import_labels(json.loads(upload.getvalue().decode("utf-8")))
                n = store.replace_labels(session.profile_id(), spec, new_labels, session=SESSION)
            except StoreError as exc:  # (a ValueError too: caught first)
                st.error(f"Nothing was imported: {ui.md(exc)}")
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
                st.error(f"Not a usable profile: {ui.md(exc)}")
            else:
                flash("success", f"Imported a {spec['name']} profile with {n} labels.")
                st.rerun()  # the whole page: the adapter and its settings may have changed


@st.fragment(run_every=AUTOPLAY_SECONDS if autoplay else None)
def labeling() -> None:
    """The pair, its buttons, the profile's weights and history: a click reruns only this."""
    if autoplay:  # demo mode: the persona labels one more pair each time this runs by itself
        on_simulate(1, persona, strategy)
    state = load_state()
    adapter = state.adapter if state is not None else session.fresh_adapter()
    if state is not None:
        S["adapter"] = adapter  # "this session's profile" on Score your own
    labeled = state.pair_ids if state is not None else set()
    pair_area = st.container()
    with pair_area:
        shown, carried = pick_pair(adapter, labeled)
        if shown is not None and carried is not None:
            draw_pair(shown, carried, adapter)
        draw_actions(shown, adapter, state)
    draw_profile(adapter, state)
    # In the fragment, so that a label reruns it: the first label stores the profile, and the calls then
    # name it instead of the starting weights.
    rec = state.profile if state is not None else None
    ui.rlhf_snippets(ctx, f"{annotator}/{profile_name}" if rec is not None else None, adapter.weights)


expert_colors = [ui.expert_color(k) for k in range(ctx.k)]
pool_rows = frozenset(pool.tolist())
labeling()
draw_export_import()
