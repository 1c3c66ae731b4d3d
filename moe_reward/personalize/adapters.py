"""Personalization: fit a user's profile (a weight vector over the frozen experts) from a few labels.

Everything here works on **precomputed per-pair expert margins** (row i, column k:
``r_k(preferred) - r_k(other)`` for the pair the user labeled), so an update costs microseconds and never
touches the backbone or the model. The personalized margin of a pair is the profile's mix of its expert
margins, ``sum_k w_k * m_k`` -- exactly what the model computes when the profile replaces the router
(``model(..., user_weights=w)``; ``moe-reward score --profile``).

Adapters (all deterministic functions of the labels in order, so `undo` = recompute without the last one):

- ``hedge``: multiplicative weights, ``w_k <- w_k * exp(-eta * loss_k)`` after each label, where
  ``loss_k = softplus(-m_k / scale_k)`` is expert k's Bradley-Terry loss on the pair (``loss="zero_one"``
  uses ``[m_k <= 0]`` instead). ``eta = 0`` never moves.
- ``batch`` (DRM-style): ``w = (1 - lam) * prior + lam * softmax(-mean_i loss_ik / T)`` with
  ``lam = n / (n + prior_strength)``: the prior counts as `prior_strength` pseudo-labels, so one label
  cannot overturn it but 32 mostly do. Unlike Hedge it is linear in the prior and scale-free in n.
- ``gradient`` (LoRe-style): Adam on simplex logits minimizing the BT loss of the *mixed* margin
  ``softplus(-sum_k w_k m_k)`` plus ``l2 * ||z - log prior||^2`` (l2 = 0.01; 1e-4 on a router bias). Experts can combine, not just compete.
  ``mode="router_bias"`` instead learns a per-user bias added to the router's logits of each pair's
  prompt, so the mix stays prompt-dependent (`predict_margin` then needs those logits; ``top_k`` applies
  the sparse gate). Its prompt-free summary `weights` is ``softmax(log prior + bias)``.

``margin_scale`` ([K], e.g. `margin_scale_for` on the training features) divides each expert's margins
before its per-expert loss is taken: experts whose margins are large would otherwise win or lose
Hedge/Batch rounds on scale alone. The personalized margin always uses the raw margins (it must equal
what the model computes with the profile).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from ..core.errors import MoeRewardError
from ..core.limits import MAX_ADAPTER_STEPS, MAX_EXPERTS, MAX_PROFILE_BYTES, MAX_PROFILE_LABELS

ADAPTERS = ("hedge", "batch", "gradient", "signed")
PROFILE_FORMAT = "moe-reward-profile/1"

# The range of every numeric parameter, checked wherever a value enters (the CLI's --param, the dashboard's
# settings, a profile file): (low, high, low included). Inside them every update stays finite; on top of
# that an update whose weights come out non-finite is refused (`NonFiniteProfile`), so no profile is ever
# stored, shown or written with a NaN or an infinity.
PARAM_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "eta": (0.0, 100.0, True),
    "share": (0.0, 0.999, True),
    "temperature": (1e-3, 1e3, True),
    "prior_strength": (0.0, 1e6, True),
    "lr": (0.0, 10.0, False),
    "steps": (1, MAX_ADAPTER_STEPS, True),
    "l2": (0.0, 1e3, True),
    "tol": (0.0, 1.0, True),
}
MARGIN_SCALE_BOUNDS = (1e-6, 1e6)
MAX_MARGIN = 1e9  # |expert margin| of a label (a model's margins are within +-100)
MAX_LOGIT = 1e12  # |router logit| of a label (an unused expert may sit at -1e4 / tau)


class NonFiniteProfile(MoeRewardError):
    """An update would have made the profile's weights NaN or infinite; the label was not applied."""


def check_param(name: str, value: object, source: str = "params") -> None:
    """One numeric adapter parameter against `PARAM_BOUNDS` (a ValueError naming it otherwise)."""
    if name not in PARAM_BOUNDS or value is None:
        return
    lo, hi, lo_in = PARAM_BOUNDS[name]
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)):
        raise ValueError(f"{source}.{name} must be a finite number, got {str(value)[:30]!r}")
    number = float(value)
    if not ((lo <= number) if lo_in else (lo < number)) or number > hi:
        raise ValueError(f"{source}.{name} must be in {'[' if lo_in else '('}{lo:g}, {hi:g}], got {number:g}")


@dataclass
class LabelStep:
    """One entry of an adapter's history."""

    step: int
    pair_id: str
    weights: list[float]  # profile AFTER this label
    expert_losses: list[float]  # per-expert BT loss softplus(-margin_k / scale_k) on this pair


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _normalized(w: np.ndarray | Iterable[float] | None, k: int) -> np.ndarray:
    if w is None:
        return np.full(k, 1.0 / k)
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    with np.errstate(over="ignore"):  # an overflowing sum is refused just below
        total = w.sum() if w.shape == (k,) else 0.0
    if w.shape != (k,) or not np.all(np.isfinite(w)) or (w < 0).any() or not 0 < total < np.inf:
        raise ValueError(
            f"initial_weights must be {k} non-negative finite numbers with a positive, finite sum"
        )
    return w / total


def _top_k_mask(logits: np.ndarray, top_k: int | None) -> np.ndarray | None:
    """Where each row's `top_k` largest logits are (None: keep all)."""
    if top_k is None or top_k >= logits.shape[-1]:
        return None
    kth = -np.partition(-logits, top_k - 1, axis=-1)[..., top_k - 1 : top_k]
    return logits >= kth


def _gate(logits: np.ndarray, top_k: int | None, mask: np.ndarray | None = None) -> np.ndarray:
    """Row-wise softmax, over the `top_k` largest logits only when given (the sparse model's gate)."""
    mask = _top_k_mask(logits, top_k) if mask is None else mask
    return softmax(logits if mask is None else np.where(mask, logits, -np.inf))


# ----------------------------------------------------------------------------- adapters


class Adapter:
    """Base class: label bookkeeping, history, undo, persistence. Subclasses define the state update."""

    name = "base"
    defaults: dict = {}

    def __init__(self, num_experts: int, initial_weights: np.ndarray | None = None, **params):
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        unknown = set(params) - set(self.defaults) - {"margin_scale"}
        if unknown:
            raise ValueError(
                f"{self.name}: unknown parameters {sorted(unknown)}; known: {sorted(self.defaults)}"
            )
        self.num_experts = num_experts
        self.initial_weights = _normalized(initial_weights, num_experts)
        scale = params.pop("margin_scale", None)
        self.margin_scale = np.ones(num_experts) if scale is None else np.asarray(scale, dtype=np.float64)
        lo, hi = MARGIN_SCALE_BOUNDS
        if (
            self.margin_scale.shape != (num_experts,)
            or not np.all(np.isfinite(self.margin_scale))
            or (self.margin_scale < lo).any()
            or (self.margin_scale > hi).any()
        ):
            raise ValueError(f"margin_scale must be {num_experts} numbers in [{lo:g}, {hi:g}]")
        self.params = {**self.defaults, **params}
        for key, value in self.params.items():
            check_param(key, value, "params")
        self._validate()
        self.reset()

    # -- subclass hooks
    def _validate(self) -> None:
        pass

    def _initial_state(self) -> np.ndarray:
        raise NotImplementedError

    def _next_state(self, state: np.ndarray) -> np.ndarray:
        """The state after the newest label (the last row of self._margins)."""
        raise NotImplementedError

    def _weights_of(self, state: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- public API
    def reset(self) -> None:
        self._margins: list[np.ndarray] = []
        self._logits: list[np.ndarray | None] = []
        self._ids: list[str] = []
        self._states: list[np.ndarray] = [self._initial_state()]
        self.history: list[LabelStep] = []

    @property
    def weights(self) -> np.ndarray:
        return self._weights_of(self._states[-1])

    @property
    def n_labels(self) -> int:
        return len(self._margins)

    @property
    def labeled_ids(self) -> list[str]:
        return list(self._ids)

    def expert_losses(self, expert_margins: np.ndarray) -> np.ndarray:
        """Per-expert BT loss of margins [..., K] (scaled per expert)."""
        return softplus(-np.asarray(expert_margins, dtype=np.float64) / self.margin_scale)

    def update(
        self, expert_margins: np.ndarray, pair_id: str = "", router_logits: np.ndarray | None = None
    ) -> np.ndarray:
        """Add one label (margins oriented so that positive = the user's preferred response wins)."""
        m = self._vector(expert_margins, "expert_margins")
        a = None if router_logits is None else self._vector(router_logits, "router_logits")
        self._margins.append(m)
        self._logits.append(a)
        self._ids.append(str(pair_id) if pair_id else f"label-{len(self._ids)}")
        try:
            state = self._next_state(self._states[-1])
            if not (np.all(np.isfinite(state)) and np.all(np.isfinite(self._weights_of(state)))):
                raise NonFiniteProfile(
                    f"the label of pair {self._ids[-1]!r} would make the {self.name} profile's weights NaN or "
                    f"infinite (parameters {self.params}); it was not applied"
                )
        except Exception:  # leave the adapter as it was: the label was not applied
            for stack in (self._margins, self._logits, self._ids):
                stack.pop()
            raise
        self._states.append(state)
        w = self.weights
        self.history.append(
            LabelStep(len(self.history) + 1, self._ids[-1], w.tolist(), self.expert_losses(m).tolist())
        )
        return w

    def fit(
        self,
        expert_margins: np.ndarray,
        pair_ids: list[str] | None = None,
        router_logits: np.ndarray | None = None,
    ) -> np.ndarray:
        """Fit on N labels at once; replaces the labels and history (history keeps every prefix)."""
        margins = np.asarray(expert_margins, dtype=np.float64).reshape(-1, self.num_experts)
        ids = list(pair_ids) if pair_ids is not None else [f"label-{i}" for i in range(len(margins))]
        if len(ids) != len(margins):
            raise ValueError(f"{len(ids)} pair ids for {len(margins)} rows of margins")
        logits = (
            None
            if router_logits is None
            else np.asarray(router_logits, dtype=np.float64).reshape(len(margins), -1)
        )
        self.reset()
        for i in range(len(margins)):
            self.update(margins[i], ids[i], None if logits is None else logits[i])
        return self.weights

    def undo(self) -> np.ndarray:
        """Drop the last label. Every adapter's state is a deterministic function of its labels in order,
        so restoring the previous state is the same as recomputing from the remaining labels."""
        if self._margins:
            for stack in (self._margins, self._logits, self._ids, self._states, self.history):
                stack.pop()
        return self.weights

    def predict_margin(
        self, expert_margins: np.ndarray, router_logits: np.ndarray | None = None
    ) -> np.ndarray:
        """[N] personalized margins: the profile's mix of each pair's expert margins."""
        m = np.asarray(expert_margins, dtype=np.float64).reshape(-1, self.num_experts)
        return m @ self.weights

    # -- persistence
    def to_dict(self) -> dict:
        logits = [a for a in self._logits if a is not None]
        has_logits = bool(logits) and len(logits) == len(self._logits)
        params = {**self.params, "margin_scale": self.margin_scale.tolist()}
        return {
            "format": PROFILE_FORMAT,
            "name": self.name,
            "num_experts": self.num_experts,
            "params": params,
            "initial_weights": self.initial_weights.tolist(),
            "weights": self.weights.tolist(),
            "history": [asdict(h) for h in self.history],
            "labels": {
                "pair_ids": list(self._ids),
                "expert_margins": [m.tolist() for m in self._margins],
                "router_logits": [a.tolist() for a in logits] if has_logits else None,
            },
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "profile") -> Adapter:
        """Rebuild an adapter (labels included, so undo/fit keep working) by replaying its labels.

        `d` may come from an uploaded file: every size is checked before anything is allocated (an
        absurd `num_experts` fails at once) and every number must be finite; a ValueError names `source`
        and the field."""
        check_profile(d, source)
        try:
            adapter = make_adapter(
                d["name"], int(d["num_experts"]), d.get("initial_weights"), **d.get("params", {})
            )
            labels = d.get("labels") or {}
            if labels.get("expert_margins"):
                adapter.fit(
                    np.asarray(labels["expert_margins"], dtype=np.float64),
                    labels.get("pair_ids"),
                    None
                    if labels.get("router_logits") is None
                    else np.asarray(labels["router_logits"], dtype=np.float64),
                )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None
        return adapter

    # -- helpers
    def _vector(self, x: np.ndarray, what: str) -> np.ndarray:
        v = np.asarray(x, dtype=np.float64).reshape(-1)
        if v.shape != (self.num_experts,):
            raise ValueError(f"{what}: expected {self.num_experts} values, got shape {np.shape(x)}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{what}: contains NaN or inf")
        limit = MAX_LOGIT if what == "router_logits" else MAX_MARGIN
        if np.abs(v).max() > limit:
            raise ValueError(f"{what}: a value of magnitude {np.abs(v).max():.3g}, more than {limit:g}")
        return v

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.num_experts}, labels={self.n_labels}, params={self.params})"


def _check_share(share: float) -> None:
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")


class HedgeAdapter(Adapter):
    """Multiplicative weights with fixed share: state = the weights, one O(K) step per label.

    After each label, ``w <- (1 - share) * hedge_step(w) + share * prior``: every expert keeps at least
    ``share * prior_k``, so a profile that leaned on one expert after a few labels can still move to
    another one when later labels disagree (plain Hedge locks onto one expert after ~5 labels)."""

    name = "hedge"
    defaults = {"eta": 0.5, "share": 0.05, "loss": "logistic"}

    def _validate(self) -> None:
        if self.params["eta"] < 0:
            raise ValueError(f"eta must be >= 0, got {self.params['eta']}")
        if self.params["loss"] not in ("logistic", "zero_one"):
            raise ValueError("loss must be 'logistic' or 'zero_one'")
        _check_share(self.params["share"])

    def _initial_state(self) -> np.ndarray:
        return self.initial_weights.copy()

    def _round_loss(self, m: np.ndarray) -> np.ndarray:
        return (m <= 0).astype(np.float64) if self.params["loss"] == "zero_one" else self.expert_losses(m)

    def _next_state(self, state: np.ndarray) -> np.ndarray:
        z = np.log(np.clip(state, 1e-300, None)) - self.params["eta"] * self._round_loss(self._margins[-1])
        share = self.params["share"]
        return (1 - share) * softmax(z) + share * self.initial_weights

    def _weights_of(self, state: np.ndarray) -> np.ndarray:
        return state / state.sum()


class BatchAdapter(Adapter):
    """DRM-style closed form over all labels: state = [sum of per-expert losses..., n]."""

    name = "batch"
    defaults = {"temperature": 0.2, "prior_strength": 2.0, "share": 0.05}

    def _validate(self) -> None:
        if self.params["temperature"] <= 0 or self.params["prior_strength"] < 0:
            raise ValueError("temperature must be > 0 and prior_strength >= 0")
        _check_share(self.params["share"])

    def _initial_state(self) -> np.ndarray:
        return np.zeros(self.num_experts + 1)

    def _next_state(self, state: np.ndarray) -> np.ndarray:
        return state + np.append(self.expert_losses(self._margins[-1]), 1.0)

    def _weights_of(self, state: np.ndarray) -> np.ndarray:
        n = state[-1]
        if n == 0:
            return self.initial_weights.copy()
        fit = softmax(-state[:-1] / n / self.params["temperature"])
        lam = (1 - self.params["share"]) * n / (n + self.params["prior_strength"])  # the prior keeps `share`
        return (1 - lam) * self.initial_weights + lam * fit


class GradientAdapter(Adapter):
    """LoRe-style: Adam on the BT loss of the mixed margin; each label re-solves, warm-started."""

    name = "gradient"
    # l2=None: 0.01 on the simplex logits; 1e-4 on a router bias, which must be free to grow to the scale of
    # a confident router's logits (spread ~7 on the controlled data) to move any prompt's routing.
    defaults = {"mode": "weights", "lr": 0.1, "steps": 200, "l2": None, "tol": 1e-3, "top_k": None}

    def _validate(self) -> None:
        p = self.params
        if p["mode"] not in ("weights", "router_bias"):
            raise ValueError("mode must be 'weights' or 'router_bias'")
        self._l2 = p["l2"] if p["l2"] is not None else (0.01 if p["mode"] == "weights" else 1e-4)
        if p["lr"] <= 0 or p["steps"] < 1 or self._l2 < 0 or p["tol"] < 0:
            raise ValueError("lr must be > 0, steps >= 1, l2 and tol >= 0")
        if p["top_k"] is not None and not 1 <= p["top_k"] <= self.num_experts:
            raise ValueError(f"top_k must be in [1, {self.num_experts}] or None")
        self._prior_logits = np.log(np.clip(self.initial_weights, 1e-6, None))

    @property
    def router_bias(self) -> np.ndarray:
        """The learned per-user router bias (router_bias mode; zeros in weights mode)."""
        if self.params["mode"] != "router_bias":
            return np.zeros(self.num_experts)
        return self._states[-1].copy()

    def _initial_state(self) -> np.ndarray:
        return (
            np.zeros(self.num_experts) if self.params["mode"] == "router_bias" else self._prior_logits.copy()
        )

    def _weights_of(self, state: np.ndarray) -> np.ndarray:
        if self.params["mode"] == "router_bias":
            return softmax(self._prior_logits + state)
        return softmax(state)

    def _anchor(self) -> np.ndarray:
        return np.zeros(self.num_experts) if self.params["mode"] == "router_bias" else self._prior_logits

    def _gradient(
        self, z: np.ndarray, m: np.ndarray, a: np.ndarray | None, mask: np.ndarray | None
    ) -> np.ndarray:
        n = len(m)
        if a is None:  # weights mode: s = m @ softmax(z)
            w = softmax(z)
            ds = -sigmoid(-(m @ w)) / n
            gw = m.T @ ds
            g = w * (gw - w @ gw)
        else:  # router-bias mode: s_i = sum_k gate(a_i + z)_k m_ik
            r = _gate(a + z, None, mask)
            s = (r * m).sum(1)
            ds = -sigmoid(-s) / n
            g = (ds[:, None] * r * (m - s[:, None])).sum(0)
        return g + 2 * self._l2 * (z - self._anchor())

    def _next_state(self, state: np.ndarray) -> np.ndarray:
        p = self.params
        m = np.stack(self._margins)
        z = state.copy()
        if p["mode"] != "router_bias":
            return self._adam(z, m, None, None)
        logits = [x for x in self._logits if x is not None]
        if len(logits) != len(self._logits):
            raise ValueError("mode='router_bias' needs the router logits of every labeled pair")
        a = np.stack(logits)
        # With a top-k gate the objective jumps where the chosen experts change, so solve with the
        # selection held fixed (smooth), re-select, and stop once the selection is stable.
        mask = _top_k_mask(a + z, p["top_k"])
        for _ in range(4):
            z = self._adam(z, m, a, mask)
            if mask is None:  # no top-k gate: one smooth solve
                break
            new_mask = _top_k_mask(a + z, p["top_k"])
            if new_mask is None or np.array_equal(new_mask, mask):
                break
            mask = new_mask
        return z

    def _adam(
        self, z: np.ndarray, m: np.ndarray, a: np.ndarray | None, mask: np.ndarray | None
    ) -> np.ndarray:
        p = self.params
        z, mom, vel = z.copy(), np.zeros_like(z), np.zeros_like(z)
        b1, b2 = 0.9, 0.999
        for t in range(1, p["steps"] + 1):
            g = self._gradient(z, m, a, mask)
            if np.abs(g).max() < p["tol"]:
                break
            mom = b1 * mom + (1 - b1) * g
            vel = b2 * vel + (1 - b2) * g * g
            z -= p["lr"] * (mom / (1 - b1**t)) / (np.sqrt(vel / (1 - b2**t)) + 1e-8)
        return z

    def predict_margin(
        self, expert_margins: np.ndarray, router_logits: np.ndarray | None = None
    ) -> np.ndarray:
        if self.params["mode"] == "weights":
            return super().predict_margin(expert_margins)
        if router_logits is None:
            raise ValueError(
                "mode='router_bias' needs router_logits to predict (routing stays prompt-dependent)"
            )
        m = np.asarray(expert_margins, dtype=np.float64).reshape(-1, self.num_experts)
        a = np.asarray(router_logits, dtype=np.float64).reshape(len(m), self.num_experts)
        return (_gate(a + self._states[-1], self.params["top_k"]) * m).sum(1)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "router_bias": self.router_bias.tolist()}


class SignedAdapter(Adapter):
    """Signed weights: w in R^K (not on the simplex), Adam on the BT loss of the mixed margin
    ``softplus(-m . w)`` plus ``l2 * |w - prior|^2``. A user who disagrees with what *every* expert
    rewards (e.g. harmlessness judgments against experts that all learned helpfulness) gets negative
    weights: the simplex adapters can at best mute the experts, this one can reverse them."""

    name = "signed"
    defaults = {"lr": 0.1, "steps": 300, "l2": 0.01, "tol": 1e-4}

    def _validate(self) -> None:
        p = self.params
        if p["lr"] <= 0 or p["steps"] < 1 or p["l2"] < 0 or p["tol"] < 0:
            raise ValueError("lr must be > 0, steps >= 1, l2 and tol >= 0")

    def _initial_state(self) -> np.ndarray:
        return self.initial_weights.copy()

    def _weights_of(self, state: np.ndarray) -> np.ndarray:
        return state

    def _next_state(self, state: np.ndarray) -> np.ndarray:
        p = self.params
        # Solve in units of each expert's margin spread (m' = m / s, w' = w * s, so m . w = m' . w'):
        # Adam's steps are then of comparable size for every expert.
        s = self.margin_scale
        m = np.stack(self._margins) / s
        w, mom, vel = state * s, np.zeros_like(state), np.zeros_like(state)
        anchor = self.initial_weights * s
        for t in range(1, p["steps"] + 1):
            g = -(sigmoid(-(m @ w))[:, None] * m).mean(0) + 2 * p["l2"] * (w - anchor)
            if np.abs(g).max() < p["tol"]:
                break
            mom = 0.9 * mom + 0.1 * g
            vel = 0.999 * vel + 0.001 * g * g
            w = w - p["lr"] * (mom / (1 - 0.9**t)) / (np.sqrt(vel / (1 - 0.999**t)) + 1e-8)
        return w / s


ADAPTER_CLASSES: dict[str, type[Adapter]] = {
    "hedge": HedgeAdapter,
    "batch": BatchAdapter,
    "gradient": GradientAdapter,
    "signed": SignedAdapter,
}


def make_adapter(name: str, num_experts: int, initial_weights=None, **params) -> Adapter:
    if name not in ADAPTER_CLASSES:
        raise ValueError(f"adapter must be one of {ADAPTERS}, got {name!r}")
    return ADAPTER_CLASSES[name](num_experts, initial_weights, **params)


# ----------------------------------------------------------------------------- profile files


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check_vector(
    value: object,
    k: int,
    what: str,
    source: str,
    positive: bool = False,
    nonnegative: bool = False,
    bounds: tuple[float, float] | None = None,
) -> None:
    if not isinstance(value, list) or len(value) != k:
        got = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        raise ValueError(f"{source}: {what} must be a list of {k} numbers (one per expert), got {got}")
    for i, x in enumerate(value):
        if not _is_number(x):
            raise ValueError(f"{source}: {what}[{i}] is not a finite number: {str(x)[:30]!r}")
        if (positive and x <= 0) or (nonnegative and x < 0):
            raise ValueError(f"{source}: {what}[{i}] must be {'> 0' if positive else '>= 0'}, got {x}")
        if bounds is not None and not bounds[0] <= x <= bounds[1]:
            raise ValueError(f"{source}: {what}[{i}] must be in [{bounds[0]:g}, {bounds[1]:g}], got {x:g}")


def parse_profile(data: bytes, source: str = "profile") -> dict:
    """A profile file's bytes (an upload, `personalize --profile-out`) -> its checked dict; a ValueError
    names `source` for anything wrong (too large, not UTF-8, bad or too deeply nested JSON, bad fields).
    Pass the result to `Adapter.from_dict`."""
    if len(data) > MAX_PROFILE_BYTES:
        raise ValueError(
            f"{source}: {len(data)} bytes, more than the limit of {MAX_PROFILE_BYTES} for a profile"
        )
    try:
        d = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply") from None
    check_profile(d, source)
    return d


def check_profile(d: object, source: str = "profile") -> None:
    """Validate a profile dict (`Adapter.to_dict`'s format) before it is used: types, lengths, bounds and
    finite numbers. Raises ValueError naming `source` and the field."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
    if d.get("format", PROFILE_FORMAT) != PROFILE_FORMAT:
        raise ValueError(f"{source}: not a profile: format {str(d.get('format'))[:40]!r}")
    name = d.get("name")
    if name not in ADAPTERS:
        raise ValueError(f"{source}: name must be one of {ADAPTERS}, got {str(name)[:40]!r}")
    k = d.get("num_experts")
    if not (isinstance(k, numbers.Integral) and not isinstance(k, bool) and 1 <= int(k) <= MAX_EXPERTS):
        raise ValueError(
            f"{source}: num_experts must be an integer in [1, {MAX_EXPERTS}], got {str(k)[:40]!r}"
        )
    k = int(k)
    if d.get("initial_weights") is not None:
        _check_vector(d["initial_weights"], k, "initial_weights", source, nonnegative=True)
    if d.get("weights") is not None:
        _check_vector(d["weights"], k, "weights", source)
    params = d.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"{source}: params must be an object, got {type(params).__name__}")
    defaults = ADAPTER_CLASSES[name].defaults
    for key, value in params.items():
        if key == "margin_scale":
            if value is not None:
                _check_vector(value, k, "params.margin_scale", source, bounds=MARGIN_SCALE_BOUNDS)
            continue
        if key not in defaults:
            raise ValueError(
                f"{source}: params.{str(key)[:40]}: unknown parameter of the {name} adapter "
                f"(known: {', '.join(sorted(defaults))})"
            )
        default = defaults[key]
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError(f"{source}: params.{key} must be text, got {type(value).__name__}")
        elif value is not None or default is not None:
            if value is None and key != "top_k":
                raise ValueError(f"{source}: params.{key} must be a number, got null")
            if value is not None and not _is_number(value):
                raise ValueError(f"{source}: params.{key} must be a finite number, got {str(value)[:30]!r}")
            try:
                check_param(key, value, "params")
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
    steps = params.get("steps")
    if steps is not None and not (float(steps).is_integer() and 1 <= steps <= MAX_ADAPTER_STEPS):
        raise ValueError(
            f"{source}: params.steps must be an integer in [1, {MAX_ADAPTER_STEPS}], got {steps}"
        )
    labels = d.get("labels")
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise ValueError(f"{source}: labels must be an object, got {type(labels).__name__}")
    margins, ids, logits = (
        labels.get("expert_margins") or [],
        labels.get("pair_ids"),
        labels.get("router_logits"),
    )
    if not isinstance(margins, list) or len(margins) > MAX_PROFILE_LABELS:
        raise ValueError(
            f"{source}: labels.expert_margins must be a list of at most {MAX_PROFILE_LABELS} rows"
        )
    for i, row in enumerate(margins):
        _check_vector(row, k, f"labels.expert_margins[{i}]", source, bounds=(-MAX_MARGIN, MAX_MARGIN))
    if ids is not None and not (
        isinstance(ids, list) and len(ids) == len(margins) and all(isinstance(x, str) for x in ids)
    ):
        raise ValueError(f"{source}: labels.pair_ids must be a list of {len(margins)} texts (one per label)")
    if logits is not None:
        if not isinstance(logits, list) or len(logits) != len(margins):
            raise ValueError(f"{source}: labels.router_logits must be null or a list of {len(margins)} rows")
        for i, row in enumerate(logits):
            _check_vector(row, k, f"labels.router_logits[{i}]", source, bounds=(-MAX_LOGIT, MAX_LOGIT))


# ----------------------------------------------------------------------------- priors and inputs


def prior_from_routing(routing: np.ndarray, floor: float = 0.05) -> np.ndarray:
    """Average routing [N, K] -> a starting profile, mixed with `floor` of the uniform profile.

    Why the floor: a sparse model's average routing can be ~0 for an expert, and multiplicative updates
    can never revive a weight of 0; a user whose taste that expert explains must still reach it."""
    routing = np.asarray(routing, dtype=np.float64)
    k = routing.shape[-1]
    mean = routing.reshape(-1, k).mean(0) if routing.size else np.full(k, 1.0 / k)
    mean = mean / mean.sum() if mean.sum() > 0 else np.full(k, 1.0 / k)
    return (1 - floor) * mean + floor / k


def profile_prior(model, features=None, floor: float = 0.05, batch: int = 8192) -> np.ndarray:
    """The starting profile for a new user: the model's average routing over `features` (its training
    features, typically), or its global weights for prompt-independent kinds, or uniform."""
    import torch  # (here, with a model: the adapters and the label store run without torch)

    k = model.num_experts
    with torch.no_grad():
        if features is not None and len(features):
            from ..model.router_inputs import router_data

            router = router_data(model, features)
            parts = []
            for s in range(0, len(features), batch):
                parts.append(model.routing(router.batch(slice(s, s + batch)))[0].numpy())
            return prior_from_routing(np.concatenate(parts), floor)
        if hasattr(model, "global_logits"):
            return prior_from_routing(torch.softmax(model.global_logits, -1).numpy()[None], floor)
    return np.full(k, 1.0 / k)


def expert_margins_for(model, features, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """([N, K] expert margins chosen - rejected, [N, K] router logits of each pair's prompt)."""
    import torch

    from ..model.router_inputs import router_data

    model.eval()
    router = router_data(model, features)
    margins, logits = [], []
    with torch.no_grad():
        for s in range(0, len(features), batch):
            c, r = (
                torch.from_numpy(np.ascontiguousarray(x[s : s + batch], np.float32))
                for x in (features.chosen, features.rejected)
            )
            out = model.pair(router.batch(slice(s, s + batch)), c, r)
            margins.append(out.expert_margins.numpy())
            logits.append(out.router_logits.numpy())
    k = model.num_experts
    if not margins:
        return np.zeros((0, k)), np.zeros((0, k))
    return np.concatenate(margins).astype(np.float64), np.concatenate(logits).astype(np.float64)


def margin_scale_for(expert_margins: np.ndarray) -> np.ndarray:
    """Per-expert spread of margins (std over pairs, floored), for the adapters' `margin_scale`."""
    m = np.asarray(expert_margins, dtype=np.float64)
    if len(m) < 2:
        return np.ones(m.shape[-1])
    std = m.std(0)
    return np.clip(std, max(float(np.median(std)) / 10, 1e-6), None)


# ----------------------------------------------------------------------------- evaluation and inspection


def personalized_accuracy(
    adapter_or_weights, expert_margins: np.ndarray, router_logits: np.ndarray | None = None
) -> float:
    """Share of pairs whose personalized margin is positive (margins oriented chosen - rejected)."""
    m = np.asarray(expert_margins, dtype=np.float64)
    if len(m) == 0:
        return float("nan")
    if isinstance(adapter_or_weights, Adapter):
        pred = adapter_or_weights.predict_margin(m, router_logits)
    else:
        pred = m.reshape(len(m), -1) @ np.asarray(adapter_or_weights, dtype=np.float64)
    return float((pred > 0).mean())


def weight_shift(adapter: Adapter, top: int = 3) -> dict:
    """Before/after profile, their difference, and for each expert the labels that moved it most."""
    before, after = adapter.initial_weights, adapter.weights
    movers: dict[int, list[tuple[str, float]]] = {}
    prev = before
    steps = []
    for h in adapter.history:
        w = np.asarray(h.weights)
        steps.append((h.pair_id, w - prev))
        prev = w
    for k in range(adapter.num_experts):
        ranked = sorted(steps, key=lambda s, k=k: -abs(s[1][k]))[:top]
        movers[k] = [(pid, float(d[k])) for pid, d in ranked]
    return {
        "before": before.tolist(),
        "after": after.tolist(),
        "delta": (after - before).tolist(),
        "top_movers": movers,
    }


def span_report(adapter_or_margins, min_labels: int = 4) -> dict:
    """Is this user *outside* what the experts span? From the user's labels (an adapter's, or margins [N, K]
    oriented so that positive = the user's preferred response wins): each expert's agreement with the
    labels, and ``outside`` when there are at least `min_labels` labels and every expert disagrees with
    most of them -- no mix of experts on the simplex can follow such a user; the `signed` adapter can."""
    if isinstance(adapter_or_margins, Adapter):
        margins = (
            np.stack(adapter_or_margins._margins)
            if adapter_or_margins.n_labels
            else np.zeros((0, adapter_or_margins.num_experts))
        )
    else:
        margins = np.asarray(adapter_or_margins, dtype=np.float64)
    n = len(margins)
    agreement = (margins > 0).mean(0) if n else np.full(margins.shape[-1], np.nan)
    best = float(np.nanmax(agreement)) if n else None
    return {
        "n_labels": int(n),
        "expert_agreement": [None if not n else float(a) for a in agreement],
        "best_expert_agreement": best,
        "outside": bool(n >= min_labels and best is not None and best < 0.5),
    }


def disagreement_scores(adapter: Adapter, expert_margins: np.ndarray, eta: float = 1.0) -> np.ndarray:
    """[N] expected movement (L1) of the profile if each pair were labeled next.

    A one-step Hedge look-ahead from the current profile, for both possible answers y = +-1, weighted by
    the profile's own prediction P(y) = sigmoid(y * w.m). It is large where experts that carry weight
    disagree (in sign or strength) and the profile is unsure; ~0 where all experts agree."""
    m = np.asarray(expert_margins, dtype=np.float64).reshape(-1, adapter.num_experts) / adapter.margin_scale
    w = adapter.weights
    logw = np.log(np.clip(w, 1e-300, None))
    p_plus = sigmoid(m @ w)
    score = np.zeros(len(m))
    for sign, prob in ((1.0, p_plus), (-1.0, 1 - p_plus)):
        moved = softmax(logw - eta * softplus(-sign * m))
        score += prob * np.abs(moved - w).sum(1)
    return score


def select_next(
    adapter: Adapter,
    expert_margins: np.ndarray,
    exclude=None,
    strategy: str = "active",
    rng: np.random.Generator | int | None = None,
    *,
    labeled_mask: np.ndarray | None = None,
    pair_ids: list[str] | None = None,
) -> int:
    """Index of the pair to label next. `exclude` (or `labeled_mask`): a boolean mask [N], the indices
    already labeled, or their pair ids (then `pair_ids` [N] names the rows)."""
    n = len(expert_margins)
    blocked = np.zeros(n, dtype=bool)
    if labeled_mask is not None:
        blocked |= np.asarray(labeled_mask, dtype=bool)
    if (
        exclude is not None
        and not isinstance(exclude, np.ndarray)
        and any(isinstance(x, str) for x in exclude)
    ):
        if pair_ids is None:
            raise ValueError("excluding by pair id needs pair_ids (the id of every row)")
        wanted = set(exclude)
        exclude = np.array([pid in wanted for pid in pair_ids], dtype=bool)
    if exclude is not None:
        ex = np.asarray(list(exclude) if not isinstance(exclude, np.ndarray) else exclude)
        if ex.dtype == bool and ex.shape == (n,):
            blocked |= ex
        elif ex.size:
            blocked[ex.astype(np.int64)] = True
    candidates = np.flatnonzero(~blocked)
    if not len(candidates):
        raise ValueError("no unlabeled pair left to select")
    if strategy == "random":
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return int(gen.choice(candidates))
    if strategy != "active":
        raise ValueError(f"strategy must be 'active' or 'random', got {strategy!r}")
    scores = disagreement_scores(adapter, np.asarray(expert_margins)[candidates])
    return int(candidates[int(np.argmax(scores))])
