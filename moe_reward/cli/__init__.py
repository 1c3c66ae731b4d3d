"""`moe-reward`: every operation of the dashboard, from the command line."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

# Sub-command modules of this package; each exposes `register(subparsers)`.
EXTRA_COMMANDS = ("personalize", "experiment", "explore", "report", "serve", "analyst")
# personalize.ADAPTERS, without importing torch to build the parser (tests/test_personalize.py checks it)
ADAPTER_NAMES = ("hedge", "batch", "gradient", "signed")


def _progress_bar(desc: str):
    bar = tqdm(
        total=100,
        desc=desc,
        unit="%",
        bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}] {postfix}",
        disable=not sys.stderr.isatty(),
    )  # quiet when the output is not a terminal

    def stage(msg: str, frac: float) -> None:
        bar.n = round(100 * frac)
        bar.set_postfix_str(msg[:60])
        bar.refresh()

    return bar, stage


def cmd_validate(args) -> int:
    from ..data.pairs import validate_file

    # One streaming pass: each problem is printed as it is found (duplicate ids at the end).
    rep = validate_file(args.data, on_error=print)
    kind = " (HelpSteer2-style rows: pairs made per attribute)" if rep.helpsteer else ""
    print(
        f"{rep.source}: {rep.rows} rows, {rep.pairs} valid pairs{kind}, {rep.errors} problems; "
        f"{rep.groups} groups, {rep.users} users"
    )
    return 0 if rep.ok else 1


def _report_skipped(res) -> None:
    """--skip-bad: say how many rows were dropped (and the first one), never drop silently."""
    if res.errors:
        print(
            f"skipped {len(res.errors)} malformed rows of {res.rows} in {res.source} (first: {res.errors[0]})",
            file=sys.stderr,
        )


def cmd_embed(args) -> int:
    from ..data.pairs import load_pairs
    from ..embed.backbone import BackboneSpec
    from ..embed.features import ShardWriter
    from ..embed.pairs import embed_pairs

    res = load_pairs(args.data, skip_bad=args.skip_bad)
    _report_skipped(res)
    spec = BackboneSpec(
        args.backbone,
        pooling=args.pooling,
        max_length=args.max_length,
        batch_size=args.batch_size,
        runtime=args.runtime,
        device=args.device,
        precision=args.precision,
        template=args.template,
        padding=args.padding,
        max_batch_tokens=args.max_batch_tokens,
    )
    to_folder = args.engine == "ray" or not str(args.out).endswith(".safetensors")
    if to_folder and args.no_records:
        raise ValueError("--no-records applies to a single .safetensors file, not to a folder of shards")
    dtype = args.dtype or ("float16" if to_folder else "float32")
    if args.engine == "ray":
        from ..embed.ray import embed_with_ray

        manifest = embed_with_ray(
            res.pairs,
            spec,
            args.out,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
            block_rows=args.block_rows,
            shard_rows=args.shard_rows,
            dtype=dtype,
            address=args.address,
            cache_dir=args.cache_dir,
        )
        meta = manifest["metadata"]
        print(
            f"wrote {manifest['rows']} pairs x {meta['dim']}-d ({meta['backbone']}, {meta['pooling']} pooling, "
            f"{meta['truncated_inputs']} inputs truncated) as {len(manifest['shards'])} {dtype} shards to {args.out} "
            f"with {args.workers} Ray workers in {meta['seconds']:.1f}s "
            f"({3 * manifest['rows'] / max(meta['seconds'], 1e-9):.1f} texts/s incl. start-up)"
        )
        return 0
    feats = embed_pairs(res.pairs, spec, cache_dir=args.cache_dir or "default")
    meta = feats.metadata
    what = (
        f"{len(feats)} pairs x {feats.dim}-d ({meta['backbone']}, {meta['pooling']} pooling, "
        f"{meta.get('runtime', 'torch')} runtime, {meta['truncated_inputs']} inputs truncated)"
    )
    if to_folder:
        writer = ShardWriter(args.out, dtype=dtype, shard_rows=args.shard_rows)
        writer.add(feats.prompt, feats.chosen, feats.rejected, feats.pairs, meta)
        manifest = writer.close()
        print(f"wrote {what} as {len(manifest['shards'])} {dtype} shards to {args.out}")
        return 0
    source = None
    if args.no_records:
        source = os.path.relpath(Path(res.source).resolve(), Path(args.out).resolve().parent)
    feats.save(args.out, dtype=dtype, include_records=not args.no_records, source=source)
    print(f"wrote {what} to {args.out}")
    return 0


def cmd_train(args) -> int:
    from ..app.pipeline import TrainRequest, train_from_data
    from ..train.config import TrainConfig

    overrides = {
        k: getattr(args, k)
        for k in (
            "epochs",
            "lr",
            "seed",
            "batch_size",
            "sparsity_weight",
            "balance_weight",
            "diversity_weight",
            "specialization_weight",
        )
        if getattr(args, k) is not None
    }
    train_cfg = TrainConfig.for_kind(args.model, **overrides)
    req = TrainRequest(
        data=args.data,
        kind=args.model,
        experts=args.experts,
        top_k=args.top_k,
        hidden_dim=args.hidden,
        backbone=args.backbone,
        max_length=args.max_length,
        validation=args.validation,
        test=args.test,
        split_seed=args.split_seed,
        skip_bad=args.skip_bad,
        exclude_user_pairs=args.exclude_user_pairs,
        router_input=args.router_input,
        split_by=args.split_by,
        train=train_cfg,
    )
    bar, stage = _progress_bar(f"train {args.model}")
    try:
        model, metrics = train_from_data(req, args.out, stage=stage, on_loaded=_report_skipped)
    finally:
        bar.close()
    t = metrics["test"]
    held_out = (
        f"{metrics['test_subset']} accuracy {_accuracy_text(t)} on {t['n_pairs']} held-out pairs, "
        f"routing NMI {_nmi_text(t)}"
        if t["n_pairs"]
        else "no held-out pairs ("
        + (
            "--validation 0 --test 0"
            if not (args.validation or args.test)
            else f"the split by {args.split_by or 'prompt'} left none: too few distinct values"
        )
        + "): accuracy not measured"
    )
    print(
        f"{model.describe()}: {held_out}, trained in {metrics['train_seconds']:.1f}s on {metrics['splits']['train']} "
        f"pairs; saved to {args.out}"
    )
    from ..evaluate.summary import training_story

    for line in training_story(metrics):
        print(f"  {line}")
    if metrics.get("epochs_planned", 0) > metrics.get("epochs_requested", metrics.get("epochs_planned", 0)):
        print(
            f"  schedule: {metrics['epochs_run']} epochs run of at most {metrics['epochs_planned']} "
            f"({metrics['epochs_requested']} requested; raised so that {metrics['splits']['train']} training pairs get "
            f"at least {train_cfg.min_steps} optimizer steps)"
        )
    _print_diagnostics(t.get("diagnostics"))
    _print_verdict(t)
    for warning in metrics.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _accuracy_text(ev: dict) -> str:
    """'0.6124 (95% 0.57-0.65)', with the ties when there are any (each counted as half)."""
    lo, hi = ev.get("accuracy_ci") or (None, None)
    text = f"{ev['accuracy']:.4f}" + (f" (95% {lo:.2f}-{hi:.2f})" if lo is not None else "")
    if ev.get("ties"):
        text += f", {ev['ties']} ties counted as half"
    return text


def _nmi_text(ev: dict) -> str:
    """'0.412 (chance 0.031, p 0.001)', 'n/a: one expert (no specialization found)', or 'n/a (no groups)'."""
    if ev.get("routing_nmi") is None:
        return (
            "n/a: " + ev["routing"]
            if ev.get("experts_identical") or ev.get("routing", "routed") != "routed"
            else "n/a (no groups)"
        )
    d = ev.get("diagnostics") or {}
    if d.get("routing_nmi_null") is None:
        return f"{ev['routing_nmi']:.3f}"
    verdict = "beyond chance" if d["routing_nmi_p"] < 0.05 else "NOT beyond chance"
    return (
        f"{ev['routing_nmi']:.3f} (chance {d['routing_nmi_null']:.3f}, 95% of shuffles below "
        f"{d['routing_nmi_null_p95']:.3f}, p {d['routing_nmi_p']:.3f}: {verdict})"
    )


def _print_verdict(ev: dict) -> None:
    if ev.get("specialization"):
        print(f"heterogeneity: {ev['specialization']} — {ev.get('specialization_reason', '')}")


def cmd_eval(args) -> int:
    from ..app.pipeline import features_for_model, load_model
    from ..core.atomic import write_text
    from ..evaluate.metrics import evaluate
    from ..model import modeldir

    model = load_model(args.model)
    feats = everything = features_for_model(
        model, args.data, skip_bad=args.skip_bad, on_loaded=_report_skipped
    )
    if args.split != "all":
        wanted = set(modeldir.read_split_ids(args.model, strict=True)[args.split])
        n_all = len(feats)
        feats = feats.subset([i for i, p in enumerate(feats.pairs) if p.id in wanted])
        if not len(feats):
            source = modeldir.trained_on(args.model) or "unrecorded data"
            raise ValueError(
                f"{args.data}: none of its {n_all} pairs is in the {args.split} split of {args.model} "
                f"({len(wanted)} pair ids in split_ids.json); the model was trained on {source}. "
                "Evaluate on that data, or pass --split all to evaluate on every pair of this file"
            )
    metrics = modeldir.read_metrics(args.model)
    pool = None
    if args.split == "test":
        # the model's training pairs (train + validation) in this data: the probes are fitted on them
        splits = modeldir.read_split_ids(args.model, strict=True)
        seen = set(splits["train"]) | set(splits["validation"])
        pool = everything.subset([i for i, p in enumerate(everything.pairs) if p.id in seen])
    res = evaluate(
        model, feats, diagnostics=True, train_features=pool, discovery=metrics.get("discovery")
    ).to_dict()
    if metrics:
        res["checkpoint_untrained"] = bool(metrics.get("checkpoint_untrained", False))
    print(f"{res['model']}: accuracy {_accuracy_text(res)} on {res['n_pairs']} pairs")
    for g, v in res["per_group"].items():
        ci = v.get("ci")
        print(
            f"  {g:24s} {v['accuracy']:.4f}  (n={v['n']}" + (f", 95% {ci[0]:.2f}-{ci[1]:.2f})" if ci else ")")
        )
    print(f"routing NMI(top-1 expert, group) = {_nmi_text(res)}")
    if res["routing_nmi"] is not None and res["routing_purity"] is not None:
        print(f"routing purity {res['routing_purity']:.4f}")
    print("expert utilization (top-1 share): " + " ".join(f"{u:.3f}" for u in res["expert_utilization"]))
    names = list(model.config.expert_names)
    print(
        "accuracy on the pairs each expert leads (top expert): "
        + " ".join(
            f"E{k}{'·' + names[k] if k < len(names) and names[k] else ''} "
            + ("n/a" if a is None else f"{a:.3f}")
            for k, a in enumerate(res["expert_top_accuracy"])
        )
    )
    _print_diagnostics(res.get("diagnostics"))
    _print_verdict(res)
    if res.get("checkpoint_untrained"):
        print(
            "warning: this model's kept checkpoint learnt nothing that holds on validation (checkpoint_untrained)",
            file=sys.stderr,
        )
    if args.json:
        write_text(args.json, json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0


def _print_diagnostics(d: dict | None) -> None:
    if not d:
        return

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    if d.get("oracle_routing_accuracy") is not None:
        print(
            f"oracle routing (one head per {d.get('label') or 'group'}, fitted on the training pairs, group given): "
            f"{f(d['oracle_routing_accuracy'])} vs one head {f(d['pooled_head_accuracy'])} on {d['oracle_pairs']} "
            f"test pairs (gain {f(d['oracle_gain'])} nats per pair, p {f(d['oracle_gain_p'])})"
        )
    if d.get("router_probe_nmi") is not None:
        print(
            f"supervised router probe ({d['folds']}-fold cross-validated on {d['router_probe_pairs']} training pairs): "
            f"NMI {f(d['router_probe_nmi'])} (p {f(d['router_probe_p'])}), accuracy {f(d['router_probe_accuracy'])}"
        )
    if d.get("discovery_efficiency") is not None:
        lo, hi = d.get("discovery_efficiency_ci") or (None, None)
        print(f"discovery efficiency {f(d['discovery_efficiency'])} (95% {f(lo)}-{f(hi)})")
    for key, why in (d.get("reasons") or {}).items():
        print(f"  {key}: not reported — {why}")


def cmd_score(args) -> int:
    import numpy as np

    from ..app.pipeline import backbone_for, load_model, score_texts

    model = load_model(args.model)
    weights = None
    if args.profile:
        weights = np.asarray(
            read_profile_weights(args.profile, model.num_experts, args.model), dtype=np.float32
        )
    scored = score_texts(model, backbone_for(model), args.prompt, args.response, user_weights=weights)
    out = [s.__dict__ for s in scored]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for s in scored:
        top = sorted(range(len(s.routing)), key=lambda k: -s.routing[k])[: model.config.top_k]
        print(
            f"reward {s.reward:+.4f}"
            + ("" if s.personalized_reward is None else f"  personalized {s.personalized_reward:+.4f}")
            + f"  | {s.response[:70]!r}"
        )
        print("  routing: " + ", ".join(f"expert {k} {s.routing[k]:.3f}" for k in top))
        print("  expert rewards: " + " ".join(f"{r:+.3f}" for r in s.expert_rewards))
    for line in winner_lines(scored):
        print(line)
    return 0


def read_profile_weights(path: str | Path, num_experts: int, model_name: str) -> list[float]:
    """The weights of a profile file (from `personalize --profile-out`), checked against the model."""
    from ..core.limits import MAX_PROFILE_BYTES
    from ..personalize.adapters import parse_profile

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_PROFILE_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the limit of {MAX_PROFILE_BYTES} for a profile")
    profile = parse_profile(path.read_bytes(), str(path))
    if profile.get("weights") is None:
        raise ValueError(f"{path}: weights: missing")
    if profile["num_experts"] != num_experts:
        raise ValueError(
            f"{path}: a profile over {profile['num_experts']} experts, but {model_name} has "
            f"{num_experts}; fit the profile on this model (moe-reward personalize)"
        )
    return profile["weights"]


def winner_lines(scored) -> list[str]:
    """Which response wins, under the model's routing and under the profile (when one is given)."""
    if len(scored) < 2:
        return []
    letters = [chr(ord("A") + i) if i < 26 else f"#{i + 1}" for i in range(len(scored))]

    def verdict(values: list[float], under: str) -> str:
        order = sorted(range(len(values)), key=lambda i: -values[i])
        best, second = order[0], order[1]
        gap = values[best] - values[second]
        if gap == 0:
            return f"{under}: a tie between response {letters[best]} and response {letters[second]}"
        return (
            f"{under}: response {letters[best]} wins (reward {values[best]:+.4f}, "
            f"{gap:.4f} above response {letters[second]})"
        )

    out = [verdict([s.reward for s in scored], "model (routed mix)")]
    if scored[0].personalized_reward is not None:
        personal = [s.personalized_reward for s in scored]
        line = verdict(personal, "profile")
        model_best = max(range(len(scored)), key=lambda i: scored[i].reward)
        profile_best = max(range(len(scored)), key=lambda i: personal[i])
        out.append(
            line
            + (
                "; the profile agrees with the model"
                if model_best == profile_best
                else "; the profile disagrees with the model"
            )
        )
    return out


def cmd_make_dataset(args) -> int:
    from ..data import controlled

    return controlled.main(["--out", args.out, "--seed", str(args.seed), "--noise", str(args.noise)])


# What .streamlit/config.toml sets for `streamlit run app.py` from the repository root, for `moe-reward app`
# started anywhere: no file watcher walking sys.modules after every run, no full GC after every run.
SERVER_FLAGS = ("--server.fileWatcherType", "none", "--runner.postScriptGC", "false")


def cmd_app(args) -> int:
    import subprocess

    app = Path(__file__).resolve().parents[2] / "app.py"
    return subprocess.call(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(app),
            "--server.address",
            args.address,
            "--server.port",
            str(args.port),
            "--browser.gatherUsageStats",
            "false",
            *SERVER_FLAGS,
        ]
    )


def bounded_int(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi] (sizes are bounded before anything is allocated)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from ..core.limits import MAX_DIM, MAX_EXPERTS, MAX_MAX_LENGTH

    p = argparse.ArgumentParser(prog="moe-reward", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a preference file and list every malformed row")
    v.add_argument("--data", required=True)
    v.set_defaults(func=cmd_validate)

    def backbone_args(sp, default_max=256):
        sp.add_argument(
            "--backbone",
            default="all-MiniLM-L6-v2",
            help="HF model id or local path (default: shipped MiniLM)",
        )
        sp.add_argument(
            "--max-length",
            type=bounded_int(1, MAX_MAX_LENGTH),
            default=default_max,
            help="token limit of the backbone's inputs",
        )

    e = sub.add_parser(
        "embed", help="embed a preference file into a portable features file (or a folder of shards)"
    )
    e.add_argument("--data", required=True)
    e.add_argument(
        "--out",
        required=True,
        help="a .safetensors features file, or a folder of shards (any other name; always with --engine ray)",
    )
    backbone_args(e)
    e.add_argument(
        "--pooling",
        default="auto",
        choices=["auto", "mean", "last"],
        help="auto: mean for encoders, the last token's state for decoders and reward models",
    )
    e.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "torch", "onnx", "onnx-int8"],
        help="onnx / onnx-int8: ONNX Runtime on the CPU (int8: 2x the texts/s, cosine >= 0.987 to fp32); "
        "auto: onnx-int8 for the default encoder on the CPU, torch otherwise",
    )
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    e.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 (or float16) on a GPU, float32 on the CPU",
    )
    e.add_argument(
        "--template",
        default="auto",
        choices=["auto", "plain", "chat"],
        help="chat: format prompt and response with the tokenizer's chat template (auto: for decoders that have one)",
    )
    e.add_argument(
        "--padding", default="auto", choices=["auto", "right", "left"], help="padding side (same result)"
    )
    e.add_argument(
        "--batch-size",
        type=bounded_int(0, 1 << 16),
        default=0,
        help="texts per batch; 0 = auto (32 on CPU, what fits on a GPU)",
    )
    e.add_argument(
        "--max-batch-tokens",
        type=bounded_int(0, 1 << 24),
        default=0,
        help="padded tokens per batch; 0 = auto",
    )
    e.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "int8"],
        help="storage (default: float32 for a file, float16 for shards); int8: distinct vectors once, per-row scale",
    )
    e.add_argument(
        "--no-records",
        action="store_true",
        help="store ids only and point at the data file (texts are joined on load)",
    )
    e.add_argument("--cache-dir", default=None)
    e.add_argument(
        "--skip-bad", action="store_true", help="drop malformed rows (and say how many) instead of stopping"
    )
    e.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="ray: Ray Data actor pool (one backbone per worker, GPUs when present), sharded output",
    )
    e.add_argument("--workers", type=int, default=2, help="Ray actors (one backbone each)")
    e.add_argument(
        "--address",
        default=None,
        help="Ray cluster address ('auto' for the one `ray start` made); "
        "default: a local cluster for this run",
    )
    e.add_argument(
        "--gpus-per-worker", type=float, default=None, help="default: 1 when the cluster has GPUs, else 0"
    )
    e.add_argument("--cpus-per-worker", type=float, default=1.0)
    e.add_argument("--block-rows", type=int, default=256, help="pairs per Ray block (and per actor call)")
    e.add_argument("--shard-rows", type=int, default=100_000, help="pairs per shard file")
    e.set_defaults(func=cmd_embed)

    t = sub.add_parser("train", help="train a reward model (sparse MoE or a baseline)")
    t.add_argument(
        "--data",
        required=True,
        help="JSONL/CSV/Parquet preference file, a features .safetensors, or 'controlled'",
    )
    t.add_argument("--model", default="sparse", choices=["sparse", "dense", "single", "drm", "micro"])
    t.add_argument("--experts", type=bounded_int(1, MAX_EXPERTS), default=8)
    t.add_argument("--top-k", type=bounded_int(1, MAX_EXPERTS), default=2)
    t.add_argument(
        "--hidden", type=bounded_int(0, MAX_DIM), default=0, help="hidden units per expert head (0 = linear)"
    )
    t.add_argument("--out", required=True)
    backbone_args(t)
    t.add_argument("--validation", type=float, default=0.1)
    t.add_argument("--test", type=float, default=0.1)
    t.add_argument("--split-seed", type=int, default=0)
    t.add_argument("--skip-bad", action="store_true")
    t.add_argument(
        "--exclude-user-pairs",
        action="store_true",
        help="train only on pairs without a user (keeps held-out annotators/personas out)",
    )
    t.add_argument(
        "--router-input",
        default="auto",
        help="what the router reads: auto (chosen on validation likelihood), or channels joined by '+' "
        "from pooled, lexical, attention (e.g. pooled+lexical)",
    )
    t.add_argument(
        "--split-by",
        default=None,
        help="keep every value of this field on one side of the split: prompt (default), group, user, id "
        "or meta.<key> (e.g. meta.question_id for held-out questions)",
    )
    for name, typ in (
        ("epochs", bounded_int(1, 10**6)),
        ("lr", float),
        ("seed", int),
        ("batch-size", bounded_int(1, 1 << 20)),
        ("sparsity-weight", float),
        ("balance-weight", float),
        ("diversity-weight", float),
        ("specialization-weight", float),
    ):
        t.add_argument(f"--{name}", type=typ, default=None)
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="accuracy per group, routing NMI and utilization of a saved model")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", default="all", choices=["all", "train", "validation", "test"])
    ev.add_argument("--json", default=None)
    ev.add_argument("--skip-bad", action="store_true")
    ev.set_defaults(func=cmd_eval)

    s = sub.add_parser("score", help="score a prompt and one or more responses")
    s.add_argument("--model", required=True)
    s.add_argument("--prompt", required=True)
    s.add_argument("--response", required=True, action="append", help="repeat for several responses")
    s.add_argument(
        "--profile", default=None, help="a user profile JSON (from personalize) to also score under"
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_score)

    m = sub.add_parser("make-dataset", help="regenerate the controlled default dataset")
    m.add_argument("--out", default="data/controlled/pairs.jsonl.gz")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--noise", type=float, default=0.0)
    m.set_defaults(func=cmd_make_dataset)

    a = sub.add_parser("app", help="start the dashboard (streamlit)")
    a.add_argument("--address", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8501)
    a.set_defaults(func=cmd_app)

    for name in EXTRA_COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def error_line(exc: BaseException) -> str:
    """One clear line (or, for a file with several bad rows, its list) for an expected failure."""
    if (
        isinstance(exc, OSError)
        and not isinstance(exc, ValueError)
        and exc.filename is not None
        and exc.strerror
        and str(exc.filename) not in (exc.strerror or "")
    ):
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, MemoryError):
        return f"out of memory{': ' + str(exc) if str(exc) else ''}"
    if isinstance(exc, RecursionError):
        return f"input nested too deeply ({exc})"
    if isinstance(exc, EOFError):
        return f"unexpected end of file ({exc or 'truncated input'})"
    return str(exc) or type(exc).__name__


def expected_errors() -> tuple[type[BaseException], ...]:
    """The failures a user can cause and fix: `error: <message>` and exit 2. Anything else is a bug (3).

    - `MoeRewardError` (core/errors.py): every error this package raises on purpose (bad data, broken or
      tampered model directories, refused labels, unloadable backbones, ...);
    - ValueError: bad input checked before `MoeRewardError` existed (it is its base class);
    - OSError, EOFError: files that are missing, unreadable, truncated; a full disk;
    - RecursionError, MemoryError: input nested too deeply, or too large for this machine;
    - safetensors' own error for a corrupt file; `train.loop.TrainingDiverged` once training ran."""
    from ..core.errors import MoeRewardError

    errors: tuple[type[BaseException], ...] = (
        MoeRewardError,
        ValueError,
        OSError,
        EOFError,
        RecursionError,
        MemoryError,
    )
    train = sys.modules.get(f"{__name__.rpartition('.')[0]}.train.loop")  # (only raised once training ran)
    if train is not None:
        errors += (train.TrainingDiverged,)
    try:
        from safetensors import SafetensorError

        errors += (SafetensorError,)
    except ImportError:  # pragma: no cover - older safetensors
        pass
    return errors


def exit_code(exc: BaseException) -> int:
    """2 for an expected failure (`expected_errors`), 130 for an interrupt, 3 for anything else (a bug)."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 2 if isinstance(exc, expected_errors()) else 3


def main(argv: list[str] | None = None) -> int:
    from ..core.heap import return_freed_memory

    return_freed_memory()  # large runs: freed batch buffers go back to the OS (see heap.py)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 (each failure gets one line; see exit_code)
        code = exit_code(exc)
        if code == 2:
            print(f"error: {error_line(exc)}", file=sys.stderr)
            return 2
        if os.environ.get("MOE_REWARD_DEBUG"):
            raise
        print(
            f"error: internal error {type(exc).__name__}: {exc} (a bug in moe-reward; run with MOE_REWARD_DEBUG=1 "
            "for the traceback and please report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
