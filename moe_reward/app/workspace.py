"""The dashboard's workspace: one directory holding models, cached features, uploads, projections, labels.

Layout (root = ``$MOE_REWARD_HOME`` or ``./workspace``; data files also come from the repository's
``data/`` folder, or ``$MOE_REWARD_DATA_DIR``)::

    models/<name>/{config.json, model.safetensors, metrics.json, split_ids.json}   (see model/modeldir.py)
    features/<hash>.safetensors     embedded data files, keyed by file, mtime and backbone
    uploads/<file>                  preference files uploaded through the dashboard
    projections/<hash>.*            cached 2-D maps (see projection.py)
    descriptions/<hash>.json        cached expert descriptions (see describe.py)
    slices/<name>.json              saved slices: named sets of pair ids (see slices.py)
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
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import MoeRewardError
from ..data.pairs import default_dataset_path
from ..embed.backbone import BackboneSpec
from ..embed.features import MANIFEST, PairFeatures, is_features_path
from ..embed.pairs import load_features_or_pairs
from ..model import modeldir

DEFAULT_MODEL = "default-sparse"
DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".pq", ".safetensors")
GZIPPED = (".jsonl.gz", ".ndjson.gz", ".json.gz", ".csv.gz")  # data.load_pairs reads these too
REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
ProgressFn = Callable[[str, float], object]  # (stage description, fraction done in [0, 1]); return ignored


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


class ModelNameTaken(MoeRewardError):
    """A model name that exists, or that another session is training right now."""


class UploadExists(MoeRewardError):
    """An upload would replace a file of uploads/ that the user did not choose to replace."""


def data_stem(name: str) -> str:
    """A data file's name without its data suffix ('victim.csv.gz' -> 'victim', 'a.b.jsonl' -> 'a.b')."""
    lower = name.lower()
    for suffix in (*GZIPPED, *DATA_SUFFIXES, ".gz"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


class Workspace:
    def __init__(self, root: str | Path | None = None, data_dir: str | Path | None = None):
        self.root = Path(root).resolve() if root is not None else default_root()
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else default_data_dir()
        self.read_only: str | None = (
            None  # why nothing can be written here (a read-only mount, a full disk...)
        )
        try:
            for sub in (
                self.models_dir,
                self.features_dir,
                self.uploads_dir,
                self.projections_dir,
                self.experiments_dir,
                self.descriptions_dir,
                self.slices_dir,
            ):
                sub.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as exc:
            self.read_only = f"the workspace {self.root} cannot be written ({exc.strerror or exc})"
        self.model_notes: dict[str, str] = {}  # model directories skipped by list_models, and why

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
    def slices_dir(self) -> Path:
        return self.root / "slices"

    @property
    def labels_db(self) -> Path:
        return self.root / "labels.sqlite"

    # ------------------------------------------------------------------ models
    def list_models(self) -> list[str]:
        """Saved models that load, the default one first. A directory that does not load (a truncated
        or hostile file, an unreadable metrics.json) is skipped; `model_notes` says why."""
        names, notes = [], {}
        if not self.models_dir.is_dir():
            return []
        for d in sorted(self.models_dir.iterdir()):
            if not d.is_dir() or d.name.startswith(".") or not modeldir.is_model_dir(d):
                continue  # hidden (staging) directories and folders that are not models
            problem = model_problem(d)
            if problem is None:
                names.append(d.name)
            else:
                notes[d.name] = problem
        self.model_notes = notes
        return sorted(names, key=lambda n: n != DEFAULT_MODEL)

    def model_path(self, name: str) -> Path:
        """The directory of model `name`, which must lie inside models/ (no '..', no absolute paths)."""
        if not name or Path(name).is_absolute():
            raise ValueError(f"model {name!r}: give a name inside the models directory")
        path = (self.models_dir / name).resolve()
        if path.parent != self.models_dir.resolve():
            raise ValueError(f"model {name!r}: resolves outside {self.models_dir}")
        return path

    # ------------------------------------------------------------------ training into the workspace
    @contextmanager
    def reserve_model(self, name: str, overwrite: bool = False) -> Iterator[Path]:
        """Hold model name `name` while it is being trained: exactly one holder at a time, in this process
        and across processes (an O_EXCL lock file; one left by a dead process is taken over). Raises
        `ModelNameTaken` when another session holds it, or when the model exists and not `overwrite`.
        Yields the model's final directory; `install_model` moves a finished model there."""
        held = self.acquire_model_name(name, overwrite)
        try:
            yield self.model_path(name)
        finally:
            release_model_name(held)

    def acquire_model_name(self, name: str, overwrite: bool = False) -> tuple[Path, str]:
        """`reserve_model` without the context: returns the reservation for `release_model_name`."""
        check_name(name, "model name")
        if self.read_only:
            raise OSError(f"cannot train into {self.models_dir}: {self.read_only}")
        lock = self.models_dir / f".{name}.lock"
        key = _new_lock_key()
        # The lock file appears whole or not at all: written under a private name, then hard-linked to
        # the lock's name (link fails when the name exists), so nobody ever reads a half-written one.
        draft = self.models_dir / f".{name}.lock-{key}"
        try:
            draft.write_text(json.dumps({"pid": os.getpid(), "key": key}))
        except OSError as exc:
            raise OSError(f"cannot train into {self.models_dir}: {exc.strerror or exc}") from exc
        _held_locks.add(key)  # before the link: a thread of this process reading the lock sees it held
        try:
            for attempt in range(2):
                try:
                    os.link(draft, lock)
                    break
                except FileExistsError:
                    if attempt or _lock_alive(lock):
                        raise ModelNameTaken(
                            f"model {name!r} is being trained by another session right now; "
                            "pick another name or wait for it"
                        ) from None
                    lock.unlink(missing_ok=True)  # left behind by a process that died
        except BaseException:
            _held_locks.discard(key)
            raise
        finally:
            draft.unlink(missing_ok=True)
        held = (lock, key)
        try:
            if self.model_path(name).exists() and not overwrite:
                raise ModelNameTaken(f"a model named {name!r} exists; tick 'Replace' or pick another name")
        except BaseException:
            release_model_name(held)
            raise
        return held

    def train_in_background(self, name: str, req, overwrite: bool = False):
        """Train models/<name> from `req` (pipeline.TrainRequest) as a background job "train:<name>":
        the name is reserved first (raises `ModelNameTaken` at once when another session has it), the
        data is embedded through its own keyed job (so a page asking for the same file waits for the same
        work), the model trains in a hidden staging directory and appears under its name in one rename.
        The job's result is the model's metrics."""
        from . import jobs
        from .pipeline import train_from_data

        key = f"train:{name}"
        held = self.acquire_model_name(name, overwrite)
        try:
            if jobs.get(key) is not None:  # an earlier training of this name (finished, or finishing: its
                jobs.wait(key, timeout=30)  # reservation is released just before its job is marked done)
                jobs.forget(key)
            spec = BackboneSpec(req.backbone, max_length=req.max_length)

            def run(report):
                staging = self.models_dir / f".training-{uuid.uuid4().hex}"  # invisible until complete
                try:
                    embedding = self.features_in_background(req.data, spec)
                    feats = None
                    if embedding is not None:
                        while embedding.active:
                            report(
                                f"embedding {Path(req.data).name}: {embedding.message or 'starting'}",
                                0.5 * embedding.fraction,
                            )
                            jobs.wait(embedding.key, timeout=0.25)
                        if embedding.status == jobs.FAILED:
                            raise RuntimeError(f"embedding {Path(req.data).name} failed: {embedding.error}")
                        feats = embedding.result
                    if feats is None:
                        report(f"reading the features of {Path(req.data).name}", 0.5)
                        feats = self.features_for(req.data, spec, progress=lambda m, f: report(m, 0.5 * f))
                    _, metrics = train_from_data(req, staging, stage=report, features=feats)
                    self.install_model(staging, name, overwrite)
                    return metrics
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                    release_model_name(held)

            try:  # the embedding it waits for is shown as this job (one piece of work, one entry)
                covers: tuple[str, ...] = (self.features_job_key(req.data, spec),)
            except OSError:
                covers = ()  # (a missing file: the job itself reports it)
            job = jobs.submit(key, run, f"training {name}")
            job.covers = covers
        except BaseException:
            release_model_name(held)
            raise
        return job

    def install_model(self, staging: Path, name: str, overwrite: bool = False) -> Path:
        """Move a finished model from its staging directory to models/<name> in one rename. Without
        `overwrite` an existing model is never replaced (the rename fails instead)."""
        out = self.model_path(name)
        if out.exists() and overwrite:
            old = self.models_dir / f".replaced-{name}-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
            return out
        try:
            os.rename(staging, out)  # atomic; fails if `out` appeared meanwhile (and is not empty)
        except OSError as exc:
            raise ModelNameTaken(
                f"a model named {name!r} appeared while this one trained; it was kept and "
                "the new one was not saved"
            ) from exc
        return out

    # ------------------------------------------------------------------ data
    def list_data(self) -> list[DataFile]:
        """Preference and features files of the repository's data/ folder, then the uploads."""
        out: list[DataFile] = []
        for base, tag in ((self.data_dir, "data"), (self.uploads_dir, "uploads")):
            if not base.is_dir():
                continue
            # A folder of feature shards (moe-reward embed --engine ray) is one entry, not one per shard;
            # a model directory (the shipped default model, data/controlled/default-model/) is no data.
            shard_dirs = {m.parent for m in base.rglob(MANIFEST)}
            model_dirs = {
                m.parent for m in base.rglob("model.safetensors") if (m.parent / "config.json").is_file()
            }
            for path in sorted(base.rglob("*")):
                hidden = any(
                    part.startswith(".") for part in path.relative_to(base).parts
                )  # e.g. upload checks
                if hidden or any(parent in shard_dirs for parent in path.parents):
                    continue
                if path in model_dirs or any(parent in model_dirs for parent in path.parents):
                    continue
                if path in shard_dirs or (path.is_file() and is_data_file(path.name)):
                    out.append(DataFile(f"{tag}/{path.relative_to(base).as_posix()}", path))
        default = self.default_data_path()
        return sorted(out, key=lambda d: d.path != default)

    def default_data_path(self) -> Path:
        """The controlled dataset: its shipped features file when present (no embedding needed), else pairs."""
        folder = self.data_dir / "controlled"
        candidates = [
            folder / "features.safetensors",
            folder / default_dataset_path().name,
            folder / "pairs.jsonl",
        ]
        return next((c for c in candidates if c.is_file()), candidates[1])

    def upload_path(self, filename: str) -> Path:
        return self.uploads_dir / check_name(Path(filename).name, "file name")

    def upload_target(self, filename: str, valid_rows_only: bool = False) -> Path:
        """Where an upload is saved: uploads/<its name>, or uploads/<its stem>.jsonl for the valid rows of a
        file with malformed ones. The page asks this once, for its warning and for the save alike."""
        name = check_name(Path(filename).name, "file name")
        return self.upload_path(data_stem(name) + ".jsonl" if valid_rows_only else name)

    def save_upload(self, target: Path, write: Callable[[str], object], replace: str | None = None) -> Path:
        """Write an upload to `target` (from `upload_target`), atomically. A file already there is
        replaced only when `replace` names it (the user's explicit choice, naming the file that goes);
        otherwise `UploadExists` and nothing changes on disk, even if the file appeared meanwhile."""
        from ..core import atomic

        target = Path(target)
        if target.parent.resolve() != self.uploads_dir.resolve():
            raise ValueError(f"{target}: uploads are saved in {self.uploads_dir}")
        if self.read_only:
            raise OSError(f"cannot save uploads/{target.name}: {self.read_only}")
        try:
            return atomic.write_with(target, write, replace=replace == target.name)
        except FileExistsError:
            raise UploadExists(
                f"uploads/{target.name} exists and was not replaced (nothing was saved): choose to replace "
                f"uploads/{target.name}, or rename your file"
            ) from None

    def list_experiments(self) -> list[Path]:
        return sorted(self.experiments_dir.glob("*/results.json"))

    # ------------------------------------------------------------------ features
    def features_file(self, data: Path, spec: BackboneSpec) -> Path:
        stat = data.stat()
        key = (
            f"{data.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{spec.name}|{spec.pooling}|{spec.max_length}"
        )
        if (spec.runtime, spec.precision, spec.template) != ("torch", "auto", "auto"):  # other embeddings
            key += f"|{spec.runtime}|{spec.precision}|{spec.template}"
        return self.features_dir / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.safetensors"

    def features_for(
        self, data: str | Path, spec: BackboneSpec | None = None, progress: ProgressFn | None = None
    ) -> PairFeatures:
        """Features of a data file, embedded once and then read from features/ (a features file as is)."""
        data = self.default_data_path() if str(data) == "controlled" else Path(data)
        if is_features_path(data):  # a features file or a folder of shards: used as is
            return PairFeatures.load(data)
        spec = spec or BackboneSpec()
        cached = self.features_file(data, spec)
        if cached.is_file():
            return PairFeatures.load(cached)
        say = progress or (lambda _m, _f: None)
        say(f"reading {data.name} and loading the backbone {spec.name}", 0.0)
        preload_backbone_imports()
        feats = load_features_or_pairs(
            data, backbone=spec, progress=lambda d, t: say(f"embedding {d}/{t} texts", d / max(t, 1))
        )
        if self.read_only is None:
            tmp = cached.with_name(f".{cached.stem}-{uuid.uuid4().hex[:8]}.safetensors")
            try:
                feats.save(tmp)
                os.replace(tmp, cached)  # whole or absent: never a truncated features file
            except OSError:
                tmp.unlink(missing_ok=True)  # a full disk: embedded, used, just not kept
        return feats

    def features_job_key(self, data: str | Path, spec: BackboneSpec | None = None) -> str:
        data = self.default_data_path() if str(data) == "controlled" else Path(data)
        return f"embed:{self.features_file(data, spec or BackboneSpec()).name}"

    def features_in_background(self, data: str | Path, spec: BackboneSpec | None = None):
        """Embed a data file once, in the background (moe_reward.jobs), keyed by the features file it
        will write: a rerun, another page or another session asking for the same file gets the same job
        and its progress. Returns the job; None when nothing needs embedding (features file or cache)."""
        from . import jobs

        data = self.default_data_path() if str(data) == "controlled" else Path(data)
        spec = spec or BackboneSpec()
        if is_features_path(data) or self.features_file(data, spec).is_file():
            return None
        key = self.features_job_key(data, spec)
        job = jobs.get(key)
        if job is not None and job.status == jobs.DONE:
            jobs.forget(key)  # done before, but its features file is gone: embed again
        cached = self.features_file(data, spec)

        def run(report):
            feats = self.features_for(data, spec, progress=report)
            return None if cached.is_file() else feats  # kept in memory only when it could not be saved

        return jobs.submit(key, run, f"embedding {data.name}")

    # ------------------------------------------------------------------ the default artifact
    def has_default(self) -> bool:
        return DEFAULT_MODEL in self.list_models()

    def ensure_default(
        self, progress: ProgressFn | None = None, force: bool = False, train: bool = False
    ) -> Path:
        """The default sparse model on the controlled dataset, and its PCA map (once). The model the
        repository ships (moe_reward.app.shipped) is installed when it matches this code and data; else (or
        with `train`) it is trained here, as the shipped one was."""
        from ..evaluate.projection import ProjectionParams, project
        from . import shipped as ship
        from .pipeline import train_from_data

        say = progress or (lambda _m, _f: None)
        out = self.model_path(DEFAULT_MODEL)
        if self.has_default() and not force:
            return out
        data = self.default_data_path()
        if not data.is_file():
            raise FileNotFoundError(f"{data}: the controlled dataset is missing (moe-reward make-dataset)")
        say("loading the controlled dataset", 0.0)
        feats = self.features_for(data, progress=lambda m, f: say(m, 0.6 * f))
        shipped = ship.shipped_dir(data)
        why = "asked to train" if train else ship.problem(shipped, data, feats)
        if why is None:
            say("installing the default model that ships with the repository", 0.6)
            staging = ship.install(shipped, self.models_dir / f".shipped-{uuid.uuid4().hex[:8]}")
            try:
                self.install_model(staging, DEFAULT_MODEL, overwrite=force)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            described = ship.descriptions(shipped)
            if described is not None and self.read_only is None:
                from ..evaluate.describe import save_descriptions

                save_descriptions(described, self.descriptions_file(file_id(out), file_id(data)))
        else:
            if shipped.exists() and not train:
                say(f"training the default model here ({why})", 0.6)

            def stage(msg: str, frac: float) -> None:
                say(msg, 0.6 + 0.35 * frac)

            train_from_data(ship.default_request(feats), out, stage=stage, features=feats)
        say("projecting (PCA)", 0.97)
        project(feats, ProjectionParams(method="pca"), self.projections_dir, key_parts=(str(out), str(data)))
        say("ready", 1.0)
        return out

    # ------------------------------------------------------------------ expert descriptions
    def descriptions_file(self, model_fid: str, data_fid: str) -> Path:
        """Where the expert descriptions of a model (file id) on a data file (file id) are kept."""
        key = hashlib.sha1(f"{model_fid}|{data_fid}".encode()).hexdigest()[:20]
        return self.descriptions_dir / f"{key}.json"

    def descriptions_for(self, model_dir: Path, data: Path, model, features, scores) -> list:
        """describe.py's expert descriptions of a model on a data file: read from descriptions/ when they
        were made before (by the dashboard, the report or the shipped default), else made and kept."""
        from ..evaluate.describe import describe_experts, load_descriptions, save_descriptions

        path = self.descriptions_file(file_id(model_dir), file_id(data))
        if path.is_file():
            try:
                return load_descriptions(path)
            except (ValueError, KeyError, TypeError, OSError):
                pass  # an older format: describe again
        out = describe_experts(model, features, scores)
        if self.read_only is None:
            try:
                save_descriptions(out, path)
            except OSError:
                pass  # a full disk: described, used, just not kept
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


def model_id(model_dir: str | Path) -> str:
    """The cache key of what a saved model computes: `file_id` of its directory, except that config.json
    counts by its content without `expert_names`, so naming an expert (which rewrites only config.json)
    keeps every score, description and map computed for the model."""
    d = Path(model_dir)
    parts = []
    for c in sorted(d.iterdir()):
        if not c.is_file():
            continue
        if c.name == "config.json":
            try:
                raw = json.loads(c.read_text(encoding="utf-8"))
                raw.pop("expert_names", None)
                digest = hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]
            except (OSError, ValueError, AttributeError):
                digest = str(c.stat().st_mtime_ns)
            parts.append(f"config.json:{digest}")
        else:
            parts.append(f"{c.name}:{c.stat().st_mtime_ns}")
    return f"{d.resolve()}|{'|'.join(parts)}"


# ----------------------------------------------------------------------------- model directories

_checked: dict[str, tuple[str, str | None]] = {}  # directory -> (file id, problem) of the last check
_checked_lock = threading.Lock()


def model_problem(model_dir: str | Path) -> str | None:
    """Why a model directory cannot be used (one line naming the file), or None when it loads. Checked
    once per version of its files (file ids), so listing models on every page run stays cheap."""
    from ..model.moe import SparseMoERewardModel

    d = Path(model_dir)
    try:
        fid = file_id(d)
    except OSError as exc:
        return f"{d}: {exc.strerror or exc}"
    with _checked_lock:
        seen = _checked.get(str(d))
    if seen is not None and seen[0] == fid:
        return seen[1]
    problem = None
    try:
        SparseMoERewardModel.from_pretrained(d)
        modeldir.read_metrics(d)  # its other files too: a page never meets a broken one
        modeldir.read_split_ids(d, strict=False)
    except (ValueError, OSError, RuntimeError, KeyError, TypeError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if str(d) not in problem:
            problem = f"{d.name}: {problem}"
    except Exception as exc:  # noqa: BLE001 - e.g. safetensors' own error type for a truncated file
        problem = (
            f"{d / 'model.safetensors'}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
    with _checked_lock:
        _checked[str(d)] = (fid, problem)
    return problem


# ----------------------------------------------------------------------------- name reservations

_held_locks: set[str] = set()  # keys of the lock files this process holds


def release_model_name(held: tuple[Path, str]) -> None:
    lock, key = held
    if key in _held_locks:
        _held_locks.discard(key)
        lock.unlink(missing_ok=True)


def _new_lock_key() -> str:
    return uuid.uuid4().hex


def _lock_alive(lock: Path) -> bool:
    """Whether a model-name lock file belongs to a live holder (this process, or another live process)."""
    try:
        info = json.loads(lock.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # unreadable: never taken over
    pid, key = info.get("pid"), info.get("key")
    if pid == os.getpid():
        return key in _held_locks
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- the backbone's imports

_import_lock = threading.Lock()
_imported = False


def preload_backbone_imports() -> None:
    """Import what the backbone needs (transformers' AutoModel and AutoTokenizer) once, under a lock.

    transformers resolves these names lazily, and two threads resolving them for the first time at once
    can fail with "cannot import name 'AutoModel' from 'transformers'": the dashboard embeds in several
    threads (sessions, background jobs), so every embedding path here resolves them first."""
    global _imported
    if _imported:
        return
    with _import_lock:
        if not _imported:
            from transformers import AutoModel, AutoTokenizer  # noqa: F401

            _imported = True
