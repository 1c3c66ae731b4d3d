"""Pairs -> features: what is embedded for a pair (`pair_items`), embedding a list of pairs through the
cache (`embed_pairs`), and reading a data or features path as features (`load_features_or_pairs`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..data.pairs import PreferencePair
from .backbone import Backbone, BackboneSpec, resolve_backbone
from .cache import EmbeddingCache, default_cache_dir, embed_texts
from .features import PairFeatures, ProgressFn, is_features_path


def pair_items(pairs: Sequence[PreferencePair]) -> list[tuple[str, str | None]]:
    """What is embedded for N pairs: N prompts, then N prompt+chosen, then N prompt+rejected."""
    items: list[tuple[str, str | None]] = [(p.prompt, None) for p in pairs]
    return items + [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]


def embed_pairs(
    pairs: Sequence[PreferencePair],
    backbone: Backbone | BackboneSpec | None = None,
    cache_dir: str | Path | None = "default",
    progress: ProgressFn | None = None,
) -> PairFeatures:
    """Embed the prompts and the two prompt+response texts of every pair (cached, batched).

    A prompt shared by many pairs is tokenized and embedded once (`embed_texts` computes each distinct
    text once; `Backbone` remembers the token ids of recent prompts).
    """
    if not isinstance(backbone, Backbone):
        backbone = Backbone(backbone)
    root = default_cache_dir() if cache_dir == "default" else cache_dir
    cache = EmbeddingCache(root, backbone.cache_key)
    backbone.truncated = 0
    mat = embed_texts(backbone, pair_items(pairs), cache, progress=progress, desc="embed pairs")
    n = len(pairs)
    meta = backbone.metadata() | {"truncated_inputs": backbone.truncated}
    return PairFeatures(mat[:n], mat[n : 2 * n], mat[2 * n :], list(pairs), meta)


def load_features_or_pairs(
    path: str | Path,
    skip_bad: bool = False,
    backbone: BackboneSpec | None = None,
    cache_dir: str | Path | None = "default",
    progress: ProgressFn | None = None,
    on_loaded: Callable | None = None,
) -> PairFeatures:
    """A features file or a folder of feature shards is used as is; a data file is loaded and embedded
    (through the cache). `on_loaded(LoadResult)` sees a data file's load (e.g. to report the rows that
    --skip-bad dropped)."""
    from ..data.pairs import load_pairs

    if is_features_path(path):
        return PairFeatures.load(path)
    if str(path) == "controlled":
        from ..data.pairs import default_dataset_path

        shipped = default_dataset_path().parent / "features.safetensors"
        if shipped.is_file():  # the default data ships embedded (make default-artifacts)
            feats = PairFeatures.load(shipped)
            made = BackboneSpec.from_metadata(feats.metadata)
            if backbone is None or (
                resolve_backbone(backbone.name) == resolve_backbone(made.name)
                and (backbone.runtime, backbone.max_length) == (made.runtime, made.max_length)
            ):
                return feats  # else: embedded as asked (another backbone, runtime or length)
    res = load_pairs(path, skip_bad=skip_bad)
    if on_loaded is not None:
        on_loaded(res)
    return embed_pairs(res.pairs, backbone, cache_dir, progress)
