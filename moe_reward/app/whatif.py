"""What-if: edit a pair's prompt or a response and see how the routing and every expert's reward move.

    w = what_if(model, backbone, ("Why is the sky blue?", "Rayleigh scattering.", "Because."),
                ("Why is the sky blue? Keep it short.", "Rayleigh scattering.", "Because."))
    w.original.routing, w.edited.routing        # [K] each
    w.rows()                                    # one dict per expert: both sides

Both sides are scored the same way, from their texts (`pipeline.score_texts`: the backbone embeds them
through the cache), so a difference between them comes from the edit alone, never from how the stored
features were made. Used by Expert detail, Score your own and `moe-reward what-if`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PairView:
    """What the model says about one (prompt, chosen, rejected)."""

    prompt: str
    chosen: str
    rejected: str
    routing: list[float]  # [K] weights used (top-k for a sparse model)
    router_probs: list[float]  # [K] the router's softmax
    chosen_rewards: list[float]  # [K] each expert's reward of the chosen response
    rejected_rewards: list[float]  # [K]
    reward_chosen: float  # the routed mix
    reward_rejected: float

    @property
    def margin(self) -> float:
        """Reward of the chosen response minus the rejected one, under the model's routing."""
        return self.reward_chosen - self.reward_rejected

    @property
    def expert_margins(self) -> list[float]:
        return [c - r for c, r in zip(self.chosen_rewards, self.rejected_rewards, strict=True)]

    @property
    def top_expert(self) -> int:
        return int(np.argmax(self.routing))

    @property
    def prefers(self) -> str:
        """Which response the model prefers: 'chosen', 'rejected' or 'tie'."""
        return "chosen" if self.margin > 0 else "rejected" if self.margin < 0 else "tie"


@dataclass(frozen=True)
class WhatIf:
    original: PairView
    edited: PairView

    @property
    def changed(self) -> list[str]:
        """Which texts the edit changed: a subset of prompt, chosen, rejected."""
        return [f for f in FIELDS if getattr(self.original, f) != getattr(self.edited, f)]

    def rows(self, names: list[str] | None = None) -> list[dict]:
        """One row per expert: routing, rewards and margin before and after the edit."""
        from ..evaluate.experts import expert_title

        o, e = self.original, self.edited
        om, em = o.expert_margins, e.expert_margins
        return [
            {
                "expert": expert_title(k, names),
                "routing (original)": round(o.routing[k], 4),
                "routing (edited)": round(e.routing[k], 4),
                "reward chosen (original)": round(o.chosen_rewards[k], 4),
                "reward chosen (edited)": round(e.chosen_rewards[k], 4),
                "reward rejected (original)": round(o.rejected_rewards[k], 4),
                "reward rejected (edited)": round(e.rejected_rewards[k], 4),
                "margin (original)": round(om[k], 4),
                "margin (edited)": round(em[k], 4),
                "margin change": round(em[k] - om[k], 4),
            }
            for k in range(len(o.routing))
        ]

    def summary(self, responses: tuple[str, str] = ("chosen", "rejected")) -> str:
        """One sentence: what moved (the model's margin, its preference, the top expert). `responses` names
        the two responses ('A', 'B' where neither is the dataset's choice)."""
        o, e = self.original, self.edited
        if not self.changed:
            return "Nothing was edited: both sides are the same pair."
        first, second = responses
        label = {"chosen": first, "rejected": second}

        def said(side: str) -> str:
            if side == "tie":
                return "a tie"
            return (
                f"the {side} response" if responses == ("chosen", "rejected") else f"response {label[side]}"
            )

        edited = ["the prompt" if f == "prompt" else said(f) for f in self.changed]
        parts = [
            f"Edited {' and '.join(edited)}: the model's margin ({first} − {second}) moves from "
            f"{o.margin:+.3f} to {e.margin:+.3f}"
        ]
        if o.prefers != e.prefers:
            parts.append(f"it now prefers {said(e.prefers)} (before: {said(o.prefers)})")
        elif e.prefers == "tie":
            parts.append("it still scores both the same")
        else:
            parts.append(f"it still prefers {said(e.prefers)}")
        if o.top_expert != e.top_expert:
            parts.append(f"the top expert changes from E{o.top_expert} to E{e.top_expert}")
        else:
            parts.append(f"the top expert stays E{o.top_expert}")
        return "; ".join(parts) + "."

    def to_dict(self) -> dict:
        return {
            "changed": self.changed,
            "original": asdict(self.original) | {"margin": self.original.margin},
            "edited": asdict(self.edited) | {"margin": self.edited.margin},
        }


def check_texts(prompt: str, chosen: str, rejected: str) -> None:
    for name, text in zip(FIELDS, (prompt, chosen, rejected), strict=True):
        if not str(text).strip():
            raise ValueError(f"what-if: the {name} is empty")


def score_pair(model, backbone, prompt: str, chosen: str, rejected: str, cache_dir="default") -> PairView:
    from .pipeline import score_texts

    check_texts(prompt, chosen, rejected)
    c, r = score_texts(model, backbone, prompt, [chosen, rejected], cache_dir=cache_dir)
    return PairView(
        prompt,
        chosen,
        rejected,
        list(c.routing),
        list(c.router_probs),
        list(c.expert_rewards),
        list(r.expert_rewards),
        float(c.reward),
        float(r.reward),
    )


def what_if(
    model, backbone, original: tuple[str, str, str], edited: tuple[str, str, str], cache_dir="default"
) -> WhatIf:
    """Score a pair and its edited version the same way (texts through the backbone)."""
    return WhatIf(
        score_pair(model, backbone, *original, cache_dir=cache_dir),
        score_pair(model, backbone, *edited, cache_dir=cache_dir),
    )


def compare_responses(a, b) -> dict[str, list]:
    """Each expert's reward of response A and of B (`pipeline.ScoredResponse`s of one prompt), their
    difference, which one it prefers, and the routing: the columns of Score your own's table."""
    ra, rb = np.asarray(a.expert_rewards, dtype=float), np.asarray(b.expert_rewards, dtype=float)
    return {
        "reward A": ra.round(4).tolist(),
        "reward B": rb.round(4).tolist(),
        "A − B": (ra - rb).round(4).tolist(),
        "prefers": ["A" if x > y else "B" if y > x else "tie" for x, y in zip(ra, rb, strict=True)],
        "routing": np.asarray(a.routing, dtype=float).round(4).tolist(),
    }
