"""Issue 20 items 1, 6 and 8 at the library level: one parser for query parameters (never raises), one CSV
writer (safe to open in a spreadsheet), one upload writer (never replaces a file the user did not name)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pandas as pd
import pytest

from moe_reward.app.query import parse_query_value
from moe_reward.app.workspace import UploadExists, Workspace, data_stem
from moe_reward.core import csvsafe

ROOT = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- query parameters


@pytest.mark.parametrize(
    "raw",
    ["²", "٣", "1e3", "3.0", "", " ", "-", "0x1f", "9" * 40, "nan", "inf", "3\x00", ["1", "2"], "x" * 5000],
)
def test_hostile_integers_are_nothing(raw):
    assert parse_query_value(raw, int) is None


def test_valid_values_come_through():
    assert parse_query_value("3", int, range(12)) == 3
    assert parse_query_value("12", int, range(12)) is None  # outside what the page can show
    assert parse_query_value("-2", int, lambda k: k >= 0) is None
    assert parse_query_value("0.25", float) == 0.25
    assert parse_query_value("1e999", float) is None and parse_query_value("nan", float) is None
    assert parse_query_value("test", str, ["test", "all"]) == "test"
    assert parse_query_value(["a", "b"], lambda v: v if isinstance(v, list) else [v], ["a", "b", "c"]) == [
        "a",
        "b",
    ]
    assert parse_query_value(["a", "z"], lambda v: v if isinstance(v, list) else [v], ["a", "b"]) is None


def test_a_parser_that_raises_or_returns_non_finite_numbers_gives_nothing():
    def boom(_):
        raise KeyError("anything")

    assert parse_query_value("1", boom) is None
    box = lambda v: [float(x) for x in str(v).split(",")][:4]  # noqa: E731 (the Expert map's box)
    assert parse_query_value("0,1,nan,2", box) is None and parse_query_value("0,1,2,3", box) == [0, 1, 2, 3]
    assert parse_query_value("0.1,0.9", lambda t: tuple(float(v) for v in t.split(","))) == (0.1, 0.9)
    assert parse_query_value("inf,0.9", lambda t: tuple(float(v) for v in t.split(","))) is None


def test_pages_read_query_parameters_only_through_the_helper():
    """No page reads st.query_params itself or converts a parameter with isdigit()."""
    for path in [ROOT / "app.py", ROOT / "ui_common.py", *sorted((ROOT / "pages").glob("*.py"))]:
        text = path.read_text()
        reads = [m.group(0) for m in re.finditer(r"query_params\.(get|get_all)\(", text)]
        if path.name == "ui_common.py":
            assert len(reads) <= 3, reads  # the URL snapshot, `query_param`'s fallback, share_view's compare
        else:
            assert not reads, (path.name, reads)
        assert ".isdigit()" not in text.replace("k.isdigit()", "").replace("cat[1:].isdigit()", ""), path.name


# ----------------------------------------------------------------------------- CSV


HOSTILE = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://x")']


def test_cells_that_a_spreadsheet_would_run_are_neutralized():
    for cell in HOSTILE:
        assert csvsafe.safe_cell(cell) == "'" + cell
    for cell in ("plain", "a=b", " =leading space", "", 3, -0.25, None):
        assert csvsafe.safe_cell(cell) == cell


def test_frames_and_rows_keep_numbers_and_neutralize_text(tmp_path):
    frame = pd.DataFrame({"id": ["=evil", "ok"], "margin": [-0.25, 1.5], "=col": ["-x", "y"]})
    rows = list(csv.reader(io.StringIO(csvsafe.frame_csv(frame).decode("utf-8"))))
    assert rows == [["id", "margin", "'=col"], ["'=evil", "-0.25", "'-x"], ["ok", "1.5", "y"]]
    out = csvsafe.write_rows(tmp_path / "r.csv", [{"a": "@x", "b": -1}], ["a", "b"])
    assert list(csv.reader(out.open())) == [["a", "b"], ["'@x", "-1"]]


def test_every_csv_writer_goes_through_csvsafe():
    """Item 8: no module writes CSV on its own (to_csv, csv.writer, DictWriter) except core/csvsafe.py."""
    sources = [*sorted((ROOT / "moe_reward").rglob("*.py")), ROOT / "app.py", ROOT / "ui_common.py"]
    sources += sorted((ROOT / "pages").glob("*.py"))
    for path in sources:
        if path.name == "csvsafe.py":
            continue
        text = path.read_text()
        for banned in (".to_csv(", "csv.writer(", "csv.DictWriter("):
            assert banned not in text, (path, banned)


# ----------------------------------------------------------------------------- uploads


def test_upload_targets_are_computed_once(tmp_path):
    ws = Workspace(tmp_path / "ws", data_dir=tmp_path / "none")
    assert ws.upload_target("victim.csv").name == "victim.csv"
    assert ws.upload_target("victim.csv", valid_rows_only=True).name == "victim.jsonl"
    assert ws.upload_target("a.b.csv.gz", valid_rows_only=True).name == "a.b.jsonl"
    assert data_stem("x.JSONL") == "x" and data_stem("x.parquet") == "x"
    assert ws.upload_target("../escape.jsonl") == ws.uploads_dir / "escape.jsonl"  # never outside uploads/
    with pytest.raises(ValueError, match="file name"):
        ws.upload_target("no spaces!.jsonl")


def test_an_upload_never_replaces_a_file_unless_named(tmp_path):
    """Item 1: victim.jsonl added; then victim.csv's valid rows (as JSONL) would land on victim.jsonl."""
    ws = Workspace(tmp_path / "ws", data_dir=tmp_path / "none")
    victim = ws.upload_target("victim.jsonl")
    ws.save_upload(victim, lambda tmp: Path(tmp).write_text("original\n"))
    target = ws.upload_target("victim.csv", valid_rows_only=True)
    assert target == victim

    def write_new(tmp):
        Path(tmp).write_text("from the csv\n")

    for replace in (None, "victim.csv", "other.jsonl"):  # no choice, or a choice naming another file
        with pytest.raises(UploadExists, match="uploads/victim.jsonl exists and was not replaced"):
            ws.save_upload(target, write_new, replace=replace)
        assert victim.read_text() == "original\n"
    assert sorted(p.name for p in ws.uploads_dir.iterdir()) == ["victim.jsonl"]  # no temporary left
    ws.save_upload(target, write_new, replace="victim.jsonl")  # the explicit choice naming the file
    assert victim.read_text() == "from the csv\n"
