"""End to end in a real browser: `streamlit run app.py` on a tiny workspace, driven by Debian's Chromium.

Skipped only on a developer machine without /usr/bin/chromium; under CI (env CI set) a missing browser
is a failure, so the check can never silently disappear. Screenshots go to test-output/screenshots/.
"""

from __future__ import annotations

import json
import re

import pytest
from browser import (
    CHROMIUM,
    SHOTS,
    _box_select,
    _no_exception,
    _select_model,
    _wait_idle,
    _wait_text,
)

PAGE_TITLES = [
    "Overview",
    "Routing statistics",
    "Expert map",
    "Expert detail",
    "Personalize",
    "Compare models",
    "Score your own",
    "Data & training",
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(shared_server):
    return shared_server  # one server with test_browser_dashboard (tests/browser/conftest.py)


def _weights_text(page) -> str:
    return next(
        t
        for t in page.locator('[data-testid="stCaptionContainer"]').all_inner_texts()
        if t.startswith("weights now:")
    )


def test_every_page_renders_and_labeling_moves_the_weights(server):
    from playwright.sync_api import sync_playwright

    url, home = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "failure.png").unlink(missing_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        # Tall viewport: Streamlit scrolls inside its main container, so a "full page" shot is the viewport.
        page = browser.new_page(viewport={"width": 1440, "height": 2400})
        page.goto(url)
        page.get_by_role("heading", name="Overview").wait_for(timeout=90_000)
        _wait_idle(page)
        _no_exception(page)
        page.screenshot(path=str(SHOTS / "0_overview.png"), full_page=True)
        try:
            # pick the other model: the choice must hold on every page (the entry script draws the sidebar)
            _select_model(page, "tiny-dense")
            _wait_text(page, "tiny-dense: dense")
            _wait_idle(page)
            _visit_pages(page)
        except Exception:
            page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
            raise
        browser.close()

    import sqlite3

    with sqlite3.connect(home / "labels.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 11


def _visit_pages(page) -> None:
    """Every page from the sidebar; on Personalize, create a profile and label one pair."""
    for n, title in enumerate(PAGE_TITLES[1:], start=1):
        page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
        page.get_by_role("heading", name=title).first.wait_for(timeout=90_000)
        _wait_idle(page)
        _no_exception(page)
        model = page.locator(
            '[data-testid="stSidebar"] [data-testid="stSelectbox"] input'
        ).first.input_value()
        assert model == "tiny-dense", f"the model choice was lost on {title}: {model}"
        if title == "Expert map":
            _box_select(page)
            _wait_text(page, "Download all")
            _wait_idle(page)
            assert not page.get_by_text("Selection: 0 pairs").count()
        if title == "Score your own":
            page.get_by_role("button", name="Score").click()
            _wait_text(page, "Reward A (routed mix)", timeout_ms=120_000)
            _wait_idle(page)
        if title == "Data & training":
            bad = SHOTS.parent / "bad-upload.jsonl"
            bad.write_text(
                '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{not json\n'
                '{"prompt": "p", "chosen": "same", "rejected": "same"}\n'
            )
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(bad))
            _wait_text(page, "2 malformed rows in bad-upload.jsonl")
            _wait_idle(page)
        if title == "Personalize":
            # one click from a fresh page: the first label creates the annotator's profile
            _wait_text(page, "weights now:")
            before = _weights_text(page)
            page.get_by_role("button", name="A is better").click()
            _wait_text(page, " of this profile, for pair ")
            _wait_idle(page)
            after = _weights_text(page)
            assert after != before, (before, after)
            # a simulated persona labels 10 pairs; its held-out accuracy appears
            page.get_by_text("Persona: let a user of the dataset label").click()
            persona = page.locator('[data-testid="stSelectbox"]').filter(has_text="Persona").locator("input")
            for _ in range(3):  # the dropdown can close under a click while the expander still opens
                page.wait_for_timeout(500)
                persona.click()
                option = page.get_by_role("option", name="terse-tess")
                try:
                    option.click(timeout=5_000)
                    break
                except Exception:  # noqa: BLE001 - retried; the wait below fails if it never worked
                    page.keyboard.press("Escape")
            _wait_text(page, "Simulate terse-tess")
            _wait_idle(page)
            page.get_by_role("button", name=re.compile(r"^Simulate \d+ step")).click()
            _wait_text(page, "(11 labels in this profile)")
            _wait_text(page, "Held-out accuracy now")
            _wait_idle(page)
            # export the profile, then import it back
            page.get_by_text("Export / import profile").click()
            with page.expect_download() as download:
                page.get_by_role("button", name="Download profile JSON").click()
            exported = SHOTS.parent / "exported.profile.json"
            download.value.save_as(exported)
            assert json.loads(exported.read_text())["labels"]["pair_ids"], "the export carries the labels"
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(exported))
            page.get_by_role("button", name="Replace this profile with the file").click()
            _wait_text(page, "Imported a hedge profile with 11 labels.")
            _wait_idle(page)
        name = re.sub(r"\W+", "_", title.lower()).strip("_")
        page.screenshot(path=str(SHOTS / f"{n}_{name}.png"), full_page=True)
