"""Issue 21 through Streamlit's AppTest: the cards' per-expert numbers, unused experts in one line, naming an
expert, a saved slice narrowing every page, search on the tables, one subset per page, the notes on
below-chance numbers, the group palette."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import page_charts
import pytest
import torch
from app_pages import open_page, use_workspace
from app_workspace import build_tiny_workspace, tiny_features

from moe_reward.app.colors import expert_color
from moe_reward.app.slices import Slice, save_slice
from moe_reward.evaluate.experts import summarize_experts, unused_experts
from moe_reward.evaluate.metrics import score_pairs
from moe_reward.evaluate.search import search_pairs
from moe_reward.evaluate.summary import relate
from moe_reward.model.moe import SparseMoERewardModel

streamlit = pytest.importorskip("streamlit")

ROOT = Path(__file__).resolve().parents[2]
DATA = "uploads/tiny.safetensors"


@pytest.fixture(scope="module")
def analyst_home(tmp_path_factory) -> Path:
    """The tiny workspace plus `with-unused`: default-sparse with E3 switched off in the router (it leads no
    pair), as training leaves experts unused when the data has fewer criteria than experts."""
    root = tmp_path_factory.mktemp("analyst-pages")
    ws = build_tiny_workspace(root)
    src, dst = ws.model_path("default-sparse"), ws.model_path("with-unused")
    shutil.copytree(src, dst)
    model = SparseMoERewardModel.from_pretrained(dst)
    with torch.no_grad():
        model.router.bias[3] = -1e4  # (the warm start leaves biases of order -100)
    model.save_pretrained(dst)
    return root


@pytest.fixture
def home(analyst_home, monkeypatch) -> Path:
    return use_workspace(monkeypatch, analyst_home)


app = open_page


def scored(home: Path, name: str):
    model = SparseMoERewardModel.from_pretrained(home / "models" / name)
    feats = tiny_features()
    return model, feats, score_pairs(model, feats)


def test_cards_lead_with_the_accuracy_on_the_pairs_each_expert_leads(home):
    model, feats, s = scored(home, "with-unused")
    test = relate(home / "models" / "with-unused", feats).headline
    expected = summarize_experts(s, test.index)
    unused = unused_experts(s)  # E3 switched off, and any expert this small set leaves unused
    assert 3 in unused
    at = app(model="with-unused", data=DATA)
    cards = [m for m in at.metric if m.label == "Accuracy on its pairs"]
    shown = [r for r in expected if r.expert not in unused]
    assert len(cards) == len(shown) == 4 - len(unused) >= 1  # unused experts have no card ...
    for m, r in zip(cards, shown, strict=True):
        assert m.value == ("n/a" if r.top_accuracy is None else f"{r.top_accuracy:.3f}")
        assert m.delta == f"held-out test split · {r.n_top} pairs"
    # ... but one line that names them
    noun = "expert" if len(unused) == 1 else "experts"
    line = f"{len(unused)} unused {noun} \\({', '.join(f'E{e}' for e in unused)}\\)"
    assert any(c.value.startswith(line) for c in at.caption), [c.value for c in at.caption]
    assert not any("accuracy where routed" in c.value for c in at.caption)


def test_naming_an_expert_on_expert_detail_shows_it_on_every_page(home):
    detail = app("pages/3_Expert_detail.py", model="default-sparse", data=DATA, expert="1")
    detail.text_input(key="detail_name_1").set_value("deep dives")
    detail.button(key="FormSubmitter:name_form_1-Save name").click().run()
    assert not detail.exception, [e.value for e in detail.exception]
    config = json.loads((home / "models" / "default-sparse" / "config.json").read_text())
    assert config["expert_names"] == ["", "deep dives"]
    assert any("E1 is now named" in s.value for s in detail.success)
    assert detail.selectbox(key="detail_expert").options[1] == "E1 · deep dives"
    overview = app(model="default-sparse", data=DATA)
    assert any(m.value.startswith("**E1 · deep dives**") for m in overview.markdown)  # the card title
    util = page_charts.vega_specs(overview)[0]
    assert page_charts.title(util).startswith("Expert utilization")
    assert list(page_charts.series_values(util, "top-1 share"))[:2] == ["E0", "E1 · deep dives"]
    assert page_charts.expert_colors(util)["E1"] == expert_color(1)
    routing = app("pages/1_Routing_statistics.py", model="default-sparse", data=DATA)
    table = next(d.value for d in routing.dataframe if "leads" in d.value.columns)
    assert table["expert"].tolist()[1] == "E1 · deep dives"
    # removing the name
    detail = app("pages/3_Expert_detail.py", model="default-sparse", data=DATA, expert="1")
    detail.text_input(key="detail_name_1").set_value("")
    detail.button(key="FormSubmitter:name_form_1-Save name").click().run()
    assert json.loads((home / "models" / "default-sparse" / "config.json").read_text())["expert_names"] == []


def test_a_saved_slice_narrows_every_page_and_says_so(home):
    feats = tiny_features()
    ids = [p.id for p in feats.pairs if p.group == "deep"]
    save_slice(home / "slices", Slice("deep-only", ids, "filter", "group deep", DATA, "default-sparse"))
    model, _, s = scored(home, "default-sparse")
    test = relate(home / "models" / "default-sparse", feats).headline
    rows = np.intersect1d(test.index, [i for i, p in enumerate(feats.pairs) if p.group == "deep"])
    at = app(model="default-sparse", data=DATA, slice="deep-only")
    assert at.sidebar.selectbox(key="slice_name").value == "deep-only"
    acc = next(m for m in at.metric if m.label == "Accuracy")
    assert acc.delta == f"held-out test split ∩ slice deep-only · {len(rows)} pairs"
    assert acc.value == f"{float(s.correct[rows].mean()):.3f}"
    assert any(
        "deep\\-only" in i.value and "numbers on this page are on them only" in i.value for i in at.info
    )
    assert at.query_params["slice"] == "deep-only"
    detail = app("pages/3_Expert_detail.py", model="default-sparse", data=DATA, slice="deep-only")
    assert any("∩ slice deep\\-only" in c.value for c in detail.caption)
    compare = app("pages/5_Compare_models.py", model="default-sparse", data=DATA, slice="deep-only")
    assert any("∩ slice deep\\-only" in c.value for c in compare.caption)
    # back to every pair
    at.sidebar.selectbox(key="slice_name").select("(all pairs)").run()
    assert (
        next(m for m in at.metric if m.label == "Accuracy").delta == f"held-out test split · {test.n} pairs"
    )
    (home / "slices" / "deep-only.json").unlink()


def test_search_on_routing_statistics_filters_and_saves_a_slice(home):
    feats = tiny_features()
    test = relate(home / "models" / "default-sparse", feats).headline
    word = feats.pairs[test.index[0]].prompt.split()[0].strip("?.!,:")
    expected = np.intersect1d(search_pairs(feats.pairs, word), test.index)
    assert 0 < len(expected) < test.n
    at = app("pages/1_Routing_statistics.py", model="default-sparse", data=DATA)
    at.text_input(key="rs_search").set_value(word).run()
    assert not at.exception
    assert any(c.value.startswith(f"{len(expected)} pairs match the filters") for c in at.caption)
    assert at.query_params["q"] == word
    at.text_input(key="rs_slice_name").set_value("found")
    at.button(key="FormSubmitter:rs_slice_form-Save slice").click().run()
    assert not at.exception, [e.value for e in at.exception]
    saved = json.loads((home / "slices" / "found.json").read_text())
    assert saved["pair_ids"] == [feats.pairs[i].id for i in expected]
    assert saved["how"] == "search" and word.casefold() in saved["description"]
    # the same name again without "Replace": refused, the slice kept
    at.text_input(key="rs_slice_name").set_value("found")
    at.button(key="FormSubmitter:rs_slice_form-Save slice").click().run()
    assert any("exists" in e.value for e in at.error)
    (home / "slices" / "found.json").unlink()


def test_map_search_rings_the_matches_and_an_expert_is_brought_forward(home):
    feats = tiny_features()
    word = feats.pairs[0].prompt.split()[0].strip("?.!,:")
    found = search_pairs(feats.pairs, word)
    assert 0 < len(found) < len(feats)
    at = app("pages/2_Expert_map.py", model="default-sparse", data=DATA, layout="pca", expert="1")
    at.text_input(key="map_search").set_value(word).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(s.value == f"Selection: {len(found)} pairs" for s in at.subheader)
    option = page_charts.echarts_options(at)[0]
    rings = page_charts.map_series(option, f"search: {word}")
    assert len(rings) == 1 and len(rings[0]["data"]) == len(found)  # every match ringed, and only they
    ids = {feats.pairs[i].id for i in found}
    at_matches = {  # where the matching pairs are drawn (pairs with the same prompt share a place)
        tuple(d["value"][:2])
        for series in page_charts.map_series(option)
        if series["name"].startswith("E")
        for d in series["data"]
        if d["name"].split(" · ")[0] in ids
    }
    assert {tuple(d["value"]) for d in rings[0]["data"]} == at_matches  # the rings sit on the matches
    # E1 brought forward: drawn last, in its colour; every other expert in grey
    experts = [s for s in page_charts.map_series(option) if s["name"].startswith("E")]
    assert experts[-1]["name"] == "E1" and experts[-1]["itemStyle"]["color"] == expert_color(1)
    assert all(s["itemStyle"]["color"] == "#BAB0AC" for s in experts[:-1])


def test_compare_puts_both_models_on_the_same_held_out_pairs(home):
    at = app("pages/5_Compare_models.py", model="default-sparse", data=DATA)
    feats = tiny_features()
    a = relate(home / "models" / "default-sparse", feats).headline.index
    b = relate(home / "models" / at.selectbox(key="cmp_other").value, feats).headline.index
    assert np.array_equal(a, b)  # (both trained with the same split of the same file)
    assert any(f"A's held\\-out test split, {len(a)} pairs" in c.value for c in at.caption), [
        c.value for c in at.caption
    ]
    groups = page_charts.vega_specs(at)[0]
    assert f"A's held-out test split, {len(a)} pairs" in page_charts.title(groups)


def test_overview_explains_below_chance_numbers(home):
    model, feats, s = scored(home, "tiny-dense")
    test = relate(home / "models" / "tiny-dense", feats).headline
    accuracy = float(s.correct[test.index].mean())
    assert accuracy < 0.5  # (the tiny dense model is below chance on its few test pairs)
    at = app(model="tiny-dense", data=DATA)
    assert next(m for m in at.metric if m.label == "Accuracy").value == f"{accuracy:.3f}"
    assert any(
        c.value.startswith("Accuracy on held\\-out test split is under 0.5") and "coin flip" in c.value
        for c in at.caption
    ), [c.value for c in at.caption]
    notes = " ".join(m.value for m in at.markdown)
    assert "seen in training\\: how closely the model fits" in notes  # (markdown-escaped)


def test_personalize_says_when_a_links_profile_does_not_exist_and_describes_the_experts(home):
    at = app(
        "pages/4_Personalize.py", model="default-sparse", data=DATA, annotator="guest", profile="brevity"
    )
    assert at.selectbox(key="pz_profile").value == "default"
    assert any("has no profile" in w.value and "brevity" in w.value for w in at.warning), [
        w.value for w in at.warning
    ]
    table = next(d.value for d in at.dataframe if "what it prefers" in d.value.columns)
    assert table["expert"].tolist() == ["E0", "E1", "E2", "E3"]
    # every expert is described: what it prefers, or that it shows no distinctive signal (an expert that
    # leads no pair of this small set)
    assert all(str(v).startswith(("prefers", "no distinctive signal")) for v in table["what it prefers"])
    assert any(str(v).startswith("prefers") for v in table["what it prefers"])
    assert list(table.columns[-2:]) == ["weight at the start", "weight now"]
    # the adapter selector shows names that fit; the descriptions are its help
    assert at.selectbox(key="pz_adapter_choice").options[0] == "hedge (online)"


def test_score_your_own_names_and_describes_each_expert_beside_its_rewards(home, monkeypatch):
    """(The scoring itself needs the MiniLM backbone: tests/browser/test_browser_analyst.py scores for real.)"""
    import ui_common
    from moe_reward.app.pipeline import ScoredResponse

    def fake(model, backbone, prompt, responses, user_weights=None, cache_dir="default"):
        k = model.num_experts
        return [
            ScoredResponse(r, 0.1 * i, [1.0] + [0.0] * (k - 1), [1.0] + [0.0] * (k - 1), [0.1 * i] * k)
            for i, r in enumerate(responses)
        ]

    monkeypatch.setattr("moe_reward.app.pipeline.score_texts", fake)
    monkeypatch.setattr(ui_common.Context, "backbone", lambda self: None)
    at = app("pages/6_Score_your_own.py", model="default-sparse", data=DATA)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "what it prefers" in d.value.columns)
    assert table.columns.tolist()[:4] == ["expert", "what it prefers", "reward A", "reward B"]
    assert not any(s.value.startswith("What changed") for s in at.subheader)  # nothing to compare yet
    at.text_area(key="score_b").set_value("A different response B.")
    at.button[0].click().run()
    assert any(s.value == "What changed since the previous scoring" for s in at.subheader)
    assert any("Edited response B" in m.value for m in at.markdown)
