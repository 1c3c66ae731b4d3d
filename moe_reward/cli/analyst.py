"""The analyst's tools on the command line: name experts, search pairs, saved slices, what-if edits.

moe-reward name-expert --model M --expert 3 --name brevity     store a name with the model (Expert detail)
moe-reward search --data D --query 'step "by step"'            pairs whose texts contain every word (map, tables)
moe-reward slice save --name N --data D --query Q | --ids F    a named set of pairs in the workspace (sidebar)
moe-reward slice list | show N | export N --data D --out F | delete N
moe-reward what-if --model M --data D --pair ID --prompt ...   an edited pair beside the original (Expert detail)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    n = subparsers.add_parser(
        "name-expert", help="name an expert of a saved model (stored in its config.json)"
    )
    n.add_argument("--model", required=True, help="a model name in the workspace, or a model directory")
    n.add_argument("--expert", type=int, required=True)
    n.add_argument("--name", required=True, help='the name ("" removes it); at most 40 printable characters')
    n.set_defaults(func=cmd_name_expert)

    s = subparsers.add_parser("search", help="pairs whose prompt or responses contain every word of a query")
    s.add_argument("--data", required=True, help="preference file or features .safetensors")
    s.add_argument("--query", required=True, help='words (all must occur) and "quoted phrases"')
    s.add_argument(
        "--field",
        action="append",
        default=None,
        choices=["prompt", "chosen", "rejected", "id", "group", "user"],
        help="search only these fields (repeatable; default: prompt, chosen and rejected)",
    )
    s.add_argument("--model", default=None, help="add the model's margin, top expert and routing to --out")
    s.add_argument("--out", default=None, help="write the matching pairs (.csv or .jsonl)")
    s.add_argument("--save-slice", default=None, metavar="NAME", help="save the matches as a slice")
    s.add_argument("--overwrite", action="store_true", help="replace a slice of that name")
    s.set_defaults(func=cmd_search)

    sl = subparsers.add_parser("slice", help="saved slices: named sets of pairs kept in the workspace")
    sub = sl.add_subparsers(dest="slice_command", required=True)
    save = sub.add_parser("save", help="save pairs of a data file as a slice")
    save.add_argument("--name", required=True)
    save.add_argument("--data", required=True)
    how = save.add_mutually_exclusive_group(required=True)
    how.add_argument("--query", help="the pairs a text search finds")
    how.add_argument("--ids", help="a text file with one pair id per line")
    save.add_argument("--description", default="", help="how the slice was made, in words")
    save.add_argument("--overwrite", action="store_true", help="replace a slice of that name")
    save.set_defaults(func=cmd_slice_save)
    ls = sub.add_parser("list", help="the workspace's slices")
    ls.set_defaults(func=cmd_slice_list)
    show = sub.add_parser("show", help="one slice: how it was made and its pair ids")
    show.add_argument("name")
    show.set_defaults(func=cmd_slice_show)
    export = sub.add_parser("export", help="write a slice's pairs (.csv or .jsonl)")
    export.add_argument("name")
    export.add_argument("--data", required=True, help="the data file holding its pairs")
    export.add_argument("--model", default=None, help="add the model's margin, top expert and routing")
    export.add_argument("--out", required=True)
    export.set_defaults(func=cmd_slice_export)
    rm = sub.add_parser("delete", help="delete a slice")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_slice_delete)

    w = subparsers.add_parser(
        "what-if", help="edit a pair's prompt or a response: routing and rewards, before/after"
    )
    w.add_argument("--model", required=True)
    w.add_argument("--data", required=True, help="the data file holding the pair")
    w.add_argument("--pair", required=True, help="the pair's id")
    w.add_argument("--prompt", default=None, help="the edited prompt (default: unchanged)")
    w.add_argument("--chosen", default=None, help="the edited chosen response")
    w.add_argument("--rejected", default=None, help="the edited rejected response")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_what_if)


def _workspace():
    from ..app.workspace import Workspace

    return Workspace()


def _model_dir(ws, name: str) -> Path:
    path = Path(name)
    return path if (path / "config.json").is_file() else ws.model_path(name)


def _pairs(data: str):
    """The pairs of a data file, without embedding anything (a features file's own pair list)."""
    from ..embed.features import PairFeatures, is_features_path

    path = _workspace().default_data_path() if data == "controlled" else Path(data)
    if is_features_path(path):
        return PairFeatures.load(path).pairs
    from ..data.pairs import load_pairs

    return load_pairs(path).pairs


def _scored(ws, model: str, data: str):
    from ..app.pipeline import backbone_spec_for, load_model
    from ..evaluate.metrics import score_pairs

    m = load_model(_model_dir(ws, model))
    feats = ws.features_for(data, backbone_spec_for(m))
    if feats.dim != m.config.input_dim:
        raise ValueError(f"{data}: {feats.dim}-d features, but the model expects {m.config.input_dim}-d")
    return m, feats, score_pairs(m, feats)


# ----------------------------------------------------------------------------- commands


def cmd_name_expert(args) -> int:
    from ..model.moe import set_expert_name

    ws = _workspace()
    model_dir = _model_dir(ws, args.model)
    if ws.read_only and model_dir.parent == ws.models_dir:
        raise OSError(f"{model_dir}: {ws.read_only}")
    config = set_expert_name(model_dir, args.expert, args.name)
    name = config.expert_names[args.expert] if args.expert < len(config.expert_names) else ""
    print(f"E{args.expert} of {model_dir.name} " + (f"is now named {name!r}" if name else "has no name now"))
    return 0


def cmd_search(args) -> int:
    from ..app.export import pair_rows, write_rows
    from ..evaluate.search import TEXT_FIELDS, describe_query, search_pairs

    fields = tuple(args.field or TEXT_FIELDS)
    scores = None
    if args.model:
        _, feats, scores = _scored(_workspace(), args.model, args.data)
        pairs = feats.pairs
    else:
        feats, pairs = None, _pairs(args.data)
    rows = search_pairs(pairs, args.query, fields)
    print(f"{len(rows)} of {len(pairs)} pairs: {describe_query(args.query, fields)}")
    for i in rows[:20]:
        print(f"  {pairs[i].id}  {pairs[i].prompt[:80]!r}")
    if len(rows) > 20:
        print(f"  … {len(rows) - 20} more (--out writes them all)")
    if args.out:
        source = feats if feats is not None else _PairList(pairs)
        write_rows(pair_rows(source, scores, rows), args.out)
        print(f"wrote {len(rows)} pairs to {args.out}")
    if args.save_slice:
        _save(
            args.save_slice,
            [pairs[i].id for i in rows],
            "search",
            describe_query(args.query, fields),
            args.data,
            args.model or "",
            args.overwrite,
        )
    return 0


class _PairList:
    """What `export.pair_rows` needs from a features object, for plain pairs."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)


def _save(name, ids, how, description, data, model, overwrite) -> None:
    from ..app.slices import Slice, save_slice

    ws = _workspace()
    if ws.read_only:
        raise OSError(f"{ws.slices_dir}: {ws.read_only}")
    path = save_slice(ws.slices_dir, Slice(name, ids, how, description, data, model), overwrite=overwrite)
    print(f"saved slice {name} ({len(ids)} pairs) to {path}")


def cmd_slice_save(args) -> int:
    from ..core.limits import MAX_PROFILE_BYTES
    from ..evaluate.search import describe_query, search_pairs

    pairs = _pairs(args.data)
    if args.query is not None:
        ids = [pairs[i].id for i in search_pairs(pairs, args.query)]
        how, description = "search", args.description or describe_query(args.query)
    else:
        path = Path(args.ids)
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise ValueError(f"{path}: more than {MAX_PROFILE_BYTES} bytes of pair ids")
        wanted = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        known = {p.id for p in pairs}
        missing = [(n, pid) for n, pid in enumerate(wanted, 1) if pid not in known]
        if missing:
            line, pid = missing[0]
            raise ValueError(
                f"{path}:{line}: pair id {pid!r} is not in {args.data} ({len(missing)} such lines)"
            )
        ids = list(dict.fromkeys(wanted))
        how, description = "ids", args.description or f"pair ids from {path.name}"
    if not ids:
        raise ValueError(f"{args.data}: no pair to save (the search found none)")
    _save(args.name, ids, how, description, args.data, "", args.overwrite)
    return 0


def cmd_slice_list(args) -> int:
    from ..app.slices import list_slices

    found, problems = list_slices(_workspace().slices_dir)
    if not found and not problems:
        print("no slices yet (moe-reward slice save, or save one in the dashboard)")
    for s in found:
        print(f"  {s.summary()}  (data: {s.data or 'unrecorded'})")
    for file, why in problems.items():
        print(f"  (skipped {file}: {why})")
    return 0


def cmd_slice_show(args) -> int:
    from ..app.slices import read_slice

    print(json.dumps(read_slice(_workspace().slices_dir, args.name).to_dict(), indent=1, ensure_ascii=False))
    return 0


def cmd_slice_export(args) -> int:
    from ..app.export import pair_rows, write_rows
    from ..app.slices import read_slice, slice_index

    ws = _workspace()
    slc = read_slice(ws.slices_dir, args.name)
    if args.model:
        _, feats, scores = _scored(ws, args.model, args.data)
    else:
        feats, scores = _PairList(_pairs(args.data)), None
    rows = slice_index(slc, [p.id for p in feats.pairs])
    if not len(rows):
        raise ValueError(f"{args.data}: none of the {slc.n} pairs of slice {slc.name!r} is in this file")
    write_rows(pair_rows(feats, scores, rows), args.out)
    note = f" ({slc.n - len(rows)} of its pairs are not in {args.data})" if len(rows) < slc.n else ""
    print(f"wrote {len(rows)} pairs of slice {slc.name} to {args.out}{note}")
    return 0


def cmd_slice_delete(args) -> int:
    from ..app.slices import delete_slice

    ws = _workspace()
    if ws.read_only:
        raise OSError(f"{ws.slices_dir}: {ws.read_only}")
    delete_slice(ws.slices_dir, args.name)
    print(f"deleted slice {args.name}")
    return 0


def cmd_what_if(args) -> int:
    from ..app.pipeline import backbone_for, load_model
    from ..app.whatif import what_if
    from ..evaluate.experts import expert_title

    ws = _workspace()
    by_id = {p.id: p for p in _pairs(args.data)}
    if args.pair not in by_id:
        raise ValueError(f"{args.data}: no pair with id {args.pair!r}")
    p = by_id[args.pair]
    model = load_model(_model_dir(ws, args.model))
    edited = (
        p.prompt if args.prompt is None else args.prompt,
        p.chosen if args.chosen is None else args.chosen,
        p.rejected if args.rejected is None else args.rejected,
    )
    w = what_if(model, backbone_for(model), (p.prompt, p.chosen, p.rejected), edited)
    if args.json:
        print(json.dumps(w.to_dict(), indent=2))
        return 0
    print(w.summary())
    names = list(model.config.expert_names)
    print(f"{'expert':24s} {'routing':>17s} {'margin (chosen − rejected)':>28s}")
    for k in range(model.num_experts):
        o, e = w.original, w.edited
        print(
            f"{expert_title(k, names)[:24]:24s} {o.routing[k]:7.3f} → {e.routing[k]:<7.3f} "
            f"{o.expert_margins[k]:+12.3f} → {e.expert_margins[k]:+.3f}"
        )
    if not w.changed:
        print("(give --prompt, --chosen or --rejected to edit the pair)", file=sys.stderr)
    return 0
