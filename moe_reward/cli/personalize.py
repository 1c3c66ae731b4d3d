"""`moe-reward personalize`: fit a user's profile from k of their labels and report what it changed."""

from __future__ import annotations

import json
import sys

import numpy as np

from ..core.atomic import write_text
from . import ADAPTER_NAMES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "personalize", help="fit a user profile (weights over the experts) from k labels"
    )
    p.add_argument("--model", required=True, help="a saved model directory")
    p.add_argument(
        "--data", required=True, help="preference file (or features .safetensors) with the user's pairs"
    )
    p.add_argument("--user", default=None, help="whose pairs to adapt to (omit to list the users)")
    p.add_argument("--user-field", default="user", choices=["user", "group"])
    p.add_argument("--adapter", default="hedge", choices=ADAPTER_NAMES)
    p.add_argument("--k", type=int, default=16, help="labels to adapt on; the user's other pairs evaluate")
    p.add_argument(
        "--select",
        default="random",
        choices=["random", "active"],
        help="which k labels: a seeded random draw, or active selection (most informative first)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="adapter parameter, e.g. eta=0.5, temperature=0.2, mode=router_bias (repeatable)",
    )
    p.add_argument(
        "--no-margin-scale", action="store_true", help="do not normalize expert margins by their spread"
    )
    p.add_argument(
        "--profile-out", default=None, help="write the profile JSON here (use with `score --profile`)"
    )
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(func=cmd_personalize)


def _parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value  # a bare word such as router_bias
    return params


def cmd_personalize(args) -> int:
    from ..app.pipeline import features_for_model, load_model
    from ..personalize.adapters import (
        expert_margins_for,
        make_adapter,
        margin_scale_for,
        personalized_accuracy,
        profile_prior,
        weight_shift,
    )
    from ..personalize.session import label_in_order

    model = load_model(args.model)
    feats = features_for_model(model, args.data, skip_bad=args.skip_bad)
    owners = [getattr(p, args.user_field) for p in feats.pairs]
    counts: dict[str, int] = {}
    for u in owners:
        if u is not None:
            counts[u] = counts.get(u, 0) + 1
    if args.user is None or args.user not in counts:
        if args.user is not None:
            print(f"error: no pairs with {args.user_field}={args.user!r}", file=sys.stderr)
        print(
            f"{len(counts)} {args.user_field}s: " + ", ".join(f"{u} ({n})" for u, n in sorted(counts.items()))
        )
        return 0 if args.user is None else 2
    mine = np.array([i for i, u in enumerate(owners) if u == args.user])
    others = (
        np.array([i for i, u in enumerate(owners) if u is None]) if None in owners else np.arange(len(feats))
    )
    if args.k < 0 or args.k >= len(mine):
        raise ValueError(
            f"--k must be in [0, {len(mine) - 1}]: {args.user} has {len(mine)} pairs and needs one to evaluate"
        )
    margins, logits = expert_margins_for(model, feats.subset(mine))
    reference = feats.subset(others)
    scale = None if args.no_margin_scale else margin_scale_for(expert_margins_for(model, reference)[0])
    prior = profile_prior(model, reference)
    params = _parse_params(args.param)
    if scale is not None:
        params.setdefault("margin_scale", scale)
    adapter = make_adapter(args.adapter, model.num_experts, prior, **params)
    ids = [feats.pairs[i].id for i in mine]
    rng = np.random.default_rng(args.seed)
    labeled = np.zeros(len(mine), dtype=bool)
    if args.select == "random":
        chosen = rng.choice(len(mine), args.k, replace=False)
        adapter.fit(margins[chosen], [ids[i] for i in chosen], logits[chosen])
        labeled[chosen] = True
    else:
        labeled[list(label_in_order(adapter, margins, ids, logits, args.k))] = True
    rest = ~labeled
    before = personalized_accuracy(prior, margins[rest])
    after = personalized_accuracy(adapter, margins[rest], logits[rest])
    shift = weight_shift(adapter)
    names = model.config.expert_names or [f"expert {k}" for k in range(model.num_experts)]
    print(
        f"{args.user}: {args.adapter} adapter on {args.k} labels ({args.select}); {int(rest.sum())} pairs evaluate"
    )
    print(f"{'':14s} {'before':>8s} {'after':>8s} {'delta':>8s}")
    for k in np.argsort(-np.abs(shift["delta"]), kind="stable"):
        print(
            f"{names[k][:14]:14s} {shift['before'][k]:8.3f} {shift['after'][k]:8.3f} {shift['delta'][k]:+8.3f}"
        )
    top = int(np.argmax(np.abs(shift["delta"])))
    if shift["top_movers"][top]:
        print(
            f"labels that moved {names[top]} most: "
            + ", ".join(f"{pid} ({d:+.3f})" for pid, d in shift["top_movers"][top])
        )
    print(
        f"accuracy on {args.user}'s other pairs: {before:.3f} with the prior profile -> {after:.3f} personalized"
    )
    if args.profile_out:
        profile = adapter.to_dict() | {
            "user": args.user,
            "model": str(args.model),
            "data": str(args.data),
            "accuracy_before": before,
            "accuracy_after": after,
        }
        write_text(args.profile_out, json.dumps(profile, indent=2))
        print(f"wrote {args.profile_out}")
    return 0
