"""`moe-reward report`: the stakeholder report (the Overview's "Write the stakeholder report" button)."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    r = subparsers.add_parser("report", help="write a self-contained HTML report of a model (+ PNG figures)")
    r.add_argument("--model", required=True, help="a model directory, or a model name in the workspace")
    r.add_argument("--out", required=True, help="the HTML file to write")
    r.add_argument(
        "--data",
        default=None,
        help="data to evaluate on (default: the data the model was trained on, from its metrics.json)",
    )
    r.add_argument(
        "--no-png", action="store_true", help="skip the PNG figures (they need kaleido and a Chromium)"
    )
    r.set_defaults(func=cmd_report)


def model_data_path(model_dir: Path, given: str | None) -> str:
    """--data, else the model's recorded training data ('controlled' is the workspace's default data)."""
    from ..app.workspace import Workspace
    from ..model import modeldir

    data = given or modeldir.trained_on(model_dir)
    if not data:
        raise ValueError(
            f"{model_dir / modeldir.METRICS}: does not say what the model was trained on; pass --data"
        )
    if data == "controlled":
        return str(Workspace().default_data_path())
    if not Path(data).exists():
        raise FileNotFoundError(
            f"{data} (recorded in {model_dir / modeldir.METRICS}) is not here; pass --data"
        )
    return data


def cmd_report(args) -> int:
    from ..app.pipeline import load_model
    from ..app.report import build_report
    from ..app.workspace import Workspace
    from ..model import modeldir

    model_dir = Path(args.model)
    if not modeldir.is_model_dir(model_dir) and not model_dir.is_dir():
        model_dir = Workspace().model_path(args.model)
    load_model(model_dir)  # a broken config.json or model.safetensors is named before anything else
    data = model_data_path(model_dir, args.data)
    same = True  # (only consulted for a model without a saved split)
    if args.data is not None:
        try:
            same = Path(args.data).resolve() == Path(model_data_path(model_dir, None)).resolve()
        except (ValueError, FileNotFoundError):
            same = None
    # What the dashboard computed (or the shipped default carries) is reused: the workspace's features file
    # of this data (embedded once, with the model's own backbone) and its expert descriptions.
    from ..app.pipeline import backbone_spec_for, load_model
    from ..evaluate.metrics import score_pairs

    ws = Workspace()
    model = load_model(model_dir)
    features = ws.features_for(data, backbone_spec_for(model))
    if features.dim != model.config.input_dim:
        raise ValueError(
            f"{data}: {features.dim}-d features, but the model expects {model.config.input_dim}-d inputs"
        )
    scores = score_pairs(model, features)
    described = ws.descriptions_for(model_dir, Path(data), model, features, scores)
    result = build_report(
        model_dir,
        data,
        args.out,
        model=model,
        features=features,
        scores=scores,
        descriptions=described,
        same_file=same,
        pngs=not args.no_png,
    )
    print(
        f"wrote {result.html}"
        + (
            f" and {len(result.pngs)} PNG figures in {result.pngs[0].parent}"
            if result.pngs
            else ""
            if args.no_png
            else f" (no PNG figures: {result.png_error})"
        )
    )
    return 0
