"""One annotator labeling one profile: what a click stores, and which pair comes next.

The Personalize page and `moe-reward label` both go through `LabelSession`, so the rules live here once:

- **Orientation.** The store keeps every label's expert margins oriented "preferred minus other"; the
  dataset's margins are "chosen minus rejected" (`expert_margins_for`). A label that prefers the dataset's
  rejected response stores the negated row (`oriented`).
- **The click carries what the user saw.** A page shows a pair with its responses in a random order; the
  buttons carry a `Shown` (pair id, row, which response was A), and `label` stores exactly that pair in
  that orientation. Nothing here reads "the pair on screen now": a click that arrives while the page is
  redrawing, or twice, labels the pair it was drawn with, or is refused by the store (`DuplicateLabel`:
  one label per pair and profile; `StaleClick`: the caller says, with `showing`, that it shows another
  pair now).
- **The labels are the profile.** `load` rebuilds it from the store (only the labels added since the
  caller's previous state are replayed); `next_row` picks the next pair among those neither labeled in
  the profile nor excluded by the caller (skipped, or on another session's screen: `ScreenClaims`).

`label_in_order` is the same select-then-label loop on an adapter in memory (the `personalize` command and
the experiment's active-vs-random curves).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.pairs import PreferencePair
from .adapters import ADAPTERS, Adapter, select_next
from .store import (
    DuplicateLabel,
    Label,
    LabelStore,
    ProfileRecord,
    ProfileState,
    adapter_from_spec,
    new_profile_spec,
)

__all__ = [
    "DuplicateLabel",
    "LabelSession",
    "ScreenClaims",
    "Shown",
    "Stored",
    "TypedPair",
    "label_in_order",
    "oriented",
    "persona_accuracy",
    "typed_pair",
]


def oriented(margins_row, first_preferred: bool) -> np.ndarray:
    """Expert margins "first minus second" turned into "preferred minus other": as they are when the first
    response is the preferred one, negated when the second is."""
    row = np.asarray(margins_row, dtype=np.float64)
    return row if first_preferred else -row


@dataclass(frozen=True)
class Shown:
    """A dataset pair as it was put on screen: which pair (id and row) and whether response A was the
    dataset's chosen one. A label button carries this, never a reference to "the current pair"."""

    pair_id: str
    row: int
    a_is_chosen: bool

    def prefers_chosen(self, a_preferred: bool) -> bool:
        return a_preferred == self.a_is_chosen


@dataclass(frozen=True)
class TypedPair:
    """A pair the annotator typed: its texts, and its expert margins (A minus B) and router logits."""

    pair_id: str
    prompt: str
    a: str
    b: str
    margins: tuple[float, ...]
    logits: tuple[float, ...]


def typed_pair(pair_id: str, prompt: str, a: str, b: str, scored) -> TypedPair:
    """A typed pair from `score_texts`'s two results (A, B): expert margins A minus B, router logits of the
    prompt (log of its softmax)."""
    first, second = scored
    margins = np.subtract(first.expert_rewards, second.expert_rewards)
    logits = np.log(np.clip(first.router_probs, 1e-12, None))
    return TypedPair(pair_id, prompt, a, b, tuple(margins.tolist()), tuple(logits.tolist()))


@dataclass(frozen=True)
class PersonaAccuracy:
    """A profile measured on a persona's held-out pairs: after each of its labels (the weights-only mix:
    `curve[0]` is the starting profile), now (the adapter's own prediction) and under the model's routing."""

    curve: list[float]
    now: float
    model: float
    n_pairs: int

    @property
    def start(self) -> float:
        return self.curve[0]


def persona_accuracy(
    adapter: Adapter, margins: np.ndarray, logits: np.ndarray, model_correct
) -> PersonaAccuracy:
    """`adapter`'s accuracy on held-out pairs (`margins` chosen minus rejected [N, K], `logits` [N, K]),
    after each label of its history, and the model's own routing (`model_correct` [N] booleans)."""
    from .adapters import personalized_accuracy

    history = np.array([adapter.initial_weights] + [h.weights for h in adapter.history])
    curve = ((np.asarray(margins, np.float64) @ history.T) > 0).mean(0)
    return PersonaAccuracy(
        [float(x) for x in curve],
        personalized_accuracy(adapter, margins, logits),
        float(np.mean(model_correct)),
        len(margins),
    )


@dataclass(frozen=True)
class Stored:
    """A label the store accepted: its id, its pair and how many labels the profile holds now."""

    label_id: int
    pair_id: str
    count: int


class LabelSession:
    """`annotator`'s profile `profile` on model `model`, labeled from a dataset's `pairs` (with the model's
    expert `margins` [N, K], chosen minus rejected, and router `logits` [N, K]). `session` identifies the
    browser session (or the command line) so that Undo removes only its own labels. A new profile starts
    at `prior` with per-expert `margin_scale`; `adapter` is the adapter a profile created here gets."""

    def __init__(
        self,
        store: LabelStore,
        annotator: str,
        profile: str,
        model: str,
        pairs: Sequence[PreferencePair],
        margins: np.ndarray,
        logits: np.ndarray,
        prior,
        margin_scale=None,
        session: str | None = None,
        adapter: str = ADAPTERS[0],
    ):
        if len(pairs) != len(margins) or len(margins) != len(logits):
            raise ValueError(f"{len(pairs)} pairs, {len(margins)} margin rows, {len(logits)} logit rows")
        self.store, self.annotator, self.profile, self.model = store, annotator, profile, model
        self.pairs, self.margins, self.logits = pairs, margins, logits
        self.prior, self.margin_scale, self.session, self.adapter = prior, margin_scale, session, adapter
        self._ids: list[str] | None = None

    @property
    def ident(self) -> tuple[str, str, str]:
        return self.annotator, self.profile, self.model

    @property
    def num_experts(self) -> int:
        return int(np.asarray(self.margins).shape[1])

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = [p.id for p in self.pairs]
        return self._ids

    # ------------------------------------------------------------------ the profile
    def spec(self, adapter: str | None = None, **params) -> dict:
        """A new profile's spec: `adapter` (this session's by default) with `params`, starting at the prior."""
        return new_profile_spec(
            adapter or self.adapter, self.num_experts, self.prior, margin_scale=self.margin_scale, **params
        )

    def record(self) -> ProfileRecord | None:
        """The stored profile, or None before its first label (or setting) created it."""
        return self.store.find_profile(self.annotator, self.profile, self.model)

    def profile_id(self) -> int:
        """The profile's id, creating it (with this session's adapter) when it does not exist yet."""
        rec = self.record()
        if rec is not None:
            return rec.id
        spec = self.spec()
        return self.store.get_or_create_profile(
            self.annotator, self.profile, self.model, spec["name"], spec
        ).id

    def load(self, previous: ProfileState | None = None) -> ProfileState | None:
        """The profile rebuilt from its labels (None when it does not exist yet). With `previous`, the state
        this caller loaded last, only the labels stored since are replayed."""
        rec = self.record()
        if rec is None:
            return None
        return self.store.load_profile(rec.id, previous, fallback=self.spec(rec.adapter or self.adapter))

    def fresh_adapter(self) -> Adapter:
        """The adapter a profile that does not exist yet would start with."""
        return adapter_from_spec(self.spec())

    # ------------------------------------------------------------------ storing labels
    def label(
        self, shown: Shown, a_preferred: bool, source: str = "manual", showing: str | None = None
    ) -> Stored:
        """Store the label of a click on a pair as it was shown (`a_preferred`: the user picked A).
        `showing`: the pair id the caller shows now ("" for none; None: not checked), given to the store,
        which refuses a click on any other pair. Raises `DuplicateLabel` when the profile already has a
        label for that pair, `StaleClick` when that pair is no longer the one shown, `ValueError` when the
        pair is no longer in this dataset, `StoreError` when the store failed (its message says whether the
        label was kept)."""
        return self.label_row(
            shown.row, shown.prefers_chosen(a_preferred), source, pair_id=shown.pair_id, showing=showing
        )

    def label_row(
        self,
        row: int,
        prefer_chosen: bool,
        source: str = "manual",
        pair_id: str | None = None,
        showing: str | None = None,
    ) -> Stored:
        """Store a label on dataset row `row`: the annotator prefers its chosen response or not
        (`showing`: as in `label`)."""
        if not 0 <= row < len(self.pairs) or (pair_id is not None and self.pairs[row].id != pair_id):
            raise ValueError(f"pair {pair_id if pair_id is not None else row!r} is no longer in this dataset")
        p = self.pairs[row]
        preferred, other = (p.chosen, p.rejected) if prefer_chosen else (p.rejected, p.chosen)
        profile_id = self.profile_id()
        label_id = self.store.record_label(
            Label(self.annotator, p.id, p.prompt, preferred, other, profile_id=profile_id, source=source),
            oriented(self.margins[row], prefer_chosen),
            self.logits[row],
            session=self.session,
            shown=showing,
        )
        return Stored(label_id, p.id, self.store.count_labels(profile_id))

    def label_typed(self, typed: TypedPair, a_preferred: bool, showing: str | None = None) -> Stored:
        """Store the label of a typed pair (its margins are A minus B; `showing`: as in `label`)."""
        preferred, other = (typed.a, typed.b) if a_preferred else (typed.b, typed.a)
        profile_id = self.profile_id()
        label_id = self.store.record_label(
            Label(
                self.annotator,
                typed.pair_id,
                typed.prompt,
                preferred,
                other,
                profile_id=profile_id,
                source="typed",
            ),
            oriented(typed.margins, a_preferred),
            list(typed.logits),
            session=self.session,
            shown=showing,
        )
        return Stored(label_id, typed.pair_id, self.store.count_labels(profile_id))

    def undo(self) -> Label | None:
        """Remove the newest label this session stored in the profile (None: it has none left)."""
        rec = self.record()
        return None if rec is None else self.store.undo_last(rec.id, self.session)

    # ------------------------------------------------------------------ what comes next
    def next_row(
        self,
        adapter: Adapter,
        done: set[str],
        strategy: str = "active",
        rng: np.random.Generator | int | None = None,
        pool: np.ndarray | None = None,
    ) -> int | None:
        """The dataset row to label next among `pool` (all rows by default): the pair whose label should
        move `adapter` most ("active") or a random one, never one whose id is in `done` (labeled in the
        profile, skipped, shown elsewhere). None when every pair of the pool is done."""
        rows = np.arange(len(self.pairs)) if pool is None else np.asarray(pool, dtype=np.int64)
        ids = self.ids
        blocked = np.fromiter((ids[i] in done for i in rows), dtype=bool, count=len(rows))
        if blocked.all():
            return None
        pick = select_next(adapter, self.margins[rows], exclude=blocked, strategy=strategy, rng=rng)
        return int(rows[pick])

    def simulate(
        self,
        steps: int,
        strategy: str = "active",
        rng: np.random.Generator | int | None = None,
        skip: set[str] | None = None,
        pool: np.ndarray | None = None,
    ) -> tuple[int, bool]:
        """A simulated annotator (a persona of the dataset) labels up to `steps` pairs of `pool` one at a
        time, each the next pair for the profile as it is then, preferring what the dataset says it
        chose. Returns (labels stored, whether the pool ran out first). A pair another session labels
        meanwhile is passed over."""
        self.profile_id()  # the profile exists before its state is loaded
        state = self.load()
        assert state is not None
        stored, gen = 0, rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        for _ in range(steps):
            row = self.next_row(state.adapter, state.pair_ids | (skip or set()), strategy, gen, pool)
            if row is None:
                return stored, True
            try:
                self.label_row(row, prefer_chosen=True, source="simulated")
                stored += 1
            except DuplicateLabel:
                pass  # another session labeled it meanwhile: the reload below includes it
            state = self.load(state)
            assert state is not None
        return stored, False


def label_in_order(
    adapter: Adapter,
    margins: np.ndarray,
    ids: Sequence[str],
    logits: np.ndarray | None = None,
    steps: int | None = None,
    strategy: str = "active",
    rng: np.random.Generator | int | None = None,
) -> Iterator[int]:
    """Label pairs one at a time on `adapter` (in memory), each picked by `select_next` given the labels so
    far, the labels being the dataset's own (margins chosen minus rejected). Yields each row once `adapter`
    has been updated with it; stops after `steps` labels or when every row is labeled."""
    margins = np.asarray(margins)
    labeled = np.zeros(len(margins), dtype=bool)
    gen = rng if isinstance(rng, np.random.Generator) or rng is None else np.random.default_rng(rng)
    for _ in range(len(margins) if steps is None else min(steps, len(margins))):
        i = select_next(adapter, margins, labeled, strategy=strategy, rng=gen)
        labeled[i] = True
        adapter.update(margins[i], ids[i], None if logits is None else logits[i])
        yield i


class ScreenClaims:
    """Which pair each browser session shows, per profile, in one server process: two sessions labeling
    one profile are shown different pairs instead of racing for one. A claim lapses after `ttl` seconds
    (a closed tab)."""

    def __init__(self, ttl: float = 900.0):
        self.ttl = ttl
        self._claims: dict[tuple, dict[str, tuple[str, float]]] = {}
        self._lock = threading.Lock()

    def claim(self, ident: tuple, session: str, pair_id: str | None) -> None:
        with self._lock:
            claims = self._claims.setdefault(ident, {})
            if pair_id is None:
                claims.pop(session, None)
            else:
                claims[session] = (pair_id, time.time())

    def elsewhere(self, ident: tuple, session: str) -> set[str]:
        """Pairs other sessions show on this profile now."""
        now = time.time()
        with self._lock:
            claims = dict(self._claims.get(ident, {}))
        return {pid for s, (pid, at) in claims.items() if s != session and now - at < self.ttl}
