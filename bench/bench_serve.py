"""Reward server under load against in-process scoring of the same items (issue 22).

The server (`moe-reward serve`, one worker, a subprocess) and the baseline (a `Scorer` in this process:
the same model, backbone and code path, no HTTP) score the same (prompt, response) items of the default
dataset with the default backbone; every round draws items neither has seen (prompts may repeat across
rounds, for both). Rounds alternate which side goes first, so a change of load on the shared machine hits
both alike.

- baseline: in-process batched scoring, `--batch` items per call;
- server: `--clients` concurrent clients (threads, keep-alive connections), each sending requests of 1-8
  items (seeded) one after the other; latency is per request, from send to parsed answer. Each client's
  first request is its warm-up: the clients start together on an idle server, so those first requests
  wait for one extra batch (the micro-batcher starts with the clients that arrived first); "steady"
  latencies leave them out, "all" keeps them (throughput counts every item);
- one batch: each answer's ``Server-Timing`` header gives the time of the micro-batch that scored it
  (embedding, routing and mixing, under the same load) and how long it waited for that batch; a
  request's *overhead* is its latency minus its batch's time (queueing, waiting for company, HTTP, JSON).
  The latency target, p95 <= 500 ms + the backbone time of one batch, is checked per request as p95
  overhead <= 500 ms. The mean batch time and the same number of items scored in process in one call
  are printed beside it;
- equality: the server's rewards against the baseline's for the same items (max |difference|).

Targets: server throughput >= 80% of the baseline's; p95 latency <= 500 ms + one batch (steady); no
failed request.

Run: python bench/bench_serve.py [--rounds 3 --requests 6 --clients 16] [--model DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]  # this checkout, whatever is installed


def default_model(root: Path) -> Path:
    """The dashboard's default model (controlled data, default backbone), built in a scratch workspace."""
    from moe_reward.app.workspace import Workspace

    t = time.perf_counter()
    out = Workspace(root).ensure_default()
    print(f"built the default model in {time.perf_counter() - t:.0f}s: {out}")
    return out


def item_pool(seed: int) -> list[dict]:
    from moe_reward.data.pairs import load_pairs

    pairs = load_pairs("controlled").pairs
    items = list(dict.fromkeys((p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)))
    random.Random(seed).shuffle(items)
    return [{"prompt": p, "response": r} for p, r in items]


class Client:
    def __init__(self, base: str):
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=300)

    def score(self, items: list[dict]) -> tuple[int, list[float] | None, float]:
        """(status, rewards, seconds of the batch that scored them, from the Server-Timing header)."""
        body = json.dumps({"items": items}).encode()
        try:
            self.conn.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return -1, None, float("nan")
        found = re.search(r"batch;dur=([0-9.]+)", resp.getheader("Server-Timing") or "")
        batch_s = float(found.group(1)) / 1000 if found else float("nan")
        return resp.status, (json.loads(data)["rewards"] if resp.status == 200 else None), batch_s


def server_round(base: str, requests: list[list[dict]], clients: int) -> dict:
    """`clients` threads send `requests` (client k takes every clients-th one), closed loop."""
    latencies: list[float] = [0.0] * len(requests)  # request j is client j % clients's (j // clients)-th
    batch_s: list[float] = [0.0] * len(requests)
    rewards: list[list[float] | None] = [None] * len(requests)
    failed = []

    def run(k: int) -> None:
        c = Client(base)
        for j in range(k, len(requests), clients):
            t = time.perf_counter()
            status, got, batch_s[j] = c.score(requests[j])
            latencies[j] = time.perf_counter() - t
            if status != 200:
                failed.append((j, status))
            rewards[j] = got

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {
        "seconds": time.perf_counter() - t0,
        "latencies": latencies,
        "batch_s": batch_s,
        "rewards": rewards,
        "failed": failed,
    }


def baseline_round(scorer, items: list[dict], batch: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    out: list[float] = []
    for s in range(0, len(items), batch):
        chunk = items[s : s + batch]
        out += scorer.rewards([i["prompt"] for i in chunk], [i["response"] for i in chunk])
    return time.perf_counter() - t0, out


def main() -> int:
    from serve_model import call, start_server, stop_server

    from moe_reward.serve.scorer import Scorer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default=None, help="a saved model (default: build the dashboard's default model)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=6, help="requests per client per round")
    ap.add_argument("--batch", type=int, default=64, help="items per in-process call (baseline)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    scratch = tempfile.TemporaryDirectory()
    model = Path(args.model) if args.model else default_model(Path(scratch.name) / "workspace")
    pool = item_pool(args.seed)
    rng = random.Random(args.seed)
    t = time.perf_counter()
    env = {"PYTHONPATH": str(ROOT)}
    proc, base = start_server(model, "--labels", str(Path(scratch.name) / "none.sqlite"), env=env)
    print(f"server up in {time.perf_counter() - t:.1f}s at {base}")
    t = time.perf_counter()
    scorer = Scorer(model, labels=Path(scratch.name) / "none.sqlite")
    print(f"in-process scorer loaded in {time.perf_counter() - t:.1f}s")
    try:
        # Warm both (first-call costs: thread pools, lazy imports), on items not used below.
        warm, pool = pool[:16], pool[16:]
        Client(base).score(warm)
        scorer.rewards([i["prompt"] for i in warm], [i["response"] for i in warm])

        rows = []
        for r in range(args.rounds):
            sizes = [rng.randint(1, 8) for _ in range(args.clients * args.requests)]
            items, pool = pool[: sum(sizes)], pool[sum(sizes) :]
            cuts = np.cumsum([0, *sizes])
            requests = [items[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
            one_batch = items[: round(args.clients * statistics.mean(sizes))]
            first_server = r % 2 == 1
            _, stats0 = call(base, "/stats")
            if first_server:
                srv = server_round(base, requests, args.clients)
            base_s, base_rewards = baseline_round(scorer, items, args.batch)
            if not first_server:
                srv = server_round(base, requests, args.clients)
            _, stats1 = call(base, "/stats")
            # one batch of what the clients have in flight, scored in process (fresh items: no cache hits)
            fresh, pool = pool[: len(one_batch)], pool[len(one_batch) :]
            batch_s, _ = baseline_round(scorer, fresh, len(fresh))
            got = [x for rw in srv["rewards"] if rw is not None for x in rw]
            ok = [j for j, rw in enumerate(srv["rewards"]) if rw is not None]
            want = [base_rewards[k] for j in ok for k in range(cuts[j], cuts[j + 1])]
            diff = float(np.max(np.abs(np.subtract(got, want)))) if got else float("nan")
            lat = np.array(srv["latencies"])
            over = lat - np.array(srv["batch_s"])  # overhead beyond the batch that scored the request
            steady = lat[args.clients :]  # each client's first request (its warm-up) left out
            batches = stats1["batches"] - stats0["batches"]
            row = {
                "items": len(items),
                "requests": len(requests),
                "baseline_items_s": len(items) / base_s,
                "server_items_s": len(items) / srv["seconds"],
                "p50": float(np.percentile(steady, 50)),
                "p95": float(np.percentile(steady, 95)),
                "max": float(steady.max()),
                "p95_all": float(np.percentile(lat, 95)),
                "max_all": float(lat.max()),
                "over_p50": float(np.percentile(over[args.clients :], 50)),
                "over_p95": float(np.percentile(over[args.clients :], 95)),
                "over_max": float(over[args.clients :].max()),
                "over_p95_all": float(np.percentile(over, 95)),
                "batch_p95": float(np.percentile(np.array(srv["batch_s"])[args.clients :], 95)),
                "one_batch_items": len(fresh),
                "one_batch_s": batch_s,
                "server_batches": batches,
                "server_mean_batch_items": (stats1["items"] - stats0["items"]) / max(batches, 1),
                "server_mean_batch_s": (
                    stats1["mean_batch_seconds"] * stats1["batches"]
                    - stats0["mean_batch_seconds"] * stats0["batches"]
                )
                / max(batches, 1),
                "failed": len(srv["failed"]),
                "max_abs_diff": diff,
            }
            rows.append(row)
            print(
                f"round {r + 1} ({'server' if first_server else 'baseline'} first): {row['items']} items in "
                f"{row['requests']} requests | baseline {row['baseline_items_s']:.1f} items/s, server "
                f"{row['server_items_s']:.1f} items/s ({row['server_items_s'] / row['baseline_items_s']:.0%}) | "
                f"steady latency p50 {row['p50']:.2f}s p95 {row['p95']:.2f}s max {row['max']:.2f}s (all: p95 "
                f"{row['p95_all']:.2f}s max {row['max_all']:.2f}s); overhead beyond its batch p50 "
                f"{row['over_p50']:.2f}s p95 {row['over_p95']:.2f}s max {row['over_max']:.2f}s (all: p95 "
                f"{row['over_p95_all']:.2f}s) | server batches {batches}, "
                f"{row['server_mean_batch_items']:.1f} items, {row['server_mean_batch_s']:.2f}s each; in process "
                f"{row['one_batch_items']} items in one call {row['one_batch_s']:.2f}s | failed "
                f"{row['failed']} | max |server - in-process| {diff:.2e}"
            )

        # A lone request on an idle server against the same item in process (the batcher's wait included).
        lone_srv, lone_in = [], []
        c = Client(base)
        for it in pool[:20]:
            t = time.perf_counter()
            c.score([it])
            lone_srv.append(time.perf_counter() - t)
        for it in pool[20:40]:
            t = time.perf_counter()
            scorer.rewards([it["prompt"]], [it["response"]])
            lone_in.append(time.perf_counter() - t)
        alive = call(base, "/health")[0] == 200
    finally:
        stop_server(proc)
        scratch.cleanup()

    n = sum(r["items"] for r in rows)
    base_tp = n / sum(r["items"] / r["baseline_items_s"] for r in rows)
    srv_tp = n / sum(r["items"] / r["server_items_s"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    diff = max(r["max_abs_diff"] for r in rows)
    print()
    print(
        f"over {args.rounds} rounds, {n} items, {args.clients} concurrent clients sending 1-8 items per request:"
    )
    print(
        f"  throughput: server {srv_tp:.2f} items/s vs in-process batched ({args.batch} per call) {base_tp:.2f} "
        f"items/s = {srv_tp / base_tp:.0%} (target >= 80%; per round: "
        + ", ".join(f"{r['server_items_s'] / r['baseline_items_s']:.0%}" for r in rows)
        + ")"
    )
    print(
        f"  latency (steady): p95 {max(r['p95'] for r in rows):.2f}s in the worst round, of which the batch that "
        f"scored the request (p95 {max(r['batch_p95'] for r in rows):.2f}s; mean batch "
        f"{statistics.mean(r['server_mean_batch_s'] for r in rows):.2f}s for "
        f"{statistics.mean(r['server_mean_batch_items'] for r in rows):.0f} items); overhead beyond it p95 "
        f"{max(r['over_p95'] for r in rows):.3f}s (target <= 0.5s); with each client's first request "
        f"(warm-up) p95 {max(r['over_p95_all'] for r in rows):.3f}s"
    )
    print(f"  failed requests: {failed} (target 0); server alive after the load: {alive}")
    print(f"  rewards: max |server - in-process| = {diff:.2e} (target <= 1e-5)")
    print(
        f"  a lone request, idle server: median {1000 * statistics.median(lone_srv):.0f} ms vs "
        f"{1000 * statistics.median(lone_in):.0f} ms in process"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
