"""A room of annotators: N concurrent sessions labeling on one `streamlit run app.py` server.

Each session opens Personalize as its own annotator (``?annotator=bench-...``), then labels M pairs: it
waits a think time (uniform in [0.5, 1.5] x ``--think`` seconds; 0: as fast as the page answers), clicks
"A is better" or "B is better" and waits for the weights. Sessions speak Streamlit's own websocket protocol
(tests/support/streamlit_client.py: the messages a browser sends and receives, without drawing), so 16 of
them fit on a 2-core machine; the time measured is **click sent -> the weights caption of that click's run
received**, i.e. the server's side of a click (a browser then draws it). ``--browsers B`` also drives B
Chromium pages through the same load and times click -> weights shown on screen (end to end).

After the run every session's labels are counted in the workspace's labels.sqlite: stored, lost (a
confirmed click whose label is not there) and duplicated (two labels of one pair in one profile).

Baselines in the same run: every N > 1 is preceded by N = 1 on the same server (the single-session
baseline), and ``--baseline REF`` (e.g. ``main``) runs the same load against a server started from that git
ref (exported with ``git archive``, with its own .streamlit/config.toml) on a copy of the same workspace,
alternating with this checkout N by N.

    python bench/bench_annotators.py --sessions 16 --labels 10 --json out.json [--baseline main]
    python bench/bench_annotators.py --sessions 1 4 8 16 --labels 10 --think 1 --baseline main

JSON (the largest N of this checkout at top level): {"sessions", "labels", "labels_stored", "lost",
"duplicated", "errors", "p50_ms", "p95_ms", "max_ms", "think_s", "load", "single_session": {...},
"baseline": {... same keys, "ref"}, "runs": [...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from streamlit_client import ClientError, StreamlitSession  # noqa: E402
from streamlit_server import Server  # noqa: E402

PAGE = "Personalize"
WEIGHTS = "weights now:"
COUNT = "Labels in this profile"
COPIED = ("models", "features", "projections", "descriptions")  # a workspace minus its labels


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


# ----------------------------------------------------------------------------- servers and workspaces
def export_ref(ref: str, into: Path) -> Path:
    """The tree of git ref `ref` in `into` (git archive: no worktree is registered, nothing is checked out)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def template_workspace(home: str | None, scratch: Path) -> Path:
    """A workspace with the default model (and its features, maps, descriptions): `home` as given, or a new
    one where this checkout's Workspace.ensure_default builds it."""
    if home:
        return Path(home).resolve()
    from moe_reward.app.workspace import Workspace

    root = scratch / "template"
    t = time.perf_counter()
    Workspace(root, ROOT / "data").ensure_default()
    print(f"default workspace ready in {time.perf_counter() - t:.1f} s: {root}", flush=True)
    return root


def copy_workspace(template: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for sub in COPIED:
        if (template / sub).is_dir():
            shutil.copytree(template / sub, dst / sub)
    return dst


# ----------------------------------------------------------------------------- one session
class Annotator(threading.Thread):
    def __init__(self, url: str, name: str, labels: int, think: float, seed: int, start: threading.Barrier):
        super().__init__(daemon=True, name=name)
        self.url, self.annotator, self.labels, self.think = url, name, labels, think
        self.seed, self.barrier = seed, start
        self.times_ms: list[float] = []
        self.errors: list[str] = []
        self.confirmed = 0

    def run(self) -> None:
        import random

        rng = random.Random(self.seed)
        session = StreamlitSession(self.url, page=PAGE, query={"annotator": self.annotator}, timeout=180)
        try:
            session.open()
            if session.exceptions:
                raise ClientError(f"the page raised: {session.exceptions[0][:200]}")
        except Exception as exc:  # noqa: BLE001 - reported, and the barrier must not wait for us
            self.errors.append(f"open: {exc}")
            self.barrier.abort()
            return
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            session.close()
            return
        try:
            for j in range(self.labels):
                if self.think > 0:
                    time.sleep(self.think * rng.uniform(0.5, 1.5))
                try:
                    run = session.click(rng.choice(["A is better", "B is better"]))
                    seconds = session.wait_for(
                        run,
                        lambda e: e.WhichOneof("type") == "markdown" and e.markdown.body.startswith(WEIGHTS),
                    )
                    session.wait_finished(run)
                except ClientError as exc:
                    self.errors.append(f"label {j + 1}: {exc}")
                    continue
                counts = [
                    e.metric.body
                    for _, _, e in run.arrivals
                    if e is not None and e.WhichOneof("type") == "metric" and e.metric.label == COUNT
                ]
                refused = [t for t in session.texts() if "was not saved" in t or "already has a label" in t]
                if session.exceptions:
                    self.errors.append(f"label {j + 1}: the page raised {session.exceptions[-1][:200]}")
                    session.exceptions.clear()
                elif refused:
                    self.errors.append(f"label {j + 1}: {refused[0][:200]}")
                elif counts[-1:] != [str(self.confirmed + 1)]:
                    self.errors.append(f"label {j + 1}: the page shows {counts[-1:]} labels after the click")
                else:
                    self.confirmed += 1
                    self.times_ms.append(1000 * seconds)
        finally:
            session.close()


class BrowserAnnotators(threading.Thread):
    """`count` Chromium pages (one browser, a context each: separate sessions) labeling in turn, while the
    protocol sessions label beside them: click -> the new label count and weights shown on screen."""

    def __init__(self, url: str, tag: str, count: int, labels: int, think: float, seed: int, start):
        super().__init__(daemon=True, name=f"browsers-{tag}")
        self.url, self.count, self.labels, self.think, self.seed, self.barrier = (
            url,
            count,
            labels,
            think,
            seed,
            start,
        )
        self.names = [f"bench-{tag}-browser-{i}" for i in range(count)]
        self.times_ms: list[float] = []
        self.errors: list[str] = []
        self.confirmed = {n: 0 for n in self.names}

    def run(self) -> None:
        import random

        from playwright.sync_api import sync_playwright

        rng = random.Random(self.seed)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
                )
                pages = []
                for name in self.names:
                    page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
                    page.goto(f"{self.url}/{PAGE}?annotator={name}")
                    page.get_by_text(WEIGHTS).first.wait_for(timeout=180_000)
                    pages.append(page)
                try:
                    self.barrier.wait()
                except threading.BrokenBarrierError:
                    return
                for j in range(self.labels):
                    for name, page in zip(self.names, pages, strict=True):
                        if self.think > 0:
                            time.sleep(self.think * rng.uniform(0.5, 1.5) / self.count)
                        want = str(self.confirmed[name] + 1)
                        try:
                            button = page.get_by_role(
                                "button", name=rng.choice(["A is better", "B is better"])
                            )
                            button.first.wait_for(timeout=60_000)
                            t = time.perf_counter()
                            button.first.click()
                            page.wait_for_function(
                                """([label, want]) => [...document.querySelectorAll('[data-testid="stMetric"]')]
                                .some(m => m.innerText.includes(label) && m.innerText.split('\\n').includes(want))""",
                                arg=[COUNT, want],
                                timeout=120_000,
                            )
                            self.times_ms.append(1000 * (time.perf_counter() - t))
                            self.confirmed[name] += 1
                        except Exception as exc:  # noqa: BLE001 - counted and reported
                            self.errors.append(
                                f"{name} label {j + 1}: {type(exc).__name__}: {str(exc)[:160]}"
                            )
                browser.close()
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"browser: {type(exc).__name__}: {str(exc)[:200]}")
            self.barrier.abort()


def stored_labels(db: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    """annotator -> (labels, distinct pairs) in the workspace's store."""
    out = {n: (0, 0) for n in names}
    if not db.is_file():
        return out
    with sqlite3.connect(db) as conn:
        for name, n, distinct in conn.execute(
            "SELECT a.name, COUNT(*), COUNT(DISTINCT l.pair_id || '|' || l.profile_id) FROM labels l "
            "JOIN annotators a ON a.id = l.annotator_id GROUP BY a.name"
        ):
            if name in out:
                out[name] = (n, distinct)
    return out


def run_load(
    server: Server, tag: str, sessions: int, labels: int, think: float, seed: int, browsers: int = 0
) -> dict:
    """`sessions` annotators at once, `browsers` of them in Chromium (end to end), the rest over the protocol
    (at least one: the server-side numbers, the single-session baseline's included, come from those)."""
    browsers = min(browsers, sessions - 1)
    protocol = sessions - browsers
    barrier = threading.Barrier(protocol + (1 if browsers else 0))
    names = [f"bench-{tag}-{sessions}-{i}" for i in range(protocol)]
    threads = [
        Annotator(server.url, name, labels, think, seed * 1000 + i, barrier) for i, name in enumerate(names)
    ]
    chromium = (
        BrowserAnnotators(server.url, f"{tag}-{sessions}", browsers, labels, think, seed, barrier)
        if browsers
        else None
    )
    before = load()
    t0 = time.perf_counter()
    for t in [*threads, *([chromium] if chromium else [])]:
        t.start()
    for t in [*threads, *([chromium] if chromium else [])]:
        t.join()
    wall = time.perf_counter() - t0
    times = [x for t in threads for x in t.times_ms]
    errors = [f"{t.annotator}: {e}" for t in threads for e in t.errors]
    confirmed = {t.annotator: t.confirmed for t in threads}
    if chromium is not None:
        errors += chromium.errors
        confirmed.update(chromium.confirmed)
    counts = stored_labels(server.home / "labels.sqlite", list(confirmed))
    lost = sum(max(0, confirmed[n] - counts[n][0]) for n in confirmed)
    duplicated = sum(n_labels - distinct for n_labels, distinct in counts.values())
    e2e = chromium.times_ms if chromium is not None else []
    return {
        "sessions": sessions,
        "labels": labels,
        "labels_stored": sum(n for n, _ in counts.values()),
        "labels_confirmed": sum(confirmed.values()),
        "lost": lost,
        "duplicated": duplicated,
        "errors": len(errors),
        "error_samples": errors[:5],
        "p50_ms": round(statistics.median(times), 1) if times else None,
        "p95_ms": round(percentile(times, 95), 1) if times else None,
        "max_ms": round(max(times), 1) if times else None,
        "clicks_timed": len(times),
        "think_s": think,
        "browsers": browsers,
        "browser_p50_ms": round(statistics.median(e2e), 1) if e2e else None,
        "browser_p95_ms": round(percentile(e2e, 95), 1) if e2e else None,
        "browser_max_ms": round(max(e2e), 1) if e2e else None,
        "wall_s": round(wall, 1),
        "load": f"{before} -> {load()}",
    }


def describe(r: dict) -> str:
    e2e = (
        f"; in Chromium ({r['browsers']} of them, end to end) p50 {r['browser_p50_ms']} ms, "
        f"p95 {r['browser_p95_ms']} ms, max {r['browser_max_ms']} ms"
        if r.get("browsers")
        else ""
    )
    return (
        f"{r['sessions']:2d} sessions x {r['labels']} labels: click -> weights p50 {r['p50_ms']} ms, "
        f"p95 {r['p95_ms']} ms, max {r['max_ms']} ms{e2e}; stored {r['labels_stored']}/"
        f"{r['sessions'] * r['labels']}, lost {r['lost']}, duplicated {r['duplicated']}, errors {r['errors']} "
        f"({r['wall_s']} s; {r['load']})"
    )


def warm(server: Server) -> float:
    """Open the page once (the server computes what every session shares) and label one pair."""
    t = time.perf_counter()
    with StreamlitSession(server.url, page=PAGE, query={"annotator": "bench-warmup"}, timeout=300) as s:
        run = s.click("A is better")
        s.wait_finished(run)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--labels", type=int, default=10, help="labels per session")
    ap.add_argument("--think", type=float, default=1.0, help="mean seconds between a page and the next click")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--baseline", default=None, help="a git ref to run the same load against (e.g. main)")
    ap.add_argument(
        "--home", default=None, help="a workspace with the default model to copy (default: build)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--browsers",
        type=int,
        default=0,
        help="of each N sessions, this many in Chromium (end to end; the others over the protocol)",
    )
    args = ap.parse_args()
    if min(args.sessions) < 1 or args.labels < 1:
        ap.error("--sessions and --labels must be >= 1")
    ns = sorted(set(args.sessions) | {1})  # the single-session baseline always runs
    scratch = Path(tempfile.mkdtemp(prefix="bench-annotators-"))
    servers: dict[str, Server] = {}
    try:
        template = template_workspace(args.home, scratch)
        codes = {"this checkout": ROOT}
        if args.baseline:
            codes = {args.baseline: export_ref(args.baseline, scratch / "baseline-code"), **codes}
        for i, (name, root) in enumerate(codes.items()):
            home = copy_workspace(template, scratch / f"ws-{i}")
            servers[name] = Server(home, root=root, data_dir=ROOT / "data").start(timeout=180)
            print(
                f"{name}: server on {servers[name].url}, first page + label in {warm(servers[name]):.1f} s",
                flush=True,
            )
        print(f"think time {args.think} s (uniform x0.5-1.5); {load()}", flush=True)
        results: dict[str, list[dict]] = {name: [] for name in codes}
        for n in ns:
            for name, server in servers.items():
                r = run_load(
                    server, f"{len(results[name])}", n, args.labels, args.think, args.seed, args.browsers
                )
                r["code"] = name
                results[name].append(r)
                print(f"[{name}] {describe(r)}", flush=True)
                for e in r["error_samples"][:2]:
                    print(f"    {e}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    ours = results["this checkout"]
    top = dict(max(ours, key=lambda r: r["sessions"]))
    top["single_session"] = next(r for r in ours if r["sessions"] == 1)
    if args.baseline:
        theirs = results[args.baseline]
        top["baseline"] = {"ref": args.baseline, **max(theirs, key=lambda r: r["sessions"])}
        top["baseline_single_session"] = next(r for r in theirs if r["sessions"] == 1)
    top["runs"] = [r for rs in results.values() for r in rs]
    print("\nsummary (server side, click -> weights received):")
    for name, rs in results.items():
        for r in rs:
            print(f"  {name:14s} {describe(r)}")
    if args.json:
        Path(args.json).write_text(json.dumps(top, indent=2))
        print(f"wrote {args.json}")
    shutil.rmtree(scratch, ignore_errors=True)
    bad = any(r["errors"] or r["lost"] or r["duplicated"] for r in ours)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
