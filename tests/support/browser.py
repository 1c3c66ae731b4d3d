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


IDLE_JS = """() => {
    if (!window.__lastMutation) {  // when the page last changed or was busy (re-installed after a navigation)
        window.__lastMutation = performance.now();
        new MutationObserver(() => { window.__lastMutation = performance.now(); })
            .observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
        let tick = performance.now();  // a late timer: the main thread was busy (drawing), not settled
        setInterval(() => {
            const now = performance.now();
            if (now - tick > 150) window.__lastMutation = now;
            tick = now;
        }, 50);
        return -1;
    }
    const app = document.querySelector('[data-testid="stApp"]');
    const idle = !!app && app.dataset.testScriptState === 'notRunning'
        && app.dataset.testConnectionState === 'CONNECTED'
        && !document.querySelector('[data-testid="stStatusWidget"], [data-stale="true"], [data-testid="stSkeleton"]')
        && !document.body.innerText.includes('Running in the background')
        && [...document.querySelectorAll('.js-plotly-plot')].every(p => p.querySelector('.main-svg'))
        && [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].every(c => c.querySelector('svg, canvas'));
    return idle ? performance.now() - window.__lastMutation : -1;
}"""


def _wait_idle(page, timeout_s: float = 120, quiet_ms: float = 300) -> None:
    """Wait until the page settled: the app says no script is running (stApp's data-test-script-state, what
    Streamlit's own browser tests read) and it is connected; nothing is stale or shows the status widget; no
    background job is listed (its panel reruns the page when the job ends); no element still loads its script
    chunk (a skeleton stands in for it until then); every chart has its SVG;
    and for `quiet_ms` the page has neither changed nor kept its main thread busy (the browser draws what a
    run sent after the run ended, Plotly blocking it for a second on a loaded machine; and a widget's rerun
    can start just after a run ends). Playwright's Chromium does not throttle timers in background tabs."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if page.evaluate(IDLE_JS) >= quiet_ms:
            return
        page.wait_for_timeout(50)
    raise AssertionError("the app did not finish running")


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


VEGA_MARKS_JS = """() => [...document.querySelectorAll('[data-testid="stVegaLiteChart"] svg path[aria-roledescription]')]
    .map(e => [e.getAttribute('aria-roledescription'), e.getAttribute('aria-label') || '', e.getAttribute('fill')])"""


def vega_marks(page) -> list[tuple[str, dict[str, str], str]]:
    """Every mark the page's Vega-Lite charts drew: (kind, {field: value} from its ARIA label, fill). Vega
    labels each mark with its data ('expert: E1; series: now; value: 0.600'), as a screen reader reads it."""
    out = []
    for kind, label, fill in page.evaluate(VEGA_MARKS_JS):
        fields = dict(part.split(": ", 1) for part in label.split("; ") if ": " in part)
        out.append((kind, fields, fill))
    return out
