"""2-D projections: parameter validation, PCA, the on-disk cache (no pickle), UMAP on request."""

from __future__ import annotations

import numpy as np
import pytest

from moe_reward.data.pairs import PreferencePair
from moe_reward.embed.features import PairFeatures
from moe_reward.evaluate.projection import (
    ProjectionParams,
    cache_key,
    embedding_matrix,
    is_cached,
    pca_2d,
    project,
)


def _features(n: int = 40, d: int = 16, seed: int = 0) -> PairFeatures:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, n, d)).astype(np.float32)
    x[0, : n // 2, 0] += 5  # two prompt clusters
    pairs = [PreferencePair(f"q{i}", f"a{i}", f"b{i}", id=f"p{i}") for i in range(n)]
    return PairFeatures(x[0], x[1], x[2], pairs, {"backbone": "test"})


@pytest.mark.parametrize(
    "bad",
    [
        dict(method="tsne"),
        dict(source="x"),
        dict(n_neighbors=1),
        dict(min_dist=2.0),
        dict(metric="manhattan"),
    ],
)
def test_params_are_validated(bad):
    with pytest.raises(ValueError):
        ProjectionParams(**bad)


def test_pca_separates_clusters_and_is_sign_stable():
    f = _features()
    a = pca_2d(f.prompt)
    assert a.shape == (40, 2)
    assert abs(a[:20, 0].mean() - a[20:, 0].mean()) > 3  # the clusters differ along the first axis
    np.testing.assert_allclose(a, pca_2d(f.prompt.copy()), atol=1e-5)


def test_pair_source_uses_preference_directions():
    """The "pair" source is each pair's preference direction, (chosen - rejected) / |chosen - rejected|:
    pairs labelled along the same direction point (and map) together, whatever their prompt and however
    large the difference; swapping the label flips it."""
    rng = np.random.default_rng(1)
    n, d = 40, 16
    directions = np.linalg.qr(rng.normal(size=(d, 2)))[0].T  # two orthonormal preference directions
    group = np.arange(n) % 2  # which direction each pair's label follows
    rejected = rng.normal(size=(n, d))
    size = rng.uniform(0.5, 5.0, size=(n, 1))  # how much better the chosen response is: irrelevant
    chosen = rejected + size * (directions[group] + 0.1 * rng.normal(size=(n, d)))
    pairs = [PreferencePair(f"q{i}", f"a{i}", f"b{i}", id=f"p{i}") for i in range(n)]

    def source(prompt, chosen, rejected):
        return embedding_matrix(PairFeatures(prompt, chosen, rejected, pairs, {}), "pair")

    m = source(rng.normal(size=(n, d)), chosen, rejected)
    diff = chosen - rejected
    np.testing.assert_allclose(m, diff / np.linalg.norm(diff, axis=1, keepdims=True), atol=1e-5)
    # projected on the two directions, every pair is closest to the one its label follows
    along = m @ directions.T
    assert (along.argmax(1) == group).all() and (along.max(1) > 0.8).all()
    # the prompt plays no part; the label's side does
    np.testing.assert_allclose(source(rng.normal(size=(n, d)), chosen, rejected), m, atol=1e-6)
    np.testing.assert_allclose(source(rng.normal(size=(n, d)), rejected, chosen), -m, atol=1e-6)
    # so the map of this source separates the two kinds of preference
    xy = pca_2d(m)
    a, b = xy[group == 0, 0], xy[group == 1, 0]
    assert abs(a.mean() - b.mean()) > 4 * max(a.std(), b.std())


def test_cache_roundtrip_and_keys(tmp_path):
    f = _features()
    p = ProjectionParams(method="pca")
    first = project(f, p, tmp_path, key_parts=("model", "data"))
    assert not first.cached and is_cached(f, p, tmp_path, ("model", "data"))
    second = project(f, p, tmp_path, key_parts=("model", "data"))
    assert second.cached
    np.testing.assert_array_equal(first.coords, second.coords)
    assert not list(tmp_path.glob("*.pkl")) and list(tmp_path.glob("*.safetensors"))
    # UMAP-only parameters do not split the PCA cache; model, data and UMAP parameters do
    assert cache_key(p, ("m",), 40) == cache_key(ProjectionParams(method="pca", n_neighbors=30), ("m",), 40)
    u1, u2 = ProjectionParams(method="umap"), ProjectionParams(method="umap", n_neighbors=30)
    assert cache_key(u1, ("m",), 40) != cache_key(u2, ("m",), 40)
    assert cache_key(p, ("m",), 40) != cache_key(p, ("other",), 40)


@pytest.mark.slow
def test_umap_runs_on_request_and_is_cached(tmp_path):
    f = _features(n=60)
    stages = []
    p = ProjectionParams(method="umap", n_neighbors=10)
    out = project(f, p, tmp_path, ("m", "d"), progress=lambda m, frac: stages.append(frac))
    assert out.coords.shape == (60, 2) and np.isfinite(out.coords).all() and stages[-1] == 1.0
    assert project(f, p, tmp_path, ("m", "d")).cached
