"""Decoder reward-model backbone throughput: a Llama-architecture model built here from a config at a
realistic size (random weights: throughput does not depend on them) embeds the default data's texts
through the real pipeline (chat template, last-token pooling, bf16 on a GPU, batches sized to fit memory).

Prints texts/s, tokens/s, the batch token budget chosen, peak GPU memory, and self-checks the result
(finite unit-norm vectors; left and right padding agree). Needs no download: the tokenizer is a byte-level
BPE trained here on the default data, with a Llama-3-style chat template.

Run on a GPU machine:   python bench/bench_decoder.py --size 8b --n 4000
Self-check on the CPU:  python bench/bench_decoder.py --tiny      (a 2-layer model, a few hundred texts)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from moe_reward.data.pairs import load_pairs
from moe_reward.embed.backbone import Backbone, BackboneSpec
from moe_reward.embed.cache import embed_texts

SIZES = {  # Llama-3.2-1B-, 3B- and Llama-3.1-8B-shaped (vocabulary: the tokenizer trained here)
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    "3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
}
CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
)


def texts(n: int) -> list[tuple[str, str | None]]:
    """n distinct texts of the default data in the proportions `embed_pairs` sees (prompts, prompt+response)."""
    pairs = load_pairs("controlled").pairs
    items = [(p.prompt, None) for p in pairs] + [(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
    items = list(dict.fromkeys(items))
    order = np.random.default_rng(0).permutation(len(items))[:n]
    return [items[i] for i in order]


def train_tokenizer(corpus: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1b", choices=sorted(SIZES))
    ap.add_argument(
        "--tiny", action="store_true", help="CPU self-check at a tiny size (same as --size tiny --device cpu)"
    )
    ap.add_argument("--n", type=int, default=4000, help="texts to embed (prompts and prompt+response)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    if args.tiny:
        args.size, args.device, args.n, args.vocab = "tiny", "cpu", min(args.n, 300), 2000
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and args.size != "tiny":
        print(
            "no GPU here: a realistic size on the CPU would take hours; use --tiny for the self-check",
            file=sys.stderr,
        )
        return 2
    from transformers import LlamaConfig, LlamaModel

    items = texts(args.n)
    t0 = time.perf_counter()
    tok = train_tokenizer([p for p, _ in items] + [r for _, r in items if r], args.vocab)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=max(2048, args.max_length),
        **SIZES[args.size],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    dtype = (
        torch.float32
        if device == "cpu"
        else (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaModel(cfg).eval()  # random weights, allocated on the device in its precision
    torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    spec = BackboneSpec(f"llama-{args.size}-random", max_length=args.max_length, batch_size=0, device=device)
    bb = Backbone(spec, model=model, tokenizer=tok)
    setup = time.perf_counter() - t0
    ntok = sum(len(bb.token_ids(p, r)) for p, r in items)
    print(
        f"model: Llama-architecture {args.size}, {params / 1e6:,.1f}M parameters (random weights), {bb.dtype}, "
        f"{device}{' ' + torch.cuda.get_device_name() if device.startswith('cuda') else ''}; template {bb.template}, "
        f"pooling {bb.pooling}; batch budget {bb.max_batch_tokens or 'unbounded'} tokens x {bb.batch_rows} rows; "
        f"setup {setup:.0f}s"
    )
    embed_texts(bb, items[:32], None)  # warm-up (kernels, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    emb = embed_texts(bb, items, None)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    peak = (
        f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        if device.startswith("cuda")
        else ""
    )
    print(
        f"embedded {len(items)} texts ({ntok / len(items):.0f} tokens on average, {bb.truncated} truncated) in "
        f"{dt:.1f}s: {len(items) / dt:.1f} texts/s, {ntok / dt:.0f} tokens/s{peak}"
    )
    # Self-checks: finite unit vectors; the other padding side gives the same states.
    ok = bool(np.isfinite(emb).all()) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-3)
    left = Backbone(
        BackboneSpec(spec.name, max_length=args.max_length, batch_size=0, device=device, padding="left"),
        model=model,
        tokenizer=tok,
    )
    sample = items[:: max(1, len(items) // 64)]
    cos = (embed_texts(left, sample, None) * embed_texts(bb, sample, None)).sum(1)
    tol = 0.9999 if dtype == torch.float32 else 0.99
    ok = ok and cos.min() >= tol
    print(
        f"self-check: finite unit vectors {bool(np.isfinite(emb).all())}; left vs right padding cosine min "
        f"{cos.min():.5f} (need >= {tol}) -> {'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
