"""Expert map at scale: time to first render and selection round-trip at 10k and 100k pairs (and 1M server-side).

For each size, a synthetic workspace (32-d features, a 12-expert sparse model, short real-looking texts) is
served by `streamlit run app.py`; Chromium opens the Expert map through a link (?model=…&data=…&cap=…) and
we time
  * first render: navigation -> the map's canvas drawn and the page idle;
  * selection round-trip: (the box tool picked first) a box dragged over the map -> "Selection: N pairs" and
    its table shown;
for the shipped drawing (a stratified sample of at most 20,000 points over a density layer of all of them;
selection computed on the server over all pairs) and, as the baseline in the same run, every point drawn
(cap = N, what the page did before). Then the server-side pieces at 1M pairs (anchors layout, sample,
density grid, a box selection over all points) without a browser.

Run: ``python bench/bench_map.py`` (~3-5 min on 2 cores) or ``--sizes 10000`` for a quick look.
Also prints projection timings for 5,000 points (PCA, UMAP cold and warm) that projection.py quotes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]
from browser import MAP, _box_select, map_tool  # noqa: E402  (tests/support: the map's toolbox and plotting area)

CHROMIUM = "/usr/bin/chromium"
DIM, EXPERTS = 32, 12


def synthetic(n: int, seed: int = 0):
    """n pairs in 12 prompt clusters whose preferred direction differs per cluster."""
    from moe_reward.data.pairs import PreferencePair
    from moe_reward.embed.features import PairFeatures

    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, EXPERTS, n)
    centres = rng.normal(size=(EXPERTS, DIM)) * 2
    likes = rng.normal(size=(EXPERTS, DIM))
    prompt = centres[cluster] + rng.normal(size=(n, DIM))
    base = rng.normal(size=(n, DIM))
    chosen, rejected = base + 0.5 * likes[cluster], base - 0.5 * likes[cluster]
    topics = [
        "sleep",
        "taxes",
        "python",
        "cooking",
        "travel",
        "grief",
        "running",
        "chess",
        "mortgages",
        "poetry",
    ]
    pairs = [
        PreferencePair(
            f"How should I think about {topics[i % 10]} (case {i})?",
            f"A careful answer {i}.",
            f"A quick answer {i}.",
            group=f"g{cluster[i]}",
            id=f"p{i}",
        )
        for i in range(n)
    ]
    meta = {"backbone": "synthetic", "pooling": "mean", "max_length": 256, "dim": DIM}
    return PairFeatures(prompt, chosen, rejected, pairs, meta)


def build(home: Path, sizes: list[int]) -> None:
    from moe_reward.app.pipeline import TrainRequest, train_from_data
    from moe_reward.app.workspace import Workspace
    from moe_reward.train.config import TrainConfig

    ws = Workspace(home)
    small = synthetic(3000, seed=1)
    small.save(ws.uploads_dir / "train-3k.safetensors")
    req = TrainRequest(
        data=str(ws.uploads_dir / "train-3k.safetensors"),
        experts=EXPERTS,
        top_k=2,
        train=TrainConfig.for_kind("sparse", epochs=8),
    )
    train_from_data(req, ws.model_path("bench-sparse"), features=small)
    for n in sizes:
        synthetic(n).save(ws.uploads_dir / f"big-{n}.safetensors")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_idle(page, timeout_s: float = 300) -> None:
    deadline, quiet = time.time() + timeout_s, None
    while time.time() < deadline:
        if page.locator('[data-testid="stStatusWidget"]').count():
            quiet = None
        elif quiet is None:
            quiet = time.time()
        elif time.time() - quiet > 0.3:
            return
        page.wait_for_timeout(50)
    raise TimeoutError("the page did not settle")


def browser_times(url: str, n: int, cap: int) -> tuple[float, float, str]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1440, "height": 1400})
        t0 = time.perf_counter()
        page.goto(f"{url}/Expert_map?model=bench-sparse&data=uploads/big-{n}.safetensors&cap={cap}")
        page.locator(MAP + " canvas").first.wait_for(timeout=300_000)
        wait_idle(page)
        first = time.perf_counter() - t0
        title = f"at most {cap} points drawn"  # (the chart's own title is drawn on its canvas)
        map_tool(
            page, "box"
        )  # picked first: the round trip is the drag's, as it was with Plotly's default box
        t1 = time.perf_counter()
        _box_select(page, pick=False)  # drag over the plotting area
        page.wait_for_function("() => /Selection: [1-9]/.test(document.body.innerText)", timeout=300_000)
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=300_000)
        wait_idle(page)
        roundtrip = time.perf_counter() - t1
        selected = page.get_by_text("Selection:").first.inner_text()
        browser.close()
    return first, roundtrip, f"{title} | {selected}"


def server_side_million(n: int = 1_000_000) -> None:
    from moe_reward.evaluate.projection import (
        anchors_2d,
        density_grid,
        draw_sample,
        points_in_box,
        points_in_polygon,
    )

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(EXPERTS, 0.3), size=n).astype(np.float32)
    cats = np.array([f"E{e}" for e in range(EXPERTS)])[probs.argmax(1)]
    for name, fn in (("anchors layout", lambda: anchors_2d(probs)),):
        t = time.perf_counter()
        xy = fn()
        print(f"  1M pairs: {name}: {time.perf_counter() - t:.2f} s")
    for name, fn in (
        ("stratified sample of 20,000", lambda: draw_sample(cats, 20_000)),
        ("density grid 150x150", lambda: density_grid(xy, 150)),
        ("box selection over all points", lambda: points_in_box(xy, (-0.3, 0.3), (-0.3, 0.3))),
        (
            "lasso (64-gon) selection over all points",
            lambda: points_in_polygon(
                xy, 0.4 * np.cos(np.linspace(0, 6.28, 64)), 0.4 * np.sin(np.linspace(0, 6.28, 64))
            ),
        ),
    ):
        t = time.perf_counter()
        out = fn()
        size = len(out) if isinstance(out, np.ndarray) else out[2].size
        print(f"  1M pairs: {name}: {time.perf_counter() - t:.2f} s ({size} values)")


def projection_timings() -> None:
    """PCA and UMAP on 5,000 points of 12-d router logits, in a fresh process (so UMAP's first fit is cold)."""
    code = r"""
import time, numpy as np
from moe_reward.evaluate.projection import ProjectionParams, pca_2d, umap_2d
x = np.random.default_rng(0).normal(size=(5000, 12)).astype(np.float32)
t = time.perf_counter(); pca_2d(x); print(f"  PCA, 5,000 x 12: {time.perf_counter() - t:.3f} s")
p = ProjectionParams("umap", "router", metric="euclidean")
t = time.perf_counter(); umap_2d(x, p); print(f"  UMAP, 5,000 x 12, first fit in a process: {time.perf_counter() - t:.1f} s")
t = time.perf_counter(); umap_2d(x, p); print(f"  UMAP, 5,000 x 12, warm: {time.perf_counter() - t:.1f} s")
"""
    subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--no-baseline", action="store_true", help="skip the draw-every-point baseline")
    ap.add_argument("--no-umap", action="store_true", help="skip the projection timings")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    home = Path(tempfile.mkdtemp(prefix="bench-map-"))
    t = time.perf_counter()
    build(home, sizes)
    print(f"built {home} in {time.perf_counter() - t:.1f}s (sizes {sizes})")
    if Path(CHROMIUM).exists():
        port = free_port()
        env = {**os.environ, "MOE_REWARD_HOME": str(home), "MOE_REWARD_DATA_DIR": str(home / "no-repo-data")}
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
                "--server.maxMessageSize",
                "1000",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            print("Expert map in Chromium (first visit to a size includes loading and scoring its file):")
            for n in sizes:
                browser_times(url, n, 20_000)  # warm the server's caches for this file (load, score, layout)
                for label, cap in (
                    ("shipped: sample <= 20,000 + density", 20_000),
                    ("baseline: every point drawn", n),
                ):
                    if args.no_baseline and cap == n and n > 20_000:
                        continue
                    try:
                        first, roundtrip, seen = browser_times(url, n, cap)
                        print(
                            f"  {n:>7} pairs, {label:38s}: first render {first:5.1f} s, selection round-trip "
                            f"{roundtrip:5.1f} s   [{seen}]"
                        )
                    except Exception as exc:  # noqa: BLE001 - a baseline that cannot finish is a result too
                        print(f"  {n:>7} pairs, {label:38s}: failed ({type(exc).__name__}: {str(exc)[:120]})")
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    else:
        print(f"{CHROMIUM} missing: browser timings skipped")
    print("Server-side pieces at 1M pairs:")
    server_side_million()
    if not args.no_umap:
        print("Projection timings (5,000 points):")
        projection_timings()
    return 0


if __name__ == "__main__":
    sys.exit(main())
