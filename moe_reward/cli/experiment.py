"""`moe-reward experiment` (kinds x seeds x adapters, see experiment.py) and `moe-reward describe-experts`."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def register(subparsers) -> None:
    e = subparsers.add_parser(
        "experiment", help="train every model kind over seeds; routing and few-shot personalization"
    )
    e.add_argument(
        "--data", default="controlled", help="'controlled' (default), a preference file or a features file"
    )
    e.add_argument(
        "--user-field",
        default="user",
        choices=["user", "group"],
        help="who counts as a user; pairs without one train the models",
    )
    e.add_argument("--seeds", type=int, default=3)
    e.add_argument("--experts", type=int, default=8)
    e.add_argument("--top-k", type=int, default=2)
    e.add_argument("--max-pairs", type=int, default=None, help="seeded subsample of the data")
    e.add_argument(
        "--split-by",
        default=None,
        help="split the training pool by this field: prompt (default), group, user, id or meta.<key> "
        "(e.g. meta.question_id: test on held-out questions)",
    )
    e.add_argument(
        "--validation", type=float, default=0.1, help="fraction of the training pool for validation"
    )
    e.add_argument("--test", type=float, default=0.1, help="fraction of the training pool for the test split")
    e.add_argument(
        "--router-input",
        default="auto",
        help="what routed kinds read: auto (by validation likelihood) or channels joined by '+' from "
        "pooled, lexical, attention",
    )
    e.add_argument(
        "--held-out-users",
        type=_names,
        default=(),
        help="comma-separated users to hold out (default: every user; leave-one-user-out when every "
        "pair has a user)",
    )
    e.add_argument(
        "--max-folds",
        type=int,
        default=10,
        help="leave-one-user-out: at most this many users get a fold (chosen with --user-seed; 0 = all)",
    )
    e.add_argument("--user-seed", type=int, default=0, help="seed of the choice of held-out users")
    e.add_argument("--no-diagnostics", action="store_true", help="skip the specialization diagnostics")
    e.add_argument("--out", required=True, help="output directory (results.json, results.md, figures)")
    # Defaults live in ExperimentConfig (not imported here: building the parser stays cheap).
    e.add_argument(
        "--kinds", type=_names, default=None, help="comma-separated (default: sparse,dense,single,drm)"
    )
    e.add_argument(
        "--adapters", type=_names, default=None, help="comma-separated (default: hedge,batch,gradient)"
    )
    e.add_argument(
        "--shots", type=_ints, default=None, help="comma-separated label counts (default: 0,1,2,4,8,16,32)"
    )
    e.add_argument("--draws", type=int, default=5, help="label draws per user and k")
    e.add_argument("--epochs", type=int, default=None, help="override the training epochs of every kind")
    e.add_argument("--min-steps", type=int, default=None, help="override the minimum optimizer steps")
    e.add_argument(
        "--adapter-params", type=json.loads, default={}, help='JSON, e.g. \'{"hedge": {"eta": 0.5}}\''
    )
    e.add_argument(
        "--no-margin-scale", action="store_true", help="do not normalize expert margins by their spread"
    )
    e.add_argument("--no-figures", action="store_true")
    e.add_argument("--backbone", default="all-MiniLM-L6-v2")
    e.add_argument("--max-length", type=int, default=256)
    e.add_argument("--cache-dir", default="default")
    e.add_argument("--skip-bad", action="store_true")
    e.set_defaults(func=cmd_experiment)

    d = subparsers.add_parser(
        "describe-experts", help="keywords, text-feature correlations and a label per expert"
    )
    d.add_argument("--model", required=True)
    d.add_argument("--data", required=True)
    d.add_argument("--top-n", type=int, default=10)
    d.add_argument("--out", default=None, help="write the descriptions JSON here")
    d.add_argument("--skip-bad", action="store_true")
    d.set_defaults(func=cmd_describe)


def cmd_experiment(args) -> int:
    from ..experiment.run import ExperimentConfig, run_experiment

    optional = {name: getattr(args, name) for name in ("kinds", "adapters", "shots") if getattr(args, name)}
    cfg = ExperimentConfig(
        **optional,
        data=args.data,
        user_field=args.user_field,
        seeds=args.seeds,
        experts=args.experts,
        top_k=args.top_k,
        max_pairs=args.max_pairs,
        draws=args.draws,
        split_by=args.split_by,
        validation=args.validation,
        test=args.test,
        router_input=args.router_input,
        held_out_users=args.held_out_users,
        max_folds=args.max_folds or None,
        user_seed=args.user_seed,
        diagnostics=not args.no_diagnostics,
        epochs=args.epochs,
        min_steps=args.min_steps,
        adapter_params=args.adapter_params,
        margin_scale=not args.no_margin_scale,
        figures=not args.no_figures,
        backbone=args.backbone,
        max_length=args.max_length,
        cache_dir=None if args.cache_dir == "none" else args.cache_dir,
        skip_bad=args.skip_bad,
    )
    results = run_experiment(cfg, args.out, progress=None)
    for warning in results.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    k_show = "8" if 8 in cfg.shots else str(max(cfg.shots))
    for kind, m in results["models"].items():
        acc, nmi = m["accuracy"], m["routing_nmi"]
        pers = ", ".join(
            f"{a} {c[k_show]['mean']:.3f}"
            for a, c in m["personalization"].items()
            if k_show in c and c[k_show]["mean"] is not None
        )
        nmi_text = "n/a" if nmi["mean"] is None else f"{nmi['mean']:.3f}"
        print(f"{kind:7s} accuracy {acc['mean']:.3f} ± {acc['sd']:.3f}  NMI {nmi_text}  k={k_show}: {pers}")
    split = cfg.split_by or "prompt"
    print(
        f"(accuracy and NMI on the held-out test split of the training pool, split by {split}; "
        f"protocol: {results['config']['protocol']}; k={k_show} averages {len(results['users_per_k'].get(k_show, []))} users)"
    )
    print(f"wrote {Path(args.out) / 'results.json'} and results.md ({results['timings']['total_s']:.0f}s)")
    return 0


def cmd_describe(args) -> int:
    from ..app.pipeline import features_for_model, load_model
    from ..evaluate.describe import describe_experts, save_descriptions

    model = load_model(args.model)
    feats = features_for_model(model, args.data, skip_bad=args.skip_bad)
    descs = describe_experts(model, feats, top_n=args.top_n)
    for d in descs:
        print(f"expert {d.expert}: {d.share:.1%} of pairs — {d.label}")
    if args.out:
        save_descriptions(descs, args.out)
        print(f"wrote {args.out}")
    return 0
