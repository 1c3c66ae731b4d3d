"""What the router reads: the prompt as one or more *channels*, chosen per model and recorded in its config.

The experts read the backbone's embedding of prompt + response; the router reads the prompt alone. A
mean-pooled sentence embedding of a prompt is dominated by its topic and blurs short instructions ("keep it
short", "step by step") that decide which preference applies, so the router can read other channels too:

- ``pooled``: the backbone's pooled prompt embedding (mean pooling for encoders, the last token's state
  for decoders): `PairFeatures.prompt`, nothing to compute.
- ``lexical``: TF-IDF of the prompt's word 1- and 2-grams over a vocabulary fitted on the training prompts
  (terms seen in at least 2 prompts, at most `core.limits.MAX_VOCABULARY`), sublinear term frequency, unit-length rows.
  Saved with the model: the vocabulary in ``config.json``, the idf weights as the ``lexical_idf`` tensor.
- ``attention``: the frozen backbone's token states of the prompt (at most `max_prompt_tokens`: the first
  quarter and the last three quarters of that budget, so a cue at either end survives a long prompt), pooled
  by a few learned queries inside the model (`SparseMoERewardModel.attend`). Token states are computed once
  per distinct prompt and cached on disk beside the embeddings (float16).

A router input is a ``+``-joined set of channels, e.g. ``pooled+lexical``; ``auto`` (the default for routed
kinds) lets training choose among `AUTO_CANDIDATES` by validation likelihood (`train.choose_router_input`).

`router_data(model, features)` turns pair features into what the model's router needs, batch by batch
(`RouterData.batch`), so callers never assemble channels themselves.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from numpy.typing import DTypeLike

from ..core.limits import MAX_VOCABULARY
from ..core.numeric import column_moments
from ..core.shards import ShardedCache
from ..embed.backbone import Backbone, BackboneSpec
from ..embed.cache import default_cache_dir
from ..embed.features import PairFeatures
from .moe import RouterBatch, parse_channels

if TYPE_CHECKING:
    from scipy import sparse

AUTO_CANDIDATES = ("pooled", "lexical", "pooled+lexical")
NGRAMS = (1, 2)
MIN_DF = 2
TOKEN_PATTERN = r"(?u)\b\w+\b"
MAX_PROMPT_CHARS = 20_000  # lexical features read at most this much of a prompt (its end: the last turn)


# ----------------------------------------------------------------------------- lexical channel


def _counter(
    vocabulary: Sequence[str] | None = None, min_df: int = MIN_DF, max_features: int | None = MAX_VOCABULARY
):
    from sklearn.feature_extraction.text import CountVectorizer

    if vocabulary is not None:
        return CountVectorizer(
            lowercase=True,
            ngram_range=NGRAMS,
            token_pattern=TOKEN_PATTERN,
            vocabulary={t: i for i, t in enumerate(vocabulary)},
        )
    return CountVectorizer(
        lowercase=True,
        ngram_range=NGRAMS,
        token_pattern=TOKEN_PATTERN,
        min_df=min_df,
        max_features=max_features,
    )


def _clip(texts: Sequence[str]) -> list[str]:
    return [t[-MAX_PROMPT_CHARS:] for t in texts]


def fit_lexical(prompts: Sequence[str], max_features: int = MAX_VOCABULARY) -> tuple[list[str], np.ndarray]:
    """(vocabulary, idf) fitted on training prompts; an empty vocabulary when no term occurs in 2 prompts."""
    distinct = sorted(set(_clip(prompts)))
    if len(distinct) < MIN_DF:
        return [], np.zeros(0, np.float32)
    counter = _counter(max_features=max_features)
    try:
        # (scikit-learn ships no types: its inferred return type includes an internal tuple)
        counts = cast("sparse.csr_matrix", counter.fit_transform(distinct))
    except ValueError:  # "empty vocabulary" / "no terms remain": nothing shared between prompts
        return [], np.zeros(0, np.float32)
    vocabulary = [""] * len(counter.vocabulary_)
    for term, i in counter.vocabulary_.items():
        vocabulary[i] = term
    df = np.bincount(counts.indices[counts.data > 0], minlength=len(vocabulary))  # prompts with each term
    idf = np.log((1 + len(distinct)) / (1 + df)) + 1.0  # scikit-learn's smoothed idf
    return vocabulary, idf.astype(np.float32)


_TOKENS = re.compile(TOKEN_PATTERN)
_vocab_index: dict[int, tuple[Sequence[str], dict[str, int]]] = {}  # id(vocabulary) -> (it, term -> column)


def _term_index(vocabulary: Sequence[str]) -> dict[str, int]:
    """term -> column of a (saved, fixed) vocabulary, built once per vocabulary object."""
    hit = _vocab_index.get(id(vocabulary))
    if hit is not None and hit[0] is vocabulary:
        return hit[1]
    index = {t: i for i, t in enumerate(vocabulary)}
    if len(_vocab_index) >= 16:
        _vocab_index.clear()
    _vocab_index[id(vocabulary)] = (vocabulary, index)
    return index


def _issparse(x) -> bool:
    return hasattr(x, "tocsr")  # a scipy sparse matrix (without importing scipy to ask)


DENSE_ROWS = 256  # lexical rows for at most this many prompts are built dense (numpy only: no scipy import)


def _count_rows(texts: Sequence[str], vocabulary: Sequence[str]) -> tuple[list[int], list[int], list[int]]:
    """(indptr, indices, counts) in CSR order of a fixed vocabulary's terms in each text."""
    index = _term_index(vocabulary)
    lo, hi = NGRAMS
    indptr, indices, data = [0], [], []
    for text in texts:
        tokens = _TOKENS.findall(text.lower())
        row: dict[int, int] = {}
        for n in range(lo, hi + 1):
            for i in range(len(tokens) - n + 1):
                j = index.get(tokens[i] if n == 1 else " ".join(tokens[i : i + n]))
                if j is not None:
                    row[j] = row.get(j, 0) + 1
        cols = sorted(row)
        indices.extend(cols)
        data.extend(row[c] for c in cols)
        indptr.append(len(indices))
    return indptr, indices, data


def term_counts(texts: Sequence[str], vocabulary: Sequence[str]) -> sparse.csr_matrix:
    """[N, V] counts of a fixed vocabulary's terms, exactly what `_counter(vocabulary).transform(texts)`
    gives (lower-cased, TOKEN_PATTERN tokens, their NGRAMS joined by one space), without importing
    scikit-learn: scoring one prompt with a saved model must not pay for that import (seconds, cold)."""
    from scipy import sparse

    indptr, indices, data = _count_rows(texts, vocabulary)
    return sparse.csr_matrix(
        (np.asarray(data, np.int64), np.asarray(indices, np.int32), np.asarray(indptr, np.int64)),
        shape=(len(texts), len(vocabulary)),
    )


def term_count_rows(texts: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
    """`term_counts` as a dense [N, V] array (a few texts), without importing scipy either."""
    indptr, indices, data = _count_rows(texts, vocabulary)
    out = np.zeros((len(texts), len(vocabulary)), np.int64)
    for r in range(len(texts)):
        out[r, indices[indptr[r] : indptr[r + 1]]] = data[indptr[r] : indptr[r + 1]]
    return out


def lexical_matrix(prompts: Sequence[str], vocabulary: Sequence[str], idf: np.ndarray) -> sparse.csr_matrix:
    """[N, V] TF-IDF rows (sublinear tf, unit length; all-zero for a prompt with no known term)."""
    from scipy import sparse

    counts = term_counts(_clip(prompts), vocabulary).astype(np.float32)
    counts.data = 1.0 + np.log(counts.data)
    tfidf = counts.multiply(np.asarray(idf, np.float32)[None, :]).tocsr()
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(1)).reshape(-1))
    return sparse.diags(1.0 / np.maximum(norms, 1e-12)).dot(tfidf).tocsr().astype(np.float32)


def lexical_rows(prompts: Sequence[str], vocabulary: Sequence[str], idf: np.ndarray) -> np.ndarray:
    """`lexical_matrix` for a few prompts (at most DENSE_ROWS: scoring texts) as a dense array, computed
    with numpy alone: the same values, without importing scipy."""
    if len(prompts) > DENSE_ROWS:
        raise ValueError(f"dense lexical rows for at most {DENSE_ROWS} prompts, got {len(prompts)}")
    counts = term_count_rows(_clip(prompts), vocabulary).astype(np.float32)
    hit = counts > 0
    tf = np.zeros_like(counts)
    tf[hit] = 1.0 + np.log(counts[hit])
    tfidf = tf * np.asarray(idf, np.float32)[None, :]
    norms = np.sqrt((tfidf * tfidf).sum(1, dtype=np.float32))
    return (tfidf / np.maximum(norms, 1e-12)[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- attention channel: token states


def _text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class TokenStateCache(ShardedCache):
    """Per-prompt token states [T, D] (float16) on disk, keyed by backbone, token budget and prompt hash:
    a `core.shards.ShardedCache` (each `put` one new verified shard, the states padded with their lengths;
    a broken or mismatched shard is dropped with a warning and its prompts read again)."""

    def __init__(self, root: str | Path | None, key: str):
        super().__init__(
            None if root is None else Path(root) / key, "token-state cache", "its prompts will be read again"
        )

    def put(
        self, keys: Sequence[str], values: np.ndarray | Sequence[np.ndarray], dtype: DTypeLike = np.float16
    ) -> None:
        """Token states [T_i, D] per prompt hash (padded in the shard, stored float16)."""
        super().put(keys, list(values), dtype=dtype)


def head_and_tail(ids: list[int], budget: int) -> list[int]:
    """At most `budget` token ids: the first quarter and the last three quarters of the budget."""
    if len(ids) <= budget:
        return ids
    head = budget // 4
    return ids[:head] + ids[len(ids) - (budget - head) :]


def prompt_token_states(
    backbone: Backbone | BackboneSpec,
    prompts: Sequence[str],
    max_tokens: int,
    cache_dir: str | Path | None = "default",
    progress=None,
) -> list[np.ndarray]:
    """Token states [T_i, D] (float16) of each prompt; each distinct prompt is computed once, cached ones never."""
    root = default_cache_dir() if cache_dir == "default" else cache_dir
    spec = backbone.spec if isinstance(backbone, Backbone) else backbone
    key = hashlib.sha1(f"{spec.name}|{spec.max_length}|tokens-{max_tokens}".encode()).hexdigest()[:16]
    cache = TokenStateCache(None if root is None else Path(root).parent / "token_states", key)
    hashes = [_text_hash(p) for p in prompts]
    have = cache.get(hashes)
    todo = {h: p for h, p in zip(hashes, prompts, strict=True) if h not in have}
    if todo:
        bb = backbone if isinstance(backbone, Backbone) else Backbone(backbone)
        keys = list(todo)
        ids = [head_and_tail(bb.token_ids(todo[h], None), max_tokens) for h in keys]
        states: dict[int, np.ndarray] = {}
        for idx, hidden, mask in bb.iter_hidden(ids):
            hidden = hidden.float().cpu().numpy()
            lengths = mask.sum(1).cpu().numpy()
            for row, i in enumerate(idx):
                states[int(i)] = hidden[row, : int(lengths[row])].astype(np.float16)
            if progress:
                progress(len(states), len(ids))
        out = [states[i] for i in range(len(ids))]  # (iter_hidden yields every input once)
        cache.put(keys, out)
        have = {**have, **dict(zip(keys, out, strict=True))}
    return [have[h] for h in hashes]


# ----------------------------------------------------------------------------- router data


@dataclass
class RouterData:
    """The router's inputs for N pairs: vector channels ([N, R], dense and/or sparse blocks) and token
    states (distinct prompts [U, T, D] float16 with a mask, and the row of each pair's prompt)."""

    blocks: list  # np.ndarray [N, d] or scipy CSR [N, V], concatenated in order
    tokens: np.ndarray | None = None  # [U, T, D] float32 (float16 beyond `FLOAT32_TOKEN_BYTES`)
    mask: np.ndarray | None = None  # [U, T] bool
    index: np.ndarray | None = None  # [N] row in `tokens`

    def __len__(self) -> int:
        if self.blocks:
            return int(self.blocks[0].shape[0])
        return 0 if self.index is None else len(self.index)

    @property
    def vector_dim(self) -> int:
        return int(sum(b.shape[1] for b in self.blocks))

    def vectors(self, rows: np.ndarray | slice) -> np.ndarray | None:
        if not self.blocks:
            return None
        parts = []
        for b in self.blocks:
            part = b[rows]
            parts.append(part.toarray() if _issparse(part) else np.asarray(part))
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)

    def batch(self, rows: np.ndarray | slice) -> torch.Tensor | RouterBatch:
        vec = self.vectors(rows)
        vec_t = None if vec is None else torch.from_numpy(vec)
        if self.tokens is None:
            if vec_t is None:
                raise ValueError("router data without any channel (no vector block, no token states)")
            return vec_t
        if self.mask is None or self.index is None:
            raise ValueError("router data with token states needs their mask and each pair's row")
        u = self.index[rows]
        tokens = torch.from_numpy(np.asarray(self.tokens[u], dtype=np.float32))
        return RouterBatch(vec_t, tokens, torch.from_numpy(self.mask[u]))

    def subset(self, rows: np.ndarray) -> RouterData:
        rows = np.asarray(rows, dtype=np.int64)
        return RouterData(
            [b[rows] for b in self.blocks],
            self.tokens,
            self.mask,
            None if self.index is None else self.index[rows],
        )

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std of the vector channels (sparse blocks without densifying)."""
        means, stds = [], []
        for b in self.blocks:
            if _issparse(b):
                m = np.asarray(b.mean(0)).reshape(-1)
                sq = np.asarray(b.multiply(b).mean(0)).reshape(-1)
                means.append(m)
                stds.append(np.sqrt(np.maximum(sq - m.astype(np.float64) ** 2, 0.0)))
            else:  # in chunks: no float64 copy of the whole block (a million prompts at scale)
                m, sd = column_moments(b)
                means.append(m)
                stds.append(sd)
        if not means:
            return np.zeros(0, np.float32), np.ones(0, np.float32)
        return np.concatenate(means).astype(np.float32), np.concatenate(stds).astype(np.float32)


FLOAT32_TOKEN_BYTES = 1 << 30  # token states of distinct prompts are kept as float32 up to this size


def _pad_tokens(states: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, max(len(s) for s in states))
    dim = states[0].shape[1]
    dtype = np.float32 if len(states) * width * dim * 4 <= FLOAT32_TOKEN_BYTES else np.float16
    tokens = np.zeros((len(states), width, dim), dtype)
    mask = np.zeros((len(states), width), bool)
    for i, s in enumerate(states):
        tokens[i, : len(s)] = s
        mask[i, : len(s)] = True
    return tokens, mask


def build_router_data(
    channels: Sequence[str],
    features: PairFeatures,
    vocabulary: Sequence[str] = (),
    idf: np.ndarray | None = None,
    max_prompt_tokens: int = 64,
    backbone: Backbone | BackboneSpec | None = None,
    cache_dir: str | Path | None = "default",
    dense: bool = False,
) -> RouterData:
    """Router inputs of `features` for the given channels (see the module docstring); `dense`: the lexical
    block as a numpy array (a few rows being scored: `lexical_rows`)."""
    prompts = [p.prompt for p in features.pairs]
    blocks: list = []
    if "pooled" in channels:
        blocks.append(features.prompt)
    if "lexical" in channels:
        if not len(vocabulary):
            raise ValueError("the lexical router channel needs a fitted vocabulary")
        weights = idf if idf is not None else np.ones(len(vocabulary))
        blocks.append((lexical_rows if dense else lexical_matrix)(prompts, vocabulary, weights))
    data = RouterData(blocks)
    if "attention" in channels:
        distinct = sorted(set(prompts))
        row = {p: i for i, p in enumerate(distinct)}
        spec = backbone if backbone is not None else backbone_spec_from_metadata(features.metadata)
        states = (
            prompt_token_states(spec, distinct, max_prompt_tokens, cache_dir=cache_dir) if distinct else []
        )
        if states:
            data.tokens, data.mask = _pad_tokens(states)
        else:
            data.tokens = np.zeros((0, 1, features.dim), np.float16)
            data.mask = np.zeros((0, 1), bool)
        data.index = np.array([row[p] for p in prompts], dtype=np.int64)
    return data


def backbone_spec_from_metadata(meta: dict) -> BackboneSpec:
    """The backbone that made a features file (its metadata), for computing more inputs of the same kind."""
    return BackboneSpec(
        meta.get("backbone", "all-MiniLM-L6-v2"),
        pooling=meta.get("pooling", "auto"),
        max_length=int(meta.get("max_length", 256)),
    )


def router_data(
    model,
    features: PairFeatures,
    backbone: Backbone | BackboneSpec | None = None,
    cache_dir: str | Path | None = "default",
    dense: bool = False,
) -> RouterData:
    """What `model`'s router reads for these pairs (its channels, vocabulary and token budget)."""
    cfg = model.config
    idf = model.lexical_idf.detach().cpu().numpy() if cfg.lexical_vocabulary else None
    return build_router_data(
        cfg.channels, features, cfg.lexical_vocabulary, idf, cfg.max_prompt_tokens, backbone, cache_dir, dense
    )


def describe_channels(spec: str) -> str:
    names = {
        "pooled": "pooled prompt embedding",
        "lexical": "prompt word n-grams (TF-IDF)",
        "attention": "attention over prompt tokens",
    }
    return " + ".join(names[c] for c in parse_channels(spec))
