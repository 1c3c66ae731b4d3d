"""Text search (evaluate/search.py), saved slices (app/slices.py), exports (app/export.py) and the notes that
explain low numbers (evaluate/summary.py)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from moe_reward.app.export import pair_rows, to_csv, to_jsonl, write_rows
from moe_reward.app.slices import (
    Slice,
    SliceError,
    SliceExists,
    delete_slice,
    list_slices,
    load_slice,
    read_slice,
    save_slice,
    slice_index,
)
from moe_reward.data.pairs import PreferencePair
from moe_reward.evaluate import summary
from moe_reward.evaluate.search import describe_query, parse_query, search_pairs

PAIRS = [
    PreferencePair("Explain it step by step", "First, ...", "It just works.", group="steps", id="a"),
    PreferencePair("Keep it SHORT please", "Yes.", "Well, step one ...", group="short", id="b"),
    PreferencePair("Why is the sky blue?", "Rayleigh scattering.", "=1+1", group="plain", id="c"),
]


# ----------------------------------------------------------------------------- search


def test_search_matches_every_word_case_insensitively_in_prompt_and_responses():
    assert search_pairs(PAIRS, "step").tolist() == [0, 1]  # prompt of a, rejected response of b
    assert search_pairs(PAIRS, "STEP short").tolist() == [1]  # every word must occur
    assert search_pairs(PAIRS, '"step by step"').tolist() == [0]  # a quoted phrase stays whole
    assert search_pairs(PAIRS, "step", fields=("prompt",)).tolist() == [0]
    assert search_pairs(PAIRS, "plain", fields=("group",)).tolist() == [2]
    assert search_pairs(PAIRS, "nowhere").tolist() == []
    assert parse_query('a "b  c" a') == ["a", "b  c"]
    assert describe_query('step "by step"', ("prompt",)) == 'prompt contains "step" and "by step"'
    assert describe_query("x") == 'prompt, chosen or rejected contains "x"'


@pytest.mark.parametrize(
    ("query", "fields", "why"),
    [
        ("   ", ("prompt",), "at least one word"),
        ("x" * 501, ("prompt",), "at most 500"),
        ("x", ("meta",), "fields"),
    ],
)
def test_bad_searches_say_why(query, fields, why):
    with pytest.raises(ValueError, match=why):
        search_pairs(PAIRS, query, fields=fields)


# ----------------------------------------------------------------------------- slices


def test_a_slice_is_saved_atomically_and_never_overwritten_without_asking(tmp_path):
    slc = Slice("step-pairs", ["a", "b"], "search", 'prompt contains "step"', "uploads/x.jsonl", "m1")
    path = save_slice(tmp_path, slc)
    assert path == tmp_path / "step-pairs.json"
    back = load_slice(path)
    assert (back.name, back.pair_ids, back.how, back.description, back.data, back.model) == (
        "step-pairs",
        ["a", "b"],
        "search",
        'prompt contains "step"',
        "uploads/x.jsonl",
        "m1",
    )
    assert json.loads(path.read_text())["format"] == 1
    with pytest.raises(SliceExists, match="exists"):
        save_slice(tmp_path, Slice("step-pairs", ["c"]))
    assert load_slice(path).pair_ids == ["a", "b"]  # untouched
    save_slice(tmp_path, Slice("step-pairs", ["c"]), overwrite=True)
    assert read_slice(tmp_path, "step-pairs").pair_ids == ["c"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    delete_slice(tmp_path, "step-pairs")
    assert list_slices(tmp_path) == ([], {})


@pytest.mark.parametrize("name", ["../up", "a/b", "", ".hidden", "x" * 81])
def test_slice_names_are_validated_like_model_names(tmp_path, name):
    with pytest.raises(SliceError, match="slice name"):
        save_slice(tmp_path, Slice(name, ["a"]))
    assert not list(tmp_path.iterdir())


def test_an_empty_slice_or_a_bad_field_is_refused(tmp_path):
    with pytest.raises(SliceError, match="no pairs"):
        save_slice(tmp_path, Slice("empty", []))
    with pytest.raises(SliceError, match="how: expected one of"):
        save_slice(tmp_path, Slice("odd", ["a"], how="magic"))
    with pytest.raises(SliceError, match="an id appears twice"):
        save_slice(tmp_path, Slice("twice", ["a", "a"]))


def test_broken_slice_files_are_named_with_the_field_and_skipped_in_lists(tmp_path):
    save_slice(tmp_path, Slice("good", ["a"]))
    (tmp_path / "bad-json.json").write_text("{not json")
    (tmp_path / "bad-ids.json").write_text(json.dumps({"name": "bad-ids", "pair_ids": [1, 2]}))
    (tmp_path / "renamed.json").write_text(json.dumps({"name": "other", "pair_ids": ["a"]}))
    found, problems = list_slices(tmp_path)
    assert [s.name for s in found] == ["good"]
    assert "bad JSON at line 1" in problems["bad-json.json"]
    assert "pair_ids: expected a list of pair ids" in problems["bad-ids.json"]
    assert str(tmp_path / "bad-ids.json") in problems["bad-ids.json"]
    assert "does not match the file name" in problems["renamed.json"]
    with pytest.raises(SliceError, match="no such slice"):
        read_slice(tmp_path, "missing")


def test_slice_index_keeps_the_files_order_and_ignores_missing_ids():
    rows = slice_index(Slice("s", ["c", "zz", "a"]), ["a", "b", "c"])
    assert rows.tolist() == [0, 2] and rows.dtype == np.int64


# ----------------------------------------------------------------------------- exports


class _Features:
    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)


def test_csv_exports_are_safe_in_a_spreadsheet_and_jsonl_keeps_the_text(tmp_path):
    rows = pair_rows(_Features(PAIRS))
    rows[0]["margin"] = -0.5  # a number stays a number
    text = to_csv(rows).decode()
    back = list(csv.DictReader(io.StringIO(text)))
    assert back[2]["rejected"] == "'=1+1"  # a formula is shown as text
    assert back[0]["margin"] == "-0.5"
    assert json.loads(to_jsonl(rows).decode().splitlines()[2])["rejected"] == "=1+1"
    write_rows(rows, tmp_path / "out" / "x.csv")
    assert (tmp_path / "out" / "x.csv").read_bytes() == to_csv(rows)


# ----------------------------------------------------------------------------- notes on low numbers


def test_below_chance_accuracy_always_says_why():
    assert summary.below_chance_note(0.6, 100) == ""
    assert summary.below_chance_note(None, 100) == ""
    within = summary.below_chance_note(0.486, 1000)  # ±0.032 on 1000 pairs
    assert "noise of a coin flip on 1000 pairs" in within and "±0.032" in within
    beyond = summary.below_chance_note(0.40, 1000)
    assert "systematically prefers the responses people rejected" in beyond


def test_subset_notes_explain_each_subset_and_an_nmi_of_zero():
    outside = summary.Scope("unsplit", "pairs outside the splits", np.arange(1000))
    note = summary.subset_note(outside, {"accuracy": 0.486, "routing_nmi": 0.0, "per_group": {"persona": {}}})
    assert "held-out users" in note and "coin flip" in note and "one group (persona)" in note
    test = summary.Scope("test", "held-out test split", np.arange(100))
    assert summary.subset_note(test, {"accuracy": 0.9, "routing_nmi": 0.8, "per_group": {}}) == ""


def test_restrict_narrows_every_subset_to_a_slice_and_names_it():
    rel = summary.DataRelation(
        "training",
        "x",
        [
            summary.Scope("test", "held-out test split", np.array([0, 1, 2])),
            summary.Scope("all", "all", np.arange(6)),
        ],
    )
    cut = summary.restrict(rel, np.array([2, 5]), "mine")
    assert [s.index.tolist() for s in cut.scopes] == [[2], [2, 5]]
    assert cut.headline.label == "held-out test split ∩ slice mine"
    free = summary.never_trained(cut)
    assert free is not None and free.tolist() == [2, 5]  # (no train or validation scope in this one)
    unsplit = summary.DataRelation("unsplit", None, [summary.Scope("all", "all", np.arange(3))])
    assert summary.never_trained(unsplit) is None


def test_never_trained_is_the_test_split_and_the_pairs_outside_the_splits():
    scopes = [
        summary.Scope("test", "held-out test split", np.array([0, 1])),
        summary.Scope("validation", "validation", np.array([2])),
        summary.Scope("train", "training", np.array([3, 4])),
        summary.Scope("unsplit", "outside", np.array([5])),
        summary.Scope("all", "all", np.arange(6)),
    ]
    free = summary.never_trained(summary.DataRelation("training", "x", scopes))
    assert free is not None and free.tolist() == [0, 1, 5]
    foreign = summary.never_trained(
        summary.DataRelation("foreign", "x", [summary.Scope("all", "all", np.arange(4))])
    )
    assert foreign is not None and foreign.tolist() == [0, 1, 2, 3]


def test_the_map_selection_is_narrowed_by_the_search_and_the_slice():
    from moe_reward.evaluate.search import narrow_selection

    region, found, sliced = np.array([1, 2, 3, 4]), np.array([2, 4, 6]), np.array([4, 6, 8])
    assert narrow_selection(region, True, None, None).tolist() == [1, 2, 3, 4]
    assert narrow_selection(region, True, found, None).tolist() == [2, 4]
    assert narrow_selection(region, True, found, sliced).tolist() == [4]
    assert narrow_selection(np.zeros(0, int), False, found, None).tolist() == [2, 4, 6]
    assert narrow_selection(np.zeros(0, int), False, None, sliced).tolist() == [4, 6, 8]
    assert narrow_selection(np.zeros(0, int), False, None, None).tolist() == []


def test_two_models_are_compared_on_as_test_split_less_what_b_trained_on():
    from moe_reward.evaluate.compare import comparison_scope

    def training(test, train, validation=(), n=10):
        return summary.DataRelation(
            "training",
            "x",
            [
                summary.Scope("test", "held-out test split", np.array(test)),
                summary.Scope("validation", "validation", np.array(validation, dtype=np.int64)),
                summary.Scope("train", "training", np.array(train)),
                summary.Scope("all", "all", np.arange(n)),
            ],
        )

    a, b = training([0, 1, 2, 3], [4, 5, 6, 7, 8, 9]), training([2, 3], [0, 4, 5, 6], [1])
    scope, warning = comparison_scope(a, b, 10)
    assert scope.index.tolist() == [2, 3] and warning == ""
    assert scope.label == "A's held-out test split, less the 2 pairs B trained on"
    scope, _ = comparison_scope(a, a, 10, slice_rows=np.array([0, 9]), slice_name="s")
    assert scope.index.tolist() == [0] and scope.label == "A's held-out test split ∩ slice s"
    unknown = summary.DataRelation("unknown", None, [summary.Scope("all", "all", np.arange(10))])
    scope, warning = comparison_scope(a, unknown, 10)
    assert scope.n == 10 and "saved no train/test split" in warning
    scope, warning = comparison_scope(training([0], [1]), training([2], [0]), 3)
    assert scope.n == 3 and "held out from both" in warning


def test_score_your_own_columns():
    from moe_reward.app.pipeline import ScoredResponse
    from moe_reward.app.whatif import compare_responses

    a = ScoredResponse("a", 0.3, [0.6, 0.4, 0.0], [0.5, 0.3, 0.2], [1.0, -1.0, 0.5])
    b = ScoredResponse("b", 0.1, [0.6, 0.4, 0.0], [0.5, 0.3, 0.2], [0.5, 1.0, 0.5])
    cols = compare_responses(a, b)
    assert cols["A − B"] == [0.5, -2.0, 0.0] and cols["prefers"] == ["A", "B", "tie"]
    assert cols["routing"] == [0.6, 0.4, 0.0]
