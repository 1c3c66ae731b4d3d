"""Score your own: a prompt and two responses -> every expert's reward, the routing, the mix, your profile.

The form and its result are one fragment: pressing Score reruns it, not the page. The backbone is loaded once
per server process and shared by every session (ui_common's cached resource); texts scored before come
from the embedding cache.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

import ui_common as ui
from moe_reward.app import charts
from moe_reward.app.pipeline import score_texts

ui.page_header(
    "Score your own",
    "Type a prompt and two responses: see what each expert thinks, how the router "
    "mixes them, and the reward under a personal profile.",
)
ctx = ui.require_context()
store = ui.label_store(str(ctx.ws.labels_db))


@st.fragment
def scorer() -> None:
    example = ctx.features.pairs[0]
    with st.form("score_form"):
        prompt = st.text_area("Prompt", value=example.prompt, key="score_prompt")
        c1, c2 = st.columns(2)
        resp_a = c1.text_area("Response A", value=example.chosen, height=160, key="score_a")
        resp_b = c2.text_area("Response B", value=example.rejected, height=160, key="score_b")
        profiles = store.profiles(model=ctx.model_name)
        session_adapter = (st.session_state.get("pz") or {}).get("adapter")
        options = (
            ["(none)"]
            + (["this session's profile"] if session_adapter is not None else [])
            + [f"{p.annotator} / {p.name}" for p in profiles if p.profile.get("name")]
        )
        profile_pick = st.selectbox(
            "Profile",
            options,
            key="score_profile",
            help="Replaces the router by a profile's expert weights (see Personalize)",
        )
        go_score = st.form_submit_button("Score", type="primary")

    if go_score:
        if not prompt.strip() or not resp_a.strip() or not resp_b.strip():
            st.error("Give a prompt and two responses.")
            return
        weights = None
        if profile_pick == "this session's profile" and session_adapter is not None:
            weights = np.asarray(session_adapter.weights, dtype=np.float32)
        elif profile_pick != "(none)":
            rec = profiles[[f"{p.annotator} / {p.name}" for p in profiles].index(profile_pick)]
            weights = np.asarray(store.profile_weights(rec.id), dtype=np.float32)  # rebuilt from its labels
            if weights.shape != (ctx.k,):
                st.error(f"That profile has {weights.shape[0]} weights; the model has {ctx.k} experts.")
                return
        with st.spinner("Embedding (the backbone loads once)…"):
            previous = st.session_state.get("score_texts")
            st.session_state["score_before"] = previous if previous != (prompt, resp_a, resp_b) else None
            st.session_state["score_texts"] = (prompt, resp_a, resp_b)
            st.session_state["score_result"] = (
                score_texts(ctx.model, ctx.backbone(), prompt, [resp_a, resp_b], user_weights=weights),
                profile_pick,
            )

    stored = {f"{p.annotator} / {p.name}": f"{p.annotator}/{p.name}" for p in profiles}
    session_weights = (
        session_adapter.weights
        if profile_pick == "this session's profile" and session_adapter is not None
        else None
    )
    ui.rlhf_snippets(ctx, stored.get(profile_pick), session_weights, prompt, resp_a)

    result = st.session_state.get("score_result")
    if result is None:
        st.caption("Press **Score**.")
        return
    scored, used_profile = result
    a, b = scored

    def verdict(ra: float, rb: float) -> tuple[str, str]:
        """('A', 'A wins by 0.412') from two rewards."""
        if ra == rb:
            return "tie", "A and B get the same reward"
        win, lose, gap = ("A", "B", ra - rb) if ra > rb else ("B", "A", rb - ra)
        return win, f"{win} wins by {gap:.3f}"

    model_win, model_text = verdict(a.reward, b.reward)
    m = st.columns(4)
    m[0].metric("Reward A (routed mix)", f"{a.reward:+.3f}")
    m[1].metric("Reward B (routed mix)", f"{b.reward:+.3f}")
    # The delta is A − B: its arrow and colour follow its sign (green ↑ when A is ahead, red ↓ when B is).
    m[2].metric(
        "The model prefers",
        model_win,
        delta=round(a.reward - b.reward, 3),
        delta_color="normal",
        help="delta: reward A − reward B under the model's own routing",
    )
    lines = [
        f"**The model prefers response {model_win}**: {model_text} under its own routing."
        if model_win != "tie"
        else "The model scores A and B the same."
    ]
    if a.personalized_reward is not None:
        pa, pb = a.personalized_reward, b.personalized_reward
        prof_win, prof_text = verdict(pa, pb)
        m[3].metric(
            f"The profile {ui.md(used_profile)} prefers",
            prof_win,
            delta=round(pa - pb, 3),
            delta_color="normal",
            help="delta: reward A − reward B under the profile's expert weights",
        )
        agree = "agreeing with" if prof_win == model_win else "unlike"
        lines.append(
            f"**The profile {ui.md(used_profile)} prefers response {prof_win}**: {prof_text}, {agree} the model."
        )
    st.markdown("  \n".join(lines))

    colors = [ui.expert_color(k) for k in range(ctx.k)]
    titles = ctx.expert_titles()
    left, right = st.columns(2)
    with left:
        spec = charts.expert_bars(
            titles,
            colors,
            {"A": a.expert_rewards, "B": b.expert_rewards},
            faded="B",
            title="Each expert's reward",
            subtitle="A solid, B faded, in each expert's colour",
            y_title="reward",
        )
        ui.vega(spec, key="score_experts")
    with right:
        spec = charts.expert_bars(
            titles,
            colors,
            {"router softmax": a.router_probs, "routing used": a.routing},
            title="Routing of this prompt",
            subtitle="router softmax faded, routing used (after top-k) solid",
            y_title="weight",
            y_domain=(0, 1),
        )
        ui.vega(spec, key="score_routing")

    ui.expert_rewards_table(ctx, a, b)  # each expert's name and description beside its rewards
    rows = [{"": "routed mix", "A": round(a.reward, 4), "B": round(b.reward, 4), "prefers": model_win}]
    if a.personalized_reward is not None:
        rows.append(
            {
                "": f"profile: {used_profile}",
                "A": round(a.personalized_reward, 4),
                "B": round(b.personalized_reward, 4),
                "prefers": verdict(a.personalized_reward, b.personalized_reward)[0],
            }
        )
    ui.table(pd.DataFrame(rows), width="content")

    before = st.session_state.get("score_before")
    if before is not None:
        st.subheader("What changed since the previous scoring")
        ui.what_if_compare(ctx, before, st.session_state["score_texts"], key="score_whatif")


scorer()
