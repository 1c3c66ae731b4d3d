"""Embedding throughput on the same texts: the current pipeline (torch), the fast CPU path (ONNX Runtime,
fp32 and int8), and a plain `transformers` forward; the cosine agreement of each with the pipeline; the
cache speed-up; and (``--accuracy``) held-out accuracy of the same model kind trained on fp32 and on int8
features of the whole default dataset.

Targets (issue 10): fast CPU path >= 2x the pipeline's texts/s with cosine >= 0.99 to fp32; accuracy within
1 point. Older targets: pipeline >= 0.9x the plain forward; a cached re-run >= 50x faster.

The machine is shared, so the methods are timed interleaved: the texts are cut into chunks and every
chunk runs through every method (in rotating order) before the next, so a change of load hits all
methods alike; texts/s = all texts / the method's summed time.

Run: python bench/bench_embed.py [--n 1000] [--chunks 10] [--accuracy --seeds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from moe_reward.data.pairs import load_pairs
from moe_reward.embed.backbone import Backbone, BackboneSpec
from moe_reward.embed.cache import EmbeddingCache, embed_texts


def make_texts(n: int) -> list[tuple[str, str]]:
    """(prompt, response) texts of the default dataset: real assistant-style answers, ~145 tokens."""
    pairs = load_pairs("controlled").pairs
    items = [(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
    return list(dict.fromkeys(items))[:n]


@torch.inference_mode()
def plain_forward(backbone: Backbone, texts: list[tuple[str, str]], batch: int = 32) -> np.ndarray:
    """What a user would write with transformers alone: tokenize a batch, forward, mean-pool."""
    tok, model = backbone.tokenizer, backbone.model
    out = []
    for s in range(0, len(texts), batch):
        chunk = texts[s : s + batch]
        enc = tok(
            [p for p, _ in chunk],
            [r for _, r in chunk],
            padding=True,
            truncation=True,
            max_length=backbone.max_length,
            return_tensors="pt",
        )
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy())
    return np.concatenate(out)


def throughput(args) -> None:
    texts = make_texts(args.n)
    torch_bb = Backbone()
    methods = {
        "current pipeline (torch fp32)": lambda t: embed_texts(torch_bb, t, None),
        "fast CPU path (onnx-int8)": None,
        "onnx fp32": None,
        "plain transformers forward": lambda t: plain_forward(torch_bb, t),
    }
    t0 = time.perf_counter()
    int8_bb = Backbone(BackboneSpec(runtime="onnx-int8"))  # exports + quantizes on first use (cached)
    onnx_bb = Backbone(BackboneSpec(runtime="onnx"))
    setup = time.perf_counter() - t0
    methods["fast CPU path (onnx-int8)"] = lambda t: embed_texts(int8_bb, t, None)
    methods["onnx fp32"] = lambda t: embed_texts(onnx_bb, t, None)
    for fn in methods.values():  # warm-up: first-call overheads out of the timings
        fn(texts[:16])
    names = list(methods)
    seconds = dict.fromkeys(names, 0.0)
    outputs: dict[str, list[np.ndarray]] = {k: [] for k in names}
    bounds = np.linspace(0, len(texts), args.chunks + 1).astype(int)
    load_before = os.getloadavg()
    for c in range(args.chunks):
        chunk = texts[bounds[c] : bounds[c + 1]]
        for k in names[c % len(names) :] + names[: c % len(names)]:
            t = time.perf_counter()
            outputs[k].append(methods[k](chunk))
            seconds[k] += time.perf_counter() - t
    load_after = os.getloadavg()
    emb = {k: np.concatenate(v) for k, v in outputs.items()}
    ref = emb[names[0]]
    ntok = sum(len(torch_bb.token_ids(p, r)) for p, r in texts) / len(texts)
    print(
        f"texts: {len(texts)} (prompt+response of the default data), mean {ntok:.0f} tokens; torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; {args.chunks} interleaved chunks; onnx export+quantize/load {setup:.1f}s"
    )
    base = len(texts) / seconds[names[0]]
    for k in names:
        rate = len(texts) / seconds[k]
        cos = (emb[k] * ref).sum(1)
        print(
            f"{k:32s}: {rate:7.1f} texts/s  ({rate / base:4.2f}x the pipeline)  cosine to the pipeline "
            f"min {cos.min():.4f} mean {cos.mean():.4f}"
        )
    fast = len(texts) / seconds[names[1]]
    cos = (emb[names[1]] * ref).sum(1)
    print(
        f"fast CPU path: {fast / base:.2f}x the pipeline (target >= 2x), cosine min {cos.min():.4f} "
        f"(target >= 0.99)"
    )
    print(f"pipeline / plain forward = {seconds[names[3]] / seconds[names[0]]:.2f}x (target >= 0.9x)")
    with tempfile.TemporaryDirectory() as tmp:
        sample = texts[:200]
        t = time.perf_counter()
        embed_texts(torch_bb, sample, EmbeddingCache(tmp, torch_bb.cache_key))
        first = time.perf_counter() - t
        t = time.perf_counter()
        embed_texts(
            torch_bb, sample, EmbeddingCache(tmp, torch_bb.cache_key)
        )  # fresh cache object: reads disk
        cached = time.perf_counter() - t
    print(f"cache speed-up first/cached on {len(sample)} texts = {first / cached:.0f}x (target >= 50x)")


def accuracy(args) -> None:
    """Held-out accuracy of the same model kind on fp32 and int8 features of the whole default data."""
    from moe_reward.app.pipeline import TrainRequest, train_from_data
    from moe_reward.embed.pairs import embed_pairs
    from moe_reward.train.config import TrainConfig

    pairs = load_pairs("controlled").pairs
    feats = {}
    for label, spec in (
        ("fp32 (torch)", BackboneSpec()),
        ("int8 (onnx-int8)", BackboneSpec(runtime="onnx-int8")),
    ):
        t = time.perf_counter()
        feats[label] = embed_pairs(pairs, spec)  # through the embedding cache: a re-run embeds nothing
        print(f"embedded {len(pairs)} pairs with {label} in {time.perf_counter() - t:.0f}s", flush=True)
    a, b = (feats[k] for k in feats)
    for name in ("prompt", "chosen", "rejected"):
        cos = (getattr(a, name) * getattr(b, name)).sum(1)
        print(
            f"  {name:8s} cosine int8 vs fp32 over the default data: min {cos.min():.4f} mean {cos.mean():.4f}"
        )
    for kind in args.kinds.split(","):
        acc = {k: [] for k in feats}
        for seed in range(args.seeds):
            for label, f in feats.items():
                req = TrainRequest(
                    data="controlled",
                    kind=kind,
                    experts=12,
                    top_k=2,
                    exclude_user_pairs=True,
                    split_seed=seed,
                    split_by="meta.question_id",
                    train=TrainConfig.for_kind(kind, seed=seed),
                )
                _, metrics = train_from_data(req, None, features=f)
                acc[label].append(metrics["test"]["accuracy"])
        means = {k: float(np.mean(v)) for k, v in acc.items()}
        diff = means["int8 (onnx-int8)"] - means["fp32 (torch)"]
        print(
            f"{kind}: accuracy on held-out questions over {args.seeds} split seeds: "
            + ", ".join(f"{k} {means[k]:.4f} (per seed {np.round(acc[k], 4).tolist()})" for k in acc)
            + f"; difference {100 * diff:+.2f} points (target within 1)",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument(
        "--accuracy", action="store_true", help="also train on fp32 and int8 features of the default data"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--kinds", default="sparse,dense"
    )  # single: a context-free head is at chance on this data
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    if not args.skip_throughput:
        throughput(args)
    if args.accuracy:
        accuracy(args)


if __name__ == "__main__":
    main()
