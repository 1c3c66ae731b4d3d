"""The analyst's commands on a tiny workspace: name-expert, search, slice, expert on a subset or slice, what-if,
and eval --json's expert_top_accuracy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from app_workspace import build_tiny_workspace

from moe_reward.cli import main
from moe_reward.embed.features import PairFeatures
from moe_reward.evaluate.metrics import evaluate
from moe_reward.model.moe import SparseMoERewardModel


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("analyst-cli")
    build_tiny_workspace(root)
    return root


@pytest.fixture
def ws(tiny, monkeypatch) -> Path:
    monkeypatch.setenv("MOE_REWARD_HOME", str(tiny))
    monkeypatch.setenv("MOE_REWARD_DATA_DIR", str(tiny / "no-repo-data"))
    return tiny


def data(ws: Path) -> str:
    return str(ws / "uploads" / "tiny.safetensors")


def test_name_expert_is_stored_with_the_model_and_shown_by_expert(ws, capsys):
    model_dir = ws / "models" / "default-sparse"
    weights = (model_dir / "model.safetensors").read_bytes()
    assert main(["name-expert", "--model", "default-sparse", "--expert", "1", "--name", "deep dives"]) == 0
    assert "E1 of default-sparse is now named 'deep dives'" in capsys.readouterr().out
    assert SparseMoERewardModel.from_pretrained(model_dir).config.expert_names[1] == "deep dives"
    assert (model_dir / "model.safetensors").read_bytes() == weights
    assert main(["expert", "--model", "default-sparse", "--data", data(ws), "--expert", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("E1 · deep dives on the held-out test split (")
    assert main(["name-expert", "--model", "default-sparse", "--expert", "9", "--name", "x"]) == 2
    assert "expert must be in [0, 3]" in capsys.readouterr().err
    assert main(["name-expert", "--model", "default-sparse", "--expert", "1", "--name", ""]) == 0
    assert SparseMoERewardModel.from_pretrained(model_dir).config.expert_names == []


def test_expert_json_is_the_library_summary_on_the_test_split(ws, capsys):
    assert main(["expert", "--model", "default-sparse", "--data", data(ws), "--expert", "0", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    split = json.loads((ws / "models" / "default-sparse" / "split_ids.json").read_text())
    feats = PairFeatures.load(data(ws))
    test = feats.subset([i for i, p in enumerate(feats.pairs) if p.id in set(split["test"])])
    ev = evaluate(SparseMoERewardModel.from_pretrained(ws / "models" / "default-sparse"), test)
    assert got["subset"] == "held-out test split" and got["n_pairs"] == len(test)
    assert got["top_accuracy"] == ev["expert_top_accuracy"][0]


def test_eval_json_has_expert_top_accuracy(ws, tmp_path, capsys):
    out = tmp_path / "eval.json"
    model = str(ws / "models" / "default-sparse")
    assert main(["eval", "--model", model, "--data", data(ws), "--split", "test", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("accuracy", "per_group", "routing_nmi", "expert_utilization", "diagnostics"):
        assert key in res
    top = res["expert_top_accuracy"]
    assert len(top) == 4 and all(a is None or 0.0 <= a <= 1.0 for a in top)
    used = [i for i, u in enumerate(res["expert_utilization"]) if u > 0]
    assert [i for i, a in enumerate(top) if a is not None] == used  # null exactly where it leads no pair
    assert "accuracy on the pairs each expert leads" in capsys.readouterr().out


def test_search_then_slice_then_export_and_filter(ws, tmp_path, capsys):
    feats = PairFeatures.load(data(ws))
    word = feats.pairs[0].prompt.split()[0]
    expected = [
        p.id for p in feats.pairs if word.casefold() in f"{p.prompt}\n{p.chosen}\n{p.rejected}".casefold()
    ]
    assert main(["search", "--data", data(ws), "--query", word, "--save-slice", "first-word"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{len(expected)} of {len(feats)} pairs: ") and "saved slice first-word" in out
    saved = json.loads((ws / "slices" / "first-word.json").read_text())
    assert saved["pair_ids"] == expected and saved["how"] == "search"
    # the name is taken: refused, the slice kept
    assert main(["search", "--data", data(ws), "--query", "zzzz", "--save-slice", "other"]) == 2
    assert "no pairs to save" in capsys.readouterr().err  # an empty search saves nothing
    assert main(["search", "--data", data(ws), "--query", "the", "--save-slice", "first-word"]) == 2
    assert "exists" in capsys.readouterr().err
    assert json.loads((ws / "slices" / "first-word.json").read_text())["pair_ids"] == expected
    assert main(["slice", "list"]) == 0
    assert f"first-word: {len(expected)} pairs, search" in capsys.readouterr().out
    out_csv = tmp_path / "slice.csv"
    cmd = [
        "slice",
        "export",
        "first-word",
        "--data",
        data(ws),
        "--model",
        "default-sparse",
        "--out",
        str(out_csv),
    ]
    assert main(cmd) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["id"] for r in rows] == expected and "w_E0" in rows[0] and "top_expert" in rows[0]
    # the slice filters routing-stats and select
    sel = tmp_path / "sel.jsonl"
    cmd = [
        "select",
        "--model",
        "default-sparse",
        "--data",
        data(ws),
        "--slice",
        "first-word",
        "--out",
        str(sel),
    ]
    assert main(cmd) == 0
    assert [json.loads(line)["id"] for line in sel.read_text().splitlines()] == expected
    assert (
        main(["expert", "--model", "default-sparse", "--data", data(ws), "--expert", "0", "--slice", "nope"])
        == 2
    )
    assert "no such slice" in capsys.readouterr().err
    assert main(["slice", "delete", "first-word"]) == 0
    assert not (ws / "slices" / "first-word.json").exists()


def test_slice_save_from_ids_names_the_bad_line(ws, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    feats = PairFeatures.load(data(ws))
    ids.write_text(f"{feats.pairs[0].id}\nnot-a-pair\n")
    assert main(["slice", "save", "--name", "picked", "--data", data(ws), "--ids", str(ids)]) == 2
    assert f"{ids}:2: pair id 'not-a-pair' is not in" in capsys.readouterr().err
    ids.write_text(f"{feats.pairs[0].id}\n{feats.pairs[3].id}\n")
    assert main(["slice", "save", "--name", "picked", "--data", data(ws), "--ids", str(ids)]) == 0
    assert main(["slice", "show", "picked"]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert shown["pair_ids"] == [feats.pairs[0].id, feats.pairs[3].id] and shown["how"] == "ids"
    assert main(["slice", "save", "--name", "../x", "--data", data(ws), "--ids", str(ids)]) == 2


@pytest.mark.slow
def test_what_if_scores_the_edit_beside_the_original(ws, capsys):
    feats = PairFeatures.load(data(ws))
    p = feats.pairs[0]
    cmd = ["what-if", "--model", "default-sparse", "--data", data(ws), "--pair", p.id, "--json"]
    assert main([*cmd, "--chosen", p.rejected, "--rejected", p.chosen]) == 0
    w = json.loads(capsys.readouterr().out)
    assert w["changed"] == ["chosen", "rejected"]
    assert w["original"]["routing"] == w["edited"]["routing"]  # the prompt did not change
    assert w["edited"]["margin"] == pytest.approx(-w["original"]["margin"], abs=1e-4)  # swapped responses
    assert main(["what-if", "--model", "default-sparse", "--data", data(ws), "--pair", "nope"]) == 2
