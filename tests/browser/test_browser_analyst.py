"""Issue 21 in a real browser (`streamlit run app.py` on a tiny workspace, Debian's Chromium): Enter in the
model-name field does not train, training switches the app to the new model and keeps the form, a text
search selects pairs on the map, a slice saved there narrows another page, a what-if edit on Expert
detail and on Score your own, an expert named on Expert detail shows on the Overview. Screenshots go to
test-output/screenshots/analyst_*.png.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from app_workspace import build_tiny_workspace, tiny_features
from browser import CHROMIUM, MAP, SHOTS, _no_exception, _require_browser, _wait_idle, _wait_text, vega_marks
from streamlit_server import Server

from moe_reward.evaluate.search import search_pairs
from moe_reward.evaluate.summary import relate

pytestmark = pytest.mark.browser
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_browser()
    home = tmp_path_factory.mktemp("browser-analyst")
    build_tiny_workspace(home)
    srv = Server(home).start()
    yield srv.url, home
    srv.stop()


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 2200})
        yield pg
        browser.close()


def _open(page, url: str, heading: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name=heading).first.wait_for(timeout=120_000)
    _wait_idle(page)
    _no_exception(page)


def _go(page, title: str) -> None:
    try:
        page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    except Exception:
        page.screenshot(path=str(SHOTS / "analyst_failure.png"), full_page=True)
        raise
    page.get_by_role("heading", name=title).first.wait_for(timeout=120_000)
    _wait_idle(page)
    _no_exception(page)


def _wait(page, text: str, timeout_ms: int = 60_000) -> None:
    """_wait_text, with a screenshot of the page when the text never appears."""
    try:
        _wait_text(page, text, timeout_ms=timeout_ms)
    except Exception:
        page.screenshot(path=str(SHOTS / "analyst_failure.png"), full_page=True)
        raise


def _sidebar_value(page, n: int) -> str:
    return page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').nth(n).input_value()


def _sidebar_text(page) -> str:
    return page.locator('[data-testid="stSidebar"]').inner_text()


def test_enter_does_not_train_and_training_switches_to_the_new_model(server, page):
    url, home = server
    # the first visit to a fresh server opens a page's own address: the navigation is the app's
    # ("Overview", "Data & training"), never the raw files of pages/ ("app", "Data and training")
    _open(page, f"{url}/Data_and_training", "Data & training")
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.get_by_text("Overview", exact=True).wait_for(timeout=60_000)
    _wait_idle(page)
    assert "Data and training" not in nav.inner_text() and "app" not in nav.inner_text().split("\n")
    page.get_by_role("heading", name="Data & training").first.wait_for()
    name = page.get_by_label("Model name")
    name.fill("fresh-one")
    name.press("Enter")  # Enter in a text field must not submit the training form
    page.wait_for_timeout(2500)
    _wait_idle(page)
    assert "Training fresh-one" not in page.inner_text("body")
    assert not (home / "models" / "fresh-one").exists()
    for label, value in (("Experts (K)", "2"), ("Epochs", "2")):
        field = page.get_by_label(label)
        field.fill(value)
        field.press("Tab")
    page.get_by_role("button", name="Train", exact=True).click()
    _wait(page, "Trained fresh-one", timeout_ms=300_000)
    _wait_idle(page)
    _no_exception(page)
    body = page.inner_text("body")
    assert "another session" not in body
    assert (home / "models" / "fresh-one" / "model.safetensors").is_file()
    # the app switched to the new model and its data, everywhere
    assert _sidebar_value(page, 0) == "fresh-one"
    assert _sidebar_value(page, 1) == "tiny.safetensors"
    # the form keeps what was entered, also after a visit to another page; one sidebar line per job
    assert page.get_by_label("Model name").input_value() == "fresh-one"
    assert page.get_by_label("Experts (K)").input_value() == "2"
    page.screenshot(path=str(SHOTS / "analyst_trained.png"), full_page=True)
    _go(page, "Overview")
    assert "fresh-one" in page.inner_text("body")
    _go(page, "Data & training")
    assert page.get_by_label("Model name").input_value() == "fresh-one"
    assert page.get_by_label("Epochs").input_value() == "2"


def test_search_selects_on_the_map_and_a_saved_slice_filters_another_page(server, page):
    url, home = server
    feats = tiny_features()
    test = relate(home / "models" / "default-sparse", feats).headline
    word = feats.pairs[test.index[0]].prompt.split()[0].strip("?.!,:")
    found = search_pairs(feats.pairs, word)
    assert 0 < len(found) < len(feats)
    _open(page, f"{url}/Expert_map?model=default-sparse", "Expert map")
    box = page.get_by_role("textbox", name="Search the texts (selects the matching pairs)")
    box.fill(word)
    box.press("Enter")
    _wait(page, f"Selection: {len(found)} pairs")
    _wait_idle(page)
    _no_exception(page)
    assert page.locator(MAP + " canvas").count() >= 1  # the map drew (its rings: test_analyst_pages.py)
    page.screenshot(path=str(SHOTS / "analyst_map_search.png"), full_page=True)
    page.get_by_text(f"Save these {len(found)} pairs as a slice").click()
    page.get_by_role("textbox", name="Slice name").fill("map-found")
    page.get_by_role("button", name="Save slice").click()
    _wait(page, "Saved slice map-found")
    _wait_idle(page)
    saved = json.loads((home / "slices" / "map-found.json").read_text())
    assert saved["pair_ids"] == [feats.pairs[i].id for i in found] and saved["how"] == "search"
    assert _sidebar_value(page, 2) == f"map-found ({len(found)} pairs)"
    # another page: every number is on the slice's pairs, and says so
    _go(page, "Overview")
    n = len(np.intersect1d(test.index, found))
    _wait(page, f"held-out test split ∩ slice map-found · {n} pairs")
    page.screenshot(path=str(SHOTS / "analyst_overview_slice.png"), full_page=True)
    _go(page, "Routing statistics")
    _wait(page, f"of the {n} pairs of the held-out test split ∩ slice map-found")
    assert "slice=map-found" in page.url
    page.screenshot(path=str(SHOTS / "analyst_routing_slice.png"), full_page=True)
    (home / "slices" / "map-found.json").unlink()


@pytest.mark.slow
def test_what_if_edits_and_a_named_expert(server, page):
    url, home = server
    _open(page, f"{url}/Expert_detail?model=default-sparse&expert=1", "Expert detail")
    # name E1; the Overview's card then carries the name
    page.get_by_label("Name", exact=True).fill("deep dives")
    page.get_by_role("button", name="Save name").click()
    _wait(page, "E1 is now named")
    _wait_idle(page)
    assert json.loads((home / "models" / "default-sparse" / "config.json").read_text())["expert_names"] == [
        "",
        "deep dives",
    ]
    # the page stays on E1, now named
    expert = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"] input').first
    assert expert.input_value().startswith("E1 · deep dives"), expert.input_value()
    # what-if: edit the prompt of one of E1's pairs
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill(prompt.input_value() + " Keep it very short, just the answer.")
    page.get_by_role("button", name="Score the edit").click()
    _wait(page, "Margin (edited)", timeout_ms=240_000)
    _wait_idle(page)
    _no_exception(page)
    body = page.inner_text("body")
    assert "Edited the prompt: the model's margin (chosen − rejected) moves from" in body
    assert "Margin (original)" in body and "Top expert (edited)" in body
    bars = Counter(
        f["series"]
        for kind, f, _ in vega_marks(page)
        if kind == "bar" and f.get("series") in ("original", "edited")
    )
    assert bars == {"original": 8, "edited": 8}  # 4 experts, in the routing chart and the margins chart
    page.screenshot(path=str(SHOTS / "analyst_expert_detail_whatif.png"), full_page=True)
    _go(page, "Overview")
    _wait(page, "E1 · deep dives")
    page.screenshot(path=str(SHOTS / "analyst_overview_named.png"), full_page=True)
    # Score your own: score, edit response B, score again: the two side by side
    _go(page, "Score your own")
    page.get_by_role("button", name="Score").click()
    _wait(page, "Reward A (routed mix)", timeout_ms=240_000)
    _wait_idle(page)
    b = page.get_by_label("Response B")
    b.fill("Short answer.")
    page.get_by_role("button", name="Score").click()
    _wait(page, "What changed since the previous scoring", timeout_ms=240_000)
    _wait(page, "Edited response B: the model's margin (A − B) moves from")
    _wait_idle(page)
    _no_exception(page)
    assert "deep dives" in page.inner_text("body")  # names beside the rewards
    page.screenshot(path=str(SHOTS / "analyst_score_whatif.png"), full_page=True)
    # clean up for the other tests of the module
    (home / "models" / "default-sparse" / "config.json").write_text(
        json.dumps(
            {
                **json.loads((home / "models" / "default-sparse" / "config.json").read_text()),
                "expert_names": [],
            },
            indent=2,
        )
    )
