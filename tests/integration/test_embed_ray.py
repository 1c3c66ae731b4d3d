"""`moe-reward embed --engine ray` on a local Ray cluster with a 2-actor pool (one cluster, one pool: ~40 s)."""

from __future__ import annotations

import json

import pytest
from tiny_backbones import save_tiny

from moe_reward.data.pairs import PreferencePair, save_jsonl
from moe_reward.embed.backbone import BackboneSpec
from moe_reward.embed.features import PairFeatures
from moe_reward.embed.pairs import embed_pairs

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    yield
    ray.shutdown()


def _pairs() -> list[PreferencePair]:
    # The first prompt recurs in every block (block rows 4): computed in the first block, reused after.
    words = [
        "how do i boil an egg",
        "name a prime number",
        "keep the answer short",
        "explain it step by step",
    ]
    return [
        PreferencePair(
            words[i % 4] if i % 3 else words[0],
            f"seven is prime {'no ' * (i % 5)}",
            f"eggs are food {i}",
            id=f"x{i}",
        )
        for i in range(22)
    ]


def test_ray_engine_equals_single_process_embedding_and_trains(cluster, tmp_path):
    from moe_reward.cli import main

    model = save_tiny(tmp_path / "bert", "bert")
    pairs = _pairs()
    save_jsonl(pairs, tmp_path / "p.jsonl")
    out = tmp_path / "shards"
    assert (
        main(
            [
                "embed",
                "--engine",
                "ray",
                "--workers",
                "2",
                "--data",
                str(tmp_path / "p.jsonl"),
                "--out",
                str(out),
                "--backbone",
                str(model),
                "--block-rows",
                "4",
                "--shard-rows",
                "10",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [10, 10, 2] and manifest["dtype"] == "float16"
    assert manifest["metadata"]["engine"] == "ray" and manifest["metadata"]["workers"] == 2
    got = PairFeatures.load(out)
    want = embed_pairs(pairs, BackboneSpec(str(model)), cache_dir=None)
    assert got.ids == want.ids and got.pairs == want.pairs and got.metadata["truncated_inputs"] == 0
    for k in ("prompt", "chosen", "rejected"):
        cos = (got.rows(k) * want.rows(k)).sum(1)
        assert cos.min() >= 0.999, (k, cos.min())
    assert (
        main(
            ["train", "--data", str(out), "--model", "single", "--epochs", "2", "--out", str(tmp_path / "m")]
        )
        == 0
    )
    assert json.loads((tmp_path / "m" / "config.json").read_text())["backbone"]["engine"] == "ray"
