"""Personalize: label a few pairs and watch a profile (weights over the frozen experts) move.

Each label is oriented "preferred minus other": if the user prefers the response shown as A, the
adapter sees r_k(A) - r_k(B) for every expert k. Which dataset response is shown as A is random, so the
position of a response never tells the user which one the dataset preferred.

The stored labels are the profile (moe_reward.personalize.store): every run rebuilds it from them, so two browser
sessions on one profile see each other's labels, and Undo removes this session's newest label only. A
click carries the pair it was shown with (the buttons' key and callback arguments), so a click that
arrives while the page is still redrawing labels exactly the pair on screen, or is refused with a note
when that pair already has its label; the store holds one label per pair and profile.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any, TypedDict

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import ui_common as ui
from moe_reward.data.pairs import split_pairs
from moe_reward.personalize.adapters import (
    ADAPTERS,
    Adapter,
    margin_scale_for,
    personalized_accuracy,
    prior_from_routing,
    select_next,
    sigmoid,
    span_report,
    weight_shift,
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
names = ctx.expert_names()
pairs = ctx.features.pairs
SESSION = st.session_state.setdefault(
    "pz_session", uuid.uuid4().hex[:16]
)  # this browser session: what Undo undoes


@st.cache_resource(show_spinner=False, max_entries=8)
def starting_point(model_fid: str, data_fid: str, _routing: np.ndarray, _margins: np.ndarray):
    """A new profile starts at the model's average routing; margins are scaled per expert."""
    return prior_from_routing(_routing), margin_scale_for(_margins)


prior, scale = starting_point(ctx.model_fid, ctx.data_fid, ctx.scores.routing, margins)


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
rec = store.find_profile(annotator, profile_name, ctx.model_name)  # None: created by the first label
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

if rec is not None:
    try:
        state = store.load_profile(rec.id, S.get("state"), fallback=fresh_spec(rec.adapter or ADAPTERS[0]))
    except (ValueError, KeyError, TypeError) as exc:
        st.error(
            f"Profile {ui.md(annotator)}/{ui.md(profile_name)} cannot be rebuilt from its settings ({ui.md(exc)})."
        )
        if st.button(
            "Start it afresh with hedge (keeps its labels)", key="pz_repair", disabled=bool(store.read_only)
        ):
            store.save_profile(rec.id, fresh_spec("hedge"), adapter="hedge")
            st.rerun()
        st.stop()
    if state.adapter.num_experts != ctx.k:
        st.error(
            f"Profile {ui.md(annotator)}/{ui.md(profile_name)} is over {state.adapter.num_experts} experts; "
            f"{ui.md(ctx.model_name)} has {ctx.k}. Pick or create another profile."
        )
        st.stop()
    S["state"] = state
    adapter: Adapter = state.adapter
    S["adapter"] = adapter  # "this session's profile" on Score your own
    labeled = state.pair_ids
else:
    state = None
    adapter = adapter_from_spec(fresh_spec(S.get("pending_adapter", ADAPTERS[0])))
    labeled = set()
spec_hash = hashlib.sha1(json.dumps(adapter_spec(adapter), sort_keys=True).encode()).hexdigest()[:10]


def profile_id_for_write() -> int:
    """The profile's id, creating the profile (first label or first setting of a new annotator)."""
    if rec is not None:
        return rec.id
    spec = fresh_spec(S.get("pending_adapter", ADAPTERS[0]))
    return store.get_or_create_profile(annotator, profile_name, ctx.model_name, spec["name"], spec).id


# ----------------------------------------------------------------------------- the actions (button callbacks)
def on_label(req: dict, a_preferred: bool, keys: tuple[str, ...] = ()) -> None:
    """Store one label for the pair in `req`, which is the pair that was on screen with this button (`keys`:
    both answer buttons of that pair)."""
    state_now = st.session_state.setdefault("pz", {})
    typed = req.get("typed")
    pid = typed["id"] if typed else req["pair"]
    if len(ui.clicked(*keys)) > 1:  # A and B in one run: Streamlit merged them and kept no order
        flash(
            "info",
            f"Both A and B arrived for pair {pid} at once: neither was stored. Click the one you mean.",
        )
        return
    t0 = time.perf_counter()
    try:
        if typed:
            sign = 1.0 if a_preferred else -1.0
            m, a = sign * np.asarray(typed["margins"]), typed["logits"]
            prompt, pref, other = (
                typed["prompt"],
                *((typed["a"], typed["b"]) if a_preferred else (typed["b"], typed["a"])),
            )
            source = "typed"
        else:
            i = req["row"]
            if not (0 <= i < len(pairs)) or pairs[i].id != pid:
                raise ValueError(f"pair {pid!r} is no longer in this dataset")
            p = pairs[i]
            chose_dataset_chosen = a_preferred == req["a_is_chosen"]
            m, a = (margins[i] if chose_dataset_chosen else -margins[i]), logits[i]
            prompt, pref, other = (
                p.prompt,
                *((p.chosen, p.rejected) if chose_dataset_chosen else (p.rejected, p.chosen)),
            )
            source = "manual"
        profile_id = profile_id_for_write()
        store.record_label(
            Label(annotator, pid, prompt, pref, other, profile_id=profile_id, source=source),
            m,
            a,
            session=SESSION,
            shown=shown_now(state_now, typed is not None),
        )
    except DuplicateLabel as exc:
        flash(
            "info",
            f"Pair {pid} already has a label in this profile (#{exc.existing_id}): that click was ignored.",
        )
        return
    except StaleClick as exc:  # the page had moved on (or the pair was skipped) before the click arrived
        flash("info", f"{str(exc)[:1].upper()}{str(exc)[1:]}.")
        return
    except StoreError as exc:  # says what happened to the label
        flash("error", str(exc)[:1].upper() + str(exc)[1:])
        return
    except ValueError as exc:
        flash("error", f"The label of pair {pid} was not saved: {exc}")
        return
    state_now["update_ms"] = (time.perf_counter() - t0) * 1000
    if typed:
        state_now["typed"] = None
    flash(
        "success",
        f"Saved label {store.count_labels(profile_id)} of this profile, for pair {pid}.",
    )


def shown_now(state_now: dict, typed: bool) -> str:
    """The pair this session shows now ("" for none): the typed pair, or the drawn one unless skipped."""
    if typed:
        return (state_now.get("typed") or {}).get("id", "")
    cur = state_now.get("shown")
    return "" if cur is None or cur["pair"] in state_now.get("skipped", ()) else cur["pair"]


def on_skip(pair_id: str) -> None:
    state_now = st.session_state.setdefault("pz", {})
    if state_now.get("typed") and state_now["typed"]["id"] == pair_id:
        state_now["typed"] = None
    else:
        state_now.setdefault("skipped", set()).add(pair_id)


def on_undo(profile_id: int) -> None:
    try:
        gone = store.undo_last(profile_id, SESSION)
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
        flash(
            "success",
            f"Undone: your last label (pair {gone.pair_id}); {store.count_labels(profile_id)} labels left.",
        )


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
    name: str = st.session_state[widget_key]  # (the widget calling back holds its value)
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
        store.save_profile(profile_id_for_write(), spec, adapter=adapter.name)
    except StoreError as exc:  # (a ValueError too: caught first)
        flash("error", f"Settings not saved: {exc}")
    except (ValueError, TypeError) as exc:
        flash("error", f"Settings not applied: {exc}")
    else:
        flash("success", "Settings applied: the profile was refitted on its labels.")


# ----------------------------------------------------------------------------- options
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
left = st.container()  # the pair, drawn further down but shown first: the responses and their buttons up top
users = sorted({p.user for p in pairs if p.user})
persona_box = st.expander(
    "Persona: let a user of the dataset label, and measure held-out accuracy",
    expanded=st.session_state.get("pz_persona", "(none)") != "(none)",
)
persona = persona_box.selectbox(
    "Persona (simulated user)",
    ["(none)"] + users,
    key="pz_persona",
    help="The dataset's `user` field. Its held-out pairs measure the profile's accuracy.",
)


@st.cache_resource(show_spinner=False, max_entries=32)
def persona_split(data_fid: str, persona: str, _pairs) -> tuple[np.ndarray, np.ndarray]:
    """(pool to label from, held-out pairs) of one persona: 70/30 by prompt, so no prompt is on both sides."""
    if persona == "(none)":
        return np.arange(len(_pairs)), np.array([], dtype=np.int64)
    mine_rows = np.array([i for i, p in enumerate(_pairs) if p.user == persona])
    split = split_pairs([_pairs[i] for i in mine_rows], validation=0.0, test=0.3, seed=0)
    return mine_rows[split.train], mine_rows[split.test]


@st.cache_resource(show_spinner=False)
def on_screen() -> dict:
    """The pair each browser session shows, per profile (one dict per server): two sessions labeling one
    profile are shown different pairs instead of racing for the same one. Claims expire after 15 minutes."""
    return {}


def shown_elsewhere() -> set[str]:
    now = time.time()
    claims = on_screen().get(ident, {})
    return {pid for session, (pid, at) in list(claims.items()) if session != SESSION and now - at < 900}


def claim(pair_id: str | None) -> None:
    claims = on_screen().setdefault(ident, {})
    if pair_id is None:
        claims.pop(SESSION, None)
    else:
        claims[SESSION] = (pair_id, time.time())


pool, held_out = persona_split(ctx.data_fid, persona, pairs)
id_to_row = {p.id: i for i, p in enumerate(pairs)}


def blocked_rows(done: set[str]) -> np.ndarray:
    """Pool positions already labeled (in this profile) or skipped (in this session)."""
    return np.array([pairs[i].id in done for i in pool], dtype=bool)


def next_pair(a: Adapter, done: set[str], strategy: str) -> int | None:
    blocked = blocked_rows(done)
    if blocked.all():
        return None
    return int(pool[select_next(a, margins[pool], exclude=blocked, strategy=strategy, rng=S["rng"])])


def on_simulate(steps: int, who: str, strategy: str) -> None:
    """The persona labels: it prefers what the dataset says it chose (margins as stored: chosen - rejected)."""
    try:
        profile_id = profile_id_for_write()
        sim = store.load_profile(profile_id)
        done = 0
        for _ in range(steps):
            i = next_pair(sim.adapter, sim.pair_ids | S["skipped"], strategy)
            if i is None:
                flash("info", f"{who} has no unlabeled pair left.")
                return
            p = pairs[i]
            try:
                store.record_label(
                    Label(
                        annotator,
                        p.id,
                        p.prompt,
                        p.chosen,
                        p.rejected,
                        profile_id=profile_id,
                        source="simulated",
                    ),
                    margins[i],
                    logits[i],
                    session=SESSION,
                )
                done += 1
            except DuplicateLabel:
                pass  # another session labeled it meanwhile
            sim = store.load_profile(profile_id, sim)
    except StoreError as exc:
        flash("error", f"Simulation stopped: {exc}")
        return
    flash("success", f"{who} labeled {done} pairs ({store.count_labels(profile_id)} labels in this profile).")


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


# ----------------------------------------------------------------------------- the pair to label
can_write = not store.read_only
with left:
    req: dict[str, Any] | None = None  # what a label of the pair shown stores (set with `shown`)
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
                S["typed"] = dict(
                    id=f"typed-{digest}",
                    prompt=prompt,
                    a=a,
                    b=b,
                    margins=np.subtract(scored[0].expert_rewards, scored[1].expert_rewards),
                    logits=np.log(np.clip(scored[0].router_probs, 1e-12, None)),
                )
        typed = S.get("typed")
        if typed and typed["id"] not in labeled:
            req = {"typed": typed, "pair": typed["id"]}
            shown = ShownPair(
                prompt=typed["prompt"],
                a=typed["a"],
                b=typed["b"],
                caption="Your pair · the prompt:",
                m_a=np.asarray(typed["margins"]),
                logits=np.asarray(typed["logits"]),
            )
        else:
            shown = None
    else:
        cur = S.get("shown")
        stale = (
            cur is None
            or cur["pair"] in labeled
            or cur["pair"] in S["skipped"]
            or id_to_row.get(cur["pair"]) != cur["row"]
            or cur["row"] not in set(pool.tolist())
        )
        if stale:
            strategy = "active" if mode == MODES[0] else "random"
            i = next_pair(adapter, labeled | S["skipped"] | shown_elsewhere(), strategy)
            if i is None:  # only pairs another session shows are left: share them
                i = next_pair(adapter, labeled | S["skipped"], strategy)
            # one assignment: a rerun cut short never leaves half a pair behind
            S["shown"] = cur = (
                None
                if i is None
                else {"pair": pairs[i].id, "row": i, "a_is_chosen": bool(S["rng"].random() < 0.5)}
            )
        claim(None if cur is None else cur["pair"])
        if cur is not None:
            i, p = cur["row"], pairs[cur["row"]]
            req = {"pair": p.id, "row": i, "a_is_chosen": cur["a_is_chosen"]}
            a_text, b_text = (p.chosen, p.rejected) if cur["a_is_chosen"] else (p.rejected, p.chosen)
            shown = ShownPair(
                prompt=p.prompt,
                a=a_text,
                b=b_text,
                caption=f"Pair {p.id}" + (f" · group {p.group}" if p.group else "") + " · the prompt:",
                m_a=margins[i] if cur["a_is_chosen"] else -margins[i],
                logits=logits[i],
            )
        else:
            shown = None
            st.success("Every pair in the pool is labeled or skipped.")
    if shown is not None and req is not None:  # (set together)
        tok = token(ident, req["pair"], req.get("a_is_chosen"))
        # One keyed block per pair shown: a new pair replaces the whole block, texts and buttons together.
        block = st.container(key=f"pz_pair_{tok}")
        block.caption(ui.md(shown["caption"]))
        with block.container(border=True):
            show_text(shown["prompt"], 120 if len(shown["prompt"]) > 400 else None)
        pm = float(adapter.predict_margin(shown["m_a"][None, :], shown["logits"][None, :])[0])
        favourite = "A" if pm > 0 else "B" if pm < 0 else None
        height = box_height(shown["a"], shown["b"])
        cards, buttons = block.columns(2), block.columns(2)  # buttons on one row, under their response
        for card, button, letter, text in zip(cards, buttons, "AB", (shown["a"], shown["b"]), strict=True):
            with card.container(border=True, key=f"pz_card_{letter.lower()}_{tok}"):
                head = f"**{letter}**"
                if favourite == letter:
                    p_pref = float(sigmoid(np.array(abs(pm))))
                    head += (
                        f" :green-badge[:material/thumb_up: your profile prefers {letter}, p = {p_pref:.2f}]"
                    )
                st.markdown(head)
                show_text(text, height)
            button.button(
                f"{letter} is better",
                key=f"pz_{letter.lower()}_{tok}",
                on_click=on_label,
                args=(req, letter == "A", (f"pz_a_{tok}", f"pz_b_{tok}")),
                disabled=not can_write,
                type="primary",
                width="stretch",
            )
    b1, b2, b3, _ = st.columns([1, 1, 1, 3])
    b1.button(
        "Skip",
        key=f"pz_skip_{token(ident, req['pair'] if req else None)}",
        on_click=on_skip,
        args=(req["pair"] if req else "",),
        disabled=req is None,
        width="stretch",
    )
    mine_here = store.count_labels(rec.id, session=SESSION) if rec is not None else 0
    b2.button(
        "Undo my last label",
        key="pz_undo",
        on_click=on_undo,
        args=(rec.id if rec else -1,),
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
            st.rerun()
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
        with persona_box:
            st.markdown(f"**Simulate {ui.md(persona)}**: the persona labels pairs from its pool by itself.")
            s1, s2, s3 = st.columns([2, 3, 2])
            n_steps = s2.slider("Steps", 1, 50, 10, key="pz_sim_steps", label_visibility="collapsed")
            s1.button(
                f"Simulate {n_steps} step(s)",
                key="pz_simulate",
                on_click=on_simulate,
                args=(n_steps, persona, "random" if mode == MODES[1] else "active"),
                width="stretch",
                disabled=not can_write,
            )
            autoplay = s3.toggle(
                "Auto-play",
                key="pz_autoplay",
                help="One simulated label about every second",
                disabled=not can_write,
            )

# ----------------------------------------------------------------------------- the profile
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
    fig = go.Figure(
        [
            go.Bar(x=names, y=shift["before"], name="start", marker_color="#BAB0AC"),
            go.Bar(
                x=names,
                y=shift["after"],
                name="now",
                marker_color=[ui.expert_color(k) for k in range(ctx.k)],
                showlegend=False,
            ),
        ]
    )
    ui.legend_entry(fig, "now (in the expert's colour)", "#54575e")
    fig.update_layout(
        title="Profile: expert weights",
        barmode="group",
        height=300,
        margin=dict(t=40, b=10),
        xaxis_title="expert",
        yaxis_title="weight",
        yaxis_range=[
            min(0.0, min(shift["after"]) * 1.15),
            max(1e-9, max(shift["before"] + shift["after"])) * 1.15,
        ],
    )
    ui.expert_axis(fig, "x", ctx.k, ctx.names)
    st.plotly_chart(fig, width="stretch", key="pz_weights")
    st.caption("weights now: " + " · ".join(f"E{k} {w:.3f}" for k, w in enumerate(shift["after"])))
    span = span_report(adapter)
    if span["outside"]:
        st.warning(
            f"Outside what the experts span: every expert disagrees with most of these {span['n_labels']} labels "
            f"(the best agrees with {span['best_expert_agreement']:.0%}). A mix of experts cannot follow this "
            "annotator"
            + (
                "; the signed weights here reverse them."
                if adapter.name == "signed"
                else "; switch the adapter to 'signed', whose negative weights reverse the experts."
            )
        )
    if S.get("update_ms") is not None:
        st.caption(f"last label saved in {S['update_ms']:.1f} ms")

history = np.array([adapter.initial_weights] + [h.weights for h in adapter.history])
with c1:
    frame = (
        pd.DataFrame(history, columns=names)
        .rename_axis("labels")
        .reset_index()
        .melt(id_vars="labels", var_name="expert", value_name="weight")
    )
    fig = go.Figure(
        [
            go.Scatter(
                x=g["labels"],
                y=g["weight"],
                name=ui.chart(ctx.expert_titles()[int(str(e)[1:])]),
                mode="lines+markers",
                line=dict(color=ui.expert_color(int(str(e)[1:]))),  # (e: "E3"; pandas types keys Hashable)
            )
            for e, g in frame.groupby("expert", sort=False)
        ]
    )
    fig.update_layout(
        title="Weight history",
        xaxis_title="labels",
        yaxis_title="weight",
        height=max(320, 90 + 21 * ctx.k),  # room for every expert in the legend
        margin=dict(t=40, b=10),
    )
    ui.count_axis(fig, len(history) - 1, axis="x")
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
        fig.update_layout(
            title=f"Accuracy on {ui.chart(persona)}'s {len(held_out)} held-out pairs",
            xaxis_title="labels",
            yaxis_title="accuracy",
            yaxis_range=[0, 1.05],
            height=260,
            margin=dict(t=40, b=10),
            xaxis=dict(tickformat="d"),
        )
        st.plotly_chart(fig, width="stretch", key="pz_accuracy")
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
                    "expert": ctx.expert_titles()[int(k)],
                    "pair": pid,
                    "weight change": round(delta, 4),
                    "prompt": pairs[r].prompt if r is not None else "",
                }
            )
    ui.table(pd.DataFrame(rows))


# ----------------------------------------------------------------------------- export / import (then auto-play)
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


with st.expander("Export / import profile"):
    exported = {**adapter.to_dict(), "model": ctx.model_name, "annotator": annotator, "profile": profile_name}
    st.download_button(
        "Download profile JSON",
        json.dumps(exported, indent=2).encode("utf-8"),
        f"{annotator}-{profile_name}.profile.json",
        "application/json",
        key="pz_export",
    )
    upload = st.file_uploader("Import a profile JSON", type=["json"], key="pz_import", disabled=not can_write)
    if upload is not None and st.button(
        "Replace this profile with the file", key="pz_import_go", disabled=not can_write
    ):
        try:
            spec, new_labels = import_labels(json.loads(upload.getvalue().decode("utf-8")))
            n = store.replace_labels(profile_id_for_write(), spec, new_labels, session=SESSION)
        except StoreError as exc:  # (a ValueError too: caught first)
            st.error(f"Nothing was imported: {ui.md(exc)}")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            st.error(f"Not a usable profile: {ui.md(exc)}")
        else:
            flash("success", f"Imported a {spec['name']} profile with {n} labels.")
            st.rerun()

ui.rlhf_snippets(ctx, f"{annotator}/{profile_name}" if rec is not None else None, adapter.weights)

if (
    persona != "(none)"
    and st.session_state.get("pz_autoplay")
    and can_write
    and not blocked_rows(labeled | S["skipped"]).all()
):
    # Demo mode: the page is drawn, pause, label one more pair as the persona, draw again. Any click
    # (or switching the toggle off) interrupts the pause, so the user stays in control.
    time.sleep(0.8)
    on_simulate(1, persona, "random" if mode == MODES[1] else "active")
    st.rerun()
