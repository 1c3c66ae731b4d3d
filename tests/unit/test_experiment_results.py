"""experiment/results.py: the typed results document round-trips ``results.json`` unchanged, and
experiment/render.py renders from a loaded ``results.json``; the split modules do not import run.py."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest

from moe_reward.experiment import render
from moe_reward.experiment.results import (
    DIAGNOSTIC_KEYS,
    ExperimentResults,
    FoldReport,
    ModelResult,
    WeightShift,
    read_results,
    results_json,
    stat,
)

SHOTS = (0, 1, 4)
USERS = ("long_fan", "short_fan")


def s(mean: float | None, sd: float | None = 0.01) -> dict:
    return {"mean": mean, "sd": None if mean is None else sd}


def model_row(acc: float, nmi: float | None) -> dict:
    return {
        "accuracy": s(acc),
        "per_group": {"concise": s(acc - 0.02), "detailed": s(acc + 0.01)},
        "routing_nmi": s(nmi),
        "routing_nmi_significant": 2 if nmi else 0,
        "ties": 1,
        "specialization": ["routing", None],
        "decisions": ["routed", "routed"],
        "untrained_runs": 0,
        "expert_utilization": [0.55, 0.45],
        "personalization": {
            "hedge": {str(k): s(0.5 + 0.05 * k) for k in SHOTS},
            "signed": {str(k): s(0.45 + 0.1 * k, 0.0) for k in SHOTS},
        },
        "diagnostics": {key: s(None) if key.endswith("_p") else s(0.3) for key in DIAGNOSTIC_KEYS},
        "n_test_pairs": 26,
        "router_inputs": ["pooled", "lexical+pooled"],
    }


def realistic_results() -> dict:
    """A results.json as run_experiment writes it (the documented shape, every key in its order)."""
    return {
        "config": {
            "data": "feats.safetensors",
            "user_field": "user",
            "seeds": 2,
            "experts": 2,
            "top_k": 1,
            "max_pairs": None,
            "kinds": ["sparse", "single"],
            "adapters": ["hedge", "signed"],
            "shots": list(SHOTS),
            "draws": 2,
            "held_out_users": [],
            "split_by": None,
            "router_input": "auto",
            "adapter_params": {},
            "figures": False,
            "users": list(USERS),
            "protocol": "held-out users",
            "n_pairs": {
                "total": 152,
                "train_pool": 120,
                "train_pool_min": 120,
                "held_out_users": 32,
                "dropped_duplicates_of_user_pairs": 0,
            },
        },
        "models": {"sparse": model_row(0.93, 0.71), "single": model_row(0.6, None)},
        "oracle": {"1": s(0.55), "4": s(0.7), "pool": s(0.9, 0.0)},
        "active_vs_random": {
            "adapter": "signed",
            "model": "sparse",
            "active": {str(k): s(0.5 + 0.1 * k) for k in SHOTS},
            "random": {str(k): s(0.5 + 0.08 * k) for k in SHOTS},
        },
        "personalization_per_user": {
            kind: {
                a: {str(k): {u: s(0.5 + 0.1 * k) for u in USERS} for k in SHOTS} for a in ("hedge", "signed")
            }
            for kind in ("sparse", "single")
        },
        "weight_shift": {
            u: {
                "adapter": "signed",
                "n_labels": 8,
                "before": [0.5, 0.5],
                "after": [0.8, 0.2],
                "delta": [0.3, -0.3],
                "top_experts": [[0, 0.8], [1, 0.2]],
                "top_movers": {"0": [[f"persona-{u}-1000", 0.12], [f"persona-{u}-1001", 0.05]], "1": []},
            }
            for u in USERS
        },
        "expert_labels": {"0": "prefers: long answers; prompts: q1 detailed", "1": "prefers: short answers"},
        "users_per_k": {str(k): list(USERS) for k in SHOTS},
        "folds": [
            {
                "seed": 0,
                "held_out": list(USERS),
                "train_pool": 120,
                "excluded_repeats_of_test_comparisons": 0,
            },
            {
                "seed": 1,
                "held_out": list(USERS),
                "train_pool": 90,
                "excluded_repeats_of_test_comparisons": 3,
                "warning": "seed 1, held out long_fan, short_fan: only 90 pairs left to train on",
            },
        ],
        "warnings": ["seed 1, held out long_fan, short_fan: only 90 pairs left to train on"],
        "timings": {
            "embed_s": 0.012,
            "train_s": {"sparse": 1.5, "single": 0.7},
            "personalize_s": 2.25,
            "total_s": 5.0,
        },
    }


def older_results() -> dict:
    """An older, smaller document (as the dashboard's test workspace writes): many keys absent."""
    return {
        "config": {"users": list(USERS)},
        "models": {
            "sparse": {
                "accuracy": s(0.95),
                "routing_nmi": s(0.9),
                "per_group": {},
                "personalization": {"hedge": {str(k): s(0.5 + 0.05 * k) for k in (0, 1, 2)}},
            }
        },
        "oracle": {"1": s(0.54), "2": s(0.58)},
        "something_new": {"kept": True},
    }


@pytest.mark.parametrize("make", [realistic_results, older_results])
def test_results_round_trip_through_the_dataclasses(make):
    d = make()
    original = copy.deepcopy(d)
    typed = ExperimentResults.from_dict(d)
    assert typed.to_dict() == d
    assert d == original  # from_dict and to_dict leave the input alone
    assert ExperimentResults.from_dict(typed.to_dict()) == typed
    if make is realistic_results:  # the writer's key order is kept: the same file, byte for byte
        assert results_json(typed) == json.dumps(d, indent=2)


def test_records_are_typed():
    typed = ExperimentResults.from_dict(realistic_results())
    assert isinstance(typed.models["sparse"], ModelResult) and typed.models["sparse"].ties == 1
    assert typed.weight_shift and isinstance(typed.weight_shift["long_fan"], WeightShift)
    assert typed.folds and all(isinstance(f, FoldReport) for f in typed.folds)
    assert typed.folds[0].warning is None and typed.folds[1].warning
    assert "warning" not in typed.folds[0].to_dict()  # absent, as the writer leaves it
    assert typed.timings and typed.timings.train_s == {"sparse": 1.5, "single": 0.7}
    assert typed.active_vs_random and typed.active_vs_random.model == "sparse"
    old = ExperimentResults.from_dict(older_results())
    assert old.timings is None and old.models["sparse"].diagnostics is None
    assert old.extra == {"something_new": {"kept": True}}


def test_stat():
    assert stat([1.0, 3.0]) == {"mean": 2.0, "sd": pytest.approx(2**0.5)}
    assert stat([None, float("nan")]) == {"mean": None, "sd": None}
    assert stat([0.5]) == {"mean": 0.5, "sd": 0.0}


def test_render_from_a_loaded_results_json(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(realistic_results(), indent=2))
    loaded = read_results(tmp_path)
    md = render.results_markdown(loaded)
    assert md == render.results_markdown(json.loads((tmp_path / "results.json").read_text()))
    for text in (
        "# Experiment: feats.safetensors",
        "Few-shot personalization",
        "**Warning:** seed 1",
        "## Weight shift per user",
        "prefers: long answers",
        "## Timings",
        "sparse 1.5s",
    ):
        assert text in md
    figures = render.make_figures(loaded)
    assert set(figures) == {"personalization_curves", "routing_nmi", "active_vs_random"}
    out = render.write_outputs(loaded, tmp_path / "out", figures=False)
    assert (out / "results.md").read_text() == md
    assert json.loads((out / "results.json").read_text()) == realistic_results()


MODULES = Path(__file__).resolve().parents[2] / "moe_reward" / "experiment"


@pytest.mark.parametrize("name", ["protocol", "results", "render"])
def test_split_modules_do_not_import_run(name):
    tree = ast.parse((MODULES / f"{name}.py").read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{name}.py says its job in a docstring"
    imported = [
        (node.level, node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [(0, a.name) for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert not [m for level, m in imported if (level == 1 and m == "run") or m.endswith("experiment.run")], (
        f"{name}.py imports run.py"
    )
    if name == "protocol":
        assert not [m for level, m in imported if level == 1], "protocol.py stands alone in experiment/"
