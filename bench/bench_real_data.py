"""Real-data benchmark: public preference sets with groups, every model kind, several seeds.

Builds up to six public preference sets with a `group` field from snapshots you fetch yourself (a
checkout or a bare git directory; nothing is downloaded here and no data is committed), converts each
to the project's JSONL (`prompt`, `chosen`, `rejected`, `group`, `id`, optionally `user`), embeds it once
(`moe-reward embed`, default backbone) and then for each set, kind and seed runs the CLI with its defaults:

    moe-reward embed --data SET.jsonl --out SET.safetensors          (once per set)
    moe-reward train --data SET.safetensors --model KIND --split-seed S --seed S --out RUN
    moe-reward eval  --model RUN --data SET.safetensors --split test --json RUN/eval.json

(`--from-jsonl` trains from the JSONL itself: same features through the embedding cache, ~5 s slower a run.)

and prints one table per set and a summary: test accuracy mean ± sd over seeds, routing NMI with its
permutation null (group labels shuffled over the test pairs' top-1 experts, from `group_expert_counts`)
and how many seeds beat it at p < 0.05.

Sources (each optional; a set whose path is not given, or whose files did not arrive, is skipped with
a line saying so):

  --hh PATH           anthropics/hh-rlhf: group = subset (helpful-base, harmless-base, helpful-online,
                      helpful-rejection-sampled), from each subset's test file (train file if no test)
  --autoj PATH        GAIR-NLP/auto-j data/test/testdata_pairwise.jsonl: human-labelled pairs, group =
                      the paper's scenario group (8), scenario in meta; ties dropped
  --llmbar PATH       princeton-nlp/LLMBar Dataset/LLMBar/* and Dataset/Processed/*: group = subset
                      (Natural, Neighbor, GPTInst, GPTOut, Manual, FairEval, LLMEval^2, MT-Bench)
  --qa-feedback PATH  allenai/FineGrainedRLHF tasks/qa_feedback/data/dev_feedback.json (+ train_feedback.json
                      if present): group = feedback type: `preference` (annotators' pairwise preferences
                      among 4 sampled answers) or `correction` (annotator-corrected answer over the original)
  --pandalm PATH      WeOpenML/PandaLM data/testset-v1.json: every comparison labelled by 3 annotators, one
                      pair per (comparison, annotator), group = user = annotator; ties dropped
  --alpacaeval PATH   tatsu-lab/alpaca_eval results/*/weighted_alpaca_eval_gpt4_turbo/annotations.json:
                      GPT-4-turbo judged pairs (model vs reference), group = the instruction's source
                      (helpful_base, koala, oasst, selfinstruct, vicuna)

Each set is capped at --cap pairs (3,000) by a deterministic per-group sample (every group gets an
equal share; a group with fewer pairs gives its remainder to the others).

    python bench/bench_real_data.py --autoj /work/.mirror/GAIR-NLP+auto-j/repo --llmbar ... \
        --work /work/realdata --json results.json --markdown results.md

Runs are sequential (one CLI process at a time). A failed run is recorded with its error, never hidden.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
KINDS = ("sparse", "dense", "single", "drm")
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
DROPPED: Counter = Counter()  # per set: source rows not turned into a pair (empty or identical responses)


# ----------------------------------------------------------------------------- reading a snapshot


class Snapshot:
    """A fetched repository: a bare git directory (read with `git cat-file`) or a plain checkout."""

    def __init__(self, path: str | Path, upstream: str):
        self.path = Path(path).expanduser().resolve()
        self.upstream = upstream
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such snapshot")
        self.bare = (self.path / "HEAD").is_file() and (self.path / "objects").is_dir()
        git_dir = self.path if self.bare else (self.path / ".git")
        self.commit = "unknown (not a git directory)"
        if git_dir.exists():
            out = subprocess.run(
                ["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], capture_output=True, text=True
            )
            if out.returncode == 0:
                self.commit = out.stdout.strip()
        self.used: list[str] = []  # files read, for the record
        self.missing: list[str] = []  # files wanted but absent or not real content (LFS pointer, too large)

    def list(self, prefix: str = "") -> list[str]:
        if self.bare:
            out = subprocess.run(
                [
                    "git",
                    f"--git-dir={self.path}",
                    "ls-tree",
                    "-r",
                    "--name-only",
                    "HEAD",
                    "--",
                    prefix or ".",
                ],
                capture_output=True,
                text=True,
            )
            return sorted(out.stdout.split("\n")[:-1]) if out.returncode == 0 else []
        base = self.path / prefix if prefix else self.path
        if base.is_file():
            return [prefix]
        return sorted(
            str(p.relative_to(self.path)) for p in base.rglob("*") if p.is_file() and ".git" not in p.parts
        )

    def read(self, rel: str) -> bytes | None:
        """A file's bytes, or None (recorded as missing) when it is absent, unreadable or a Git LFS pointer."""
        data = None
        if self.bare:
            out = subprocess.run(
                ["git", f"--git-dir={self.path}", "cat-file", "blob", f"HEAD:{rel}"], capture_output=True
            )
            data = out.stdout if out.returncode == 0 else None
        elif (self.path / rel).is_file():
            data = (self.path / rel).read_bytes()
        if data is None or data.startswith(LFS_POINTER):
            self.missing.append(rel + (" (Git LFS pointer)" if data else " (absent)"))
            return None
        if rel.endswith(".gz"):
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                self.missing.append(f"{rel} (bad gzip: {exc})")
                return None
        self.used.append(rel)
        return data

    def record(self) -> dict:
        return {
            "repo": self.upstream,
            "path": str(self.path),
            "commit": self.commit,
            "files": self.used,
            "missing": self.missing,
        }


def _jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def _pair(rows: list, pid: str, prompt, a, b, group: str, user: str | None = None, **meta) -> bool:
    """Append one pair (a preferred over b) when both sides are non-empty distinct strings."""
    if (
        not all(isinstance(x, str) for x in (prompt, a, b))
        or not prompt.strip()
        or not a.strip()
        or not b.strip()
        or a.strip() == b.strip()
    ):
        DROPPED[pid.split("-")[0]] += 1
        return False
    row = {"id": pid, "prompt": prompt, "chosen": a, "rejected": b, "group": group}
    if user is not None:
        row["user"] = user
    if meta:
        row["meta"] = meta
    rows.append(row)
    return True


# ----------------------------------------------------------------------------- converters (one per source)


def build_hh(snap: Snapshot, notes: list[str]) -> list[dict]:
    rows: list[dict] = []
    tag = "\n\nAssistant:"
    for subset in ("helpful-base", "harmless-base", "helpful-online", "helpful-rejection-sampled"):
        data = None
        for split in ("test", "train"):
            data = snap.read(f"{subset}/{split}.jsonl.gz")
            if data is not None:
                break
        if data is None:
            continue
        bad = 0
        for i, r in enumerate(_jsonl(data)):
            chosen, rejected = r.get("chosen", ""), r.get("rejected", "")
            cut = chosen.rfind(tag)
            prompt = chosen[: cut + len(tag)] if cut >= 0 else ""
            if not prompt or not rejected.startswith(prompt):
                bad += 1
                continue
            _pair(
                rows,
                f"hh-{subset}-{split}-{i}",
                prompt,
                chosen[len(prompt) :],
                rejected[len(prompt) :],
                subset,
            )
        if bad:
            notes.append(
                f"{subset}/{split}: {bad} rows skipped (the two dialogues differ before the last "
                "assistant turn)"
            )
    return rows


def build_autoj(snap: Snapshot, notes: list[str]) -> list[dict]:
    data = snap.read("data/test/testdata_pairwise.jsonl")
    if data is None:
        return []
    groups: dict[str, str] = {}
    consts = snap.read("codes/leaderboard/utils_constants.py")  # the paper's scenario -> group table
    if consts is not None:
        for node in ast.parse(consts.decode("utf-8")).body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", "") == "scenario_group" for t in node.targets
            ):
                for g, scenarios in ast.literal_eval(node.value).items():
                    groups.update({s: g for s in scenarios})
    if not groups:
        notes.append("scenario -> group table not found: group = scenario")
    rows: list[dict] = []
    ties = 0
    for i, r in enumerate(_jsonl(data)):
        label = int(r["label"])
        if label == 2:
            ties += 1
            continue
        a, b = (r["response 1"], r["response 2"]) if label == 0 else (r["response 2"], r["response 1"])
        _pair(
            rows,
            f"autoj-{i}",
            r["prompt"],
            a,
            b,
            groups.get(r["scenario"], r["scenario"]),
            scenario=r["scenario"],
        )
    notes.append(f"{ties} tie rows dropped")
    return rows


LLMBAR_SUBSETS = {
    "Dataset/LLMBar/Natural": "Natural",
    "Dataset/LLMBar/Adversarial/Neighbor": "Neighbor",
    "Dataset/LLMBar/Adversarial/GPTInst": "GPTInst",
    "Dataset/LLMBar/Adversarial/GPTOut": "GPTOut",
    "Dataset/LLMBar/Adversarial/Manual": "Manual",
    "Dataset/Processed/FairEval": "FairEval",
    "Dataset/Processed/LLMEval^2": "LLMEval^2",
    "Dataset/Processed/MT-Bench": "MT-Bench",
}


def build_llmbar(snap: Snapshot, notes: list[str]) -> list[dict]:
    rows: list[dict] = []
    for folder, group in LLMBAR_SUBSETS.items():
        data = snap.read(f"{folder}/dataset.json")
        if data is None:
            continue
        for i, r in enumerate(json.loads(data)):
            a, b = (r["output_1"], r["output_2"]) if int(r["label"]) == 1 else (r["output_2"], r["output_1"])
            _pair(rows, f"llmbar-{group}-{i}", r["input"], a, b, group)
    return rows


def _qa_prompt(r: dict) -> str:
    # The question goes last: a prompt too long for the backbone is cut from its start.
    passages = "\n".join(f"{p[0]}: {' '.join(p[1:])}" for p in r.get("passages", []))
    return f"Passages:\n{passages}\n\nQuestion: {r['question']}"


def build_qa_feedback(snap: Snapshot, notes: list[str]) -> list[dict]:
    rows: list[dict] = []
    for name in ("dev_feedback.json", "train_feedback.json"):
        data = snap.read(f"tasks/qa_feedback/data/{name}")
        if data is None:
            continue
        split = name.split("_")[0]
        no_pref = 0
        for i, r in enumerate(json.loads(data)):
            prompt = _qa_prompt(r)
            pref = r["preference"]
            pref = ast.literal_eval(pref) if isinstance(pref, str) else pref
            comparisons = [(a, b) for a in range(1, 5) for b in range(a + 1, 5)]  # 1v2 1v3 1v4 2v3 2v4 3v4
            for (a, b), v in zip(comparisons, pref, strict=True):
                if int(v) == 0:
                    no_pref += 1
                    continue
                win, lose = (a, b) if int(v) == 1 else (b, a)
                _pair(
                    rows,
                    f"qa-{split}-{i}-p{a}{b}",
                    prompt,
                    r[f"prediction {win}"],
                    r[f"prediction {lose}"],
                    "preference",
                    question=r["question"],
                )
            fb = r.get("feedback") or {}
            _pair(
                rows,
                f"qa-{split}-{i}-c",
                prompt,
                fb.get("corrected-prediction", ""),
                r["prediction 1"],
                "correction",
                question=r["question"],
            )
        notes.append(f"{split}: {no_pref} 'no preference' comparisons dropped")
    return rows


def build_pandalm(snap: Snapshot, notes: list[str]) -> list[dict]:
    data = snap.read("data/testset-v1.json")
    if data is None:
        return []
    rows: list[dict] = []
    ties = 0
    for r in json.loads(data):
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        for n in (1, 2, 3):
            label = int(r[f"annotator{n}"])
            if label == 0:
                ties += 1
                continue
            a, b = (r["response1"], r["response2"]) if label == 1 else (r["response2"], r["response1"])
            _pair(
                rows,
                f"pandalm-{r['idx']}-a{n}",
                prompt,
                a,
                b,
                f"annotator{n}",
                user=f"annotator{n}",
                motivation_app=r.get("motivation_app"),
                cmp_key=r.get("cmp_key"),
            )
    notes.append(f"{ties} tie labels dropped")
    return rows


def build_alpacaeval(snap: Snapshot, notes: list[str]) -> list[dict]:
    files = [
        f
        for f in snap.list("results")
        if f.endswith("/weighted_alpaca_eval_gpt4_turbo/annotations.json") and f.count("/") == 3
    ]
    rows: list[dict] = []
    undecided = 0
    for f in files:
        data = snap.read(f)
        if data is None:
            continue
        model = f.split("/")[1]
        for i, r in enumerate(json.loads(data)):
            try:
                p = float(r.get("preference"))
            except (TypeError, ValueError):
                p = float("nan")
            if not (p < 1.5 or p > 1.5):  # NaN or an exact tie
                undecided += 1
                continue
            a, b = (r["output_2"], r["output_1"]) if p > 1.5 else (r["output_1"], r["output_2"])
            _pair(
                rows,
                f"alpacaeval-{model}-{i}",
                r["instruction"],
                a,
                b,
                r.get("dataset") or "(none)",
                generator_1=r.get("generator_1"),
                generator_2=r.get("generator_2"),
            )
    missing = len(snap.missing)
    notes.append(
        f"{len(files) - missing} of {len(files)} models' annotation files read "
        f"({missing} absent from the snapshot: over 4 MiB or LFS); {undecided} undecided judgments dropped"
    )
    snap.used = [f"results/<{len(snap.used)} models>/weighted_alpaca_eval_gpt4_turbo/annotations.json"]
    snap.missing = (
        [f"results/<{missing} models>/weighted_alpaca_eval_gpt4_turbo/annotations.json"] if missing else []
    )
    return rows


SOURCES = {  # name: (option, upstream repository, converter, what the group is)
    "hh": ("hh", "anthropics/hh-rlhf", build_hh, "subset"),
    "autoj": ("autoj", "GAIR-NLP/auto-j", build_autoj, "scenario group"),
    "llmbar": ("llmbar", "princeton-nlp/LLMBar", build_llmbar, "subset"),
    "qa_feedback": ("qa_feedback", "allenai/FineGrainedRLHF", build_qa_feedback, "feedback type"),
    "pandalm": ("pandalm", "WeOpenML/PandaLM", build_pandalm, "annotator"),
    "alpacaeval": ("alpacaeval", "tatsu-lab/alpaca_eval", build_alpacaeval, "instruction source"),
}


def cap_per_group(rows: list[dict], cap: int, seed_text: str) -> list[dict]:
    """At most `cap` pairs: equal shares per group (water-filling), a seeded sample within each group."""
    by_group: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    if len(rows) <= cap:
        return rows
    quota, left = {}, cap
    for i, (g, members) in enumerate(sorted(by_group.items(), key=lambda kv: (len(kv[1]), kv[0]))):
        quota[g] = min(len(members), left // (len(by_group) - i))
        left -= quota[g]
    keep = set()
    for g, members in sorted(by_group.items()):
        rng = random.Random(f"{seed_text}/{g}")
        keep.update(r["id"] for r in rng.sample(sorted(members, key=lambda r: r["id"]), quota[g]))
    return [r for r in rows if r["id"] in keep]


# ----------------------------------------------------------------------------- NMI and its permutation null


def _entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(a, b) -> float:
    """NMI with arithmetic-mean normalization; 0 when either side is constant (as moe_reward.analysis)."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) == 0:
        return 0.0
    ha, hb = _entropy(a), _entropy(b)
    if ha == 0 or hb == 0:
        return 0.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    pj = joint / joint.sum()
    pa, pb = pj.sum(1, keepdims=True), pj.sum(0, keepdims=True)
    nz = pj > 0
    mi = float((pj[nz] * np.log(pj[nz] / (pa @ pb)[nz])).sum())
    return max(0.0, mi / ((ha + hb) / 2))


def nmi_null(group_expert_counts: dict[str, list[int]], n_perm: int = 1000, seed: int = 0) -> dict:
    """Permutation null of NMI(top-1 expert, group) from the contingency table alone: the (group, expert)
    label vectors are rebuilt from the counts and the group labels shuffled `n_perm` times."""
    groups, experts = [], []
    for gi, (_, counts) in enumerate(sorted(group_expert_counts.items())):
        for e, c in enumerate(counts):
            groups += [gi] * int(c)
            experts += [e] * int(c)
    g, e = np.array(groups), np.array(experts)
    observed = nmi(e, g)
    rng = np.random.default_rng(seed)
    null = np.array([nmi(e, rng.permutation(g)) for _ in range(n_perm)]) if len(g) else np.zeros(n_perm)
    return {
        "nmi": observed,
        "null_mean": float(null.mean()),
        "null_p95": float(np.percentile(null, 95)),
        "p": float((1 + (null >= observed - 1e-12).sum()) / (1 + n_perm)),
        "n_perm": n_perm,
        "n": int(len(g)),
    }


# ----------------------------------------------------------------------------- running the CLI


def run_cli(cli: list[str], args: list[str], log: Path) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(
            cli + args, cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True
        )
    seconds = time.perf_counter() - t0
    tail = ""
    if proc.returncode:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        tail = next(
            (ln for ln in reversed(lines) if ln.startswith("error") or "Error" in ln),
            lines[-1] if lines else "",
        )
    return proc.returncode, seconds, tail.strip()[:300]


_IDENTICAL: dict[str, dict[str, bool]] = {}


def identical_inputs(features: Path) -> dict[str, bool] | None:
    """Pair id -> whether its chosen and rejected embeddings are identical (every model then ties on it)."""
    if features.suffix != ".safetensors" or not features.is_file():
        return None
    if str(features) not in _IDENTICAL:
        from safetensors import safe_open

        with safe_open(str(features), "np") as f:
            ids = json.loads(f.metadata()["ids"])
            same = np.all(f.get_tensor("chosen") == f.get_tensor("rejected"), axis=1)
        _IDENTICAL[str(features)] = dict(zip(ids, same.tolist(), strict=True))
    return _IDENTICAL[str(features)]


def add_ties(rec: dict, data: Path) -> None:
    """Ties on the test pairs: the eval's own count when it has one; otherwise every test pair when all
    margins are 0 (accuracy 0 with mean margin 0: a tie is scored as wrong), else the test pairs whose two
    responses embed identically (a lower bound: other exact ties cannot be seen from the eval JSON)."""
    if "eval_ties" in rec:
        rec["ties"] = rec["eval_ties"]
        return
    if rec.get("accuracy") == 0.0 and rec.get("mean_margin") == 0.0:
        rec["ties"], rec["all_margins_zero"] = rec["n_pairs"], True
        return
    same = identical_inputs(data)
    try:
        test = json.loads((Path(rec["dir"]) / "split_ids.json").read_text())["test"]
    except (OSError, ValueError, KeyError):
        return
    if same is not None:
        rec["ties"] = sum(bool(same.get(i)) for i in test)


def one_run(cli, data: Path, kind: str, seed: int, run_dir: Path, n_perm: int) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    rec: dict = {"kind": kind, "seed": seed, "dir": str(run_dir)}
    rc, secs, err = run_cli(
        cli,
        [
            "train",
            "--data",
            str(data),
            "--model",
            kind,
            "--split-seed",
            str(seed),
            "--seed",
            str(seed),
            "--out",
            str(run_dir),
        ],
        run_dir / "train.log",
    )
    rec["train_seconds"] = round(secs, 1)
    if rc:
        rec["error"] = f"train exit {rc}: {err}"
        return rec
    out = run_dir / "eval.json"
    rc, secs, err = run_cli(
        cli,
        ["eval", "--model", str(run_dir), "--data", str(data), "--split", "test", "--json", str(out)],
        run_dir / "eval.log",
    )
    rec["eval_seconds"] = round(secs, 1)
    if rc:
        rec["error"] = f"eval exit {rc}: {err}"
        return rec
    ev = json.loads(out.read_text())
    rec.update(
        accuracy=ev.get("accuracy"),
        n_pairs=ev.get("n_pairs"),
        routing_nmi=ev.get("routing_nmi"),
        per_group=ev.get("per_group"),
        group_expert_counts=ev.get("group_expert_counts"),
        expert_utilization=ev.get("expert_utilization"),
    )
    rec["mean_margin"] = ev.get("mean_margin")
    if "ties" in ev:  # newer evals count ties themselves
        rec["eval_ties"] = ev["ties"]
    add_ties(rec, data)
    diag = ev.get("diagnostics") or {}
    rec["diagnostics"] = {
        k: diag[k]
        for k in (
            "router_probe_nmi",
            "oracle_routing_accuracy",
            "discovery_efficiency",
            "routing_nmi_null",
            "routing_nmi_p",
        )
        if k in diag
    }
    if rec["group_expert_counts"]:
        rec["null"] = nmi_null(rec["group_expert_counts"], n_perm=n_perm, seed=0)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rec["router_input"] = (metrics.get("discovery") or {}).get("router_input") or metrics.get(
            "router_input"
        )
    except (OSError, ValueError):
        pass
    return rec


# ----------------------------------------------------------------------------- tables


def _ms(values: list[float], fmt: str = "{:.3f}", sd_fmt: str | None = None) -> str:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "–"
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return (fmt + " ± " + (sd_fmt or fmt)).format(float(np.mean(v)), sd)


def half_tie_accuracy(r: dict) -> float:
    """Accuracy with each counted tie scored ½ instead of wrong (the CLI scores a tie as wrong)."""
    return r["accuracy"] + 0.5 * r.get("ties", 0) / max(r["n_pairs"] or 1, 1)


def kind_row(runs: list[dict], single_runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    errors = [f"seed {r['seed']}: {r['error']}" for r in runs if "error" in r]
    nulls = [r["null"] for r in ok if r.get("null")]
    single_acc = {r["seed"]: r["accuracy"] for r in single_runs if "error" not in r}
    single_half = {r["seed"]: half_tie_accuracy(r) for r in single_runs if "error" not in r}
    deltas = [100 * (r["accuracy"] - single_acc[r["seed"]]) for r in ok if r["seed"] in single_acc]
    deltas_half = [
        100 * (half_tie_accuracy(r) - single_half[r["seed"]]) for r in ok if r["seed"] in single_half
    ]
    theirs = [r["diagnostics"] for r in ok if "routing_nmi_null" in r.get("diagnostics", {})]
    return {
        "accuracy": _ms([r["accuracy"] for r in ok]),
        "n": "/".join(str(r["n_pairs"]) for r in ok) or "–",
        "nmi": _ms([r["routing_nmi"] for r in ok]),
        "null": (
            f"{np.mean([x['null_mean'] for x in nulls]):.3f} / {np.mean([x['null_p95'] for x in nulls]):.3f}"
            if nulls
            else "–"
        ),
        "significant": f"{sum(x['p'] < 0.05 for x in nulls)}/{len(nulls)}" if nulls else "–",
        "delta": _ms(deltas, "{:+.1f}", "{:.1f}") if deltas else "–",
        "accuracy_half": _ms([half_tie_accuracy(r) for r in ok]),
        "delta_half": _ms(deltas_half, "{:+.1f}", "{:.1f}") if deltas_half else "–",
        "ties": "/".join(
            str(r["ties"]) + ("*" if r.get("all_margins_zero") else "") for r in ok if "ties" in r
        )
        or "",
        "their_null": "; ".join(f"{d['routing_nmi_null']} (p {d.get('routing_nmi_p')})" for d in theirs),
        "errors": errors,
    }


def set_table(name: str, runs: list[dict], kinds: list[str]) -> list[str]:
    single = [r for r in runs if r["kind"] == "single"]
    rows = {k: kind_row([r for r in runs if r["kind"] == k], single) for k in kinds}
    extra_ties = any(v["ties"] for v in rows.values())
    zero = [f"{r['kind']} seed {r['seed']}" for r in runs if r.get("all_margins_zero")]
    extra_theirs = any(v["their_null"] for v in rows.values())
    head = (
        [
            "kind",
            "test accuracy",
            "test pairs",
            "routing NMI",
            "NMI null mean / 95th",
            "seeds p<0.05",
            "Δ vs single (pts)",
        ]
        + (["test ties per seed", "accuracy, ties = ½", "Δ vs single, ties = ½"] if extra_ties else [])
        + (["eval's NMI null (p)"] if extra_theirs else [])
    )
    lines = [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, v in rows.items():
        cells = [
            k,
            v["accuracy"],
            v["n"],
            v["nmi"],
            v["null"],
            v["significant"],
            v["delta"] if k != "single" else "0",
        ]
        cells += (
            [v["ties"], v["accuracy_half"], v["delta_half"] if k != "single" else "0"] if extra_ties else []
        )
        cells += [v["their_null"]] if extra_theirs else []
        lines.append("| " + " | ".join(cells) + " |")
    for k, v in rows.items():
        for e in v["errors"]:
            lines.append(f"\n**{k} failed** ({e})")
    if zero:
        lines.append(
            f"\n\\* every test margin exactly 0 (a constant reward; each tie is scored as wrong, so accuracy "
            f"0.000): {', '.join(zero)}"
        )
    return lines


def summary_table(results: dict, kinds: list[str]) -> list[str]:
    names = [n for n, s in results.items() if s.get("runs")]
    head = (
        ["kind"]
        + [f"{n}: acc [ties = ½] / NMI (null 95th)" for n in names]
        + ["mean acc [ties = ½]", "mean Δ vs single (pts) [ties = ½]"]
    )
    lines = ["### Summary", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in kinds:
        cells, accs, deltas, halves, deltas_half = [k], [], [], [], []
        for n in names:
            runs = results[n]["runs"]
            ok = [r for r in runs if r["kind"] == k and "error" not in r]
            single = {r["seed"]: r for r in runs if r["kind"] == "single" and "error" not in r}
            if not ok:
                cells.append("failed" if any(r["kind"] == k for r in runs) else "–")
                continue
            acc = float(np.mean([r["accuracy"] for r in ok]))
            nm = [r["routing_nmi"] for r in ok if r["routing_nmi"] is not None]
            p95 = [r["null"]["null_p95"] for r in ok if r.get("null")]
            half = float(np.mean([half_tie_accuracy(r) for r in ok]))
            accs.append(acc)
            halves.append(half)
            deltas += [
                100 * (r["accuracy"] - single[r["seed"]]["accuracy"]) for r in ok if r["seed"] in single
            ]
            deltas_half += [
                100 * (half_tie_accuracy(r) - half_tie_accuracy(single[r["seed"]]))
                for r in ok
                if r["seed"] in single
            ]
            acc_txt = f"{acc:.3f}" + (f" [{half:.3f}]" if abs(half - acc) >= 0.0005 else "")
            cells.append(
                f"{acc_txt} / {np.mean(nm):.3f} ({np.mean(p95):.3f})" if nm and p95 else f"{acc_txt} / –"
            )
        cells += [
            f"{np.mean(accs):.3f} [{np.mean(halves):.3f}]" if accs else "–",
            f"{np.mean(deltas):+.1f} [{np.mean(deltas_half):+.1f}]" if deltas else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------- main


def write_outputs(
    args, work: Path, started, results: dict, sources_txt: list[str], final: bool = False
) -> None:
    """SOURCES.txt in the work folder, the markdown tables and the per-run JSON (rewritten after every set)."""
    (work / "SOURCES.txt").write_text(
        "set\tupstream\tcommit\tsnapshot path\n" + "\n".join(sources_txt) + "\n"
    )
    md = [
        f"Real-data benchmark, {started:%Y-%m-%d %H:%M} UTC, {platform.node()} ({os.cpu_count()} CPUs), "
        f"seeds {' '.join(map(str, args.seeds))}, cap {args.cap} pairs per set, NMI null {args.n_perm} permutations.",
        "",
    ]
    for name, info in results.items():
        if info.get("runs"):
            md += set_table(
                f"{name} ({info['n_pairs']} pairs, {len(info['groups'])} groups: {info['group_field']}; "
                f"wall {info['wall_seconds']:.0f}s)",
                info["runs"],
                args.kinds,
            ) + [""]
        elif info.get("skipped") or info.get("error"):
            md += [
                f"### {name}: {'skipped (' + info['skipped'] + ')' if info.get('skipped') else info['error']}",
                "",
            ]
    if any(i.get("runs") for i in results.values()):
        md += summary_table(results, args.kinds)
        if final:
            print("\n".join(summary_table(results, args.kinds)))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(md) + "\n")
    if args.json:
        meta = {
            "started": started.isoformat(),
            "seeds": args.seeds,
            "kinds": args.kinds,
            "cap": args.cap,
            "n_perm": args.n_perm,
            "cli": args.cli,
            "cpus": os.cpu_count(),
            "argv": getattr(args, "argv_saved", sys.argv),
        }
        Path(args.json).write_text(json.dumps({"config": meta, "sets": results}, indent=1))
    if final:
        for out in (args.markdown, args.json):
            if out:
                print(f"wrote {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (opt, upstream, _, group) in SOURCES.items():
        ap.add_argument(
            f"--{opt.replace('_', '-')}",
            dest=name,
            metavar="PATH",
            help=f"snapshot of {upstream} (git directory or checkout); group = {group}",
        )
    ap.add_argument(
        "--work", default="/tmp/moe_reward_realdata", help="converted sets, runs and logs (outside the repo)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS) + ["micro"])
    ap.add_argument(
        "--cap", type=int, default=3000, help="at most this many pairs per set (equal shares per group)"
    )
    ap.add_argument("--n-perm", type=int, default=1000, help="permutations of the NMI null")
    ap.add_argument(
        "--cli", default=f"{sys.executable} -m moe_reward.cli", help="how to run the CLI (this checkout's)"
    )
    ap.add_argument(
        "--from-jsonl",
        action="store_true",
        help="train and evaluate from the JSONL (embedding cache) instead of one features file per set",
    )
    ap.add_argument("--prepare-only", action="store_true", help="build the JSONL sets and stop")
    ap.add_argument("--json", help="write every per-run number here")
    ap.add_argument("--markdown", help="write the tables here")
    ap.add_argument(
        "--tables-from",
        metavar="JSON",
        help="re-render the tables (and --markdown/--json) from an earlier --json output; runs nothing",
    )
    args = ap.parse_args()
    if args.tables_from:
        saved = json.loads(Path(args.tables_from).read_text())
        results = saved["sets"]
        for info in results.values():
            for rec in info.get("runs", []):
                ev_path = Path(rec["dir"]) / "eval.json"
                if "error" not in rec and "mean_margin" not in rec and ev_path.is_file():
                    rec["mean_margin"] = json.loads(ev_path.read_text()).get("mean_margin")
                if "error" not in rec and "ties" not in rec:
                    add_ties(rec, Path(info.get("train_data") or info.get("data", "")))
        args.seeds, args.kinds = saved["config"]["seeds"], saved["config"]["kinds"]
        args.argv_saved = saved["config"].get("argv")
        args.cap, args.n_perm = saved["config"]["cap"], saved["config"]["n_perm"]
        started = datetime.fromisoformat(saved["config"]["started"])
        work = Path(args.work).expanduser().resolve()
        work.mkdir(parents=True, exist_ok=True)
        sources = [
            f"{n}\t{i['source']['repo']}\t{i['source']['commit']}\t{i['source']['path']}"
            for n, i in results.items()
        ]
        for name, info in results.items():
            if info.get("runs"):
                print("\n".join(set_table(name, info["runs"], args.kinds)) + "\n")
        write_outputs(args, work, started, results, sources, final=True)
        return 0

    work = Path(args.work).expanduser().resolve()
    if work == REPO_ROOT or REPO_ROOT in work.parents:
        ap.error(f"--work {work} is inside the repository; put it elsewhere")
    work.mkdir(parents=True, exist_ok=True)
    cli = args.cli.split()
    started = datetime.now(timezone.utc)
    results: dict[str, dict] = {}
    sources_txt = []

    for name, (_, upstream, build, group_field) in SOURCES.items():
        path = getattr(args, name)
        if not path:
            print(f"[{name}] skipped: no --{name.replace('_', '-')} path given")
            continue
        t0 = time.perf_counter()
        try:
            snap = Snapshot(path, upstream)
        except FileNotFoundError as exc:
            print(f"[{name}] skipped: {exc}")
            continue
        notes: list[str] = []
        rows = build(snap, notes)
        prefix = {"qa_feedback": "qa"}.get(name, name)
        if DROPPED[prefix]:
            notes.append(f"{DROPPED[prefix]} pairs dropped: empty or identical responses")
        n_all, groups_all = len(rows), Counter(r["group"] for r in rows)
        rows = cap_per_group(rows, args.cap, name)
        groups = Counter(r["group"] for r in rows)
        info = {
            "source": snap.record(),
            "group_field": group_field,
            "n_before_cap": n_all,
            "groups_before_cap": dict(sorted(groups_all.items())),
            "n_pairs": len(rows),
            "groups": dict(sorted(groups.items())),
            "n_prompts": len({r["prompt"] for r in rows}),
            "notes": notes,
        }
        sources_txt.append(f"{name}\t{upstream}\t{snap.commit}\t{snap.path}")
        for miss in snap.missing:
            print(f"[{name}] not in the snapshot: {miss}")
        if len(groups) < 2:
            print(
                f"[{name}] skipped: {len(rows)} pairs in {len(groups)} group(s); a set needs at least 2 groups"
            )
            results[name] = info | {"skipped": f"{len(groups)} group(s) in the files that arrived"}
            continue
        data = work / f"{name}.jsonl"
        with open(data, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        info["data"] = str(data)
        print(
            f"[{name}] {upstream}@{snap.commit[:12]}: {len(rows)} pairs (of {n_all}), {len(groups)} groups "
            f"({group_field}), {info['n_prompts']} prompts -> {data}"
        )
        for g, c in sorted(groups.items()):
            print(f"    {g:28s} {c:5d}  (of {groups_all[g]})")
        for note in notes:
            print(f"    note: {note}")
        results[name] = info
        if args.prepare_only:
            continue

        train_data = data
        if not args.from_jsonl:  # embed once; every run then reads the features file (no backbone load)
            train_data = work / f"{name}.safetensors"
            rc, secs, err = run_cli(
                cli, ["embed", "--data", str(data), "--out", str(train_data)], work / f"{name}.embed.log"
            )
            info["embed_seconds"] = round(secs, 1)
            if rc:
                info["error"] = f"embed exit {rc}: {err}"
                print(f"[{name}] embedding FAILED: {info['error']}")
                continue
            print(f"[{name}] embedded in {secs:.0f}s -> {train_data}", flush=True)
        info["train_data"] = str(train_data)
        runs = []
        for kind in args.kinds:
            for seed in args.seeds:
                rec = one_run(
                    cli, train_data, kind, seed, work / "runs" / name / f"{kind}-seed{seed}", args.n_perm
                )
                runs.append(rec)
                if "error" in rec:
                    print(f"[{name}] {kind} seed {seed}: FAILED {rec['error']}")
                else:
                    nl = rec.get("null") or {}
                    nmi_txt = "n/a" if rec["routing_nmi"] is None else f"{rec['routing_nmi']:.3f}"
                    print(
                        f"[{name}] {kind} seed {seed}: acc {rec['accuracy']:.4f} on {rec['n_pairs']} test pairs, "
                        f"NMI {nmi_txt} (null {nl.get('null_mean', float('nan')):.3f} / "
                        f"95th {nl.get('null_p95', float('nan')):.3f}, p {nl.get('p', float('nan')):.3f}), "
                        f"train {rec['train_seconds']}s, eval {rec['eval_seconds']}s",
                        flush=True,
                    )
        info["runs"] = runs
        info["wall_seconds"] = round(time.perf_counter() - t0, 1)
        print("\n".join(set_table(name, runs, args.kinds)))
        print(f"[{name}] wall time {info['wall_seconds']:.0f}s\n", flush=True)
        write_outputs(args, work, started, results, sources_txt)

    write_outputs(args, work, started, results, sources_txt, final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
