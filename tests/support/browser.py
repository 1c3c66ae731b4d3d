"""Helpers shared by the browser tests (tests/browser/): where Chromium is, where screenshots go, and how to
wait for a Streamlit page to settle in Playwright."""

from __future__ import annotations

import io
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
        && !document.body.textContent.includes('Running in the background')  // (no layout, unlike innerText)
        && [...document.querySelectorAll('[data-testid="stEChartsChart"]')].every(c => c.querySelector('canvas'))
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
        page.wait_for_timeout(100)
    raise AssertionError("the app did not finish running")


def _wait_text(page, text: str, timeout_ms: int = 60_000) -> None:
    """Wait until the page shows `text`. Checked every 100 ms, not every frame (Playwright's default):
    reading innerText lays the page out, and a wait of minutes (a training) checked at 60 Hz kept
    Chromium busy on a core the other tests needed."""
    page.wait_for_function(
        "t => document.body.innerText.includes(t)", arg=text, timeout=timeout_ms, polling=100
    )


def _select_model(page, name: str) -> None:
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').first
    for _ in range(3):  # the dropdown can close under a click while the page still settles
        box.click()
        page.get_by_role("option", name=name).click()
        page.wait_for_timeout(500)
        if box.input_value() == name:
            return
    raise AssertionError(f"could not select model {name}")


MAP = '[data-testid="stEChartsChart"]'


def map_tool(page, tool: str) -> None:
    """Click one of the Expert map's selection tools ("box", "lasso" or "clear"). ECharts draws its toolbox
    on the canvas (no DOM node to click), at the top right of the chart: the three icons are found as the
    three rightmost clusters of dark pixels in that corner, wherever the theme puts them."""
    import numpy as np
    from PIL import Image

    chart = page.locator(MAP).first.bounding_box()
    # below the element toolbar that Streamlit floats over a chart's top edge while the mouse is on it
    clip = {"x": chart["x"] + chart["width"] - 240, "y": chart["y"] + 12, "width": 240, "height": 48}
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("L"))
    dark = np.argwhere(shot < 200)
    scale = shot.shape[1] / clip["width"]  # screenshot pixels per CSS pixel
    columns = sorted(set(dark[:, 1].tolist()))
    clusters: list[list[int]] = []
    for c in columns:
        if (
            clusters and c - clusters[-1][-1] <= 8 * scale
        ):  # an icon's strokes lie within a few pixels of each other
            clusters[-1].append(c)
        else:
            clusters.append([c])
    icons = clusters[-3:]
    assert len(icons) == 3, f"the map's toolbox was not found: {clusters}"
    icon = icons[("box", "lasso", "clear").index(tool)]
    rows = dark[(dark[:, 1] >= icon[0]) & (dark[:, 1] <= icon[-1]), 0]
    x = clip["x"] + (icon[0] + icon[-1]) / 2 / scale
    y = clip["y"] + (rows.min() + rows.max()) / 2 / scale
    page.mouse.move(x, y)  # the canvas picks its target on hover: a click without one can go unheard
    page.wait_for_timeout(100)
    page.mouse.click(x, y)


def map_colour_pixels(page, color: str, tolerance: int = 3) -> int:
    """How many pixels of the Expert map's canvas are drawn in `color` ("#RRGGBB", at any opacity: the canvas
    is transparent, each point's colour kept with its alpha): what is drawn in an expert's colour (the canvas
    has no DOM node per point)."""
    want = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return page.evaluate(
        """([sel, want, tol]) => {
            const canvas = document.querySelector(sel + ' canvas');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i + 3] > 0 && Math.abs(data[i] - want[0]) <= tol && Math.abs(data[i + 1] - want[1]) <= tol
                    && Math.abs(data[i + 2] - want[2]) <= tol) n++;
            }
            return n;
        }""",
        [MAP, want, tolerance],
    )


def _map_area(page) -> dict:
    """The map's plotting area in page pixels, a few pixels in (a drag that starts outside it selects
    nothing): the extent of its grid lines (moe_reward.app.map_chart draws them in #EEEEEE), read off the
    canvas, since the theme and the layout (the anchors' square) decide where the area lies."""
    chart = page.locator(MAP).first.bounding_box()
    box = page.evaluate(
        """(sel) => {
            const canvas = document.querySelector(sel + ' canvas');
            const w = canvas.width, h = canvas.height, ratio = w / canvas.clientWidth;
            const d = canvas.getContext('2d').getImageData(0, 0, w, h).data;
            let x0 = w, y0 = h, x1 = -1, y1 = -1;
            for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
                const i = 4 * (y * w + x);
                if (d[i] === 238 && d[i + 1] === 238 && d[i + 2] === 238 && d[i + 3] === 255) {
                    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
                }
            }
            return x1 < 0 ? null : [x0 / ratio, y0 / ratio, x1 / ratio, y1 / ratio];
        }""",
        MAP,
    )
    assert box is not None, "the map's plotting area (its grid lines) was not found"
    x0, y0, x1, y1 = box
    inset = 4
    return {
        "x": chart["x"] + x0 + inset,
        "y": chart["y"] + y0 + inset,
        "width": x1 - x0 - 2 * inset,
        "height": y1 - y0 - 2 * inset,
    }


def _box_select(page, pick: bool = True) -> None:
    """Pick the box tool (unless `pick` is False: already picked) and drag a box over most of the map's
    plotting area."""
    if pick:
        map_tool(page, "box")
    area = _map_area(page)
    x0, y0 = area["x"], area["y"]
    x1, y1 = area["x"] + area["width"], area["y"] + area["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()


def _lasso_select(page, corners: list[tuple[float, float]]) -> None:
    """Pick the lasso tool and draw a polygon through `corners`, fractions (0-1) of the plotting area."""
    map_tool(page, "lasso")
    area = _map_area(page)
    points = [(area["x"] + fx * area["width"], area["y"] + fy * area["height"]) for fx, fy in corners]
    page.mouse.move(*points[0])
    page.mouse.down()
    for x, y in points[1:] + points[:1]:
        page.mouse.move(x, y, steps=8)
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
