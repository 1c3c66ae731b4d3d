"""How fast pages open: the first page after `streamlit run` on a fresh clone, then every page warm.

1. **Fresh clone, first page.** The committed tree of a ref (``git archive``: what a fresh clone holds) is
   started with ``streamlit run app.py`` on an empty workspace and an empty cache; the time is from
   launching the command to the Overview's headline numbers received by a session (server side, the
   websocket protocol of tests/support/streamlit_client.py) and, with ``--browser``, shown in Chromium.
   The Overview must show the default model (its "Accuracy" metric); on a ref that trains that model on
   first start, the time includes the training.
2. **Warm page loads.** On that server, already warm, each page is opened by a new session (``--rounds``
   times, median and max): server side, and with ``--browser`` in Chromium until the page has finished
   running and drawn its charts, opened in a new tab (a new session; the browser has loaded the app
   before, so its static files are cached) and reached from the sidebar within one session. The tabs are
   those of a browser profile on disk, as a returning user's (HTTP cache and V8's cache of compiled
   scripts kept between tabs); ``--private`` opens them in a private window instead (in-memory cache).

``--baseline REF`` (e.g. ``main``) measures REF the same way in the same run (each ref's server alone on
the machine while it is measured); ``HEAD`` is measured as "this checkout" (commit your changes first).
With ``--browser`` the two refs' new tabs are then also opened in turn, both servers up (A, B, B, A, ...):
the load of a shared machine changes over minutes, and this compares the refs at the same moments.

``--floor`` (with ``--browser``) also opens, the same way, three one-element pages of a bare Streamlit app:
a title only, a title and one Plotly bar chart, a title and one Vega-Lite bar chart. They are the least a
new tab costs on this machine without a chart and with the first chart of each library (its script chunk
is loaded and run in every new tab).

    python bench/bench_pages.py --baseline main --browser --json pages.json
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from streamlit_client import StreamlitSession  # noqa: E402
from streamlit_server import Server  # noqa: E402

# url path -> text that only that page shows once it has run (its title)
PAGES = {
    "": "Overview",
    "Routing_statistics": "Routing statistics",
    "Expert_map": "Expert map",
    "Expert_detail": "Expert detail",
    "Personalize": "Personalize",
    "Compare_models": "Compare models",
    "Score_your_own": "Score your own",
    "Data_and_training": "Data & training",
}
CHROMIUM = "/usr/bin/chromium"


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def export_ref(ref: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def overview_ready(session: StreamlitSession) -> bool:
    return session.metric("Accuracy") is not None


def first_page(code: Path, scratch: Path, timeout: float) -> tuple[Server, dict]:
    """Start `code` on an empty workspace and cache; seconds to the Overview's numbers (server side)."""
    home = scratch / "workspace"
    home.mkdir(parents=True)
    cache = scratch / "cache"
    server = Server(home, root=code, data_dir=code / "data", env={"MOE_REWARD_CACHE": str(cache)})
    server.start(timeout=timeout)
    up = time.perf_counter() - server.started
    s = StreamlitSession(server.url, page="", timeout=timeout)
    s.open()
    while not overview_ready(s):  # a first start that builds the model shows a progress bar first
        run = s.runs[-1]
        if time.perf_counter() - server.started > timeout:
            raise RuntimeError(f"no Overview numbers within {timeout:.0f} s: {s.texts()[:5]}")
        time.sleep(0.5)
        if run.finished is not None:
            s._rerun(fragment="", widgets=[])  # (what a browser does when the page reruns itself)
            s.wait_finished()
    total = time.perf_counter() - server.started
    accuracy = s.metric("Accuracy")
    s.close()
    model = home / "models" / "default-sparse" / "model.safetensors"
    shipped = code / "data" / "controlled" / "default-model" / "model.safetensors"
    return server, {
        "server_up_s": round(up, 2),
        "first_overview_s": round(total, 2),
        "default_model": "installed the shipped one"
        if shipped.is_file() and model.is_file() and filecmp.cmp(model, shipped, shallow=False)
        else "trained on first start",
        "accuracy_shown": accuracy,
    }


def warm_pages(server: Server, rounds: int) -> dict:
    out = {}
    for path, title in PAGES.items():
        times = []
        for _ in range(rounds):
            s = StreamlitSession(server.url, page=path, timeout=180)
            t = time.perf_counter()
            s.open()
            times.append(time.perf_counter() - t)
            if s.exceptions:
                raise RuntimeError(f"{title}: {s.exceptions[0][:200]}")
            s.close()
        out[title] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}
    return out


def browser_times(server: Server, rounds: int, private: bool = False) -> dict:
    """Chromium, until the page finished running and drew its charts: each page opened in a new tab (a new
    session) of a browser that has loaded the app before (its static files cached, as a returning user's
    or a teammate's browser); and moving to each page from the sidebar within one session."""
    from playwright.sync_api import sync_playwright

    out: dict[str, dict] = {"new_tab": {}, "switch": {}}
    with sync_playwright() as pw:
        context, close = open_context(pw, private)
        try:
            first = context.new_page()
            first.goto(server.url)
            first.get_by_role("heading", name="Overview").first.wait_for(timeout=180_000)
            wait_settled(first)
            for path, title in PAGES.items():
                times = []
                for _ in range(rounds):
                    page = context.new_page()
                    t = time.perf_counter()
                    page.goto(f"{server.url}/{path}")
                    page.get_by_role("heading", name=title).first.wait_for(timeout=180_000)
                    wait_settled(page)
                    times.append(time.perf_counter() - t)
                    page.close()
                out["new_tab"][title] = {
                    "median_s": round(statistics.median(times), 3),
                    "max_s": round(max(times), 3),
                }
            switches: dict[str, list[float]] = {}
            for _ in range(rounds):
                for title in [*list(PAGES.values())[1:], "Overview"]:
                    t = time.perf_counter()
                    first.get_by_role("link", name=title).first.click()
                    first.get_by_role("heading", name=title).first.wait_for(timeout=180_000)
                    wait_settled(first)
                    switches.setdefault(title, []).append(time.perf_counter() - t)
            out["switch"] = {
                title: {"median_s": round(statistics.median(ts), 3), "max_s": round(max(ts), 3)}
                for title, ts in switches.items()
            }
        finally:
            close()
    return out


FLOOR_APP = """import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

chart = st.query_params.get("chart", "none")
st.title("Floor")
names, values = [f"E{k}" for k in range(12)], list(range(12))
xy, expert = np.random.default_rng(0).normal(size=(600, 2)), np.arange(600) % 12  # a map of 600 pairs
if chart == "plotly":
    st.plotly_chart(go.Figure(go.Bar(x=names, y=values)).update_layout(height=300))
elif chart == "vega":
    st.bar_chart(pd.DataFrame({"expert": names, "share": values}), x="expert", y="share", height=300)
elif chart == "plotly_map":
    traces = [go.Scattergl(x=xy[expert == k, 0], y=xy[expert == k, 1], mode="markers", name=f"E{k}") for k in range(12)]
    fig = go.Figure(traces).update_layout(height=620, dragmode="select")
    st.plotly_chart(fig, on_select="rerun", selection_mode=("box", "lasso"), key="map")
elif chart == "echarts_map":
    series = [
        {"type": "scatter", "name": f"E{k}", "data": [[float(x), float(y)] for x, y in xy[expert == k]]}
        for k in range(12)
    ]
    option = {
        "animation": False, "legend": {}, "tooltip": {}, "series": series,
        "xAxis": {"type": "value", "scale": True}, "yAxis": {"type": "value", "scale": True},
        "brush": {"xAxisIndex": 0, "yAxisIndex": 0}, "toolbox": {"feature": {"brush": {"type": ["rect", "polygon"]}}},
    }
    st.echarts_chart(option, height=620, on_select="rerun", key="map")
"""
FLOOR_READY = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    const vega = document.querySelectorAll('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg');
    const plotly = [...document.querySelectorAll('.js-plotly-plot')].filter(p => p.querySelector('.main-svg'));
    const echarts = document.querySelectorAll('[data-testid="stEChartsChart"] canvas');
    return !!app && app.dataset.testScriptState === 'notRunning' && !document.querySelector('[data-testid="stSkeleton"]')
        && vega.length + plotly.length + echarts.length >= NEED;
}"""


def floor_times(scratch: Path, rounds: int, private: bool = False) -> dict:
    """New tabs on a bare Streamlit app (`FLOOR_APP`): no chart, one Plotly chart, one Vega-Lite chart, and a
    600-point map with box and lasso selection drawn by Plotly and by ECharts."""
    from playwright.sync_api import sync_playwright

    root = scratch / "floor"
    root.mkdir(parents=True)
    (root / "app.py").write_text(FLOOR_APP)
    server = Server(root, root=root).start()
    out = {}
    try:
        with sync_playwright() as pw:
            context, close = open_context(pw, private)
            try:
                for chart in (
                    "none",
                    "plotly",
                    "vega",
                    "plotly_map",
                    "echarts_map",
                ) * 2:  # the first pass fills the cache; the second counts
                    times = []
                    for _ in range(rounds):
                        page = context.new_page()
                        t = time.perf_counter()
                        page.goto(f"{server.url}/?chart={chart}")
                        ready = FLOOR_READY.replace("NEED", "0" if chart == "none" else "1")
                        page.wait_for_function(ready, timeout=180_000, polling=20)
                        times.append(time.perf_counter() - t)
                        page.close()
                    out[chart] = {
                        "median_s": round(statistics.median(times), 3),
                        "max_s": round(max(times), 3),
                    }
            finally:
                close()
    finally:
        server.stop()
    return out


def open_context(pw, private: bool):
    """(context, close): the browser the new tabs open in. A profile of its own on disk, as a returning
    user's browser (its HTTP cache and V8's cache of compiled code persist between tabs), or with `private`,
    a private window (an in-memory cache only)."""
    if private:
        browser = launch(pw)
        return browser.new_context(viewport={"width": 1400, "height": 1000}), browser.close
    profile = tempfile.mkdtemp(prefix="bench-pages-profile-")
    context = pw.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), viewport={"width": 1400, "height": 1000}
    )

    def close() -> None:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)

    return context, close


CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking")


def launch(pw):
    """Chromium as every measurement here runs it: headless, no sandbox, no GPU, no background traffic."""
    return pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))


SETTLED = """() => !document.querySelector(
        '[data-testid="stStatusWidget"], [data-stale="true"], [data-testid="stSkeleton"]')
    && [...document.querySelectorAll('.js-plotly-plot')].every(p => p.querySelector('.main-svg'))
    && [...document.querySelectorAll('[data-testid="stEChartsChart"]')].every(c => c.querySelector('canvas'))
    && [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].every(c => c.querySelector('svg, canvas'))"""


def wait_settled(page, timeout_s: float = 180) -> None:
    """Until the script run is over (no status widget, nothing stale), no element is still loading its
    script chunk (Streamlit draws a skeleton in its place until then) and every chart (Plotly, Vega-Lite)
    has drawn."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if page.evaluate(SETTLED):
            return
        page.wait_for_timeout(20)
    raise RuntimeError("the page did not settle")


def browser_first_page(code: Path, scratch: Path, timeout: float) -> float:
    """Chromium: `streamlit run` on an empty workspace -> the Overview's numbers on screen."""
    from playwright.sync_api import sync_playwright

    home = scratch / "workspace-browser"
    home.mkdir(parents=True)
    server = Server(
        home, root=code, data_dir=code / "data", env={"MOE_REWARD_CACHE": str(scratch / "cache-browser")}
    )
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            server.start(timeout=timeout)
            page.goto(server.url)
            page.get_by_text("Experts in use").first.wait_for(timeout=timeout * 1000)
            seconds = time.perf_counter() - server.started
            browser.close()
        return round(seconds, 2)
    finally:
        server.stop()


def side_by_side(runs: list[tuple[str, Path, Path]], rounds: int, private: bool) -> dict:
    """New tabs of two refs in turn (A, B, then B, A, ...), each ref's server on the workspace its first start
    made, both servers up: the machine's load changes over minutes, so the refs are compared at the same
    moments. {name: {page title: {"median_s", "max_s"}}}."""
    from playwright.sync_api import sync_playwright

    servers = {
        name: Server(
            scratch / "workspace",
            root=code,
            data_dir=code / "data",
            env={"MOE_REWARD_CACHE": str(scratch / "cache")},
        ).start()
        for name, code, scratch in runs
    }
    times: dict[str, dict[str, list[float]]] = {name: {} for name in servers}
    try:
        with sync_playwright() as pw:
            context, close = open_context(pw, private)
            try:

                def tab(server: Server, path: str, title: str) -> float:
                    page = context.new_page()
                    t = time.perf_counter()
                    page.goto(f"{server.url}/{path}")
                    page.get_by_role("heading", name=title).first.wait_for(timeout=180_000)
                    wait_settled(page)
                    page.close()
                    return time.perf_counter() - t

                for server in servers.values():  # every page once: the servers' caches, the browser's
                    for path, title in PAGES.items():
                        tab(server, path, title)
                names = list(servers)
                for path, title in PAGES.items():
                    for r in range(rounds):
                        for name in names if r % 2 == 0 else names[::-1]:
                            times[name].setdefault(title, []).append(tab(servers[name], path, title))
            finally:
                close()
    finally:
        for server in servers.values():
            server.stop()
    return {
        name: {
            title: {"median_s": round(statistics.median(ts), 3), "max_s": round(max(ts), 3)}
            for title, ts in pages.items()
        }
        for name, pages in times.items()
    }


def measure(name: str, code: Path, scratch: Path, args) -> dict:
    print(f"[{name}] fresh clone: starting streamlit on an empty workspace ({load()})", flush=True)
    server, cold = first_page(code, scratch, args.timeout)
    try:
        print(f"[{name}] first page (server side): {cold['first_overview_s']} s", flush=True)
        result = {"code": name, "fresh_clone": cold, "load_before": load()}
        result["warm_server_side"] = warm_pages(server, args.rounds)
        for title, t in result["warm_server_side"].items():
            print(
                f"[{name}]   warm {title:18s} median {t['median_s']:.3f} s, max {t['max_s']:.3f} s",
                flush=True,
            )
        if args.browser:
            result["warm_browser"] = browser_times(server, max(1, args.rounds - 1), args.private)
            for kind, what in (("new_tab", "new tab"), ("switch", "from the sidebar")):
                for title, t in result["warm_browser"][kind].items():
                    print(
                        f"[{name}]   Chromium, {what:16s} {title:18s} median {t['median_s']:.2f} s, "
                        f"max {t['max_s']:.2f} s",
                        flush=True,
                    )
    finally:
        server.stop()
    if args.browser:
        result["fresh_clone"]["first_overview_browser_s"] = browser_first_page(code, scratch, args.timeout)
        print(
            f"[{name}] first page in Chromium: {result['fresh_clone']['first_overview_browser_s']} s",
            flush=True,
        )
    result["load_after"] = load()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=None, help="a git ref measured the same way (e.g. main)")
    ap.add_argument("--ref", default="HEAD", help="the ref measured as this checkout (default HEAD)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--browser", action="store_true", help="also time the pages in Chromium")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a first start may take")
    ap.add_argument("--floor", action="store_true", help="with --browser: a bare app's new tabs, see above")
    ap.add_argument(
        "--private",
        action="store_true",
        help="with --browser: new tabs of a private window, not of a profile",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    results = []
    try:
        refs = ([args.baseline] if args.baseline else []) + [args.ref]
        runs = []
        for i, ref in enumerate(refs):
            code = export_ref(ref, scratch / f"code-{i}")
            name = f"{'this checkout' if i == len(refs) - 1 else ref} ({ref})"
            results.append(measure(name, code, scratch / f"run-{i}", args))
            runs.append((name, code, scratch / f"run-{i}"))
        if args.browser and len(runs) == 2:
            print(f"new tabs of both refs in turn ({load()})", flush=True)
            both = side_by_side(runs, max(2, args.rounds), args.private)
            for result in results:
                result["new_tab_side_by_side"] = both[result["code"]]
            for title in PAGES.values():
                print(
                    f"  new tab, in turn: {title:18s} "
                    + ", ".join(f"{name} {both[name][title]['median_s']:.2f} s" for name, _, _ in runs),
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\nsummary:")
    for r in results:
        fc = r["fresh_clone"]
        worst = max(r["warm_server_side"].items(), key=lambda kv: kv[1]["median_s"])
        line = (
            f"  {r['code']:28s} fresh clone -> Overview {fc['first_overview_s']} s (server side)"
            + (
                f", {fc['first_overview_browser_s']} s in Chromium"
                if "first_overview_browser_s" in fc
                else ""
            )
            + f"; slowest warm page (server side) {worst[0]} {worst[1]['median_s']:.3f} s"
        )
        if "warm_browser" in r:
            for kind, what in (("new_tab", "new tab"), ("switch", "sidebar switch")):
                wb = max(r["warm_browser"][kind].items(), key=lambda kv: kv[1]["median_s"])
                line += f"; slowest in Chromium ({what}) {wb[0]} {wb[1]['median_s']:.2f} s"
        print(line + f" ({r['load_before']})")
    if args.floor and args.browser:
        floor_scratch = Path(tempfile.mkdtemp(prefix="bench-pages-floor-"))
        try:
            floor = floor_times(floor_scratch, args.rounds, args.private)
        finally:
            shutil.rmtree(floor_scratch, ignore_errors=True)
        print(
            "  a bare Streamlit app, new tab (median): "
            + ", ".join(
                f"{what} {floor[chart]['median_s']:.2f} s"
                for chart, what in (
                    ("none", "no chart"),
                    ("plotly", "one Plotly chart"),
                    ("vega", "one Vega-Lite chart"),
                    ("plotly_map", "a 600-point map in Plotly"),
                    ("echarts_map", "the same map in ECharts"),
                )
            )
            + f" ({load()})"
        )
        results.append({"code": "floor", "new_tab": floor})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
