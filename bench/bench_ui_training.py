"""Training from the dashboard: an uploaded file of N pairs (default 200) embedded and trained in the
background, exactly as Data & training does it (`Workspace.train_in_background`: the embedding job, then
training, then the model in the workspace). Times: embedding, training, total; the held-out accuracy it
reports. Every run starts from an empty workspace and an empty embedding cache (what a new upload costs);
the backbone's exported ONNX graph, when the runtime uses one, is taken as already there (`--cold-onnx`:
exported in the run too, what the very first training on a machine costs).

``--baseline REF`` (e.g. ``main``) runs the same in that ref's code (``git archive``), in the same run.

    python bench/bench_ui_training.py --pairs 200 --baseline main
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DRIVER = r"""
import json, os, sys, time
from pathlib import Path
from moe_reward.app.workspace import Workspace
from moe_reward.app.pipeline import TrainRequest
from moe_reward.app import jobs

data, name = sys.argv[1], sys.argv[2]
ws = Workspace(os.environ["MOE_REWARD_HOME"])
t0 = time.perf_counter()
embedded_at = None
job = ws.train_in_background(name, TrainRequest(data=data, experts=4, top_k=2))
while job.active:
    if embedded_at is None and not str(job.message or "").startswith(("embedding", "reading")):
        if job.message:
            embedded_at = time.perf_counter() - t0
    jobs.wait(job.key, timeout=0.2)
total = time.perf_counter() - t0
if job.status != jobs.DONE:
    print(json.dumps({"error": str(job.error)}))
    sys.exit(1)
metrics = job.result
spec = json.loads((ws.model_path(name) / "config.json").read_text())["backbone"]
print(json.dumps({
    "total_s": round(total, 1),
    "embed_s": round(embedded_at or 0.0, 1),
    "train_s": round(metrics.get("train_seconds", 0.0), 1),
    "runtime": spec.get("runtime", "torch"),
    "test_accuracy": metrics["test"]["accuracy"],
    "test_pairs": metrics["test"]["n_pairs"],
}))
"""


def export_ref(ref: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def upload(pairs: int, into: Path, offset: int) -> Path:
    """N pairs of the controlled data (texts as they are; a fresh cache embeds every one) as an upload."""
    sys.path.insert(0, str(ROOT))
    from moe_reward.data.pairs import load_pairs, save_jsonl

    rows = load_pairs(ROOT / "data" / "controlled" / "pairs.jsonl.gz").pairs
    rows = [p for p in rows if p.user is None][offset : offset + pairs]
    path = into / f"upload-{pairs}.jsonl"
    save_jsonl(rows, path)
    return path


def run(code: Path, data: Path, scratch: Path, onnx_from: Path | None) -> dict:
    home, cache = scratch / "workspace", scratch / "cache"
    cache.mkdir(parents=True)
    if onnx_from is not None and (onnx_from / "onnx").is_dir():
        shutil.copytree(onnx_from / "onnx", cache / "onnx")
    env = {
        **os.environ,
        "MOE_REWARD_HOME": str(home),
        "MOE_REWARD_CACHE": str(cache),
        "PYTHONPATH": str(code),
    }
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(data), "bench-upload"],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:] or out.stdout[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--baseline", default=None, help="a git ref measured the same way (e.g. main)")
    ap.add_argument("--cold-onnx", action="store_true", help="export the ONNX graph within the run too")
    ap.add_argument(
        "--onnx-cache", default=None, help="a cache dir holding onnx/ (default: $MOE_REWARD_CACHE)"
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-ui-training-"))
    onnx = None
    if not args.cold_onnx:
        onnx = Path(
            args.onnx_cache or os.environ.get("MOE_REWARD_CACHE") or Path.home() / ".cache" / "moe_reward"
        )
    results = {}
    try:
        data = upload(args.pairs, scratch, offset=0)
        codes = (
            [(args.baseline, export_ref(args.baseline, scratch / "baseline-code"))] if args.baseline else []
        )
        codes.append(("this checkout", ROOT))
        for i, (name, code) in enumerate(codes):
            load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            r = run(code, data, scratch / f"run-{i}", onnx)
            r["load_before"] = load
            results[name] = r
            print(
                f"[{name}] {args.pairs} pairs uploaded -> model: {r['total_s']} s (embedding ~{r['embed_s']} s "
                f"with the {r['runtime']} runtime, training {r['train_s']} s); held-out accuracy "
                f"{r['test_accuracy']:.3f} on {r['test_pairs']} pairs (load average {load})",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
