"""Reward server under concurrent load against in-process scoring of the same items (issue 22).

The server (`moe-reward serve`, one worker, a subprocess) and the baseline (a `Scorer` in this process:
the same model, backbone and code path, no HTTP) score the same (prompt, response) items of the default
dataset with the default backbone (the dashboard's default model unless `--model` is given).

The run is a series of cycles; in each, `--clients` concurrent clients (threads with keep-alive
connections) each send one request of 1-8 items (seeded) at the same moment and wait for the answer,
then the baseline scores the same items in process in one call (one batch: the backbone time of one
batch in the latency target). The order alternates from cycle to cycle and every cycle draws new items,
so a change of load on the shared machine hits both sides alike. A first cycle warms both up and is not
counted.

- throughput: items / time, summed over the cycles (server: from the clients' common start to the last
  answer);
- latency: per request, from send to parsed answer; each answer's ``Server-Timing`` header gives the
  time of the micro-batch that scored it and how long it waited for that batch; its *overhead* is the
  latency minus the batch's time (waiting for company, queueing, HTTP, JSON);
- equality: the server's rewards against the baseline's for the same items (max |difference|).

Targets: server throughput >= 80% of the baseline's; p95 latency <= 500 ms + the backbone time of one
batch; no failed request.

Run: python bench/bench_serve.py [--cycles 8 --clients 16] [--model DIR]
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
        self.conn = http.client.HTTPConnection(host, int(port), timeout=600)

    def _post(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
        self.conn.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        return resp, resp.read()

    def score(self, items: list[dict]) -> tuple[int, list[float] | None, float]:
        """(status, rewards, seconds of the batch that scored them, from the Server-Timing header)."""
        body = json.dumps({"items": items}).encode()
        try:
            try:
                resp, data = self._post(body)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()  # the server closed the idle keep-alive connection: reconnect, as clients do
                resp, data = self._post(body)
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return -1, None, float("nan")
        found = re.search(r"batch;dur=([0-9.]+)", resp.getheader("Server-Timing") or "")
        batch_s = float(found.group(1)) / 1000 if found else float("nan")
        return resp.status, (json.loads(data)["rewards"] if resp.status == 200 else None), batch_s


def server_cycle(clients: list[Client], requests: list[list[dict]]) -> dict:
    """Every client sends its request at the same moment (a barrier) and waits for the answer."""
    n = len(requests)
    out = {"latency": [0.0] * n, "batch_s": [0.0] * n, "rewards": [None] * n, "status": [0] * n}
    started: list[float] = []
    barrier = threading.Barrier(n, action=lambda: started.append(time.perf_counter()))

    def run(k: int) -> None:
        barrier.wait()
        t = time.perf_counter()
        out["status"][k], out["rewards"][k], out["batch_s"][k] = clients[k].score(requests[k])
        out["latency"][k] = time.perf_counter() - t

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out["seconds"] = time.perf_counter() - started[0]
    return out


def main() -> int:
    from serve_model import call, start_server, stop_server

    from moe_reward.serve.scorer import Scorer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default=None, help="a saved model (default: build the dashboard's default model)"
    )
    ap.add_argument("--cycles", type=int, default=8, help="measured cycles (after one warm-up cycle)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", type=int, default=40, help="items also scored one by one as `score` does")
    args = ap.parse_args()

    scratch = tempfile.TemporaryDirectory()
    model = Path(args.model) if args.model else default_model(Path(scratch.name) / "workspace")
    pool = item_pool(args.seed)
    rng = random.Random(args.seed)
    labels = str(Path(scratch.name) / "none.sqlite")
    t = time.perf_counter()
    proc, base = start_server(model, "--labels", labels, env={"PYTHONPATH": str(ROOT)})
    print(f"server up in {time.perf_counter() - t:.1f}s at {base}")
    t = time.perf_counter()
    scorer = Scorer(model, labels=labels)
    print(f"in-process scorer loaded in {time.perf_counter() - t:.1f}s")
    clients = [Client(base) for _ in range(args.clients)]
    rows = []
    checked: list[tuple[str, str, float]] = []  # (prompt, response, the server's reward)
    try:
        for c in range(args.cycles + 1):
            sizes = [rng.randint(1, 8) for _ in range(args.clients)]
            items, pool = pool[: sum(sizes)], pool[sum(sizes) :]
            cuts = np.cumsum([0, *sizes])
            requests = [items[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
            prompts, responses = [i["prompt"] for i in items], [i["response"] for i in items]
            server_first = c % 2 == 1
            _, stats0 = call(base, "/stats")
            if server_first:
                srv = server_cycle(clients, requests)
            t = time.perf_counter()
            want = scorer.rewards(prompts, responses)
            base_s = time.perf_counter() - t
            if not server_first:
                srv = server_cycle(clients, requests)
            _, stats1 = call(base, "/stats")
            got = [
                (x, want[cuts[k] + j])
                for k, rw in enumerate(srv["rewards"])
                if rw is not None
                for j, x in enumerate(rw)
            ]
            lat, batch = np.array(srv["latency"]), np.array(srv["batch_s"])
            row = {
                "items": len(items),
                "baseline_s": base_s,
                "server_s": srv["seconds"],
                "latency": lat,
                "batch_s": batch,
                "overhead": lat - batch,
                "batches": stats1["batches"] - stats0["batches"],
                "failed": sum(s != 200 for s in srv["status"]),
                "diff": max((abs(a - b) for a, b in got), default=float("nan")),
            }
            print(
                f"cycle {c}{' (warm-up, not counted)' if c == 0 else ''} ({'server' if server_first else 'baseline'} "
                f"first): {row['items']} items in {args.clients} requests | in process {base_s:.2f}s, server "
                f"{srv['seconds']:.2f}s ({base_s / srv['seconds']:.0%}) in {row['batches']} batch(es) | latency "
                f"p50 {np.percentile(lat, 50):.2f}s max {lat.max():.2f}s, overhead beyond its batch max "
                f"{row['overhead'].max():.3f}s | failed {row['failed']} | max |diff| {row['diff']:.1e}"
            )
            if c:
                rows.append(row)
                checked += [
                    (it["prompt"], it["response"], x)
                    for k, rw in enumerate(srv["rewards"])
                    if rw is not None
                    for it, x in zip(requests[k], rw, strict=True)
                ][:8]
        # Equality with `moe-reward score` (score_texts, one prompt's responses per call: other batches
        # than the server's) on items the server scored in the cycles.
        from moe_reward.app.pipeline import score_texts

        cli_diff = 0.0
        for prompt, response, reward in checked[: args.check]:
            (s,) = score_texts(scorer.model, scorer.backbone, prompt, [response], cache_dir=None)
            cli_diff = max(cli_diff, abs(s.reward - reward))
        # A lone request on an idle server against the same work in process (the batcher's wait included).
        time.sleep(2)
        lone_srv, lone_in = [], []
        for it in pool[:10]:
            t = time.perf_counter()
            clients[0].score([it])
            lone_srv.append(time.perf_counter() - t)
            time.sleep(0.5)
        for it in pool[10:20]:
            t = time.perf_counter()
            scorer.rewards([it["prompt"]], [it["response"]])
            lone_in.append(time.perf_counter() - t)
        alive = call(base, "/health")[0] == 200
    finally:
        stop_server(proc)
        scratch.cleanup()

    n = sum(r["items"] for r in rows)
    base_tp, srv_tp = n / sum(r["baseline_s"] for r in rows), n / sum(r["server_s"] for r in rows)
    lat = np.concatenate([r["latency"] for r in rows])
    over = np.concatenate([r["overhead"] for r in rows])
    one_batch = np.array([r["baseline_s"] for r in rows])
    # per request: latency against 0.5 s + the in-process time of its cycle's items in one call
    bound = np.concatenate([np.full(len(r["latency"]), 0.5 + r["baseline_s"]) for r in rows])
    print()
    print(
        f"{args.cycles} cycles, {n} items, {args.clients} concurrent clients sending 1-8 items per request "
        "(2 shared CPU cores unless said otherwise):"
    )
    print(
        f"  throughput: server {srv_tp:.2f} items/s vs in-process batched (one call per cycle) {base_tp:.2f} "
        f"items/s = {srv_tp / base_tp:.0%} (target >= 80%; per cycle "
        + ", ".join(f"{r['baseline_s'] / r['server_s']:.0%}" for r in rows)
        + ")"
    )
    print(
        f"  latency: p50 {np.percentile(lat, 50):.2f}s, p95 {np.percentile(lat, 95):.2f}s, max {lat.max():.2f}s; "
        f"one batch in process (the cycle's {statistics.mean(r['items'] for r in rows):.0f} items on average in "
        f"one call) {np.median(one_batch):.2f}s median, {one_batch.min():.2f}-{one_batch.max():.2f}s"
    )
    print(
        f"  latency - (0.5s + one batch in process), per request: p95 {np.percentile(lat - bound, 95):+.2f}s "
        f"(target <= 0); overhead beyond the server batch that scored it: p50 {np.percentile(over, 50):.3f}s, "
        f"p95 {np.percentile(over, 95):.3f}s, max {over.max():.3f}s; batches per cycle "
        + ", ".join(str(r["batches"]) for r in rows)
    )
    print(
        f"  failed requests: {sum(r['failed'] for r in rows)} (target 0); server alive after the load: {alive}"
    )
    print(
        f"  rewards: max |server - in-process| = {max(r['diff'] for r in rows):.2e} on all {n} items (same "
        f"batches); against `moe-reward score` (score_texts, one item per call) {cli_diff:.2e} on "
        f"{min(len(checked), args.check)} items (target <= 1e-5)"
    )
    print(
        f"  a lone request, idle server: median {1000 * statistics.median(lone_srv):.0f} ms vs "
        f"{1000 * statistics.median(lone_in):.0f} ms in process"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
