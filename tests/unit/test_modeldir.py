"""model/modeldir.py, the one reader and writer of a saved model directory (issue 17): bounded reads, bad
JSON and wrong types as CheckpointErrors naming the file, the strict / lenient split-ids policy, and what a
trained model may hold (issue 20 item 4)."""

from __future__ import annotations

import pytest
import torch

from moe_reward.core.errors import MoeRewardError
from moe_reward.model import modeldir
from moe_reward.model.modeldir import CheckpointError, MissingCheckpointFile
from moe_reward.model.moe import ModelConfig, SparseMoERewardModel


def _model(**kw) -> SparseMoERewardModel:
    torch.manual_seed(0)
    return SparseMoERewardModel(ModelConfig(input_dim=4, num_experts=2, top_k=1, **kw))


@pytest.fixture
def saved(tmp_path):
    out = tmp_path / "m"
    _model().save_pretrained(out, {"data": "train.jsonl", "test": {"accuracy": 0.75}})
    modeldir.write_split_ids(out, {"train": ["a", "b"], "validation": ["c"], "test": ["d"]})
    return out


def test_round_trip_through_the_one_owner(saved):
    assert modeldir.is_model_dir(saved) and not modeldir.is_model_dir(saved.parent)
    assert modeldir.read_config(saved)["num_experts"] == 2
    assert modeldir.read_metrics(saved)["test"] == {"accuracy": 0.75}
    assert modeldir.trained_on(saved) == "train.jsonl"
    assert modeldir.read_split_ids(saved) == {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}
    assert SparseMoERewardModel.from_pretrained(saved).num_experts == 2
    assert not [p for p in saved.iterdir() if p.name.endswith(".tmp")]


def test_errors_are_moe_reward_errors_naming_the_file(saved):
    assert issubclass(CheckpointError, MoeRewardError) and issubclass(CheckpointError, ValueError)
    (saved / "metrics.json").write_text('{"data": ')
    with pytest.raises(CheckpointError, match=r"m/metrics\.json: bad JSON at line 1.*truncated file"):
        modeldir.read_metrics(saved)
    with pytest.raises(CheckpointError, match=r"m/metrics\.json"):
        modeldir.trained_on(saved)  # one policy: a broken file is never "nothing recorded"
    (saved / "metrics.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"m/metrics\.json: expected a JSON object, got list"):
        modeldir.read_metrics(saved)
    (saved / "metrics.json").write_bytes(b'{"data": "\xff"}')
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        modeldir.read_metrics(saved)
    (saved / "config.json").write_text('"just text"')
    with pytest.raises(CheckpointError, match=r"m/config\.json: expected a JSON object, got str"):
        modeldir.read_config(saved)
    (saved / "metrics.json").unlink()
    assert modeldir.read_metrics(saved) == {} and modeldir.trained_on(saved) is None


def test_reads_are_bounded_before_parsing(saved, monkeypatch):
    monkeypatch.setattr(modeldir, "MAX_METRICS_BYTES", 16)
    with pytest.raises(CheckpointError, match=r"metrics\.json: \d+ bytes, more than the limit of 16"):
        modeldir.read_metrics(saved)
    monkeypatch.setattr(modeldir, "MAX_SPLIT_BYTES", 8)
    with pytest.raises(CheckpointError, match=r"split_ids\.json: \d+ bytes, more than the limit of 8"):
        modeldir.read_split_ids(saved, strict=False)  # broken is an error even when lenient


def test_split_ids_policy_strict_or_lenient(saved):
    (saved / "split_ids.json").unlink()
    assert modeldir.read_split_ids(saved, strict=False) is None
    with pytest.raises(MissingCheckpointFile, match="no saved split.*--split all"):
        modeldir.read_split_ids(saved, strict=True)
    for content, expect in (
        ('{"train": [], "validation": [], "test": "d"}', "test: expected a list of pair ids"),
        ('{"train": [1], "validation": [], "test": []}', "train: expected a list of pair ids"),
        ("[]", "expected an object"),
        ('{"test": [', "bad JSON"),
    ):
        (saved / "split_ids.json").write_text(content)
        for strict in (True, False):
            with pytest.raises(CheckpointError, match=expect):
                modeldir.read_split_ids(saved, strict=strict)


def test_tensor_file_checks_the_header_before_reading(saved):
    with modeldir.TensorFile(saved) as tf:
        assert tf.header["head"] == ((2, 4), "F32") and tf.values_held > 8
        with pytest.raises(
            CheckpointError, match=r"tensor 'head' has shape \[2, 4\], config.json implies \[3, 4\]"
        ):
            tf.check({**{k: v[0] for k, v in tf.header.items()}, "head": (3, 4)})
        with pytest.raises(CheckpointError, match="missing tensor 'extra'"):
            tf.check({**{k: v[0] for k, v in tf.header.items()}, "extra": (1,)})
    (saved / "model.safetensors").unlink()
    with pytest.raises(MissingCheckpointFile, match="missing model.safetensors"):
        modeldir.TensorFile(saved).__enter__()


@pytest.mark.parametrize(
    "kw, name, edit, expect",
    [
        (
            dict(router_input="lexical", lexical_vocabulary=["a", "b"]),
            "lexical_idf",
            lambda t: t.fill_(-2.0),
            "'lexical_idf' has values in",
        ),
        (
            dict(router_input="lexical", lexical_vocabulary=["a", "b"]),
            "lexical_idf",
            lambda t: t.mul_(1e30),
            "idf",
        ),
        ({}, "head", lambda t: t.mul_(1e38), "'head' holds a value of magnitude"),
        ({}, "head", lambda t: t.mul_(1e5), "'head' has a head of norm"),
        ({}, "response_scale", lambda t: t.fill_(1e-20), r"'response_scale' \(a divisor\)"),
        ({}, "router.bias", lambda t: t.fill_(1e20), "'router.bias' holds a value"),
    ],
)
def test_tampered_values_are_refused(tmp_path, kw, name, edit, expect):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "m"
    _model(**kw).save_pretrained(out)
    tensors = load_file(str(out / "model.safetensors"))
    edit(tensors[name])
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match=expect) as info:
        SparseMoERewardModel.from_pretrained(out)
    assert "m/model.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_a_large_router_bias_of_an_empty_cluster_still_loads(tmp_path):
    """Training may park an unused expert at a router bias of -1e4 / tau: large, finite, legitimate."""
    model = _model()
    with torch.no_grad():
        model.router.bias[1] = -1e9
    model.save_pretrained(tmp_path / "m")
    assert SparseMoERewardModel.from_pretrained(tmp_path / "m").router.bias[1] == -1e9
