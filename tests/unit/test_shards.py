"""The one sharded cache (core/shards.py) and its two users: every entry is checked against its key on read
(issue 20 item 3: a reversed key list or swapped shard files gave wrong features silently)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from moe_reward.core.shards import SHARD_FORMAT, ShardedCache
from moe_reward.embed.cache import EmbeddingCache, embed_texts
from moe_reward.model.router_inputs import TokenStateCache


def _shards(folder):
    return sorted(folder.glob("*.safetensors"))


def _rewrite(shard, edit_meta=None, edit_tensors=None):
    with safe_open(str(shard), framework="numpy") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(shard), metadata=meta)


def _no_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def test_round_trip_of_rows_and_of_ragged_entries(tmp_path):
    rows = ShardedCache(tmp_path / "rows")
    mat = np.arange(12, dtype=np.float32).reshape(3, 4)
    rows.put(["a", "b", "c"], mat)
    got = _no_warnings(lambda: ShardedCache(tmp_path / "rows").get(["c", "a", "zz"]))
    assert set(got) == {"a", "c"} and np.array_equal(got["c"], mat[2])
    ragged = ShardedCache(tmp_path / "ragged")
    ragged.put(["x", "y"], [np.ones((2, 3)), np.full((4, 3), 5.0)], dtype=np.float16)
    got = _no_warnings(lambda: ShardedCache(tmp_path / "ragged").get(["x", "y"]))
    assert got["x"].shape == (2, 3) and got["y"].shape == (4, 3) and got["y"].dtype == np.float16
    with safe_open(str(_shards(tmp_path / "ragged")[0]), framework="numpy") as fh:
        meta = fh.metadata()
    assert meta["format"] == SHARD_FORMAT and json.loads(meta["keys"]) == ["x", "y"]
    assert not list((tmp_path / "rows").glob("*.json"))  # keys live inside the shard, not beside it


def test_a_reversed_key_list_is_dropped_with_a_warning(tmp_path):
    cache = ShardedCache(tmp_path, "test cache", "recomputed")
    cache.put(["a", "b", "c"], np.arange(12, dtype=np.float32).reshape(3, 4))
    shard = _shards(tmp_path)[0]
    _rewrite(shard, lambda m: m.__setitem__("keys", json.dumps(json.loads(m["keys"])[::-1])))
    with pytest.warns(
        UserWarning, match=r"test cache: dropped broken shard .*does not match its content digest"
    ):
        assert ShardedCache(tmp_path, "test cache").get(["a", "b", "c"]) == {}
    assert not shard.exists()


def test_edited_rows_and_reordered_digests_are_caught(tmp_path):
    cache = ShardedCache(tmp_path)
    cache.put(["a", "b"], np.ones((2, 4), np.float32))
    _rewrite(_shards(tmp_path)[0], edit_tensors=lambda t: t["values"].__setitem__((1, 0), 7.0))
    with pytest.warns(UserWarning, match="does not match its content digest"):
        assert ShardedCache(tmp_path).get(["a", "b"]) == {}
    cache.put(["a", "b"], np.stack([np.ones(4), np.zeros(4)]).astype(np.float32))
    _rewrite(  # keys and digests moved together, rows not: still caught (digests cover the row)
        _shards(tmp_path)[0],
        lambda m: m.update(keys=json.dumps(["b", "a"]), digests=json.dumps(json.loads(m["digests"])[::-1])),
    )
    with pytest.warns(UserWarning, match="does not match"):
        assert ShardedCache(tmp_path).get(["a", "b"]) == {}


def test_swapped_shard_files_stay_correct(tmp_path):
    cache = ShardedCache(tmp_path)
    cache.put(["a"], np.full((1, 4), 1.0, np.float32))
    cache.put(["b"], np.full((1, 4), 2.0, np.float32))
    first, second = _shards(tmp_path)
    one, two = first.read_bytes(), second.read_bytes()
    first.write_bytes(two)
    second.write_bytes(one)
    got = _no_warnings(lambda: ShardedCache(tmp_path).get(["a", "b"]))
    assert float(got["a"][0]) == 1.0 and float(got["b"][0]) == 2.0


def test_old_format_shards_are_dropped_with_one_warning(tmp_path):
    for i in range(3):  # what earlier versions wrote: a key list beside an unverifiable matrix
        (tmp_path / f"{i}.json").write_text(json.dumps([f"k{i}"]))
        save_file({"embeddings": np.ones((1, 4), np.float32)}, str(tmp_path / f"{i}.safetensors"))
    with pytest.warns(UserWarning) as seen:
        assert ShardedCache(tmp_path, "embedding cache").get(["k0", "k1", "k2"]) == {}
    assert len(seen) == 1 and "dropped 3 shards of an older format" in str(seen[0].message)
    assert list(tmp_path.iterdir()) == []


def test_truncated_and_non_finite_shards_are_dropped(tmp_path):
    cache = ShardedCache(tmp_path)
    cache.put(["a"], np.ones((1, 4), np.float32))
    cache.put(["b"], np.full((1, 4), np.nan, np.float32))
    cache.put(["c"], np.ones((1, 4), np.float32))
    shards = _shards(tmp_path)
    shards[2].write_bytes(shards[2].read_bytes()[:-9])
    with pytest.warns(UserWarning) as seen:
        assert set(ShardedCache(tmp_path).get(["a", "b", "c"])) == {"a"}
    assert len(seen) == 2 and all("dropped broken shard" in str(w.message) for w in seen)


class _CountingBackbone:
    """Embeds a text as a vector derived from its characters; counts what it embeds."""

    dim = 4

    def __init__(self):
        self.embedded: list[int] = []

    def token_ids(self, prompt, response):
        text = prompt + ("" if response is None else "\x00" + response)
        return [ord(c) for c in text]

    def encode_ids(self, ids, progress=None, quiet=True):
        self.embedded.append(len(ids))
        return np.array([[len(x), sum(x) % 97, x[0], x[-1]] for x in ids], np.float32)


def test_embedding_cache_recomputes_a_tampered_shard(tmp_path):
    """The issue's case: a shard's key list reversed gave other texts' embeddings (max abs diff 0.29)."""
    items = [(f"prompt {i}", f"answer number {i}" * (i + 1)) for i in range(5)]
    bb = _CountingBackbone()
    fresh = embed_texts(bb, items, EmbeddingCache(tmp_path, "bb"))
    shard = _shards(tmp_path / "bb")[0]
    _rewrite(shard, lambda m: m.__setitem__("keys", json.dumps(json.loads(m["keys"])[::-1])))
    with pytest.warns(UserWarning, match="embedding cache: dropped broken shard.*embedded again"):
        again = embed_texts(bb, items, EmbeddingCache(tmp_path, "bb"))
    assert np.array_equal(again, fresh) and bb.embedded == [5, 5]
    assert np.array_equal(_no_warnings(lambda: embed_texts(bb, items, EmbeddingCache(tmp_path, "bb"))), fresh)
    assert bb.embedded == [5, 5]  # the recomputed entries were cached again, verified


def test_token_state_cache_catches_swapped_rows(tmp_path):
    cache = TokenStateCache(tmp_path, "key")
    cache.put(["p", "q"], [np.ones((3, 4), np.float16), np.full((5, 4), 2, np.float16)])
    shard = _shards(tmp_path / "key")[0]
    _rewrite(shard, lambda m: m.__setitem__("keys", json.dumps(["q", "p"])))
    with pytest.warns(UserWarning, match="token-state cache: dropped broken shard.*read again"):
        assert TokenStateCache(tmp_path, "key").get(["p", "q"]) == {}
