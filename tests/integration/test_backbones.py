"""Backbones beyond the default encoder: decoders and reward models built locally from a config, the
ONNX Runtime CPU path, precision, memory-bounded batches, per-batch progress, shards and large features."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_backbones import save_tiny

from moe_reward.data.pairs import PreferencePair
from moe_reward.embed.backbone import Backbone, BackboneSpec
from moe_reward.embed.cache import embed_texts
from moe_reward.embed.features import PairFeatures, ShardWriter
from moe_reward.embed.pairs import embed_pairs, load_features_or_pairs

ITEMS = [
    ("how do i boil an egg", "simmer it for nine minutes then cool it in ice water"),
    ("name a prime number", "seven"),
    ("name a prime number", None),
    ("keep the answer short", "no"),
    (
        "explain it step by step the sky is blue because of rayleigh scattering",
        "sunlight is made of many colours",
    ),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        kind: save_tiny(root / kind, kind.removesuffix("-chat"), chat=kind.endswith("-chat"))
        for kind in ("llama", "llama-chat", "llama-rm", "gpt2", "bert")
    }


@pytest.mark.parametrize("kind", ["llama", "gpt2", "llama-chat"])
def test_decoder_pools_the_last_real_token_with_either_padding(tiny, kind):
    right = Backbone(BackboneSpec(str(tiny[kind]), padding="right", batch_size=8))
    left = Backbone(BackboneSpec(str(tiny[kind]), padding="left", batch_size=8))
    assert right.pooling == "last" and right.is_decoder and left.padding == "left"
    a, b = embed_texts(right, ITEMS, None), embed_texts(left, ITEMS, None)
    assert np.abs(a - b).max() < 1e-5
    # One text alone (no padding at all): the state of its last token, as the model computes it.
    ids = right.token_ids(*ITEMS[0])
    with torch.inference_mode():
        h = right.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    assert np.allclose(a[0], torch.nn.functional.normalize(h, dim=0).numpy(), atol=1e-5)
    # iter_hidden's contract holds under left padding too: right-padded states and mask.
    for idx, _hidden, mask in left.iter_hidden([left.token_ids(p, r) for p, r in ITEMS]):
        lengths = mask.sum(1)
        assert all(mask[i, : lengths[i]].all() and not mask[i, lengths[i] :].any() for i in range(len(idx)))


def test_reward_model_checkpoint_reads_the_state_its_score_head_reads(tiny):
    from transformers import AutoModelForSequenceClassification

    bb = Backbone(BackboneSpec(str(tiny["llama-rm"])))
    rm = AutoModelForSequenceClassification.from_pretrained(str(tiny["llama-rm"])).eval()
    ids = bb.token_ids("how do i boil an egg", "simmer it for nine minutes")
    idx, hidden, mask = next(bb.iter_hidden([ids]))
    with torch.inference_mode():
        reward = rm(input_ids=torch.tensor([ids])).logits[0, 0]
        last = hidden[0, mask.sum(1)[0] - 1]
        assert torch.allclose(rm.score(last)[0], reward, atol=1e-5)  # the base model's state feeds the head
    assert bb.metadata()["pooling"] == "last"


def test_chat_template_formats_turns_and_keeps_the_length_limit(tiny):
    chat = Backbone(BackboneSpec(str(tiny["llama-chat"]), max_length=12))
    plain = Backbone(BackboneSpec(str(tiny["llama-chat"]), max_length=12, template="plain"))
    assert chat.template == "chat" and plain.template == "plain" and chat.cache_key != plain.cache_key
    tokens = chat.tokenizer.convert_ids_to_tokens(chat.token_ids("name a prime number", "seven"))
    assert tokens == ["<|user|>", "name", "a", "prime", "number", "</s>", "<|assistant|>", "seven", "</s>"]
    long = chat.token_ids("explain it step by step " * 5, "seven is prime")
    assert len(long) == 12 and chat.tokenizer.convert_ids_to_tokens(long)[-5:] == [
        "<|assistant|>",
        "seven",
        "is",
        "prime",
        "</s>",
    ]
    assert chat.metadata()["template"] == "chat"
    with pytest.raises(ValueError, match="no chat template"):
        Backbone(BackboneSpec(str(tiny["llama"]), template="chat"))


def test_half_precision_is_recorded_and_keyed_apart(tiny):
    fp32 = Backbone(BackboneSpec(str(tiny["llama"])))
    bf16 = Backbone(BackboneSpec(str(tiny["llama"]), precision="bfloat16"))
    assert (
        next(bf16.model.parameters()).dtype == torch.bfloat16 and bf16.metadata()["precision"] == "bfloat16"
    )
    assert fp32.cache_key != bf16.cache_key and "precision" not in fp32.metadata()
    a, b = embed_texts(fp32, ITEMS, None), embed_texts(bf16, ITEMS, None)
    assert b.dtype == np.float32 and (a * b).sum(1).min() > 0.98
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Backbone(BackboneSpec(str(tiny["llama"]), device="cuda:0"))


def test_token_budget_bounds_batches_and_out_of_memory_halves_it(tiny, monkeypatch):
    bb = Backbone(BackboneSpec(str(tiny["bert"]), batch_size=64))
    ids = [bb.token_ids(p, r) for p, r in ITEMS * 4]
    reference = bb.encode_ids(ids)
    bb.max_batch_tokens = 24
    seen = []
    for _idx, hidden, _mask in bb.iter_hidden(ids):
        seen.append(hidden.shape[0] * hidden.shape[1])
    assert max(seen) <= 24 and len(seen) > 1
    real = bb._forward
    bb.max_batch_tokens = 10_000

    def tight(input_ids, mask):  # a device with room for 40 padded tokens
        if input_ids.numel() > 40:
            raise torch.OutOfMemoryError("simulated")
        return real(input_ids, mask)

    monkeypatch.setattr(bb, "_forward", tight)
    assert np.allclose(bb.encode_ids(ids), reference, atol=1e-5) and bb.max_batch_tokens <= 40


def test_progress_advances_per_batch_and_is_quiet_off_a_terminal(tiny, capsys):
    bb = Backbone(BackboneSpec(str(tiny["bert"]), batch_size=4))
    items = [(f"name a prime number {'seven ' * i}", "no") for i in range(70)]
    calls = []
    embed_texts(bb, items, None, progress=lambda done, total: calls.append((done, total)), chunk=32)
    assert len(calls) == 18 and calls[-1] == (70, 70) and all(t == 70 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)  # monotone, across chunks
    embed_texts(
        bb, [(p + " again", r) for p, r in items], None
    )  # no callback: tqdm, but stderr is no terminal
    err = capsys.readouterr().err
    assert "text/s" not in err and "%|" not in err


def test_a_shared_prompt_is_tokenized_and_embedded_once(tiny, monkeypatch):
    bb = Backbone(BackboneSpec(str(tiny["bert"])))
    prompt = "explain it step by step"
    pairs = [PreferencePair(prompt, f"the sky is blue {i}", f"no {i}", id=str(i)) for i in range(6)]
    pairs.append(PreferencePair(prompt, "the sky is blue 0", "no 0", id="dup"))  # same texts again
    encoded, rows = [], []
    enc = bb.tokenizer.encode
    monkeypatch.setattr(bb.tokenizer, "encode", lambda text, **kw: encoded.append(text) or enc(text, **kw))
    fwd = bb._forward
    monkeypatch.setattr(bb, "_forward", lambda ids, mask: rows.append(len(ids)) or fwd(ids, mask))
    feats = embed_pairs(pairs, bb, cache_dir=None)
    assert encoded.count(prompt) == 1
    assert sum(rows) == 1 + 6 + 6  # one prompt, six distinct chosen and six distinct rejected texts
    assert np.array_equal(feats.prompt[0], feats.prompt[6]) and np.array_equal(
        feats.chosen[0], feats.chosen[6]
    )


def test_onnx_int8_runtime_agrees_with_fp32_and_is_keyed_apart(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("MOE_REWARD_CACHE", str(tmp_path))
    from moe_reward.data.pairs import load_pairs

    pairs = load_pairs("controlled").pairs[::500]  # texts of the default data: prompts, prompt + response
    items = [(p.prompt, None) for p in pairs] + [(p.prompt, p.chosen) for p in pairs]
    ref = Backbone(BackboneSpec(runtime="torch"))
    fast = Backbone(BackboneSpec(runtime="onnx-int8"))
    a, b = embed_texts(ref, items, None), embed_texts(fast, items, None)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.99 and cos.mean() >= 0.995 and not np.allclose(a, b, atol=1e-4)  # really quantized
    short = embed_texts(ref, ITEMS, None) * embed_texts(fast, ITEMS, None)
    assert short.sum(1).min() >= 0.98  # a handful of words: less averaging, a little further off
    assert fast.cache_key != ref.cache_key and fast.metadata()["runtime"] == "onnx-int8"
    assert len(list((tmp_path / "onnx").glob("*/model-int8.onnx"))) == 1  # exported once, reused after
    feats = embed_pairs([PreferencePair("q", "a", "b")], fast, cache_dir=tmp_path)
    assert feats.metadata["runtime"] == "onnx-int8" and (tmp_path / fast.cache_key).is_dir()
    assert BackboneSpec.from_metadata(feats.metadata).runtime == "onnx-int8"
    with pytest.raises(ValueError, match="runtime"):
        Backbone(BackboneSpec(runtime="tensorrt"))
    # Exported once: a later process runs the graph without loading (or importing) the torch model, and
    # gets the same embeddings for the same batch.
    code = (
        "import sys, json; from moe_reward.embed.backbone import Backbone, BackboneSpec; "
        "from moe_reward.embed.cache import embed_texts; "
        f"e = embed_texts(Backbone(BackboneSpec(runtime='onnx-int8')), {items!r}, None); "
        "print(json.dumps(['transformers' in sys.modules, e.tolist()]))"
    )
    env = {**os.environ, "MOE_REWARD_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    imported_transformers, again = json.loads(out.stdout)
    assert not imported_transformers and np.allclose(again, b, atol=1e-6)


def test_the_light_tokenizer_gives_the_token_ids_of_transformers():
    """The ONNX runtimes' tokenizer (tokenizer.json through `tokenizers`, no `transformers` import) gives
    the ids `transformers.AutoTokenizer` gives, on the default data and on awkward text; a folder it cannot
    vouch for (another tokenizer class) is left to `transformers`."""
    from transformers import AutoTokenizer

    from moe_reward.data.pairs import load_pairs
    from moe_reward.embed.backbone import resolve_backbone
    from moe_reward.embed.tokenizer import light_encoder

    path = resolve_backbone("default")
    light, config = light_encoder(path)
    hf = AutoTokenizer.from_pretrained(path)
    pairs = load_pairs("controlled").pairs[::7]
    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)] + [
        "",
        "  Ünïcödé  café naïve 日本語 über ﬁ ligatures…  ",
        "tabs\tnew\nlines\r\nand \u200b zero-width, emoji 🙂 and <b>html</b> & ampersands",
        "word " * 600,  # longer than the model's 512 positions: no truncation here
    ]
    for text in texts:
        assert light.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
    assert light("a question", "an answer")["input_ids"] == hf("a question", "an answer")["input_ids"]
    assert light.pad_token_id == hf.pad_token_id and config.hidden_size == 384
    from transformers import AutoConfig

    from moe_reward.embed.backbone import _is_decoder

    reference = AutoConfig.from_pretrained(path)
    assert _is_decoder(config) is _is_decoder(reference) is False
    for attr in ("hidden_size", "max_position_embeddings", "architectures"):
        assert getattr(config, attr) == getattr(reference, attr)


def test_a_tokenizer_the_light_path_cannot_vouch_for_goes_through_transformers(tiny):
    from moe_reward.embed.tokenizer import light_encoder

    assert light_encoder(tiny["llama"]) is None and light_encoder(tiny["llama-chat"]) is None


def _features(n: int, dim: int = 8, seed: int = 0) -> PairFeatures:
    rng = np.random.default_rng(seed)
    arrays = rng.normal(size=(3, n, dim)).astype(np.float32)
    pairs = [PreferencePair(f"p{i % 5}", f"c{i}", f"r{i}", id=f"id{i}") for i in range(n)]
    return PairFeatures(*arrays, pairs, {"backbone": "synthetic", "dim": dim})


def test_shards_round_trip_and_bad_manifests_are_named(tmp_path):
    feats = _features(25)
    writer = ShardWriter(tmp_path / "f", dtype="float16", shard_rows=10)
    writer.add(feats.prompt[:7], feats.chosen[:7], feats.rejected[:7], feats.pairs[:7], feats.metadata)
    writer.add(feats.prompt[7:], feats.chosen[7:], feats.rejected[7:], feats.pairs[7:], feats.metadata)
    manifest = writer.close({"engine": "test"})
    assert [s["rows"] for s in manifest["shards"]] == [10, 10, 5]
    back = load_features_or_pairs(tmp_path / "f")
    assert back.ids == feats.ids and back.metadata["engine"] == "test" and back.storage_dtype == "float32"
    assert np.abs(back.chosen - feats.chosen).max() < 2e-3  # float16 storage
    assert len(PairFeatures.load(tmp_path / "f" / "shard-00002.safetensors")) == 5  # each shard stands alone
    manifest["shards"][1]["file"] = "../escape.safetensors"
    (tmp_path / "f" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"shards\[1\]: file"):
        PairFeatures.load(tmp_path / "f")
    (tmp_path / "f" / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        PairFeatures.load(tmp_path / "f")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        ShardWriter(tmp_path / "f" / "shard-00000.safetensors")
    (tmp_path / "f" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="not a features folder"):
        PairFeatures.load(tmp_path / "f")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="non-empty folder"):
        ShardWriter(tmp_path / "other")


def test_large_features_stay_float16_or_mapped_and_read_float32_rows(tmp_path, monkeypatch):
    import moe_reward.embed.features as embed

    feats = _features(40)
    feats.save(tmp_path / "h.safetensors", dtype="float16")
    feats.save(tmp_path / "q.safetensors", dtype="int8")
    monkeypatch.setattr(embed, "LARGE_FEATURES_BYTES", 1000)  # these count as large now
    mapped = PairFeatures.load(tmp_path / "h.safetensors")
    assert isinstance(mapped.chosen, np.memmap) and mapped.chosen.dtype == np.float16
    rows = mapped.rows("chosen", np.array([3, 1]))
    assert rows.dtype == np.float32 and np.abs(rows - feats.chosen[[3, 1]]).max() < 2e-3
    part = mapped.subset([0, 2, 4])
    assert part.chosen.dtype == np.float16 and len(part) == 3 and part.as_float32().chosen.dtype == np.float32
    quant = PairFeatures.load(tmp_path / "q.safetensors")
    assert quant.chosen.dtype == np.float16 and np.abs(quant.rows("rejected") - feats.rejected).max() < 0.05
    small = PairFeatures.load(tmp_path / "h.safetensors", mmap=False)
    assert small.chosen.dtype == np.float32 and not isinstance(small.chosen, np.memmap)
    monkeypatch.setenv("MOE_REWARD_CACHE", str(tmp_path / "cache"))
    writer = ShardWriter(tmp_path / "shards", shard_rows=15)
    writer.add(feats.prompt, feats.chosen, feats.rejected, feats.pairs, feats.metadata)
    writer.close()
    big = PairFeatures.load(tmp_path / "shards")  # large: mapped from a consolidated float16 copy
    assert isinstance(big.prompt, np.memmap) and big.ids == feats.ids
    assert np.abs(big.rows("prompt") - feats.prompt).max() < 2e-3
    part = big.subset(np.array([39, 0, 17]))
    assert not isinstance(part.chosen, np.memmap) and np.array_equal(part.chosen, big.chosen[[39, 0, 17]])
    assert len(list((tmp_path / "cache" / "mapped_features").iterdir())) == 1
    PairFeatures.load(tmp_path / "shards")  # a second load maps the same copy
    assert len(list((tmp_path / "cache" / "mapped_features").iterdir())) == 1
    (tmp_path / "bad.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="bad.safetensors"):
        PairFeatures.load(tmp_path / "bad.safetensors", mmap=True)


def test_cli_embeds_to_shards_and_trains_on_the_folder(tiny, tmp_path):
    from moe_reward.cli import main
    from moe_reward.data.pairs import save_jsonl

    pairs = [
        PreferencePair(f"name a prime number {i % 4}", f"seven {i}", f"no {i}", id=f"x{i}") for i in range(40)
    ]
    save_jsonl(pairs, tmp_path / "p.jsonl")
    out = tmp_path / "feats"
    assert (
        main(
            [
                "embed",
                "--data",
                str(tmp_path / "p.jsonl"),
                "--out",
                str(out),
                "--backbone",
                str(tiny["gpt2"]),
                "--shard-rows",
                "16",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [16, 16, 8] and manifest["metadata"][
        "pooling"
    ] == "last"
    assert (
        main(
            ["train", "--data", str(out), "--model", "single", "--epochs", "2", "--out", str(tmp_path / "m")]
        )
        == 0
    )
    assert json.loads((tmp_path / "m" / "config.json").read_text())["backbone"]["backbone"] == str(
        tiny["gpt2"]
    )


def test_the_dashboard_workspace_lists_a_shard_folder_once_and_loads_it(tmp_path):
    from moe_reward.app.workspace import Workspace

    feats = _features(12)
    writer = ShardWriter(tmp_path / "data" / "big", shard_rows=5)
    writer.add(feats.prompt, feats.chosen, feats.rejected, feats.pairs, feats.metadata)
    writer.close()
    (tmp_path / "data" / "small.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    ws = Workspace(tmp_path / "ws", data_dir=tmp_path / "data")
    labels = [d.label for d in ws.list_data()]
    assert "data/big" in labels and "data/small.jsonl" in labels and not any("shard-" in x for x in labels)
    loaded = ws.features_for(tmp_path / "data" / "big")
    assert loaded.ids == feats.ids and list(ws.features_dir.iterdir()) == []  # used as is, never re-embedded


def test_gpu_batch_budget_follows_free_memory(tiny, monkeypatch):
    bb = Backbone(BackboneSpec(str(tiny["llama"]), batch_size=0))
    assert (bb.batch_rows, bb.max_batch_tokens) == (32, 0)  # CPU: 32 rows, no token bound
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 << 30, 16 << 30))
    bb.device, bb.dtype = "cuda", torch.bfloat16
    rows, tokens = bb._batch_limits()
    per_token = 2 * (12 * 32 + 3 * 64)  # bytes per token: bf16, hidden 32, intermediate 64
    assert rows == 1024 and tokens == int(0.5 * (8 << 30) / per_token)
