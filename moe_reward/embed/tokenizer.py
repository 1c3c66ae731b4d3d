"""A BERT-family tokenizer read straight from its `tokenizer.json` with the `tokenizers` library, for the
ONNX runtimes: with an exported graph, embedding needs neither torch's model nor `transformers` (whose
import alone is most of a second of a cold `moe-reward score`).

`light_encoder(path)` returns (tokenizer, config) for a local encoder folder only when this is exactly what
`transformers.AutoTokenizer` would give: a `BertTokenizer` whose tokenizer.json normalizer agrees with its
tokenizer_config.json (lower-casing, accents, Chinese characters), no chat template, an encoder
architecture; otherwise None and `Backbone` loads through `transformers` as before.
tests/integration/test_backbones.py checks the token ids against `transformers` on the default data.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

ENCODER_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining")


class LightTokenizer:
    """The subset of a `transformers` fast tokenizer that `Backbone` uses, over a `tokenizers.Tokenizer`."""

    padding_side = "right"
    chat_template = None

    def __init__(self, tokenizer_file: Path, specials: dict[str, str]):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_file))
        self._tok.no_truncation()  # (a tokenizer.json may carry a truncation and padding of its own: the
        self._tok.no_padding()  # backbone cuts texts itself, as `transformers` does unless asked)
        self.model_max_length = 10**9
        self.pad_token = specials.get("pad_token")
        self.unk_token = specials.get("unk_token")
        self.eos_token = specials.get("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self._tok.token_to_id(self.pad_token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str, pair: str | None = None) -> dict[str, list[int]]:
        return {"input_ids": self._tok.encode(text, pair, add_special_tokens=True).ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


def _special(value) -> str | None:
    if isinstance(value, dict):  # {"content": "[PAD]", ...} in newer files
        value = value.get("content")
    return value if isinstance(value, str) else None


def light_encoder(path: str | Path) -> tuple[LightTokenizer, SimpleNamespace] | None:
    """(tokenizer, model config) of a local BERT-family encoder folder without `transformers`, or None."""
    folder = Path(path)
    files = {name: folder / name for name in ("tokenizer.json", "tokenizer_config.json", "config.json")}
    if not all(f.is_file() for f in files.values()):
        return None
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return None
    try:
        tok_config = json.loads(files["tokenizer_config.json"].read_text(encoding="utf-8"))
        config = json.loads(files["config.json"].read_text(encoding="utf-8"))
        normalizer = json.loads(files["tokenizer.json"].read_text(encoding="utf-8")).get("normalizer") or {}
        special_file = folder / "special_tokens_map.json"
        special_map = json.loads(special_file.read_text(encoding="utf-8")) if special_file.is_file() else {}
    except (OSError, ValueError):
        return None
    if (
        tok_config.get("tokenizer_class") not in ("BertTokenizer", "BertTokenizerFast")
        or tok_config.get("chat_template")
        or config.get("is_decoder")
        or not set(config.get("architectures") or []) <= set(ENCODER_ARCHITECTURES)
        or normalizer.get("type") != "BertNormalizer"
        or normalizer.get("lowercase") != tok_config.get("do_lower_case", True)
        or normalizer.get("strip_accents") != tok_config.get("strip_accents")
        or normalizer.get("handle_chinese_chars") != tok_config.get("tokenize_chinese_chars", True)
    ):
        return None
    specials = {
        k: _special(tok_config.get(k) or special_map.get(k)) for k in ("pad_token", "unk_token", "eos_token")
    }
    specials = {k: v for k, v in specials.items() if v is not None}
    return LightTokenizer(files["tokenizer.json"], specials), SimpleNamespace(**config)
