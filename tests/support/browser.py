"""Helpers shared by the browser tests (tests/browser/): where Chromium is, where screenshots go, and how to
wait for a Streamlit page to settle in Playwright."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-output" / "screenshots"


def _cannot_run(missing: str) -> NoReturn:
    """A test whose tool is missing: skipped here, failed under CI (where the environment must have it)."""
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run under CI: {missing}")
    pytest.skip(missing)


def _require_browser():
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium, or bash .ci/browser-setup.sh)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "python playwright is missing (pip install playwright)"
    if missing:
        _cannot_run(missing)


def _wait_idle(page, timeout_s: float = 120) -> None:
    """Wait until the script run finished: neither the status widget ('Running...') nor an element marked
    stale (headless Streamlit may show no status widget) for a whole second; then every plotly chart drawn."""
    deadline = time.time() + timeout_s
    quiet_since = None
    while time.time() < deadline:
        running = page.locator('[data-testid="stStatusWidget"], [data-stale="true"]').count() > 0
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.time()
        elif time.time() - quiet_since > 1.0:
            break
        page.wait_for_timeout(100)
    else:
        raise AssertionError("the app did not finish running")
    # charts draw after the script run: wait until every plotly chart has its SVG
    page.wait_for_function(
        """() => [...document.querySelectorAll('.js-plotly-plot')]
        .every(p => p.querySelector('.main-svg'))""",
        timeout=30_000,
    )
    page.wait_for_timeout(700)


def _wait_text(page, text: str, timeout_ms: int = 60_000) -> None:
    page.wait_for_function("t => document.body.innerText.includes(t)", arg=text, timeout=timeout_ms)


def _select_model(page, name: str) -> None:
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').first
    for _ in range(3):  # the dropdown can close under a click while the page still settles
        box.click()
        page.get_by_role("option", name=name).click()
        page.wait_for_timeout(500)
        if box.input_value() == name:
            return
    raise AssertionError(f"could not select model {name}")


def _box_select(page) -> None:
    """Drag a box over most of the map's plotting area (the map's default drag mode is box select)."""
    area = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    x0, y0 = area["x"] + 5, area["y"] + 5
    x1, y1 = area["x"] + area["width"] - 5, area["y"] + area["height"] - 5
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()


def _no_exception(page) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()
