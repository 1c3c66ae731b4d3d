"""Tiny transformers backbones built locally from a config, with a tokenizer trained here (no download).

Each builder saves a model folder that `Backbone(BackboneSpec(<folder>))` loads like any hub checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "how do i boil an egg",
    "simmer it for nine minutes then cool it in ice water",
    "eggs are food",
    "name a prime number",
    "seven is prime",
    "eight is not prime",
    "keep the answer short",
    "explain it step by step",
    "the sky is blue because of rayleigh scattering",
    "sunlight is made of many colours",
    "write a polite reply to my landlord",
    "thanks for fixing the heater so quickly",
    "no",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(bos: bool = True, chat: bool = False):
    """A word-level tokenizer over `CORPUS` (unknown words map to <unk>); optionally BOS-prefixed."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=specials))
    if bos:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny(
    folder: Path, kind: str = "llama", chat: bool = False, seed: int = 0, pad_side: str = "right"
) -> Path:
    """kind: "llama" (causal LM), "llama-rm" (LlamaForSequenceClassification), "gpt2" or "bert"."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    torch.manual_seed(seed)
    tok = tiny_tokenizer(bos=kind.startswith("llama"), chat=chat)
    tok.padding_side = pad_side
    vocab = len(tok)
    if kind.startswith("llama"):
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            num_labels=1,
        )
        model = (LlamaForSequenceClassification if kind == "llama-rm" else LlamaForCausalLM)(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=128,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        model = GPT2LMHeadModel(cfg)
    elif kind == "bert":
        cfg = BertConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            pad_token_id=tok.pad_token_id,
        )
        model = BertModel(cfg)
    else:
        raise ValueError(kind)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
