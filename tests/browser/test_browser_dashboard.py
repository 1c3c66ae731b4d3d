"""Issue 9 in a real browser: held-out headline with its subset, the dataset following the model, one colour
per expert on every page, a `?expert=3` link, a shared map view, the stakeholder report opened in Chromium,
and no request to any host but the app's own. Screenshots go to test-output/screenshots/dashboard_*.png.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from browser import (
    CHROMIUM,
    SHOTS,
    _box_select,
    _cannot_run,
    _no_exception,
    _wait_idle,
    _wait_text,
    map_colour_pixels,
    vega_marks,
)

from moe_reward.app import colors

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def dash_server(shared_server):
    return shared_server  # tests/browser/conftest.py: the tiny workspace and other-sparse on other data


def _expert_colours(page) -> dict[str, str]:
    """{'E3': colour} from every chart drawn on the page: Vega-Lite bars of an expert (their ARIA label names
    it: bars over experts, or a series such as 'E3 · routed here'). (The Expert map draws on a canvas: its
    colours are checked on the ECharts option it is sent, tests/integration/test_dashboard_truth.py.)"""
    found: dict[str, str] = {}
    for kind, fields, fill in vega_marks(page):
        m = re.match(r"(E\d+)(?:$| ·)", fields.get("expert") or fields.get("series") or "")
        if kind == "bar" and m and fill and fill.startswith("#"):
            found[m.group(1)] = fill
    return found


def _rgb(c: str) -> tuple[int, ...]:
    if c.startswith("#"):
        return colors.hex_to_rgb(c)
    return tuple(int(float(x)) for x in c[c.index("(") + 1 :].split(",")[:3])


def _open(page, url: str, heading: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name=heading).first.wait_for(timeout=90_000)
    _wait_idle(page)
    _no_exception(page)


def test_dashboard_tells_the_truth_in_a_browser(dash_server):
    from playwright.sync_api import sync_playwright

    url, home = dash_server
    # the busiest expert of the test split (unused experts are collapsed and carry no chart)
    used = json.loads((home / "models" / "default-sparse" / "metrics.json").read_text())["test"][
        "expert_utilization"
    ]
    busy = int(np.argmax(used))
    SHOTS.mkdir(parents=True, exist_ok=True)
    foreign_requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1440, "height": 2400})
        page.on(
            "request",
            lambda r: (
                foreign_requests.append(r.url)
                if not r.url.startswith((url, "data:", "blob:", "file:"))
                else None
            ),
        )
        try:
            _open(page, url, "Overview")
            n_test = len(
                json.loads((home / "models" / "default-sparse" / "split_ids.json").read_text())["test"]
            )
            first_metric = page.locator('[data-testid="stMetric"]').first.inner_text()
            assert (
                first_metric.startswith("Accuracy")
                and f"held-out test split · {n_test} pairs" in first_metric
            )
            page.screenshot(path=str(SHOTS / "dashboard_overview.png"), full_page=True)
            colours = {"Overview": _expert_colours(page)}

            # the dataset follows the model; foreign data is said plainly
            box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input')
            box.first.click()
            page.get_by_role("option", name="other-sparse").click()
            _wait_text(page, "other-sparse: sparse")
            _wait_idle(page)
            assert box.nth(1).input_value() == "other.safetensors"  # (the selector's short name of it)
            assert "File: uploads/other.safetensors" in page.locator('[data-testid="stSidebar"]').inner_text()
            box.nth(1).click()
            page.get_by_role("option", name="tiny.safetensors").click()
            _wait_text(page, "not the data the model was trained on")
            _wait_idle(page)
            page.screenshot(path=str(SHOTS / "dashboard_foreign_data.png"), full_page=True)

            # one colour per expert on every page (default-sparse again, via a link)
            for title, path in (
                ("Routing statistics", "/Routing_statistics"),
                ("Expert detail", f"/Expert_detail?expert={busy}"),
            ):
                _open(page, f"{url}{path}{'&' if '?' in path else '?'}model=default-sparse", title)
                colours[title] = _expert_colours(page)
            for title, found in colours.items():
                assert found, f"no expert colours on {title}"
                for expert, col in found.items():
                    assert _rgb(col) == colors.hex_to_rgb(colors.expert_color(int(expert[1:]))), (
                        title,
                        expert,
                        col,
                    )
            assert all(f"E{busy}" in colours[t] for t in ("Overview", "Routing statistics", "Expert detail"))

            # ?expert=N opened Expert detail on that expert, and the address keeps the view
            expert_box = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"] input').first
            assert expert_box.input_value().startswith(f"E{busy}")
            assert f"expert={busy}" in page.url and "model=default-sparse" in page.url
            page.screenshot(path=str(SHOTS / "dashboard_expert_detail_E3.png"), full_page=True)

            # the map: a box selects over all pairs; the link reopens the same selection
            _open(page, f"{url}/Expert_map?model=default-sparse&layout=pca", "Expert map")
            # its points are drawn in the experts' colours
            for expert in (0, busy):
                assert map_colour_pixels(page, colors.expert_color(expert)) >= 20, expert
            _box_select(page)
            _wait_text(page, "Download all")
            _wait_idle(page)
            assert "box=" in page.url
            shared = page.url
            selected = page.get_by_text("Selection:").first.inner_text()
            page.screenshot(path=str(SHOTS / "dashboard_expert_map.png"), full_page=True)
            other = browser.new_page(viewport={"width": 1440, "height": 1600})
            other.goto(shared)
            other.get_by_role("heading", name="Expert map").first.wait_for(timeout=90_000)
            _wait_text(other, selected)
            other.close()

            # the stakeholder report: one click, then the file opens in Chromium, offline
            _open(page, url, "Overview")
            page.get_by_text("Stakeholder report", exact=True).click()
            write = page.get_by_role("button", name="Write the stakeholder report")
            write.wait_for()
            _wait_idle(page)
            write.click()
            _wait_text(page, "Wrote ", timeout_ms=120_000)
            _wait_idle(page)
        except Exception:
            page.screenshot(path=str(SHOTS / "dashboard_failure.png"), full_page=True)
            raise
        report = home / "reports" / "default-sparse.html"
        assert report.is_file()
        view = browser.new_page(viewport={"width": 1280, "height": 1800})
        view.on(
            "request",
            lambda r: (
                foreign_requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None
            ),
        )
        view.goto(report.as_uri())
        view.get_by_role("heading", name="How well it predicts preferences it has not seen").wait_for()
        view.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 1")
        assert "held-out test split" in view.locator("body").inner_text()
        view.screenshot(path=str(SHOTS / "dashboard_report.png"), full_page=True)
        browser.close()
    assert not foreign_requests, foreign_requests[:5]  # page icon, fonts, plotly: nothing from another host
    pngs = sorted((home / "reports" / "default-sparse_figures").glob("*.png"))
    try:
        import kaleido  # noqa: F401
    except ImportError:
        _cannot_run("kaleido is missing: the report's PNG figures were not checked (pip install kaleido)")
    assert "utilization.png" in [p.name for p in pngs], pngs
