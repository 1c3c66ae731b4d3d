"""Embedding pipeline throughput vs a plain `transformers` forward over the same texts, and cache speed-up.

Targets (issue: library foundation): pipeline >= 0.9x the plain forward; a cached re-run >= 50x faster.
Run: python bench/bench_embed.py [--n 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from moe_reward.data import load_pairs
from moe_reward.embed import Backbone, EmbeddingCache, embed_texts


def make_texts(n: int) -> list[tuple[str, str]]:
    """(prompt, response) texts of the default dataset: real assistant-style answers, ~130 tokens."""
    pairs = load_pairs("controlled").pairs
    items = [(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
    return list(dict.fromkeys(items))[:n]


@torch.inference_mode()
def plain_forward(backbone: Backbone, texts: list[tuple[str, str]], batch: int = 32) -> float:
    tok, model = backbone.tokenizer, backbone.model
    start = time.perf_counter()
    for s in range(0, len(texts), batch):
        chunk = texts[s : s + batch]
        enc = tok([p for p, _ in chunk], [r for _, r in chunk], padding=True, truncation=True,
                  max_length=backbone.max_length, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    backbone = Backbone()
    texts = make_texts(args.n)
    ntok = sum(len(backbone.token_ids(p, r)) for p, r in texts) / len(texts)
    plain_forward(backbone, texts[:64])  # warm-up both paths once
    embed_texts(backbone, texts[:64], None)
    t_plain = plain_forward(backbone, texts)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        embed_texts(backbone, texts, EmbeddingCache(tmp, backbone.cache_key))
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        embed_texts(backbone, texts, EmbeddingCache(tmp, backbone.cache_key))  # fresh cache object: reads disk
        t_cached = time.perf_counter() - t0
    print(f"texts: {len(texts)} (prompt+response pairs of the default data), mean length {ntok:.0f} tokens, torch threads {torch.get_num_threads()}")
    print(f"plain transformers forward : {t_plain:7.2f} s  ({len(texts) / t_plain:6.1f} texts/s)")
    print(f"pipeline, first run        : {t_first:7.2f} s  ({len(texts) / t_first:6.1f} texts/s)")
    print(f"pipeline, cached re-run    : {t_cached:7.3f} s")
    print(f"throughput ratio pipeline/plain = {t_plain / t_first:.2f}x  (target >= 0.9x)")
    print(f"cache speed-up first/cached     = {t_first / t_cached:.0f}x  (target >= 50x)")


if __name__ == "__main__":
    main()
