"""Dashboard speed: warm start to the first rendered page, and label click -> updated weights (target <= 300 ms).

1. **Warm start**: `streamlit run app.py` on a workspace whose model and features are already on disk
   (the state after the first start); time from launching the server to the Overview's metrics shown in
   Chromium (needs /usr/bin/chromium + playwright; otherwise the server-side first run via AppTest).
2. **Label click**: on the Personalize page (AppTest, same process), the full server-side rerun after
   clicking "A is better" -- adapter update, SQLite commit, every chart rebuilt -- plus the update + commit
   alone as the page reports it. Median and p95 of `--clicks` clicks.

Run: ``python bench/bench_app.py`` (tiny synthetic workspace, ~1 min) or ``--home workspace`` for a real
one (e.g. after `moe-reward build-default`).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def warm_start_browser(env: dict) -> tuple[float, float] | None:
    """(seconds from server launch to the Overview's metrics in Chromium, seconds for a second browser
    session on the running server to get there); None without a browser."""
    if not Path("/usr/bin/chromium").exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1):
                    break
            except OSError:
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_text("Experts in use").wait_for(timeout=120_000)
            seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            second = browser.new_context().new_page()  # a new session: its own state, shared caches
            second.goto(f"http://127.0.0.1:{port}")
            second.get_by_text("Experts in use").wait_for(timeout=120_000)
            again = time.perf_counter() - t1
            browser.close()
        return seconds, again
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def label_clicks(clicks: int) -> tuple[list[float], list[float]]:
    """(full rerun ms, update + commit ms as reported by the page) per click."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / "4_Personalize.py"), default_timeout=300).run()
    at.text_input(key="pz_annotator").set_value(f"bench-{os.getpid()}").run()

    def click(label: str) -> None:  # the label buttons' keys carry the pair shown: find them by label
        next(b for b in at.button if b.label == label).click().run()

    click("A is better")  # the first click creates the profile and warms the adapter and plotly paths
    rerun, update = [], []
    for i in range(clicks):
        t = time.perf_counter()
        click("A is better" if i % 2 else "B is better")
        rerun.append(1000 * (time.perf_counter() - t))
        if at.exception:
            raise RuntimeError(at.exception[0].value)
        reported = [c.value for c in at.caption if c.value.startswith("last label saved in")]
        if reported:
            update.append(float(reported[0].split(" in ")[1].split("ms")[0]))
    return rerun, update


def page_times() -> None:
    """Server-side time of each page: first run (cold caches in this process), then a rerun (warm)."""
    from streamlit.testing.v1 import AppTest

    for page in ["app.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("[0-9]_*.py"))]:
        at = AppTest.from_file(str(ROOT / page), default_timeout=300)
        t = time.perf_counter()
        at.run()
        first = time.perf_counter() - t
        t = time.perf_counter()
        at.run()
        again = time.perf_counter() - t
        status = "error: " + at.exception[0].value[:80] if at.exception else "ok"
        print(f"  {page:34s} first run {first * 1000:6.0f} ms, rerun {again * 1000:5.0f} ms  {status}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--home", default=None, help="an existing workspace (default: a tiny synthetic one in /tmp)"
    )
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument(
        "--pairs", type=int, default=None, help="scale the synthetic workspace to this many pairs"
    )
    ap.add_argument("--experts", type=int, default=4)
    args = ap.parse_args()
    if args.home:
        home = Path(args.home).resolve()
    else:
        from app_workspace import build_tiny_workspace

        home = Path(tempfile.mkdtemp(prefix="bench-app-"))
        t = time.perf_counter()
        build_tiny_workspace(home, n_pairs=args.pairs, experts=args.experts)
        print(f"built a tiny workspace in {time.perf_counter() - t:.1f}s: {home}")
        os.environ["MOE_REWARD_DATA_DIR"] = str(home / "no-repo-data")
    os.environ["MOE_REWARD_HOME"] = str(home)
    os.chdir(ROOT)

    timing = warm_start_browser(dict(os.environ))
    if timing is None:
        from streamlit.testing.v1 import AppTest

        t = time.perf_counter()
        AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
        print(f"warm start (server-side first run, no browser): {time.perf_counter() - t:.2f} s")
    else:
        print(
            f"warm start (server launch, model + features on disk) -> Overview rendered in Chromium: {timing[0]:.2f} s"
        )
        print(f"new browser session on the running server -> Overview rendered: {timing[1]:.2f} s")

    page_times()
    rerun, update = label_clicks(args.clicks)
    p95 = sorted(rerun)[max(0, round(0.95 * len(rerun)) - 1)]
    print(
        f"label click -> updated weights, full server-side rerun: median {statistics.median(rerun):.0f} ms, "
        f"p95 {p95:.0f} ms over {len(rerun)} clicks (target <= 300 ms)"
    )
    if update:
        print(f"  of which storing the label (SQLite commit): median {statistics.median(update):.1f} ms")
    return 0 if statistics.median(rerun) <= 300 else 1


if __name__ == "__main__":
    sys.exit(main())
