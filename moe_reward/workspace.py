"""The dashboard's workspace: one directory holding models, cached features, uploads, projections, labels.

Layout (root = ``$MOE_REWARD_HOME`` or ``./workspace``; data files also come from the repository's
``data/`` folder, or ``$MOE_REWARD_DATA_DIR``)::

    models/<name>/{config.json, model.safetensors, metrics.json}
    features/<hash>.safetensors     embedded data files, keyed by file, mtime and backbone
    uploads/<file>                  preference files uploaded through the dashboard
    projections/<hash>.*            cached 2-D maps (see projection.py)
    descriptions/<hash>.json        cached expert descriptions (see describe.py)
    experiments/<name>/results.json experiment outputs (see experiment.py)
    labels.sqlite                   annotators, profiles and labels (see store.py)

`ensure_default` builds what a fresh clone needs to show something at once: the controlled dataset's
features, a trained sparse model and its PCA map.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data import default_dataset_path
from .embed import MANIFEST, BackboneSpec, PairFeatures, is_features_path, load_features_or_pairs

DEFAULT_MODEL = "default-sparse"
DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".pq", ".safetensors")
GZIPPED = (".jsonl.gz", ".ndjson.gz", ".json.gz", ".csv.gz")  # data.load_pairs reads these too
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
ProgressFn = Callable[[str, float], None]  # (stage description, fraction done in [0, 1])


def default_root() -> Path:
    return Path(os.environ.get("MOE_REWARD_HOME") or "workspace").resolve()


def default_data_dir() -> Path:
    """The repository's data/ folder; ``$MOE_REWARD_DATA_DIR`` points elsewhere (tests use an empty one)."""
    return Path(os.environ.get("MOE_REWARD_DATA_DIR") or REPO_DATA_DIR).resolve()


def check_name(name: str, what: str = "name") -> str:
    """Model and upload names become path components: letters, digits, '.', '_' and '-' only."""
    if not SAFE_NAME.match(name or "") or ".." in name:
        raise ValueError(f"{what} {name!r}: use 1-80 letters, digits, '.', '_' or '-' (no '..', no '/')")
    return name


@dataclass(frozen=True)
class DataFile:
    label: str  # what the selector shows
    path: Path


class Workspace:
    def __init__(self, root: str | Path | None = None, data_dir: str | Path | None = None):
        self.root = Path(root).resolve() if root is not None else default_root()
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else default_data_dir()
        for sub in (self.models_dir, self.features_dir, self.uploads_dir, self.projections_dir, self.experiments_dir,
                    self.descriptions_dir):
            sub.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ layout
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def uploads_dir(self) -> Path:
        return self.root / "uploads"

    @property
    def projections_dir(self) -> Path:
        return self.root / "projections"

    @property
    def experiments_dir(self) -> Path:
        return self.root / "experiments"

    @property
    def descriptions_dir(self) -> Path:
        return self.root / "descriptions"

    @property
    def labels_db(self) -> Path:
        return self.root / "labels.sqlite"

    # ------------------------------------------------------------------ models
    def list_models(self) -> list[str]:
        """Saved models (directories with config.json + model.safetensors), the default one first."""
        names = sorted(d.name for d in self.models_dir.iterdir()
                       if d.is_dir() and not d.name.startswith(".") and (d / "config.json").is_file() and (d / "model.safetensors").is_file())
        return sorted(names, key=lambda n: n != DEFAULT_MODEL)

    def model_path(self, name: str) -> Path:
        """The directory of model `name`, which must lie inside models/ (no '..', no absolute paths)."""
        if not name or Path(name).is_absolute():
            raise ValueError(f"model {name!r}: give a name inside the models directory")
        path = (self.models_dir / name).resolve()
        if path.parent != self.models_dir.resolve():
            raise ValueError(f"model {name!r}: resolves outside {self.models_dir}")
        return path

    # ------------------------------------------------------------------ data
    def list_data(self) -> list[DataFile]:
        """Preference and features files of the repository's data/ folder, then the uploads."""
        out: list[DataFile] = []
        for base, tag in ((self.data_dir, "data"), (self.uploads_dir, "uploads")):
            if not base.is_dir():
                continue
            # A folder of feature shards (moe-reward embed --engine ray) is one entry, not one per shard.
            shard_dirs = {m.parent for m in base.rglob(MANIFEST)}
            for path in sorted(base.rglob("*")):
                hidden = any(part.startswith(".") for part in path.relative_to(base).parts)  # e.g. upload checks
                if hidden or any(parent in shard_dirs for parent in path.parents):
                    continue
                if path in shard_dirs or (path.is_file() and is_data_file(path.name)):
                    out.append(DataFile(f"{tag}/{path.relative_to(base).as_posix()}", path))
        default = self.default_data_path()
        return sorted(out, key=lambda d: d.path != default)

    def default_data_path(self) -> Path:
        """The controlled dataset: its shipped features file when present (no embedding needed), else pairs."""
        folder = self.data_dir / "controlled"
        candidates = [folder / "features.safetensors", folder / default_dataset_path().name, folder / "pairs.jsonl"]
        return next((c for c in candidates if c.is_file()), candidates[1])

    def upload_path(self, filename: str) -> Path:
        return self.uploads_dir / check_name(Path(filename).name, "file name")

    def list_experiments(self) -> list[Path]:
        return sorted(self.experiments_dir.glob("*/results.json"))

    # ------------------------------------------------------------------ features
    def features_file(self, data: Path, spec: BackboneSpec) -> Path:
        stat = data.stat()
        key = f"{data.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{spec.name}|{spec.pooling}|{spec.max_length}"
        if (spec.runtime, spec.precision, spec.template) != ("torch", "auto", "auto"):  # other embeddings
            key += f"|{spec.runtime}|{spec.precision}|{spec.template}"
        return self.features_dir / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.safetensors"

    def features_for(self, data: str | Path, spec: BackboneSpec | None = None,
                     progress: ProgressFn | None = None) -> PairFeatures:
        """Features of a data file, embedded once and then read from features/ (a features file as is)."""
        data = self.default_data_path() if str(data) == "controlled" else Path(data)
        if is_features_path(data):  # a features file or a folder of shards: used as is
            return PairFeatures.load(data)
        spec = spec or BackboneSpec()
        cached = self.features_file(data, spec)
        if cached.is_file():
            return PairFeatures.load(cached)
        say = progress or (lambda _m, _f: None)
        feats = load_features_or_pairs(data, backbone=spec,
                                       progress=lambda d, t: say(f"embedding {d}/{t} texts", d / max(t, 1)))
        feats.save(cached)
        return feats

    # ------------------------------------------------------------------ the default artifact
    def has_default(self) -> bool:
        return DEFAULT_MODEL in self.list_models()

    def ensure_default(self, progress: ProgressFn | None = None, force: bool = False) -> Path:
        """Features of the controlled dataset, a trained default sparse model and its PCA map (once)."""
        from .pipeline import TrainRequest, train_from_data
        from .projection import ProjectionParams, project

        say = progress or (lambda _m, _f: None)
        out = self.model_path(DEFAULT_MODEL)
        if self.has_default() and not force:
            return out
        data = self.default_data_path()
        if not data.is_file():
            raise FileNotFoundError(f"{data}: the controlled dataset is missing (moe-reward make-dataset)")
        say("loading the controlled dataset", 0.0)
        feats = self.features_for(data, progress=lambda m, f: say(m, 0.6 * f))
        # Persona pairs are the held-out users of the Personalize page: never train on them. One expert
        # per criterion pole of the controlled data (12), two active per prompt.
        held_out = any(p.user is None for p in feats.pairs)  # only when something is left to train on
        req = TrainRequest(data=str(data), experts=12, top_k=2, exclude_user_pairs=held_out)
        train_from_data(req, out, stage=lambda m, f: say(m, 0.6 + 0.35 * f), features=feats)
        say("projecting (PCA)", 0.97)
        project(feats, ProjectionParams(method="pca"), self.projections_dir, key_parts=(str(out), str(data)))
        say("ready", 1.0)
        return out


def is_data_file(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(GZIPPED) or Path(lower).suffix in DATA_SUFFIXES


def file_id(path: str | Path) -> str:
    """Path + modification time + size: the cache key of anything derived from a file."""
    p = Path(path)
    if p.is_dir():
        parts = [f"{c.name}:{c.stat().st_mtime_ns}" for c in sorted(p.iterdir()) if c.is_file()]
        return f"{p.resolve()}|{'|'.join(parts)}"
    stat = p.stat()
    return f"{p.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"


def model_training_data(model_dir: str | Path) -> str | None:
    """The data file a saved model was trained on (from its metrics.json), if recorded."""
    path = Path(model_dir) / "metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("data")
