import numpy as np
import pytest

from moe_reward.data.pairs import PreferencePair
from moe_reward.embed.backbone import Backbone, BackboneSpec, default_runtime
from moe_reward.embed.cache import EmbeddingCache, embed_texts
from moe_reward.embed.features import PairFeatures
from moe_reward.embed.pairs import embed_pairs


@pytest.fixture(scope="module")
def backbone():
    # torch: these tests check the pipeline (batching must not change an embedding; int8's dynamic
    # activation quantization does, a little: tests/integration/test_backbones.py measures how much)
    return Backbone(BackboneSpec(runtime="torch"))


PAIRS = [
    PreferencePair(
        "How do I boil an egg?",
        "Simmer it for 9 minutes, then cool it in ice water.",
        "Eggs are food.",
        id="a",
    ),
    PreferencePair("Name a prime.", "7", "8", group="math", id="b"),
]


def test_default_backbone_loads_offline_and_embeds(backbone, tmp_path):
    f = embed_pairs(PAIRS, backbone, cache_dir=tmp_path)
    assert f.prompt.shape == f.chosen.shape == f.rejected.shape == (2, 384)
    assert np.allclose(np.linalg.norm(f.chosen, axis=1), 1, atol=1e-5)
    assert f.metadata["backbone"] == "all-MiniLM-L6-v2" and f.metadata["pooling"] == "mean"
    assert not np.allclose(f.chosen[0], f.rejected[0])


def test_cache_makes_second_run_embed_nothing(backbone, tmp_path, monkeypatch):
    first = embed_pairs(PAIRS, backbone, cache_dir=tmp_path)
    calls = []
    monkeypatch.setattr(backbone, "encode_ids", lambda *a, **k: calls.append(a) or np.zeros((0, 384)))
    again = embed_pairs(PAIRS, backbone, cache_dir=tmp_path)
    assert calls == [] and np.array_equal(first.chosen, again.chosen)
    other_key = EmbeddingCache(tmp_path, "another-backbone")  # keyed by backbone: no cross-talk
    assert other_key.get([EmbeddingCache.text_hash(PAIRS[0].prompt, None)]) == {}


def test_batching_and_sorting_do_not_change_embeddings(backbone):
    items = [(f"question {i} " * (i % 7 + 1), f"answer {i}") for i in range(40)]
    together = embed_texts(backbone, items, None)
    one_by_one = np.stack([embed_texts(backbone, [it], None)[0] for it in items[:5]])
    assert np.allclose(together[:5], one_by_one, atol=1e-5)


def test_long_prompt_is_cut_from_the_left_and_counted(backbone):
    prompt = "START " + "filler words here " * 300 + "the real question at the end?"
    backbone.truncated = 0
    ids = backbone.token_ids(prompt, "a short answer")
    assert len(ids) == backbone.max_length and backbone.truncated == 1
    text = backbone.tokenizer.decode(ids)
    assert "start" not in text and "the real question at the end?" in text and "a short answer" in text
    long_answer = "word " * 1000
    ids = backbone.token_ids("q", long_answer)
    assert len(ids) == backbone.max_length


def test_features_file_round_trip(backbone, tmp_path):
    f = embed_pairs(PAIRS, backbone, cache_dir=None)
    f.save(tmp_path / "f.safetensors")
    g = PairFeatures.load(tmp_path / "f.safetensors")
    assert np.array_equal(f.chosen, g.chosen) and g.pairs == f.pairs and g.metadata == f.metadata
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        PairFeatures.load(tmp_path / "bad.safetensors")


def test_int8_features_without_records_join_their_source(tmp_path):
    from moe_reward.data.pairs import save_jsonl

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3, 2, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=-1, keepdims=True)
    f = PairFeatures(vecs[0], vecs[1], vecs[2], PAIRS, {"backbone": "x"})
    f.prompt[1] = f.prompt[0]  # repeated vectors are stored once
    save_jsonl(PAIRS, tmp_path / "pairs.jsonl")
    f.save(tmp_path / "f.safetensors", dtype="int8", include_records=False, source="pairs.jsonl")
    g = PairFeatures.load(tmp_path / "f.safetensors")
    assert (
        g.pairs == PAIRS
        and np.abs(g.chosen - f.chosen).max() < 0.01
        and np.array_equal(g.prompt[0], g.prompt[1])
    )
    with pytest.raises(ValueError, match="source"):
        f.save(tmp_path / "g.safetensors", include_records=False)


def test_shipped_default_features_match_the_dataset():
    from moe_reward.data.pairs import default_dataset_path, load_pairs

    shipped = default_dataset_path().parent / "features.safetensors"
    f = PairFeatures.load(shipped)
    assert f.ids == [p.id for p in load_pairs(default_dataset_path()).pairs]
    assert f.metadata["backbone"] == "all-MiniLM-L6-v2" and f.dim == 384


def test_the_default_runtime_is_int8_for_the_default_encoder_on_the_cpu_only():
    pytest.importorskip("onnxruntime")
    assert BackboneSpec().runtime == "onnx-int8" and BackboneSpec("default").runtime == "onnx-int8"
    assert BackboneSpec(runtime="torch").runtime == "torch"  # asked for: kept
    assert BackboneSpec("/models/my-reward-model").runtime == "torch"  # any other backbone
    assert BackboneSpec(precision="bfloat16").runtime == "torch"
    assert default_runtime("all-MiniLM-L6-v2", device="cuda:0") == "torch"
    # what a features file or a model recorded wins: older torch files stay torch
    assert BackboneSpec.from_metadata({"backbone": "all-MiniLM-L6-v2"}).runtime == "torch"
    assert BackboneSpec.from_metadata({"runtime": "onnx-int8"}).runtime == "onnx-int8"
    assert BackboneSpec().key("mean") != BackboneSpec(runtime="torch").key("mean")  # cached apart
