"""The label store: concurrent writers, atomic label+profile writes, undo/reset, persistence."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from moe_reward.store import Label, LabelStore


def test_concurrent_writers_keep_every_label_with_its_annotator(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    errors: list[BaseException] = []

    def annotate(worker: int) -> None:
        try:
            for i in range(100):
                store.add_label(Label(f"annotator-{worker}", f"w{worker}-p{i}", f"prompt {worker}", f"c{i}", f"r{i}"))
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
    store.close()


def test_reopen_restores_profiles_labels_and_history(tmp_path):
    path = tmp_path / "labels.sqlite"
    store = LabelStore(path)
    prof = store.get_or_create_profile("ana", "mine", "default-sparse", "hedge")
    for step in (1, 2):
        store.record_label(Label("ana", f"p{step}", "q", "a", "b", profile_id=prof.id),
                           profile={"weights": [step, 0]}, weights=[0.5 + step / 10, 0.5 - step / 10], step=step)
    store.close()

    again = LabelStore(path)
    assert again.annotators() == ["ana"]
    [p] = again.profiles(annotator="ana", model="default-sparse")
    assert p.profile == {"weights": [2, 0]} and p.adapter == "hedge"
    assert [lab.pair_id for lab in again.labels(profile_id=p.id)] == ["p1", "p2"]
    assert [s for s, _ in again.history(p.id)] == [1, 2]
    # the same (annotator, name, model) is the same profile
    assert again.get_or_create_profile("ana", "mine", "default-sparse", "hedge").id == p.id


def test_undo_and_reset(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    prof = store.get_or_create_profile("bo", "p", "m", "batch")
    for i in range(3):
        store.record_label(Label("bo", f"x{i}", "q", "a", "b", profile_id=prof.id), {"n": i + 1}, [1.0], i + 1)
    gone = store.undo_last(prof.id, {"n": 2})
    assert gone is not None and gone.pair_id == "x2"
    assert store.count_labels(prof.id) == 2 and len(store.history(prof.id)) == 2
    assert store.profile(prof.id).profile == {"n": 2}
    assert store.reset_profile(prof.id, {"n": 0}) == 2
    assert store.count_labels(prof.id) == 0 and store.history(prof.id) == []
    assert store.undo_last(prof.id) is None


def test_failed_write_leaves_nothing_behind(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    with pytest.raises(sqlite3.IntegrityError):
        # profile 999 does not exist: the foreign key fails and the whole transaction rolls back
        store.record_label(Label("cy", "p", "q", "a", "b", profile_id=999), {"w": 1}, [1.0], 1)
    assert store.count_labels() == 0


def test_label_validation():
    with pytest.raises(ValueError):
        Label(" ", "p", "q", "a", "b")
    with pytest.raises(ValueError):
        Label("x", "p", "q", "a", "b", source="bogus")
