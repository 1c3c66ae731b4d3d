"""LabelSession: what a click stores (oriented by the user's choice, for the pair it was drawn with), which
pair comes next, simulated personas, per-session undo; label_in_order; ScreenClaims."""

from __future__ import annotations

import numpy as np
import pytest

from moe_reward.data.pairs import PreferencePair
from moe_reward.personalize.adapters import make_adapter, select_next
from moe_reward.personalize.session import (
    LabelSession,
    ScreenClaims,
    Shown,
    TypedPair,
    label_in_order,
    oriented,
)
from moe_reward.personalize.store import DuplicateLabel, LabelStore

K, N = 3, 12


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"prompt {i}", f"good {i}", f"bad {i}", id=f"p{i}") for i in range(N)]
    margins = rng.normal(size=(N, K)).round(3)
    logits = rng.normal(size=(N, K)).round(3)
    return pairs, margins, logits


def session(tmp_path, data, who="ana", sid="s1", adapter="hedge") -> LabelSession:
    pairs, margins, logits = data
    store = LabelStore(tmp_path / "labels.sqlite")
    return LabelSession(
        store, who, "mine", "m", pairs, margins, logits, [1 / K] * K, session=sid, adapter=adapter
    )


def test_a_label_is_oriented_by_the_choice_and_the_order_shown(tmp_path, data):
    _, margins, _ = data
    s = session(tmp_path, data)
    # A was the dataset's rejected response and the user picked A: the rejected one is preferred
    first = s.label(Shown("p1", 1, a_is_chosen=False), a_preferred=True)
    # A was the chosen one and the user picked B: again the rejected one
    second = s.label(Shown("p2", 2, a_is_chosen=True), a_preferred=False)
    # A was chosen and picked: the chosen one
    third = s.label(Shown("p3", 3, a_is_chosen=True), a_preferred=True)
    assert (first.count, second.count, third.count) == (1, 2, 3)
    stored = {lab.pair_id: lab for lab in s.store.labels(annotator="ana")}
    assert np.allclose(stored["p1"].margins, -margins[1]) and stored["p1"].chosen == "bad 1"
    assert np.allclose(stored["p2"].margins, -margins[2]) and stored["p2"].chosen == "bad 2"
    assert np.allclose(stored["p3"].margins, margins[3]) and stored["p3"].chosen == "good 3"
    assert all(lab.session == "s1" and lab.source == "manual" for lab in stored.values())
    assert np.allclose(oriented([1.0, -2.0], False), [-1.0, 2.0])


def test_a_click_labels_the_pair_it_was_drawn_with_once(tmp_path, data):
    s = session(tmp_path, data)
    shown = Shown("p4", 4, a_is_chosen=True)
    s.label(shown, True)
    with pytest.raises(DuplicateLabel):  # the same button again (a double click while the page redraws)
        s.label(shown, False)
    with pytest.raises(ValueError, match="no longer in this dataset"):  # its row now holds another pair
        s.label(Shown("p4", 5, a_is_chosen=True), True)
    state = s.load()
    assert state is not None and state.pair_ids == {"p4"} and state.adapter.n_labels == 1


def test_typed_pairs_store_their_own_margins_oriented(tmp_path, data):
    s = session(tmp_path, data)
    typed = TypedPair("typed-1", "Q?", "short", "long", (0.5, -1.0, 2.0), (0.0, 0.0, 0.0))
    s.label_typed(typed, a_preferred=False)
    (lab,) = s.store.labels(annotator="ana")
    assert lab.source == "typed" and lab.chosen == "long" and np.allclose(lab.margins, [-0.5, 1.0, -2.0])


def test_next_row_skips_what_is_done_and_follows_select_next(tmp_path, data):
    _, margins, _ = data
    s = session(tmp_path, data)
    adapter = s.fresh_adapter()
    pool = np.array([0, 2, 4, 6, 8])
    done = {"p2", "p6"}
    row = s.next_row(adapter, done, "active", pool=pool)
    free = np.array([0, 4, 8])
    assert row == free[select_next(adapter, margins[free])]
    rng_rows = {s.next_row(adapter, done, "random", rng=i, pool=pool) for i in range(30)}
    assert rng_rows <= {0, 4, 8} and len(rng_rows) > 1
    assert s.next_row(adapter, {f"p{i}" for i in pool}, pool=pool) is None


def test_a_simulated_persona_labels_the_pool_then_stops(tmp_path, data):
    _, margins, _ = data
    s = session(tmp_path, data, who="persona")
    pool = np.array([1, 3, 5])
    assert s.simulate(2, pool=pool, rng=0) == (2, False)
    assert s.simulate(5, pool=pool, rng=0) == (1, True)  # one pair was left
    labels = s.store.labels(annotator="persona")
    assert sorted(lab.pair_id for lab in labels) == ["p1", "p3", "p5"]
    for lab in labels:  # a persona prefers what the dataset chose
        row = int(lab.pair_id[1:])
        assert lab.source == "simulated" and np.allclose(lab.margins, margins[row])


def test_undo_removes_this_sessions_newest_label_only(tmp_path, data):
    mine, theirs = session(tmp_path, data, sid="mine"), session(tmp_path, data, sid="theirs")
    mine.label(Shown("p0", 0, True), True)
    theirs.label(Shown("p1", 1, True), True)
    mine.label(Shown("p2", 2, True), True)
    assert mine.undo().pair_id == "p2"
    assert mine.undo().pair_id == "p0"
    assert mine.undo() is None  # p1 is the other session's
    state = theirs.load()
    assert state is not None and state.pair_ids == {"p1"}


def test_incremental_load_equals_a_full_rebuild(tmp_path, data):
    s = session(tmp_path, data, adapter="batch")
    state = None
    for i in range(5):
        s.label(Shown(f"p{i}", i, i % 2 == 0), i % 3 == 0)
        state = s.load(state)
    fresh = s.load()
    assert state is not None and fresh is not None
    assert np.allclose(state.adapter.weights, fresh.adapter.weights) and state.adapter.name == "batch"


def test_label_in_order_is_the_select_then_label_loop(data):
    pairs, margins, logits = data
    ids = [p.id for p in pairs]
    ours = make_adapter("hedge", K, [1 / K] * K)
    rows = list(label_in_order(ours, margins, ids, logits, steps=5))
    theirs = make_adapter("hedge", K, [1 / K] * K)
    labeled = np.zeros(N, dtype=bool)
    expected = []
    for _ in range(5):
        i = select_next(theirs, margins, labeled)
        labeled[i] = True
        theirs.update(margins[i], ids[i], logits[i])
        expected.append(i)
    assert rows == expected and np.allclose(ours.weights, theirs.weights)
    assert len(list(label_in_order(make_adapter("hedge", K, [1 / K] * K), margins, ids))) == N


def test_screen_claims_hide_other_sessions_pairs_until_they_lapse(monkeypatch):
    claims = ScreenClaims(ttl=10)
    ident = ("ana", "mine", "m")
    claims.claim(ident, "a", "p1")
    claims.claim(ident, "b", "p2")
    assert claims.elsewhere(ident, "a") == {"p2"} and claims.elsewhere(("x", "y", "m"), "a") == set()
    claims.claim(ident, "b", None)
    assert claims.elsewhere(ident, "a") == set()
    claims.claim(ident, "b", "p3")
    import time as _time

    later = _time.time() + 11
    monkeypatch.setattr("moe_reward.personalize.session.time.time", lambda: later)
    assert claims.elsewhere(ident, "a") == set()


def test_typed_pairs_and_persona_accuracy_come_from_the_library():
    from types import SimpleNamespace

    from moe_reward.personalize.session import persona_accuracy, typed_pair

    a = SimpleNamespace(expert_rewards=[1.0, 0.5, -1.0], router_probs=[0.7, 0.3, 0.0])
    b = SimpleNamespace(expert_rewards=[0.5, 1.0, -2.0], router_probs=[0.7, 0.3, 0.0])
    typed = typed_pair("typed-x", "q", "short", "long", (a, b))
    assert typed.margins == (0.5, -0.5, 1.0) and np.isfinite(typed.logits).all()
    assert np.allclose(np.exp(typed.logits[:2]), [0.7, 0.3])

    margins = np.array([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])  # expert 0 agrees with 2 of 3 pairs
    adapter = make_adapter("hedge", 2, [0.5, 0.5])
    for i in range(3):
        adapter.update(np.array([1.0, -1.0]), f"p{i}")  # labels that favour expert 0
    measured = persona_accuracy(adapter, margins, np.zeros_like(margins), [True, False, True])
    assert measured.n_pairs == 3 and measured.model == pytest.approx(2 / 3)
    assert measured.start == 0.0 and measured.curve[-1] == pytest.approx(2 / 3)  # ties at the start: 0
    assert len(measured.curve) == 4 and measured.now == pytest.approx(2 / 3)
