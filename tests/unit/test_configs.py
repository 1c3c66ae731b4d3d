"""Configs are validated where a user value enters: every bad field raises a ValueError that names the field
and what is allowed (issue 17). The training configs (TrainConfig, TrainRequest, ExperimentConfig) are
checked by their own module's tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moe_reward.cli import main
from moe_reward.cli.explore import filter_mask
from moe_reward.core.checks import check_choice, check_int, check_number, check_text
from moe_reward.embed.backbone import BackboneSpec
from moe_reward.evaluate.describe import ExpertDescription, describe_experts, llm_describe
from moe_reward.evaluate.projection import ProjectionParams

# ----------------------------------------------------------------------------- the checks themselves


def test_check_int():
    assert check_int("n", 3, 1, 5) == 3 and check_int("n", np.int64(5), 1, 5) == 5
    for bad in (0, 6, True, 2.0, "3", None, [3]):
        with pytest.raises(ValueError, match=r"^n must be an integer in \[1, 5\], got "):
            check_int("n", bad, 1, 5)


def test_check_number():
    assert check_number("x", 0, 0.0, 1.0) == 0.0 and check_number("x", np.float32(0.5), 0.0, 1.0) == 0.5
    for bad in (math.nan, math.inf, -math.inf, -0.1, 1.5, True, "0.5", None):
        with pytest.raises(ValueError, match=r"^x must be a finite number in \[0.0, 1.0\], got "):
            check_number("x", bad, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"in \(0.0, 1.0\], got 0"):
        check_number("x", 0, 0.0, 1.0, lo_open=True)


def test_check_choice_and_text():
    check_choice("mode", "a", ("a", "b"))
    for bad in ("c", None, ["a"], {"a": 1}):
        with pytest.raises(ValueError, match=r"^mode must be one of a, b; got "):
            check_choice("mode", bad, ("a", "b"))
    assert check_text("name", "x") == "x"
    for bad in ("", "   ", None, 3, "x" * 5000):
        with pytest.raises(ValueError, match=r"^name must be non-empty text of at most 4096 characters"):
            check_text("name", bad)


def test_long_values_are_cut_in_messages():
    with pytest.raises(ValueError) as info:
        check_int("n", "9" * 100_000, 1, 5)
    assert len(str(info.value)) < 120


# ----------------------------------------------------------------------------- BackboneSpec


def test_backbone_spec_accepts_what_the_cli_and_dashboard_make():
    BackboneSpec()
    BackboneSpec("some/model", pooling="last", max_length=1, batch_size=0, runtime="onnx-int8")
    for device in (None, "", "auto", "cpu", "cuda", "cuda:1", "mps"):
        BackboneSpec(device=device)
    for precision in ("auto", "float32", "bfloat16", "float16", "bf16"):
        BackboneSpec(precision=precision)
    BackboneSpec(template="chat", padding="left", max_batch_tokens=1 << 24)


@pytest.mark.parametrize(
    "field, value, expect",
    [
        ("name", "", "backbone name must be non-empty text"),
        ("name", None, "backbone name must be non-empty text"),
        ("pooling", "cls", "pooling must be one of auto, mean, last; got 'cls'"),
        ("max_length", 0, r"max_length must be an integer in \[1, 1048576\], got 0"),
        ("max_length", 1 << 21, r"max_length must be an integer in \[1, 1048576\]"),
        ("max_length", 256.0, r"max_length must be an integer"),
        ("max_length", True, r"max_length must be an integer"),
        ("batch_size", -1, r"batch_size must be an integer in \[0, 65536\], got -1"),
        ("runtime", "tensorrt", "runtime must be one of torch, onnx, onnx-int8; got 'tensorrt'"),
        ("device", "cuda 0", "device must be auto, cpu, cuda, cuda:N, mps"),
        ("device", 0, "device must be auto, cpu, cuda, cuda:N, mps"),
        ("precision", "int4", "precision must be one of auto, float32, bfloat16"),
        ("template", "html", "template must be one of auto, plain, chat; got 'html'"),
        ("padding", "both", "padding must be one of auto, right, left; got 'both'"),
        ("max_batch_tokens", -5, r"max_batch_tokens must be an integer in \[0, 16777216\], got -5"),
    ],
)
def test_backbone_spec_rejects_bad_fields(field, value, expect):
    with pytest.raises(ValueError, match=expect):
        BackboneSpec(**{field: value})


def test_backbone_spec_from_metadata_names_its_source():
    meta = {"backbone": "m", "pooling": "mean", "max_length": 128, "runtime": "onnx", "template": "plain"}
    spec = BackboneSpec.from_metadata(meta)
    assert (spec.name, spec.pooling, spec.max_length, spec.runtime, spec.template) == (
        "m",
        "mean",
        128,
        "onnx",
        "plain",
    )
    with pytest.raises(ValueError, match=r"^feats.safetensors: max_length must be an integer in \[1, "):
        BackboneSpec.from_metadata({**meta, "max_length": -3}, source="feats.safetensors")
    with pytest.raises(ValueError, match=r"^features metadata: pooling must be one of"):
        BackboneSpec.from_metadata({**meta, "pooling": 7})


# ----------------------------------------------------------------------------- ProjectionParams


@pytest.mark.parametrize(
    "bad, expect",
    [
        (dict(method="tsne"), "method must be one of anchors, pca, umap; got 'tsne'"),
        (dict(source="x"), "source must be one of router, margins, prompt, pair"),
        (dict(method="anchors", source="prompt"), "use it with source 'router'"),
        (dict(n_neighbors=1), r"n_neighbors must be an integer in \[2, 200\], got 1"),
        (dict(n_neighbors=15.5), r"n_neighbors must be an integer in \[2, 200\], got 15.5"),
        (dict(n_neighbors=True), r"n_neighbors must be an integer"),
        (dict(min_dist=2.0), r"min_dist must be a finite number in \[0.0, 1.0\], got 2.0"),
        (dict(min_dist=math.nan), r"min_dist must be a finite number in \[0.0, 1.0\], got nan"),
        (dict(metric="manhattan"), "metric must be one of cosine, euclidean; got 'manhattan'"),
        (dict(seed=-1), r"seed must be an integer in \[0, 4294967295\], got -1"),
        (dict(seed=2**32), r"seed must be an integer in \[0, 4294967295\]"),
        (dict(seed="0"), r"seed must be an integer"),
    ],
)
def test_projection_params_name_field_and_range(bad, expect):
    with pytest.raises(ValueError, match=expect):
        ProjectionParams(**bad)


def test_projection_params_accept_the_dashboard_values():
    ProjectionParams("umap", "router", np.int64(30), np.float64(0.0), "euclidean", 10_000)
    ProjectionParams("anchors", "router", seed=2**32 - 1)


# ----------------------------------------------------------------------------- describe options


@pytest.mark.parametrize("top_n", [0, -3, 1001, True, 2.5])
def test_describe_top_n_is_checked_before_any_work(top_n):
    with pytest.raises(ValueError, match=r"^top_n must be an integer in \[1, 1000\]"):
        describe_experts(None, None, top_n=top_n)  # (checked before the model and features are read)


def _description() -> ExpertDescription:
    return ExpertDescription(0, "label", 1, 1.0, [], [], {}, [], {})


@pytest.mark.parametrize(
    "endpoint, timeout, expect",
    [
        ("file:///etc/passwd", 5.0, "endpoint must be an http:// or https:// URL, got 'file:///etc/passwd'"),
        ("localhost:8000/v1", 5.0, "endpoint must be an http:// or https:// URL"),
        ("http:///v1", 5.0, "endpoint must be an http:// or https:// URL"),
        ("http://localhost:1/v1", 0.0, r"timeout must be a finite number in \(0.0, 600.0\], got 0.0"),
        ("http://localhost:1/v1", math.inf, r"timeout must be a finite number in \(0.0, 600.0\], got inf"),
        ("http://localhost:1/v1", 1e9, r"timeout must be a finite number in \(0.0, 600.0\]"),
    ],
)
def test_llm_describe_options_are_checked_before_any_request(endpoint, timeout, expect):
    with pytest.raises(ValueError, match=expect):
        llm_describe(_description(), endpoint, "tiny", timeout=timeout)


def test_llm_describe_needs_a_model_name():
    with pytest.raises(ValueError, match="^model must be non-empty text"):
        llm_describe(_description(), "http://localhost:1/v1", " ")


# ----------------------------------------------------------------------------- explore options


@pytest.mark.parametrize(
    "kwargs, expect",
    [
        (dict(correct="maybe"), "--correct must be one of all, yes, no; got 'maybe'"),
        (dict(min_conf=math.nan), r"--min-confidence must be a finite number in \[0.0, 1.0\], got nan"),
        (dict(max_conf=1.5), r"--max-confidence must be a finite number in \[0.0, 1.0\], got 1.5"),
        (dict(min_conf=0.8, max_conf=0.2), r"--max-confidence \(0.2\) is below --min-confidence \(0.8\)"),
    ],
)
def test_filters_are_checked(kwargs, expect):
    with pytest.raises(ValueError, match=expect):
        filter_mask(None, None, **kwargs)


def test_expert_top_is_bounded_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        main(["expert", "--model", "m", "--data", "d", "--expert", "0", "--top", "-3"])
    assert info.value.code == 2 and "argument --top: must be in [1, 10000], got -3" in capsys.readouterr().err
