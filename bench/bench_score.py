"""`moe-reward score` cold: a new process scores one prompt and two responses with the default model.

Each run is a fresh `python -m moe_reward.cli score` (imports, model, backbone, embedding, routing); the
texts change every run so nothing comes from the embedding cache. Printed per code: wall seconds (median,
max) and the process's CPU seconds (user + system: on a machine busy with other work, closer to what a quiet
machine's wall time would be). The default model of this checkout is the shipped one
(data/controlled/default-model/, int8 runtime); a ref without one (``--baseline main``) scores the model
`--baseline-model` (its own default model, e.g. ``workspace/models/default-sparse`` after its
`moe-reward build-default`). The ONNX graph is taken as exported; ``--cold-onnx`` also times the very first
score on a machine (export included) once.

    python bench/bench_score.py --runs 5 --baseline main --baseline-model /path/to/main/default-sparse
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def export_ref(ref: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def score_once(code: Path, model: Path, i: int, env: dict) -> tuple[float, float]:
    """(wall s, CPU s) of one `score` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe_reward.cli",
            "score",
            "--model",
            str(model),
            "--prompt",
            f"Answer briefly: why is the sky blue? (run {i}, {time.time_ns()})",
            "--response",
            f"Rayleigh scattering (run {i}).",
            "--response",
            f"Sunlight is made of many colours, and the air scatters blue light the most (run {i}).",
        ],
        cwd=code,
        env={**env, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-1500:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default=str(ROOT / "data" / "controlled" / "default-model"))
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--baseline-model", default=None, help="the model the baseline scores")
    ap.add_argument("--cold-onnx", action="store_true", help="also time one score with an empty ONNX cache")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-score-"))
    codes = [("this checkout", ROOT, Path(args.model))]
    if args.baseline:
        if not args.baseline_model:
            ap.error("--baseline needs --baseline-model (the baseline's default model directory)")
        codes.insert(
            0, (args.baseline, export_ref(args.baseline, scratch / "baseline"), Path(args.baseline_model))
        )
    env = dict(os.environ)
    results: dict[str, dict] = {}
    try:
        for _name, code, model in codes:
            score_once(
                code, model, -1, env
            )  # the embedding cache's folder, the ONNX graph: there from now on
        for i in range(args.runs):  # interleaved: both codes see the same machine
            for name, code, model in codes:
                wall, cpu = score_once(code, model, i, env)
                results.setdefault(name, {"wall": [], "cpu": []})
                results[name]["wall"].append(wall)
                results[name]["cpu"].append(cpu)
        if args.cold_onnx:
            cold_env = {**env, "MOE_REWARD_CACHE": str(scratch / "empty-cache")}
            wall, cpu = score_once(ROOT, Path(args.model), 0, cold_env)
            results["this checkout"]["first_ever_wall"] = wall
            results["this checkout"]["first_ever_cpu"] = cpu
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = {}
    for name, r in results.items():
        summary[name] = {
            "wall_median_s": round(statistics.median(r["wall"]), 2),
            "wall_max_s": round(max(r["wall"]), 2),
            "cpu_median_s": round(statistics.median(r["cpu"]), 2),
            "runs": len(r["wall"]),
            **({"first_ever_wall_s": round(r["first_ever_wall"], 1)} if "first_ever_wall" in r else {}),
        }
        s = summary[name]
        print(
            f"[{name}] score cold: wall median {s['wall_median_s']} s (max {s['wall_max_s']} s), "
            f"CPU median {s['cpu_median_s']} s over {s['runs']} runs"
            + (
                f"; first score ever (ONNX export included) {s['first_ever_wall_s']} s"
                if "first_ever_wall_s" in s
                else ""
            )
            + f" (load average now {load})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
