"""2-D maps of prompt or pair embeddings: PCA (instant) and UMAP (slow, cached on disk).

UMAP costs ~10 s to import and 25-35 s of numba compilation on its first fit, so it runs only on an
explicit request and its result is cached under a key of (model, dataset, parameters); the cache is a
safetensors file of coordinates plus a JSON sidecar, never a pickle.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .embed import PairFeatures

METHODS = ("pca", "umap")
SOURCES = ("prompt", "pair")  # router input, or the preference direction (chosen - rejected)
METRICS = ("cosine", "euclidean")
ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class ProjectionParams:
    method: str = "pca"
    source: str = "prompt"
    n_neighbors: int = 15  # UMAP only
    min_dist: float = 0.1  # UMAP only
    metric: str = "cosine"  # UMAP only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if not 2 <= self.n_neighbors <= 200:
            raise ValueError(f"n_neighbors must be in [2, 200], got {self.n_neighbors}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise ValueError(f"min_dist must be in [0, 1], got {self.min_dist}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")

    def key_fields(self) -> dict:
        """Parameters that change the result (PCA ignores the UMAP ones)."""
        d = asdict(self)
        return d if self.method == "umap" else {"method": "pca", "source": self.source}


@dataclass
class Projection:
    coords: np.ndarray  # [N, 2]
    params: ProjectionParams
    seconds: float
    cached: bool


def embedding_matrix(features: PairFeatures, source: str) -> np.ndarray:
    if source == "prompt":
        return np.asarray(features.prompt, dtype=np.float32)
    diff = np.asarray(features.chosen, dtype=np.float32) - np.asarray(features.rejected, dtype=np.float32)
    norm = np.linalg.norm(diff, axis=1, keepdims=True)
    return diff / np.clip(norm, 1e-8, None)  # direction only: how a pair differs, not by how much


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Top-2 principal components, signs fixed (largest loading positive) so maps do not flip."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return np.zeros((len(x), 2), dtype=np.float32)
    centered = x - x.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    basis = vt[:2]
    if basis.shape[0] < 2:
        basis = np.vstack([basis, np.zeros((2 - basis.shape[0], x.shape[1]))])
    signs = np.sign(basis[np.arange(2), np.abs(basis).argmax(1)])
    signs[signs == 0] = 1
    return (centered @ (basis * signs[:, None]).T).astype(np.float32)


def umap_2d(x: np.ndarray, params: ProjectionParams, progress: ProgressFn | None = None) -> np.ndarray:
    say = progress or (lambda _m, _f: None)
    say("importing umap (about 10 s the first time)", 0.05)
    import umap  # slow import: only here, only on request

    n = len(x)
    if n < 4:
        return pca_2d(x)
    say(f"fitting UMAP on {n} points (the first fit compiles, 25-35 s)", 0.3)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(params.n_neighbors, n - 1), min_dist=params.min_dist,
                        metric=params.metric, random_state=params.seed, n_jobs=1)
    coords = reducer.fit_transform(np.asarray(x, dtype=np.float32))
    return np.asarray(coords, dtype=np.float32)


def cache_key(params: ProjectionParams, key_parts: Sequence[str], n: int) -> str:
    body = json.dumps({"params": params.key_fields(), "parts": list(key_parts), "n": n}, sort_keys=True)
    return hashlib.sha1(body.encode()).hexdigest()[:24]


def load_cached(cache_dir: str | Path | None, key: str, n: int) -> np.ndarray | None:
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"{key}.safetensors"
    if not path.is_file() or not path.with_suffix(".json").is_file():
        return None
    coords = load_file(str(path))["coords"]
    return coords if coords.shape == (n, 2) else None


def save_cached(cache_dir: str | Path, key: str, coords: np.ndarray, meta: dict) -> None:
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    save_file({"coords": np.ascontiguousarray(coords, dtype=np.float32)}, str(root / f"{key}.safetensors"))
    # The sidecar is written last: a cache entry counts only once both files exist.
    (root / f"{key}.json").write_text(json.dumps(meta, indent=2))


def is_cached(features: PairFeatures, params: ProjectionParams, cache_dir: str | Path | None,
              key_parts: Sequence[str] = ()) -> bool:
    return load_cached(cache_dir, cache_key(params, key_parts, len(features)), len(features)) is not None


def project(features: PairFeatures, params: ProjectionParams, cache_dir: str | Path | None = None,
            key_parts: Sequence[str] = (), progress: ProgressFn | None = None) -> Projection:
    """2-D coordinates of each pair, from the disk cache when present (`key_parts`: model and data ids)."""
    key = cache_key(params, key_parts, len(features))
    hit = load_cached(cache_dir, key, len(features))
    if hit is not None:
        return Projection(hit, params, 0.0, True)
    t0 = time.perf_counter()
    x = embedding_matrix(features, params.source)
    coords = pca_2d(x) if params.method == "pca" else umap_2d(x, params, progress)
    seconds = time.perf_counter() - t0
    if cache_dir is not None:
        save_cached(cache_dir, key, coords, {"params": asdict(params), "key_parts": list(key_parts),
                                             "n": len(features), "seconds": round(seconds, 3)})
    if progress:
        progress("done", 1.0)
    return Projection(coords, params, seconds, False)
