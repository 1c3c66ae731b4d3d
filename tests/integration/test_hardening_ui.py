"""Issue 20 in the dashboard (streamlit AppTest): an upload never replaces another dataset without an
explicit choice naming it (item 1), hostile query parameters never crash a page (item 6), and two answers
for one pair that reach the server together are both refused (item 9)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from app_pages import use_workspace
from app_workspace import build_tiny_workspace

streamlit = pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    "app.py",
    "pages/1_Routing_statistics.py",
    "pages/2_Expert_map.py",
    "pages/3_Expert_detail.py",
    "pages/4_Personalize.py",
    "pages/5_Compare_models.py",
    "pages/6_Score_your_own.py",
    "pages/7_Data_and_training.py",
]


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    build_tiny_workspace(root)
    return root


@pytest.fixture
def home(tiny_home, monkeypatch) -> Path:
    return use_workspace(monkeypatch, tiny_home)  # pages import ui_common, as under `streamlit run`


def page(path: str, **query) -> AppTest:
    at = AppTest.from_file(str(ROOT / path), default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


# ----------------------------------------------------------------------------- item 1: uploads

GOOD = [
    {"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"No {i}.", "id": f"v{i}"}
    for i in range(4)
]


def _upload(name: str, content: bytes) -> AppTest:
    at = page("pages/7_Data_and_training.py")
    # (the uploader's key carries a round number: a fresh uploader after each saved upload)
    uploader = next(u for u in at.get("file_uploader") if str(u.key).startswith("dt_upload"))
    uploader.set_value((name, content, "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_an_upload_never_replaces_another_dataset_unless_named(home):
    victim = home / "uploads" / "victim.jsonl"
    at = _upload("victim.jsonl", "".join(json.dumps(r) + "\n" for r in GOOD).encode())
    at.button(key="dt_save").click().run()
    original = victim.read_bytes()
    assert json.loads(original.splitlines()[0])["id"] == "v0"
    uploads_before = sorted(p.name for p in (home / "uploads").iterdir())
    # victim.csv with one bad row: its valid rows would be saved as uploads/victim.jsonl
    csv_bytes = b"prompt,chosen,rejected\nq1,a,b\nq2,c,\nq3,e,f\n"
    at = _upload("victim.csv", csv_bytes)
    assert next(b for b in at.button if b.key == "dt_save").label == "Add the valid rows only (as JSONL)"
    replace = at.checkbox(key="dt_replace_victim.jsonl")
    assert replace.label.startswith("Replace uploads/victim.jsonl") and replace.value is False
    at.button(key="dt_save").click().run()
    shown = [e.value.replace("\\", "") for e in at.error]  # (markdown-escaped on the page)
    assert any("uploads/victim.jsonl exists and was not replaced" in e for e in shown), shown
    assert victim.read_bytes() == original
    assert sorted(p.name for p in (home / "uploads").iterdir()) == uploads_before  # nothing else either
    at.checkbox(key="dt_replace_victim.jsonl").check().run()  # the explicit choice naming the file
    at.button(key="dt_save").click().run()
    assert not at.exception and victim.read_bytes() != original
    assert [json.loads(line)["prompt"] for line in victim.read_text().splitlines()] == ["q1", "q3"]


# ----------------------------------------------------------------------------- item 6: query parameters

HOSTILE_QUERY = {
    "model": "../../etc/passwd",
    "data": "<script>alert(1)</script>",
    "expert": "²",
    "subset": "²",
    "group": "٣",
    "correct": "maybe",
    "conf": "nan,inf",
    "view": "x" * 3000,
    "layout": "umap\x00",
    "color": "-1",
    "cap": "1e999",
    "box": "nan,0,1,2",
    "pair": "\u202e",
    "other": "../../x",
    "annotator": "\ufffd" * 100,
    "profile": "",
}


@pytest.mark.parametrize("path", PAGES)
def test_hostile_query_parameters_never_crash_a_page(home, path):
    for query in ({"expert": "²"}, {"expert": "99999999999999999999"}, HOSTILE_QUERY):
        at = page(path, **query)
        assert not at.exception, (path, query, [e.value for e in at.exception])


def test_a_valid_expert_link_still_opens_that_expert(home):
    at = page("pages/3_Expert_detail.py", expert="1")
    assert at.selectbox(key="detail_expert").value == 1
    at = page("pages/3_Expert_detail.py", expert="٣")  # an Arabic-Indic digit is not an expert number
    assert not at.exception and at.selectbox(key="detail_expert").value == 0


# ----------------------------------------------------------------------------- item 9: A then B


def _labels(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "labels.sqlite") as conn:
        return conn.execute(
            "SELECT l.pair_id, l.chosen FROM labels l JOIN annotators a ON a.id = l.annotator_id "
            "WHERE a.name = 'double-clicker' ORDER BY l.id"
        ).fetchall()


def test_a_and_b_arriving_in_one_run_are_both_refused(home):
    """Streamlit merges clicks that arrive faster than a redraw into one run and keeps no order (the later
    click's callback may run first): neither answer is stored, and the page says so."""
    at = page("pages/4_Personalize.py")
    at.text_input(key="pz_annotator").set_value("double-clicker").run()
    a = next(b for b in at.button if b.label == "A is better")
    b = next(b for b in at.button if b.label == "B is better")
    assert a.key.removeprefix("pz_a_") == b.key.removeprefix("pz_b_")  # the same pair
    a.click()
    b.click()
    at.run()
    assert not at.exception
    assert _labels(home) == []
    assert any(
        "Both A and B arrived for pair" in w.value and "neither was stored" in w.value for w in at.info
    )
    next(x for x in at.button if x.label == "A is better").click().run()  # one answer: stored
    assert len(_labels(home)) == 1 and any("Saved label" in s.value for s in at.success)
