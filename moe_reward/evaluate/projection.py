"""2-D maps of the pairs: of what the model sees (routing, per-expert margins) or of the text embeddings.

Sources (what each point's vector is):
- ``router``: the router's logits (centred log of its softmax over experts): pairs that the router sends
  to the same experts land together, so experts appear as regions.
- ``margins``: the vector of per-expert margins (chosen − rejected), each expert standardized: pairs that
  the experts judge alike land together.
- ``prompt``: the prompt's text embedding (the router's raw input: what prompts are *about*).
- ``pair``: the direction chosen − rejected of the text embeddings.

Methods: ``anchors`` (router only: each expert is a fixed point on a circle and a pair sits at the mix of
the experts by its routing probabilities; instant at any size), ``pca`` (instant) and ``umap``
(non-linear; seconds once numba has compiled, ~30 s more the first time in a process on 4,096 points or
more and ~10 s below that, so the dashboard runs it as a background job). Results are cached on disk
under (model, data, parameters) as a safetensors file of coordinates plus a JSON sidecar (timings
included, which `estimate_seconds` reads), never a pickle. Measured on 2 cores for 5,000 pairs (bench/bench_map.py prints the first three): PCA
0.003 s on 12-d router logits and ~1 s on 384-d prompts; UMAP 4.2 s warm (12-d), 11 s warm (384-d
cosine), 34 s for the first fit of a process (numba compilation), which the dashboard starts in the
background as soon as UMAP is chosen; openTSNE 35 s (2 threads), PaCMAP 15 s (12-d, after its own
compilation; 30 s on 384-d), scikit-learn t-SNE 36-54 s. The anchors layout is instant at 1M pairs.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from ..core.atomic import write_text, write_with
from ..core.checks import check_choice, check_int, check_number
from ..embed.features import PairFeatures

METHODS = ("anchors", "pca", "umap")
SOURCES = ("router", "margins", "prompt", "pair")
MODEL_SOURCES = ("router", "margins")  # need the model's scores
METRICS = ("cosine", "euclidean")
ProgressFn = Callable[[str, float], object]  # (stage description, fraction done); return ignored

# Measured here (2 cores, 5,000 points), used until this workspace has timings of its own.
UMAP_WARM_SECONDS_5K = {"low": 4.0, "high": 11.3}  # 12-d router/margins; 384-d text embeddings
UMAP_COLD_EXTRA_SECONDS = 30.0  # import + numba compilation, once per process (bench_map.py: 34 s - 4 s)
# UMAP finds neighbours exactly below this many points and by nearest-neighbour descent from it on
# (umap.UMAP.fit): the two paths compile different numba code. Measured on 2 cores, cold then warm:
# 200 points 10.9 s then 0.2 s; 4,200 points 43.6 s then 3.6 s; a first 200-point fit after a 4,200-point
# one still compiled for 6.8 s.
UMAP_EXACT_BELOW = 4096
UMAP_COLD_EXTRA_SECONDS_EXACT = 10.0
UMAP_WARM_UP_POINTS = {"exact": 300, "descent": 4200}
_umap_warm: set[str] = set()  # the paths ("exact", "descent") a UMAP fit has finished on in this process
_umap_warm_lock = threading.Lock()


@dataclass(frozen=True)
class ProjectionParams:
    method: str = "pca"
    source: str = "prompt"
    n_neighbors: int = 15  # UMAP only
    min_dist: float = 0.1  # UMAP only
    metric: str = "cosine"  # UMAP only
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("source", self.source, SOURCES)
        if self.method == "anchors" and self.source != "router":
            raise ValueError(
                "the 'anchors' layout places pairs by their routing: use it with source 'router'"
            )
        check_int("n_neighbors", self.n_neighbors, 2, 200)
        check_number("min_dist", self.min_dist, 0.0, 1.0)
        check_choice("metric", self.metric, METRICS)
        check_int("seed", self.seed, 0, 2**32 - 1)  # (numpy's seed range)

    def key_fields(self) -> dict:
        """Parameters that change the result (PCA and anchors ignore the UMAP ones)."""
        d = asdict(self)
        return d if self.method == "umap" else {"method": self.method, "source": self.source}

    @property
    def needs_model(self) -> bool:
        return self.source in MODEL_SOURCES

    def title(self) -> str:
        what = {
            "router": "router logits",
            "margins": "per-expert margins",
            "prompt": "prompt text embeddings",
            "pair": "preference directions (chosen − rejected)",
        }[self.source]
        how = {"anchors": "Experts as anchors, pairs at their routing mix", "pca": "PCA", "umap": "UMAP"}[
            self.method
        ]
        return f"{how} of {what}" if self.method != "anchors" else how


@dataclass
class Projection:
    coords: np.ndarray  # [N, 2]
    params: ProjectionParams
    seconds: float
    cached: bool


# ----------------------------------------------------------------------------- the vectors


def embedding_matrix(features: PairFeatures, source: str, scores=None) -> np.ndarray:
    """[N, D] vectors to project. `scores` (analysis.PairScores) is needed for the model sources."""
    if source in MODEL_SOURCES:
        if scores is None:
            raise ValueError(f"source {source!r} needs the model's scores")
        if source == "router":
            return router_logits(scores.router_probs)
        m = np.asarray(scores.expert_margins, dtype=np.float32)
        return (m - m.mean(0)) / np.clip(m.std(0), 1e-6, None)
    if source == "prompt":
        return np.asarray(features.prompt, dtype=np.float32)
    diff = np.asarray(features.chosen, dtype=np.float32) - np.asarray(features.rejected, dtype=np.float32)
    norm = np.linalg.norm(diff, axis=1, keepdims=True)
    return diff / np.clip(norm, 1e-8, None)  # direction only: how a pair differs, not by how much


def router_logits(router_probs: np.ndarray) -> np.ndarray:
    """The router's logits up to a per-row constant (softmax ignores it): centred log-probabilities."""
    logp = np.log(np.clip(np.asarray(router_probs, dtype=np.float64), 1e-9, None))
    return (logp - logp.mean(1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- layouts


def pca_2d(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Top-2 principal components, signs fixed (largest loading positive) so maps do not flip.

    Through the D x D covariance, accumulated in chunks: O(N D^2) time and O(D^2) extra memory, so a
    million 384-d rows take seconds and no N x D float64 copy."""
    x = np.asarray(x)
    n = len(x)
    if n < 2:
        return np.zeros((n, 2), dtype=np.float32)
    d = x.shape[1]
    mean = np.zeros(d)
    for s in range(0, n, chunk):
        mean += x[s : s + chunk].astype(np.float64).sum(0)
    mean /= n
    cov = np.zeros((d, d))
    for s in range(0, n, chunk):
        c = x[s : s + chunk].astype(np.float64) - mean
        cov += c.T @ c
    vals, vecs = np.linalg.eigh(cov)
    basis = vecs[:, ::-1][:, :2].T  # [2, D], largest eigenvalues first
    if d < 2:
        basis = np.vstack([basis, np.zeros((2 - basis.shape[0], d))])
    signs = np.sign(basis[np.arange(2), np.abs(basis).argmax(1)])
    signs[signs == 0] = 1
    basis = basis * signs[:, None]
    out = np.empty((n, 2), dtype=np.float32)
    for s in range(0, n, chunk):
        out[s : s + chunk] = (x[s : s + chunk].astype(np.float64) - mean) @ basis.T
    return out


def anchor_positions(k: int) -> np.ndarray:
    """[K, 2] expert anchors on the unit circle, E0 at the top, then clockwise in numeric order."""
    angles = np.pi / 2 - 2 * np.pi * np.arange(k) / max(k, 1)
    return np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)


def anchors_2d(router_probs: np.ndarray) -> np.ndarray:
    """Each pair at the routing-probability-weighted mix of the expert anchors (RadViz on the simplex)."""
    p = np.asarray(router_probs, dtype=np.float32)
    return p @ anchor_positions(p.shape[1])


def umap_2d(
    x: np.ndarray, params: ProjectionParams, progress: ProgressFn | None = None, estimate: float | None = None
) -> np.ndarray:
    """UMAP; while it fits (it reports nothing itself) the progress follows the time estimate, capped at 95%."""
    say = progress or (lambda _m, _f: None)
    n = len(x)
    if n < 4:
        return pca_2d(x)
    say("importing umap", 0.02)
    import umap  # slow import: only here, only on request

    total = estimate or estimate_seconds(params, n, x.shape[1])
    done = threading.Event()
    t0 = time.perf_counter()

    def tick() -> None:
        while not done.wait(0.5):
            el = time.perf_counter() - t0
            say(
                f"UMAP on {n} points: {el:.0f} s of about {total:.0f} s (estimated from timings on this machine)",
                min(0.95, 0.05 + 0.9 * el / max(total, 1e-3)),
            )

    ticker = threading.Thread(target=tick, name="umap-progress", daemon=True)
    ticker.start()
    try:
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(params.n_neighbors, n - 1),
            min_dist=params.min_dist,
            metric=params.metric,
            random_state=params.seed,
            n_jobs=1,
        )
        coords = reducer.fit_transform(np.asarray(x, dtype=np.float32))
    finally:
        done.set()
        ticker.join(timeout=2)
    with _umap_warm_lock:
        _umap_warm.add(umap_path(n))
    return np.asarray(coords, dtype=np.float32)


def umap_path(n: int) -> str:
    """Which of UMAP's two code paths a fit of n points takes: "exact" neighbours or "descent"."""
    return "exact" if n < UMAP_EXACT_BELOW else "descent"


def umap_is_warm(n: int | None = None) -> bool:
    """Whether this process has already fitted a UMAP on the path of n points (numba compiled: later fits
    skip the compilation); n None: on either path."""
    with _umap_warm_lock:
        return bool(_umap_warm) if n is None else umap_path(n) in _umap_warm


def warm_up_umap(
    progress: ProgressFn | None = None, cache_dir: str | Path | None = None, n: int = UMAP_EXACT_BELOW
) -> float:
    """Compile, once in this process, the UMAP code that a map of n points runs, by fitting random points
    on the same path (`UMAP_WARM_UP_POINTS`: 300 below 4,096 points, where neighbours are exact; 4,200 from
    there on, so that the nearest-neighbour descent compiles too). The Expert map runs it as a background
    job as soon as UMAP is chosen, so that the fit requested next takes seconds; a small map does not pay
    for the large path's compilation (about 33 s more on 2 cores). Returns the seconds spent."""
    t0 = time.perf_counter()
    if not umap_is_warm(n):
        size = UMAP_WARM_UP_POINTS[umap_path(n)]
        x = np.random.default_rng(0).normal(size=(size, 8)).astype(np.float32)
        params = ProjectionParams("umap", "router", metric="euclidean")
        warm_part = estimate_seconds(params, len(x), x.shape[1], cache_dir, warm=True)
        umap_2d(
            x, params, progress, estimate=estimate_seconds(params, len(x), x.shape[1], cache_dir, warm=False)
        )
        if cache_dir is not None:  # what compiling cost here: later estimates use it
            root = Path(cache_dir)
            root.mkdir(parents=True, exist_ok=True)
            meta = {
                "params": asdict(params),
                "n": len(x),
                "dim": x.shape[1],
                "warm": False,
                "warm_up": True,
                "seconds": round(time.perf_counter() - t0, 3),
                "warm_estimate": round(warm_part, 3),
            }
            write_text(root / f"umap-warmup-{umap_path(size)}.json", json.dumps(meta, indent=2))
    if progress:
        progress("UMAP compiled", 1.0)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- time estimates


def _history(cache_dir: str | Path | None) -> list[dict]:
    if cache_dir is None or not Path(cache_dir).is_dir():
        return []
    out = []
    for path in sorted(Path(cache_dir).glob("*.json"))[-500:]:
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("params", {}).get("method") == "umap" and meta.get("seconds"):
            out.append(meta)
    return out


def estimate_seconds(
    params: ProjectionParams,
    n: int,
    dim: int,
    cache_dir: str | Path | None = None,
    warm: bool | None = None,
    compiling_for: float = 0.0,
) -> float:
    """Seconds a projection of n points will take here: this workspace's previous UMAP timings (warm
    ones, scaled as n^1.1) when there are any, else the timings measured on 2 cores, plus the one-off
    compilation when this process has not fitted a UMAP of n's path yet (`umap_path`; this workspace's
    own cold fits on that path when it has any; less `compiling_for` seconds when a warm-up is already
    under way)."""
    if params.method != "umap":
        return 0.05 + 2e-7 * n * dim
    warm = umap_is_warm(n) if warm is None else warm
    past = [
        m
        for m in _history(cache_dir)
        if m.get("warm") and m.get("n", 0) >= 100 and m.get("dim") and (m["dim"] > 64) == (dim > 64)
    ]
    if past:
        rates = [m["seconds"] / m["n"] ** 1.1 for m in past]
        base = float(np.median(rates)) * n**1.1
    else:
        base = UMAP_WARM_SECONDS_5K["high" if dim > 64 else "low"] * (n / 5000) ** 1.1
    if warm:
        return base
    path = umap_path(n)
    cold = [
        m["seconds"] - m.get("warm_estimate", 0)
        for m in _history(cache_dir)
        if not m.get("warm") and umap_path(int(m.get("n", 0))) == path
    ]
    shipped = UMAP_COLD_EXTRA_SECONDS if path == "descent" else UMAP_COLD_EXTRA_SECONDS_EXACT
    extra = float(np.median(cold)) if cold else shipped
    return base + max(extra - compiling_for, 0.0)


# ----------------------------------------------------------------------------- cache


def cache_key(params: ProjectionParams, key_parts: Sequence[str], n: int) -> str:
    body = json.dumps({"params": params.key_fields(), "parts": list(key_parts), "n": n}, sort_keys=True)
    return hashlib.sha1(body.encode()).hexdigest()[:24]


def load_cached(cache_dir: str | Path | None, key: str, n: int) -> np.ndarray | None:
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"{key}.safetensors"
    if not path.is_file() or not path.with_suffix(".json").is_file():
        return None
    if path.stat().st_size > 16 * n + 4096:  # float32 [n, 2] plus the header: bounded before reading
        return None
    try:
        coords = load_file(str(path))["coords"]
    except Exception:  # noqa: BLE001 - a truncated or foreign file is a cache miss, not an error
        return None
    return coords if coords.shape == (n, 2) else None


def save_cached(cache_dir: str | Path, key: str, coords: np.ndarray, meta: dict) -> None:
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    write_with(
        root / f"{key}.safetensors",
        lambda tmp: save_file({"coords": np.ascontiguousarray(coords, dtype=np.float32)}, tmp),
    )
    # The sidecar is written last: a cache entry counts only once both files exist.
    write_text(root / f"{key}.json", json.dumps(meta, indent=2))


def is_cached(
    features: PairFeatures,
    params: ProjectionParams,
    cache_dir: str | Path | None,
    key_parts: Sequence[str] = (),
) -> bool:
    return load_cached(cache_dir, cache_key(params, key_parts, len(features)), len(features)) is not None


def project(
    features: PairFeatures,
    params: ProjectionParams,
    cache_dir: str | Path | None = None,
    key_parts: Sequence[str] = (),
    progress: ProgressFn | None = None,
    scores=None,
) -> Projection:
    """2-D coordinates of each pair, from the disk cache when present (`key_parts`: model and data ids;
    `scores`: the model's analysis.PairScores, for the router and margins sources)."""
    n = len(features)
    key = cache_key(params, key_parts, n)
    hit = load_cached(cache_dir, key, n)
    if hit is not None:
        if progress:
            progress("from the cache", 1.0)
        return Projection(hit, params, 0.0, True)
    t0 = time.perf_counter()
    warm = umap_is_warm(n)
    if params.method == "anchors":
        if scores is None:
            raise ValueError("the anchors layout needs the model's scores")
        x = np.asarray(scores.router_probs, dtype=np.float32)
        coords = anchors_2d(x)
    else:
        x = embedding_matrix(features, params.source, scores)
        estimate = estimate_seconds(params, n, x.shape[1], cache_dir, warm)
        coords = pca_2d(x) if params.method == "pca" else umap_2d(x, params, progress, estimate)
    seconds = time.perf_counter() - t0
    if cache_dir is not None:
        meta = {
            "params": asdict(params),
            "key_parts": list(key_parts),
            "n": n,
            "dim": int(x.shape[1]),
            "seconds": round(seconds, 3),
            "warm": warm or params.method != "umap",
        }
        if params.method == "umap" and not warm:
            meta["warm_estimate"] = round(estimate_seconds(params, n, x.shape[1], cache_dir, warm=True), 3)
        save_cached(cache_dir, key, coords, meta)
    if progress:
        progress("done", 1.0)
    return Projection(coords, params, seconds, False)


# ----------------------------------------------------------------------------- drawing many points


def draw_sample(
    categories: np.ndarray, cap: int, seed: int = 0, keep: np.ndarray | None = None
) -> np.ndarray:
    """Indices of at most `cap` points to draw, sorted: every category keeps a share proportional to its
    size but at least min(its size, cap / (4 * #categories)), so small experts stay visible; `keep`
    (indices, e.g. the selected pair) is always included. All points when there are <= cap."""
    n = len(categories)
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    cats, inverse = np.unique(categories, return_inverse=True)
    floor = max(1, cap // (4 * len(cats)))
    counts = np.bincount(inverse, minlength=len(cats))
    small = counts <= floor  # drawn whole
    room = max(cap - int(counts[small].sum()), 0)
    share = np.floor(counts * room / max(int(counts[~small].sum()), 1)).astype(int)
    quota = np.where(small, counts, np.maximum(np.minimum(share, counts), floor))
    picked = [
        rng.choice(np.flatnonzero(inverse == c), size=int(min(q, counts[c])), replace=False)
        for c, q in enumerate(quota)
    ]
    if keep is not None and len(keep):
        picked.append(np.asarray(keep, dtype=np.int64))
    return np.unique(np.concatenate(picked))


def density_grid(xy: np.ndarray, bins: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x centres, y centres, counts [bins_y, bins_x]) of all points: the map's density layer."""
    xy = np.asarray(xy, dtype=np.float64)
    if not len(xy):
        return np.zeros(0), np.zeros(0), np.zeros((0, 0))
    counts, xe, ye = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins)
    return (xe[:-1] + xe[1:]) / 2, (ye[:-1] + ye[1:]) / 2, counts.T


def points_in_box(xy: np.ndarray, x_range: Sequence[float], y_range: Sequence[float]) -> np.ndarray:
    x0, x1 = sorted(float(v) for v in x_range)
    y0, y1 = sorted(float(v) for v in y_range)
    return np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))


def points_in_polygon(xy: np.ndarray, xs: Sequence[float], ys: Sequence[float]) -> np.ndarray:
    """Indices of the points inside a lasso polygon (even-odd rule), over all points, not just drawn ones."""
    px, py = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(px) < 3:
        return np.zeros(0, dtype=np.int64)
    cand = points_in_box(xy, (px.min(), px.max()), (py.min(), py.max()))
    x, y = xy[cand, 0].astype(np.float64), xy[cand, 1].astype(np.float64)
    inside = np.zeros(len(cand), dtype=bool)
    j = len(px) - 1
    for i in range(len(px)):
        crosses = (py[i] > y) != (py[j] > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (px[j] - px[i]) * (y - py[i]) / (py[j] - py[i]) + px[i]
        inside ^= crosses & (x < x_at)
        j = i
    return cand[inside]


# ----------------------------------------------------------------------------- precomputation

# What the Expert map offers without waiting (instant layouts), and the non-linear view worth precomputing.
INSTANT_VIEWS = (
    ProjectionParams("anchors", "router"),
    ProjectionParams("pca", "router"),
    ProjectionParams("pca", "margins"),
    ProjectionParams("pca", "prompt"),
    ProjectionParams("pca", "pair"),
)
PRECOMPUTED_UMAP = (ProjectionParams("umap", "router", metric="euclidean"),)


def precompute_views(
    features: PairFeatures,
    scores,
    cache_dir: str | Path,
    key_parts: Sequence[str],
    umap: bool = True,
    progress: ProgressFn | None = None,
) -> list[Projection]:
    """The map's views of one model on one dataset, into the cache (what `build-default` and the app's
    first start run for the default model)."""
    say = progress or (lambda _m, _f: None)
    views = list(INSTANT_VIEWS) + (list(PRECOMPUTED_UMAP) if umap else [])
    out = []
    for i, params in enumerate(views):
        lo, hi = i / len(views), (i + 1) / len(views)
        out.append(
            project(
                features,
                params,
                cache_dir,
                key_parts,
                scores=scores,
                progress=lambda m, f, p=params, lo=lo, hi=hi: say(f"{p.title()}: {m}", lo + (hi - lo) * f),
            )
        )
    say("projections ready", 1.0)
    return out
