"""What reading the prompt costs the router, next to embedding the pairs (the issue's target: <= 50%).

On N pairs of the default data, with empty caches, in one process:
- embedding: the pipeline's `embed_pairs` (prompt + both prompt+response texts), the baseline;
- lexical channel: fitting the vocabulary on the prompts and building the TF-IDF rows;
- attention channel: the backbone's token states of every distinct prompt (`prompt_token_states`).

    python bench/bench_router_inputs.py [--pairs 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from moe_reward.data.pairs import load_pairs
from moe_reward.embed.backbone import Backbone
from moe_reward.embed.pairs import embed_pairs
from moe_reward.model.router_inputs import fit_lexical, lexical_matrix, prompt_token_states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    pairs = [p for p in load_pairs("controlled").pairs if p.user is None][: args.pairs]
    prompts = [p.prompt for p in pairs]
    backbone = Backbone()
    backbone.encode_ids([backbone.token_ids("warm up", None)])  # first-call overhead out of the timings
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        embed_pairs(pairs, backbone, cache_dir=os.path.join(tmp, "embeddings"))
        embed_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        vocabulary, idf = fit_lexical(prompts)
        lexical_matrix(prompts, vocabulary, idf)
        lexical_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        prompt_token_states(backbone, prompts, 64, cache_dir=os.path.join(tmp, "embeddings"))
        tokens_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        prompt_token_states(backbone, prompts, 64, cache_dir=os.path.join(tmp, "embeddings"))
        cached_s = time.perf_counter() - t0
    n_texts = 3 * len(pairs)
    print(
        f"{len(pairs)} pairs ({n_texts} texts, {len(set(prompts))} distinct prompts), torch threads {torch.get_num_threads()}"
    )
    print(f"embedding the pairs (baseline):   {embed_s:7.2f} s  ({n_texts / embed_s:.1f} texts/s)")
    print(
        f"lexical channel (fit + TF-IDF):   {lexical_s:7.2f} s  = {100 * lexical_s / embed_s:5.1f}% of embedding"
    )
    print(
        f"attention channel (token states): {tokens_s:7.2f} s  = {100 * tokens_s / embed_s:5.1f}% of embedding "
        f"(cached re-read {cached_s:.3f} s)"
    )


if __name__ == "__main__":
    main()
