"""The label store: concurrent writers, one label per pair and profile, profiles rebuilt from their labels,
per-session undo, ids never reused, files of older versions, read-only files and a full disk."""

from __future__ import annotations

import json
import sqlite3
import threading

import numpy as np
import pytest

from moe_reward.personalize.adapters import make_adapter
from moe_reward.personalize.store import (
    DuplicateLabel,
    Label,
    LabelStore,
    StoreError,
    StoreReadOnly,
    new_profile_spec,
)

K = 3
PRIOR = [0.3, 0.3, 0.4]


def _margins(i: int) -> list[float]:
    return np.random.default_rng(i).normal(size=K).round(4).tolist()


def _profile(store: LabelStore, who: str = "ana", name: str = "mine", adapter: str = "hedge"):
    return store.get_or_create_profile(who, name, "m", adapter, new_profile_spec(adapter, K, PRIOR))


def test_concurrent_writers_keep_every_label_with_its_annotator(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    errors: list[BaseException] = []

    def annotate(worker: int) -> None:
        try:
            for i in range(100):
                store.add_label(
                    Label(f"annotator-{worker}", f"w{worker}-p{i}", f"prompt {worker}", f"c{i}", f"r{i}")
                )
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=annotate, args=(w,)) for w in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count_labels() == 2000
    for w in range(20):
        mine = store.labels(annotator=f"annotator-{w}")
        assert len(mine) == 100
        assert all(lab.pair_id.startswith(f"w{w}-") and lab.prompt == f"prompt {w}" for lab in mine)


def test_profile_is_rebuilt_from_its_labels_after_reopening(tmp_path):
    path = tmp_path / "labels.sqlite"
    store = LabelStore(path)
    prof = _profile(store)
    for i in range(4):
        store.record_label(
            Label("ana", f"p{i}", "q", "a", "b", profile_id=prof.id), _margins(i), session="s1"
        )
    again = LabelStore(path)
    state = again.load_profile(prof.id)
    reference = make_adapter("hedge", K, PRIOR)
    reference.fit(np.array([_margins(i) for i in range(4)]), [f"p{i}" for i in range(4)])
    assert state.adapter.n_labels == 4 and state.pair_ids == {"p0", "p1", "p2", "p3"}
    np.testing.assert_allclose(state.adapter.weights, reference.weights)
    assert [s for s, _ in again.history(prof.id)] == [1, 2, 3, 4]
    assert again.get_or_create_profile("ana", "mine", "m", "hedge").id == prof.id
    assert again.last_profile("ana", "m").name == "mine"


def test_one_label_per_pair_and_profile(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    prof = _profile(store)
    first = store.record_label(
        Label("ana", "p", "q", "a", "b", profile_id=prof.id), _margins(0), session="s1"
    )
    with pytest.raises(DuplicateLabel) as info:  # the opposite preference, from a second click
        store.record_label(
            Label("ana", "p", "q", "b", "a", profile_id=prof.id), -np.array(_margins(0)), session="s1"
        )
    assert info.value.existing_id == first
    assert [(lab.pair_id, lab.chosen) for lab in store.labels(profile_id=prof.id)] == [("p", "a")]
    other = _profile(store, name="other")  # another profile may label the same pair
    store.record_label(Label("ana", "p", "q", "b", "a", profile_id=other.id), _margins(1), session="s1")


def test_racing_duplicate_clicks_store_exactly_one(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    prof = _profile(store)
    outcomes: list[str] = []

    def click(side: int) -> None:
        try:
            store.record_label(
                Label("ana", "p", "q", "ab"[side], "ba"[side], profile_id=prof.id),
                _margins(side),
                session=f"s{side}",
            )
            outcomes.append("stored")
        except DuplicateLabel:
            outcomes.append("refused")

    threads = [threading.Thread(target=click, args=(i % 2,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 15 + ["stored"]
    assert store.count_labels(prof.id) == 1


def test_two_sessions_share_a_profile_and_undo_only_their_own(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    prof = _profile(store)
    a_state = b_state = None
    for i in range(10):
        session = "A" if i % 2 == 0 else "B"
        store.record_label(
            Label("ana", f"p{i}", "q", "a", "b", profile_id=prof.id), _margins(i), session=session
        )
        a_state = store.load_profile(prof.id, a_state)  # incremental: only the new label is replayed
    b_state = store.load_profile(prof.id, b_state)
    assert a_state.adapter.n_labels == b_state.adapter.n_labels == 10
    np.testing.assert_allclose(a_state.adapter.weights, b_state.adapter.weights)
    ids_before = store.label_ids(prof.id)
    gone = store.undo_last(prof.id, "A")  # A's newest is p8; B's p9 (newer) stays
    assert gone.pair_id == "p8" and gone.session == "A"
    assert [lab.pair_id for lab in store.labels(profile_id=prof.id)][-2:] == ["p7", "p9"]
    assert store.count_labels(prof.id, session="B") == 5 and store.count_labels(prof.id, session="A") == 4
    b_state = store.load_profile(prof.id, b_state)  # a label in the middle went: rebuilt from all
    reference = make_adapter("hedge", K, PRIOR)
    kept = [i for i in range(10) if i != 8]
    reference.fit(np.array([_margins(i) for i in kept]), [f"p{i}" for i in kept])
    np.testing.assert_allclose(b_state.adapter.weights, reference.weights)
    new_id = store.record_label(
        Label("ana", "p10", "q", "a", "b", profile_id=prof.id), _margins(10), session="A"
    )
    assert new_id > max(ids_before)  # the undone id 9 is never handed out again
    store.undo_last(prof.id, "A")
    assert (
        store.record_label(Label("ana", "p11", "q", "a", "b", profile_id=prof.id), _margins(11), session="A")
        > new_id
    )
    assert store.undo_last(prof.id, "nobody") is None


def test_changing_the_adapter_refits_the_same_labels(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    prof = _profile(store)
    for i in range(3):
        store.record_label(Label("ana", f"p{i}", "q", "a", "b", profile_id=prof.id), _margins(i), session="A")
    state = store.load_profile(prof.id)
    store.save_profile(prof.id, new_profile_spec("batch", K, PRIOR, temperature=0.5))
    again = store.load_profile(prof.id, state)
    assert again.adapter.name == "batch" and again.adapter.params["temperature"] == 0.5
    assert again.adapter.n_labels == 3 and store.profile(prof.id).adapter == "batch"


def test_reset_and_import(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    prof = _profile(store)
    for i in range(3):
        store.record_label(Label("ana", f"x{i}", "q", "a", "b", profile_id=prof.id), _margins(i), session="A")
    assert store.reset_profile(prof.id) == 3
    assert store.count_labels(prof.id) == 0 and store.load_profile(prof.id).adapter.n_labels == 0
    labels = [Label("ana", f"i{i}", "", "", "", source="import", margins=_margins(i)) for i in range(5)]
    assert store.replace_labels(prof.id, new_profile_spec("batch", K, PRIOR), labels, session="A") == 5
    assert store.load_profile(prof.id).adapter.name == "batch"
    with pytest.raises(ValueError, match="labeled twice"):
        store.replace_labels(prof.id, new_profile_spec("batch", K, PRIOR), labels + labels[:1])
    with pytest.raises(ValueError, match="margins"):
        store.record_label(Label("ana", "y", "q", "a", "b", profile_id=prof.id), [1.0, 2.0], session="A")
    assert store.count_labels(prof.id) == 5


def test_failed_write_leaves_nothing_behind(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    with pytest.raises(ValueError, match="no profile"):
        store.record_label(Label("cy", "p", "q", "a", "b", profile_id=999), [1.0], session="s")
    with pytest.raises(StoreError):  # the foreign key fails and the whole transaction rolls back
        store.add_label(Label("cy", "p", "q", "a", "b", profile_id=999))
    assert store.count_labels() == 0


def test_label_validation():
    with pytest.raises(ValueError):
        Label(" ", "p", "q", "a", "b")
    with pytest.raises(ValueError):
        Label("x", "p", "q", "a", "b", source="bogus")


def test_a_file_of_the_previous_version_keeps_every_label_and_its_profile(tmp_path):
    """Labels without margins and ids without AUTOINCREMENT: migrated in place, profile rebuilt from the
    adapter dict that version kept in the profile row."""
    path = tmp_path / "labels.sqlite"
    old = make_adapter("hedge", K, PRIOR)
    old.fit(np.array([_margins(i) for i in range(3)]), ["a", "b", "c"])
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE annotators (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
            CREATE TABLE profiles (id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL, name TEXT NOT NULL,
                model TEXT NOT NULL, adapter TEXT NOT NULL, profile_json TEXT NOT NULL DEFAULT '{}',
                created_at REAL NOT NULL, updated_at REAL NOT NULL, UNIQUE (annotator_id, name, model));
            CREATE TABLE labels (id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL, profile_id INTEGER,
                pair_id TEXT NOT NULL, prompt TEXT NOT NULL, chosen TEXT NOT NULL, rejected TEXT NOT NULL,
                source TEXT NOT NULL DEFAULT 'manual', created_at REAL NOT NULL);
            CREATE TABLE profile_history (id INTEGER PRIMARY KEY, profile_id INTEGER NOT NULL, step INTEGER NOT NULL,
                weights_json TEXT NOT NULL, created_at REAL NOT NULL);
            INSERT INTO annotators VALUES (1, 'ana', 0);""")
        conn.execute(
            "INSERT INTO profiles VALUES (1, 1, 'old', 'm', 'hedge', ?, 0, 0)", (json.dumps(old.to_dict()),)
        )
        for i, pid in enumerate("abc", start=1):
            conn.execute("INSERT INTO labels VALUES (?, 1, 1, ?, 'q', 'x', 'y', 'manual', 0)", (i, pid))
    store = LabelStore(path)
    assert [lab.id for lab in store.labels()] == [1, 2, 3]
    state = store.load_profile(1)
    assert state.unusable == 0
    np.testing.assert_allclose(state.adapter.weights, old.weights)
    store.undo_last(1, None)  # the old labels have no session: undone as such
    assert store.record_label(Label("ana", "d", "q", "x", "y", profile_id=1), _margins(5), session="s") == 4


def test_disk_full_says_the_label_was_not_stored(tmp_path, monkeypatch):
    """sqlite's SQLITE_FULL as the store meets it (a real full disk: tests/integration/test_labels_hostile.py)."""
    store = LabelStore(tmp_path / "labels.sqlite")
    prof = _profile(store)
    real_connect = sqlite3.connect

    def full_disk(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        conn.execute(
            "PRAGMA max_page_count = 1"
        )  # clamped to the current size: growing fails with SQLITE_FULL
        return conn

    monkeypatch.setattr(sqlite3, "connect", full_disk)
    long_prompt = "q" * 50_000  # needs new pages: the file cannot grow
    with pytest.raises(StoreError, match="not saved.*full.*not in the store"):
        store.record_label(
            Label("ana", "p", long_prompt, "a", "b", profile_id=prof.id), _margins(0), session="s"
        )
    monkeypatch.setattr(sqlite3, "connect", real_connect)
    assert store.count_labels() == 0
    store.record_label(Label("ana", "p", long_prompt, "a", "b", profile_id=prof.id), _margins(0), session="s")
    assert store.count_labels() == 1


def test_read_only_file_reads_and_refuses_writes(tmp_path, monkeypatch):
    path = tmp_path / "labels.sqlite"
    store = LabelStore(path)
    prof = _profile(store)
    store.record_label(Label("ana", "p", "q", "a", "b", profile_id=prof.id), _margins(0), session="s")
    real_connect = sqlite3.connect

    def read_only(
        target, *args, **kwargs
    ):  # what a read-only mount does to a writer (a real one: test_labels_hostile)
        if "immutable=1" not in str(target):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real_connect(target, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    ro = LabelStore(path)
    assert ro.read_only and "cannot be written" in ro.read_only
    assert ro.count_labels() == 1 and ro.load_profile(prof.id).adapter.n_labels == 1
    with pytest.raises(StoreReadOnly, match="not saved"):
        ro.record_label(Label("ana", "p2", "q", "a", "b", profile_id=prof.id), _margins(1), session="s")
    with pytest.raises(StoreReadOnly):
        ro.undo_last(prof.id, "s")


def test_an_import_that_would_make_the_profile_non_finite_stores_nothing(tmp_path, monkeypatch):
    """Issue 20 item 2: a 330-byte profile with NaN showed "Imported" and NaN weights; the import now
    replays its labels before anything is written."""
    from moe_reward.personalize.adapters import BatchAdapter, NonFiniteProfile

    store = LabelStore(tmp_path / "labels.sqlite")
    prof = _profile(store)
    store.record_label(Label("ana", "kept", "q", "a", "b", profile_id=prof.id), _margins(0), session="A")
    labels = [Label("ana", f"i{i}", "", "", "", source="import", margins=_margins(i)) for i in range(3)]
    monkeypatch.setattr(BatchAdapter, "_weights_of", lambda self, state: np.full(K, np.nan))
    with pytest.raises(NonFiniteProfile):
        store.replace_labels(prof.id, new_profile_spec("batch", K, PRIOR), labels)
    monkeypatch.undo()
    assert [lab.pair_id for lab in store.labels(profile_id=prof.id)] == ["kept"]
    assert store.profile(prof.id).adapter == "hedge"
    with pytest.raises(ValueError, match="params.lr must be in"):  # a spec outside the bounds: refused too
        store.replace_labels(
            prof.id, {**new_profile_spec("signed", K, PRIOR), "params": {"lr": 1e308}}, labels
        )
    with pytest.raises(ValueError, match=r"beyond \+-1e\+09"):
        store.record_label(Label("ana", "big", "q", "a", "b", profile_id=prof.id), [1e12] * K, session="A")
    assert store.count_labels(prof.id) == 1


def test_a_click_for_a_pair_no_longer_shown_is_refused(tmp_path):
    """Issue 20 item 9: a click carries the pair it was drawn with; when the page shows another pair by the
    time it arrives (or the pair was skipped), the store refuses it."""
    from moe_reward.personalize.store import StaleClick

    store = LabelStore(tmp_path / "labels.sqlite")
    prof = _profile(store)
    with pytest.raises(StaleClick, match="pair 'p' is no longer the one shown \\(now 'q' is shown\\)"):
        store.record_label(Label("ana", "p", "q", "a", "b", profile_id=prof.id), _margins(0), shown="q")
    with pytest.raises(StaleClick, match="no pair is shown now"):
        store.record_label(Label("ana", "p", "q", "a", "b", profile_id=prof.id), _margins(0), shown="")
    assert store.count_labels(prof.id) == 0
    store.record_label(Label("ana", "p", "q", "a", "b", profile_id=prof.id), _margins(0), shown="p")
    assert store.count_labels(prof.id) == 1


def test_a_then_b_near_simultaneous_stores_exactly_one(tmp_path):
    """Two near-simultaneous label calls for one pair (A, then B 1 ms later), 20 times: exactly one is
    stored and the other refused (as a duplicate, or as a click for a pair no longer shown), never both."""
    import time

    from moe_reward.personalize.store import StaleClick

    store = LabelStore(tmp_path / "labels.sqlite")
    prof = _profile(store)
    for round_ in range(20):
        pid, shown = f"p{round_}", {"pair": f"p{round_}"}
        results: dict[str, str] = {}

        def click(
            letter: str, delay: float, pid=pid, shown=shown, results=results, m=np.array(_margins(round_))
        ) -> None:
            time.sleep(delay)
            try:
                store.record_label(
                    Label("ana", pid, "q", letter, "AB".replace(letter, ""), profile_id=prof.id),
                    m if letter == "A" else -m,
                    session="s",
                    shown=shown["pair"],
                )
                shown["pair"] = f"next-{pid}"  # the page moves on once a label is stored
                results[letter] = "stored"
            except (DuplicateLabel, StaleClick):
                results[letter] = "refused"

        a = threading.Thread(target=click, args=("A", 0.0))
        b = threading.Thread(target=click, args=("B", 0.001))
        a.start()
        b.start()
        a.join()
        b.join()
        stored = [lab for lab in store.labels(profile_id=prof.id) if lab.pair_id == pid]
        assert len(stored) == 1, results
        assert sorted(results.values()) == ["refused", "stored"]
    assert store.count_labels(prof.id) == 20


def test_twenty_threads_each_with_its_own_store_all_wait_their_turn(tmp_path):
    """Issue 20 item 11: 20 threads, each opening its own store, used to lose 3-5 of them to "database
    is locked" once SQLite's busy timeout ran out. Writers of one process now queue on one lock per file:
    with a busy timeout of 20 ms (which the old code exceeded at once) every label is stored."""
    path = tmp_path / "labels.sqlite"
    errors: list[str] = []

    def work(w: int) -> None:
        try:
            store = LabelStore(path, busy_timeout_ms=20)
            prof = _profile(store, who=f"ann{w}")
            for i in range(8):
                store.record_label(
                    Label(f"ann{w}", f"p{i}", "q", "a", "b", profile_id=prof.id), _margins(i), session="s"
                )
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert LabelStore(path).count_labels() == 160


def _process_writer(path: str, worker: int, n: int) -> None:
    store = LabelStore(path, busy_timeout_ms=1, write_wait_s=60)
    prof = _profile(store, who=f"proc{worker}")
    for i in range(n):
        store.record_label(Label(f"proc{worker}", f"p{i}", "q", "a", "b", profile_id=prof.id), _margins(i))


def test_writers_in_other_processes_retry_instead_of_failing(tmp_path, monkeypatch):
    """Across processes SQLite's lock decides; with a 1 ms busy timeout each write retries (backing off) for
    up to `write_wait_s` instead of failing."""
    import multiprocessing
    import sys
    import types

    # A spawned child first runs the parent's __main__ file; after a Streamlit AppTest in this process that
    # is the last page it ran (Streamlit makes each script __main__), so the children start from a bare one.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))

    path = tmp_path / "labels.sqlite"
    LabelStore(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_writer, args=(str(path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert LabelStore(path).count_labels() == 60


def test_the_label_store_and_the_adapters_import_without_torch():
    """Writers in other processes (and tools that only read profiles) do not pay torch's import."""
    import subprocess
    import sys

    code = "import sys, moe_reward.personalize.store, moe_reward.personalize.adapters; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
