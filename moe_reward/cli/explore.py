"""The dashboard's operations on the command line: workspace, default model, maps, routing, labels.

moe-reward build-default                 features + default sparse model + PCA map (as the app's first start)
moe-reward workspace                     models, data files, experiments and label counts
moe-reward project --model M --data D    2-D map (pca now, umap cached) -> CSV          (Expert map)
moe-reward routing-stats ...             utilization, entropy, group x expert, filters   (Routing statistics)
moe-reward select ... --out F            export filtered pairs with routing weights     (Expert map selection)
moe-reward expert --expert K ...         its numbers on a subset, top pairs, agreement    (Expert detail)
moe-reward compare --model A --other B   accuracy, NMI and the pairs they disagree on    (Compare models)
moe-reward label ...                     store one label in a stored profile (--undo)     (Personalize)
moe-reward labels --out F                export stored labels (and `--profiles` to list profiles)
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

from ..core.atomic import write_text
from . import ADAPTER_NAMES, bounded_int

CLI_SESSION = "cli"  # the session name of labels stored from the command line (what `label --undo` removes)


def register(subparsers) -> None:
    b = subparsers.add_parser(
        "build-default",
        help="build the dashboard's default model on the controlled data and precompute its Expert map views",
    )
    b.add_argument("--force", action="store_true", help="rebuild even if it exists")
    b.add_argument(
        "--train",
        action="store_true",
        help="train it here even when the repository ships a default model that matches this code",
    )
    b.add_argument(
        "--ship",
        action="store_true",
        help="rebuild the default model the repository ships (data/controlled/default-model/; "
        "`make default-model`) instead of a workspace's",
    )
    b.add_argument(
        "--no-umap", action="store_true", help="precompute only the instant map views (skip UMAP, ~30 s)"
    )
    b.set_defaults(func=cmd_build_default)

    w = subparsers.add_parser(
        "workspace", help="list the workspace's models, data files, experiments and labels"
    )
    w.set_defaults(func=cmd_workspace)

    def model_data(sp):
        sp.add_argument("--model", required=True, help="a model name in the workspace, or a model directory")
        sp.add_argument("--data", required=True, help="preference file or features .safetensors")

    def filters(sp):
        sp.add_argument("--group", action="append", default=None, help="keep these groups (repeatable)")
        sp.add_argument("--correct", choices=["all", "yes", "no"], default="all")
        sp.add_argument(
            "--min-confidence", type=float, default=0.0, help="weight of the top expert, at least"
        )
        sp.add_argument("--max-confidence", type=float, default=1.0)
        sp.add_argument(
            "--slice", default=None, help="only the pairs of this saved slice (moe-reward slice list)"
        )

    p = subparsers.add_parser(
        "project", help="2-D map of prompt or pair embeddings (PCA, or UMAP cached on disk)"
    )
    model_data(p)
    p.add_argument("--method", choices=["pca", "umap"], default="pca")
    p.add_argument("--source", choices=["prompt", "pair"], default="prompt")
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--min-dist", type=float, default=0.1)
    p.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=None, help="CSV of id, x, y, top_expert, group, margin (default: print a summary)"
    )
    p.set_defaults(func=cmd_project)

    r = subparsers.add_parser(
        "routing-stats", help="expert utilization, entropy, group x expert, co-activation"
    )
    model_data(r)
    filters(r)
    r.add_argument("--json", default=None, help="also write the statistics here")
    r.set_defaults(func=cmd_routing_stats)

    s = subparsers.add_parser("select", help="export pairs (with routing weights) matching filters")
    model_data(s)
    filters(s)
    s.add_argument("--expert", type=int, default=None, help="only pairs whose top expert is this one")
    s.add_argument("--out", required=True, help=".jsonl or .csv")
    s.set_defaults(func=cmd_select)

    e = subparsers.add_parser(
        "expert", help="one expert on one subset: its numbers, top-routed pairs, largest margins, agreement"
    )
    model_data(e)
    e.add_argument("--expert", type=int, required=True)
    e.add_argument("--top", type=bounded_int(1, 10_000), default=5, help="pairs listed per table")
    e.add_argument(
        "--subset",
        choices=["test", "validation", "train", "unsplit", "unseen", "all"],
        default=None,
        help="which pairs of --data (default: the held-out test split when the data is the model's own)",
    )
    e.add_argument("--slice", default=None, help="only the pairs of this saved slice (moe-reward slice list)")
    e.add_argument("--json", action="store_true", help="print its statistics as JSON (ExpertSummary)")
    e.set_defaults(func=cmd_expert)

    c = subparsers.add_parser("compare", help="two models on the same pairs, and the pairs they disagree on")
    model_data(c)
    c.add_argument("--other", required=True, help="the second model (name or directory)")
    c.add_argument("--out", default=None, help="CSV of the disagreements")
    c.set_defaults(func=cmd_compare)

    lab = subparsers.add_parser(
        "label", help="store one label in the workspace's profile (or undo this command line's newest one)"
    )
    model_data(lab)
    lab.add_argument("--annotator", required=True)
    lab.add_argument("--profile", default="default")
    lab.add_argument("--adapter", default="hedge", choices=ADAPTER_NAMES, help="for a new profile")
    lab.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="adapter parameter of a new profile, e.g. eta=0.3 (repeatable)",
    )
    lab.add_argument("--pair", default=None, help="pair id in --data")
    lab.add_argument(
        "--prefer",
        choices=["chosen", "rejected"],
        help="which of the pair's two responses this annotator prefers",
    )
    lab.add_argument(
        "--undo",
        action="store_true",
        help="delete the newest label stored from the command line in "
        "this profile (labels of dashboard sessions are never touched)",
    )
    lab.set_defaults(func=cmd_label)

    ls = subparsers.add_parser("labels", help="export the workspace's stored labels (JSONL) or list profiles")
    ls.add_argument("--annotator", default=None)
    ls.add_argument("--out", default=None, help="JSONL file (default: print a count per annotator)")
    ls.add_argument(
        "--profiles",
        action="store_true",
        help="list profiles with their weights (rebuilt from their labels) instead",
    )
    ls.set_defaults(func=cmd_labels)


# ----------------------------------------------------------------------------- helpers


def _bar(desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(
        total=100, desc=desc, unit="%", bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}] {postfix}"
    )

    def stage(msg: str, frac: float) -> None:
        bar.n = round(100 * min(max(frac, 0.0), 1.0))
        bar.set_postfix_str(msg[:60])
        bar.refresh()

    return bar, stage


def _model_dir(ws, name: str) -> Path:
    """A directory given on the command line is used as is; a bare name resolves inside models/."""
    from ..model import modeldir

    path = Path(name)
    if modeldir.is_model_dir(path):
        return path
    return ws.model_path(name)


def _load(args, model_arg: str | None = None):
    from ..app.pipeline import backbone_spec_for, load_model
    from ..app.workspace import Workspace
    from ..evaluate.metrics import score_pairs

    ws = Workspace()
    model_dir = _model_dir(ws, model_arg or args.model)
    model = load_model(model_dir)
    spec = backbone_spec_for(model)
    _, stage = _bar("features")
    feats = ws.features_for(args.data, spec, progress=stage)
    if feats.dim != model.config.input_dim:
        raise ValueError(
            f"{args.data}: {feats.dim}-d features, but the model expects {model.config.input_dim}-d"
        )
    return ws, model_dir, model, feats, score_pairs(model, feats)


def filter_mask(
    feats, scores, groups=None, correct="all", min_conf=0.0, max_conf=1.0, expert=None
) -> np.ndarray:
    """The Routing statistics / Expert map filters, as one boolean mask over the pairs."""
    from ..core.checks import check_choice, check_number
    from ..evaluate.metrics import groups_of

    check_choice("--correct", correct, ("all", "yes", "no"))
    lo = check_number("--min-confidence", min_conf, 0.0, 1.0)
    if check_number("--max-confidence", max_conf, 0.0, 1.0) < lo:
        raise ValueError(
            f"--max-confidence ({max_conf}) is below --min-confidence ({min_conf}): no pair fits"
        )

    g = groups_of(feats)
    g = g if g is not None else np.array(["(none)"] * len(feats))
    mask = (scores.confidence >= min_conf - 1e-9) & (scores.confidence <= max_conf + 1e-9)
    if groups:
        mask &= np.isin(g, groups)
    if correct != "all":
        mask &= scores.correct if correct == "yes" else ~scores.correct
    if expert is not None:
        mask &= scores.top_expert == expert
    return mask


def _slice_rows(args, feats) -> np.ndarray:
    """Rows of `feats` in the saved slice --slice (an error when none of its pairs is in --data)."""
    from ..app.slices import read_slice, slice_index
    from ..app.workspace import Workspace

    slc = read_slice(Workspace().slices_dir, args.slice)
    rows = slice_index(slc, feats.ids)
    if not len(rows):
        raise ValueError(f"{args.data}: none of the {slc.n} pairs of slice {slc.name!r} is in this file")
    return rows


def _pair_rows(feats, scores, index) -> list[dict]:
    from ..app.export import pair_rows

    return pair_rows(feats, scores, index)


def _write_rows(rows: list[dict], out: str) -> None:
    from ..app.export import write_rows

    write_rows(rows, out)


# ----------------------------------------------------------------------------- commands


def cmd_build_default(args) -> int:
    from ..app.pipeline import backbone_spec_for, load_model
    from ..app.workspace import Workspace, file_id, model_id
    from ..evaluate.metrics import score_pairs
    from ..evaluate.projection import precompute_views

    ws = Workspace()
    bar, stage = _bar("build default")
    if args.ship:
        from ..app.shipped import build

        out, metrics = build(ws.default_data_path(), stage=stage)
        bar.close()
        test = metrics["test"]
        print(
            f"wrote {out}: held-out ({metrics['test_subset']}, {test['n_pairs']} pairs) accuracy "
            f"{test['accuracy']:.4f}, routing NMI {test['routing_nmi']:.4f}"
        )
        return 0
    out = ws.ensure_default(progress=lambda m, f: stage(m, 0.5 * f), force=args.force, train=args.train)
    # The Expert map's views, under the keys the dashboard looks them up by (model and data file ids).
    data = ws.default_data_path()
    model = load_model(out)
    feats = ws.features_for(data, backbone_spec_for(model))
    views = precompute_views(
        feats,
        score_pairs(model, feats),
        ws.projections_dir,
        (model_id(out), file_id(data)),
        umap=not args.no_umap,
        progress=lambda m, f: stage(m, 0.5 + 0.5 * f),
    )
    bar.close()
    computed = [v for v in views if not v.cached]
    print(
        f"default model ready: {out}; map views: {len(views)} ({len(computed)} computed in "
        f"{sum(v.seconds for v in computed):.1f}s, the rest from the cache)"
    )
    return 0


def _open_store(ws):
    """The workspace's label store, or None when none was ever written (reading never creates one)."""
    from ..personalize.store import LabelStore

    return LabelStore(ws.labels_db) if ws.labels_db.is_file() else None


def _store_error(exc) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def cmd_workspace(args) -> int:
    from ..app.workspace import Workspace
    from ..model import modeldir
    from ..personalize.store import StoreError

    ws = Workspace()
    print(f"workspace: {ws.root}" + (f" (read-only: {ws.read_only})" if ws.read_only else ""))
    print("models:")
    for name in ws.list_models():
        try:
            test = modeldir.read_metrics(ws.model_path(name)).get("test", {})
        except (OSError, ValueError):
            test = {}
        acc = test.get("accuracy")
        print(f"  {name:28s} {test.get('model', '')}" + ("" if acc is None else f"  test accuracy {acc:.4f}"))
    for name, why in ws.model_notes.items():
        print(f"  (skipped {name}: {why})")
    print("data files:")
    for d in ws.list_data():
        print(f"  {d.label}")
    print("experiments:")
    for e in ws.list_experiments():
        print(f"  {e.parent.name}")
    try:
        store = _open_store(ws)
        if store is not None:
            print(
                f"labels: {store.count_labels()} from {len(store.annotators())} annotators"
                + (" (read-only: no label can be added here)" if store.read_only else "")
            )
    except (StoreError, sqlite3.Error) as exc:
        return _store_error(f"{ws.labels_db}: {exc}")
    return 0


def cmd_project(args) -> int:
    from ..app.workspace import file_id, model_id
    from ..evaluate.projection import ProjectionParams, project

    ws, model_dir, _model, feats, scores = _load(args)
    params = ProjectionParams(
        args.method, args.source, args.n_neighbors, args.min_dist, args.metric, args.seed
    )
    bar, stage = _bar(args.method)
    proj = project(
        feats, params, ws.projections_dir, (model_id(model_dir), file_id(args.data)), progress=stage
    )
    bar.close()
    print(
        f"{params.method} of {len(feats)} {params.source} embeddings: "
        + (
            "from the cache"
            if proj.cached
            else f"computed in {proj.seconds:.1f}s, cached under {ws.projections_dir}"
        )
    )
    if args.out:
        rows = [
            {
                "id": p.id,
                "x": float(proj.coords[i, 0]),
                "y": float(proj.coords[i, 1]),
                "top_expert": int(scores.top_expert[i]),
                "group": p.group or "",
                "margin": float(scores.margin[i]),
            }
            for i, p in enumerate(feats.pairs)
        ]
        _write_rows(rows, args.out if args.out.endswith((".csv", ".jsonl")) else args.out + ".csv")
        print(f"wrote {args.out}")
    return 0


def cmd_routing_stats(args) -> int:
    from ..evaluate.metrics import evaluate

    _, _, model, feats, scores = _load(args)
    mask = filter_mask(feats, scores, args.group, args.correct, args.min_confidence, args.max_confidence)
    if args.slice:
        mask &= np.isin(np.arange(len(feats)), _slice_rows(args, feats))
    idx = np.flatnonzero(mask)
    if not len(idx):
        print("no pair matches the filters", file=sys.stderr)
        return 1
    ev = evaluate(model, feats.subset(idx), scores.subset(idx))
    print(
        f"{len(idx)} of {len(feats)} pairs; accuracy {ev['accuracy']:.4f}, routing entropy {ev['routing_entropy']:.4f} "
        f"(normalized {ev['routing_entropy_normalized']:.3f}), active experts per pair {ev['active_experts_per_pair']:.2f}"
    )
    print(
        "utilization (top-1 share): "
        + " ".join(f"E{k} {u:.3f}" for k, u in enumerate(ev["expert_utilization"]))
    )
    print("mean routing weight:       " + " ".join(f"E{k} {u:.3f}" for k, u in enumerate(ev["expert_load"])))
    if ev["group_expert_counts"]:
        print("group x top expert:")
        for g, counts in ev["group_expert_counts"].items():
            print(f"  {g:24s} " + " ".join(f"{c:5d}" for c in counts))
        print("expert accuracy per group:")
        for e, per in ev["per_expert_group_accuracy"].items():
            print(f"  E{e}: " + ", ".join(f"{g} {a:.2f}" for g, a in per.items()))
    print("co-activation:")
    for k, row in enumerate(ev["coactivation"]):
        print(f"  E{k} " + " ".join(f"{v:.2f}" for v in row))
    if args.json:
        write_text(args.json, json.dumps(ev, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_select(args) -> int:
    _, _, _, feats, scores = _load(args)
    mask = filter_mask(
        feats, scores, args.group, args.correct, args.min_confidence, args.max_confidence, args.expert
    )
    if args.slice:
        mask &= np.isin(np.arange(len(feats)), _slice_rows(args, feats))
    rows = _pair_rows(feats, scores, np.flatnonzero(mask))
    _write_rows(rows, args.out)
    print(f"wrote {len(rows)} pairs to {args.out}")
    return 0


def cmd_expert(args) -> int:
    from ..evaluate.experts import EXPERT_STATS, summarize_experts
    from ..evaluate.metrics import expert_agreement
    from ..evaluate.summary import relate

    _, model_dir, model, feats, scores = _load(args)
    k = args.expert
    if not 0 <= k < model.num_experts:
        raise ValueError(f"--expert must be in [0, {model.num_experts - 1}]")
    rel = relate(model_dir, feats, same_file=None, data_name=Path(args.data).name)
    scope = rel.scope(args.subset) if args.subset else rel.headline
    if args.subset and scope.key != args.subset:
        raise ValueError(
            f"{args.data}: no {args.subset!r} subset for this model (has: {', '.join(s.key for s in rel.scopes)})"
        )
    idx = scope.index
    if getattr(args, "slice", None):
        idx = np.intersect1d(idx, _slice_rows(args, feats))
    names = list(model.config.expert_names)
    r = summarize_experts(scores, idx, names)[k]
    where = scope.label + (f" ∩ slice {args.slice}" if getattr(args, "slice", None) else "")
    if args.json:
        print(json.dumps({"subset": where, **r.to_dict()}, indent=2, ensure_ascii=False))
        return 0
    lead = EXPERT_STATS["top_accuracy"]
    print(f"{r.title} on the {where} ({r.n_pairs} pairs):")
    acc = "n/a" if r.top_accuracy is None else f"{r.top_accuracy:.3f}"
    own = "n/a" if r.own_top_accuracy is None else f"{r.own_top_accuracy:.3f}"
    print(
        f"  top expert for {r.n_top} pairs ({r.top_share:.1%}); {lead.label.lower()} {acc} ({lead.definition})"
    )
    print(
        f"  its own margin on those pairs {own}; takes part in {r.n_routed} pairs; mean routing weight {r.mean_weight:.3f}"
    )
    print("highest routing weight:")
    for i in idx[np.argsort(-scores.routing[idx, k], kind="stable")[: args.top]]:
        print(f"  {scores.routing[i, k]:.3f}  {feats.pairs[i].id}  {feats.pairs[i].prompt[:70]!r}")
    print("largest margins:")
    for i in idx[np.argsort(-np.abs(scores.expert_margins[idx, k]), kind="stable")[: args.top]]:
        print(f"  {scores.expert_margins[i, k]:+.3f}  {feats.pairs[i].id}  {feats.pairs[i].prompt[:70]!r}")
    agree = expert_agreement(scores.subset(idx))[k] if len(idx) else np.zeros(model.num_experts)
    print("agreement: " + " ".join(f"E{j} {agree[j]:.2f}" for j in range(model.num_experts) if j != k))
    return 0


def cmd_compare(args) -> int:
    from ..app.pipeline import load_model
    from ..evaluate.metrics import disagreements, evaluate, score_pairs

    ws, _, model_a, feats, a = _load(args)
    model_b = load_model(_model_dir(ws, args.other))
    if model_b.config.input_dim != feats.dim:
        raise ValueError(f"{args.other} expects {model_b.config.input_dim}-d inputs: a different backbone")
    b = score_pairs(model_b, feats)
    for name, model, s in ((args.model, model_a, a), (args.other, model_b, b)):
        ev = evaluate(model, feats, s)
        nmi = "n/a" if ev["routing_nmi"] is None else f"{ev['routing_nmi']:.3f}"
        print(f"{name}: {model.describe()}: accuracy {ev['accuracy']:.4f}, routing NMI {nmi}")
        for g, v in ev["per_group"].items():
            print(f"  {g:24s} {v['accuracy']:.4f}")
    idx = disagreements(a, b)
    print(f"{int((a.correct != b.correct).sum())} pairs where exactly one of them is right")
    if args.out:
        rows = [
            {
                "id": feats.pairs[i].id,
                "group": feats.pairs[i].group or "",
                "a_prob_chosen": float(a.prob_chosen[i]),
                "b_prob_chosen": float(b.prob_chosen[i]),
                "prompt": feats.pairs[i].prompt,
            }
            for i in idx
        ]
        _write_rows(rows, args.out)
        print(f"wrote {len(rows)} disagreements to {args.out}")
    return 0


def cmd_label(args) -> int:
    """The Personalize page's label, from the command line: same profile, same store, same rules (one
    label per pair and profile; undo removes only what the command line stored)."""
    from ..app.workspace import Workspace
    from ..personalize.adapters import expert_margins_for, margin_scale_for, prior_from_routing
    from ..personalize.session import LabelSession
    from ..personalize.store import DuplicateLabel, LabelStore, StoreError
    from .personalize import _parse_params

    if not args.undo and (args.pair is None or args.prefer is None):
        raise ValueError("give --pair and --prefer (or --undo)")
    ws = Workspace()
    try:
        store = LabelStore(ws.labels_db)
        if store.read_only:  # before any embedding: nothing can be stored
            return _store_error(f"no label stored: {store.read_only}")
        model_dir = _model_dir(ws, args.model)
        if args.undo:
            rec = store.find_profile(args.annotator, args.profile, model_dir.name)
            gone = None if rec is None else store.undo_last(rec.id, CLI_SESSION)
            if rec is None or gone is None:
                print(f"no label stored from the command line in {args.annotator}/{args.profile}")
                return 1
            print(f"removed label #{gone.id} (pair {gone.pair_id}); {store.count_labels(rec.id)} labels left")
            return 0
        ws, model_dir, model, feats, scores = _load(args)
        if args.pair not in feats.ids:
            raise ValueError(f"no pair {args.pair!r} in {args.data}")
        margins, logits = expert_margins_for(model, feats)
        session = LabelSession(
            store,
            args.annotator,
            args.profile,
            model_dir.name,
            feats.pairs,
            margins,
            logits,
            prior_from_routing(scores.routing),
            margin_scale_for(margins),
            session=CLI_SESSION,
            adapter=args.adapter,
        )
        spec = session.spec(**_parse_params(args.param))  # checked before anything is stored
        rec = store.get_or_create_profile(args.annotator, args.profile, model_dir.name, args.adapter, spec)
        if rec.profile.get("num_experts") not in (None, model.num_experts):
            raise ValueError(
                f"profile {args.annotator}/{args.profile} is over {rec.profile.get('num_experts')} experts, "
                f"{model_dir.name} has {model.num_experts}"
            )
        stored = session.label_row(feats.ids.index(args.pair), prefer_chosen=args.prefer == "chosen")
        label_id = stored.label_id
        state = session.load()
        assert state is not None
    except DuplicateLabel as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (StoreError, sqlite3.Error) as exc:
        return _store_error(exc)
    a = state.adapter
    print(
        f"label #{label_id} stored; profile {args.annotator}/{args.profile} ({a.name}, {a.n_labels} labels): "
        + " ".join(f"E{k} {w:.3f}" for k, w in enumerate(a.weights))
    )
    return 0


def cmd_labels(args) -> int:
    from ..app.workspace import Workspace
    from ..personalize.store import StoreError

    ws = Workspace()
    try:
        store = _open_store(ws)
        if store is None:
            print("no labels yet")
            return 0
        if args.profiles:
            for p in store.profiles(annotator=args.annotator):
                try:
                    state = store.load_profile(p.id)
                    w = state.adapter.weights.tolist()
                    note = (
                        f"  ({state.unusable} labels without margins not replayed)" if state.unusable else ""
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    w, note = [], f"  (cannot rebuild: {exc})"
                print(
                    f"{p.annotator}/{p.name}  model={p.model}  adapter={p.adapter}  labels={store.count_labels(p.id)}  "
                    + " ".join(f"E{k} {x:.3f}" for k, x in enumerate(w))
                    + note
                )
            return 0
        labels = store.labels(annotator=args.annotator)
    except (StoreError, sqlite3.Error) as exc:
        return _store_error(exc)
    if args.out:
        try:
            _write_rows([lab.__dict__ for lab in labels], args.out)
        except OSError as exc:
            return _store_error(f"{args.out}: {exc.strerror or exc}; nothing was written")
        print(f"wrote {len(labels)} labels to {args.out}")
    else:
        counts: dict[str, int] = {}
        for lab in labels:
            counts[lab.annotator] = counts.get(lab.annotator, 0) + 1
        print(f"{len(labels)} labels: " + ", ".join(f"{a} ({n})" for a, n in sorted(counts.items())))
    return 0
