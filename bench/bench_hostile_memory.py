"""Peak memory of `moe-reward validate` on a 200 MB JSONL file and of `moe-reward train` on data with one
20 MB text (issue 8, item 11).

Targets: validate < 300 MB peak; train < 1 GB peak (one 20 MB response; also measured with the 20 MB text
as the prompt). The big files are generated in a temporary directory and deleted afterwards; each command
runs in a fresh process, its peak resident memory read from the kernel (``ru_maxrss``).

``--baseline REF`` also runs every command on the code of a git ref (e.g. ``main``), exported with
``git archive`` into the temporary directory, in the same run.
Run: python bench/bench_hostile_memory.py [--mb 200] [--text-mb 20] [--baseline main]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs a command in a child and prints the child's peak RSS (MB) and wall time: a fresh process per
# measurement, so that one peak never hides another.
PEAK = """
import resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(rc, round(peak, 1), round(time.perf_counter() - t0, 1))
"""

WORDS = (
    "the model prefers answers that are short clear and kind while others want detail steps examples "
    "and a warm tone so the router must read the cue in each prompt before it picks an expert"
).split()


def text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def write_big_jsonl(path: Path, megabytes: int, seed: int = 0) -> int:
    """Rows of ~2 KB (prompt, chosen, rejected, group, user, id) until the file reaches `megabytes`."""
    rng = random.Random(seed)
    pool = [text(rng, 150) for _ in range(200)]
    target, size, n = megabytes * 1024 * 1024, 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while size < target:
            row = {
                "prompt": f"Question {n}: " + pool[n % 200][:300],
                "chosen": pool[(n * 7) % 200],
                "rejected": pool[(n * 13 + 1) % 200],
                "group": f"g{n % 8}",
                "user": f"u{n % 50}",
                "id": f"r{n}",
            }
            line = json.dumps(row) + "\n"
            fh.write(line)
            size += len(line)
            n += 1
    return n


def write_long_text_data(path: Path, text_mb: int, where: str, seed: int = 0) -> None:
    """40 ordinary pairs over 20 prompts, plus one pair whose response (or prompt) is `text_mb` MB of words."""
    rng = random.Random(seed)
    rows = []
    for i in range(40):
        q = f"Question {i % 20}: {text(rng, 12)}"
        rows.append({"prompt": q, "chosen": text(rng, 30), "rejected": text(rng, 8), "id": f"p{i}"})
    long = " ".join(WORDS[i % len(WORDS)] for i in range(text_mb * 1024 * 1024 // 6))
    big = {"prompt": "Tell me everything.", "chosen": long, "rejected": "No.", "id": "long"}
    if where == "prompt":
        big = {"prompt": long, "chosen": "A long answer.", "rejected": "No.", "id": "long"}
    rows.append(big)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def measure(code: Path, args: list[str], env: dict) -> tuple[int, float, float]:
    out = subprocess.run(
        [sys.executable, "-c", PEAK, sys.executable, "-m", "moe_reward.cli", *args],
        cwd=code,
        env={**env, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        check=True,
    )
    rc, peak, seconds = out.stdout.split()
    return int(rc), float(peak), float(seconds)


def export(ref: str, tmp: Path) -> Path:
    dest = tmp / f"code-{ref.replace('/', '_')}"
    dest.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="size of the JSONL that validate reads")
    ap.add_argument("--text-mb", type=int, default=20, help="size of the one long text that train embeds")
    ap.add_argument("--baseline", default=None, help="also measure the code of this git ref (e.g. main)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp_name:
        tmp = Path(tmp_name)
        codes = {"this checkout": ROOT}
        if args.baseline:
            codes[f"baseline {args.baseline}"] = export(args.baseline, tmp)
        env = {
            **os.environ,
            "MOE_REWARD_CACHE": str(tmp / "cache"),
            "MOE_REWARD_HOME": str(tmp / "home"),
            "TOKENIZERS_PARALLELISM": "false",
        }
        t0 = time.perf_counter()
        big = tmp / "big.jsonl"
        rows = write_big_jsonl(big, args.mb)
        print(f"wrote {big.stat().st_size / 2**20:.0f} MB ({rows} rows) in {time.perf_counter() - t0:.0f}s")
        jobs = [("validate", f"validate {args.mb} MB JSONL", ["validate", "--data", str(big)], 300)]
        for where in ("response", "prompt"):
            data = tmp / f"long-{where}.jsonl"
            write_long_text_data(data, args.text_mb, where)
            jobs.append(
                (
                    f"train-{where}",
                    f"train with one {args.text_mb} MB {where}",
                    [
                        "train",
                        "--data",
                        str(data),
                        "--model",
                        "sparse",
                        "--experts",
                        "4",
                        "--epochs",
                        "2",
                        "--out",
                        str(tmp / f"run-{where}"),
                    ],
                    1024,
                )
            )
        for _, title, argv, target in jobs:
            for label, code in codes.items():
                shutil.rmtree(tmp / "cache", ignore_errors=True)  # every run embeds from scratch
                rc, peak, seconds = measure(code, argv, env)
                verdict = "meets" if peak < target and rc == 0 else "MISSES"
                print(
                    f"{title:34s} {label:18s} peak {peak:7.0f} MB  ({seconds:5.1f}s, exit {rc})  "
                    f"target < {target} MB: {verdict}"
                )


if __name__ == "__main__":
    main()
