"""The experiment pipeline and the personalize / experiment / describe-experts commands.

Most tests run on a synthetic features file (no backbone); one runs the real MiniLM end to end on a
50-pair JSONL (under 150 texts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moe_reward.cli import main
from moe_reward.data.pairs import PreferencePair, save_jsonl
from moe_reward.embed.features import PairFeatures
from moe_reward.experiment.run import ExperimentConfig, plan_folds, run_experiment, stat, training_index

DIM = 10


def synthetic_features(seed: int = 0, n_general: int = 240, n_user: int = 24) -> PairFeatures:
    """Two contexts (prompt dimension 0 = +-2) whose preference reverses along response dimension 1;
    users 'short_fan' and 'long_fan' prefer one side regardless of the prompt."""
    rng = np.random.default_rng(seed)
    pairs, prompt, chosen, rejected = [], [], [], []

    def add(context: float, prefer_long: bool, user: str | None, group: str, i: int):
        p = rng.normal(size=DIM) * 0.3
        p[0] += 2 * context
        long_, short = rng.normal(size=DIM) * 0.3, rng.normal(size=DIM) * 0.3
        long_[1] += 1.5
        short[1] -= 1.5
        win, lose = (long_, short) if prefer_long else (short, long_)
        pairs.append(
            PreferencePair(
                f"q{i} {group}", f"a{i}", f"b{i}", group=group, user=user, id=f"{group}-{user}-{i}"
            )
        )
        prompt.append(p)
        chosen.append(win)
        rejected.append(lose)

    for i in range(n_general):
        context = 1.0 if i % 2 else -1.0
        add(context, context > 0, None, "detailed" if context > 0 else "concise", i)
    for i in range(n_user):
        add(rng.choice([-1.0, 1.0]), True, "long_fan", "persona", 1000 + i)
        add(rng.choice([-1.0, 1.0]), False, "short_fan", "persona", 2000 + i)
    arrays = (np.asarray(a, dtype=np.float32) for a in (prompt, chosen, rejected))
    return PairFeatures(
        *arrays, pairs, {"backbone": "synthetic", "pooling": "mean", "max_length": 8, "dim": DIM}
    )


@pytest.fixture(scope="module")
def features_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("feats") / "synthetic.safetensors"
    synthetic_features().save(path)
    return path


def check_shape(results: dict, kinds, adapters, shots):
    assert set(results) == {
        "config",
        "models",
        "oracle",
        "active_vs_random",
        "weight_shift",
        "expert_labels",
        "timings",
        "users_per_k",
        "folds",
        "warnings",
        "personalization_per_user",
    }
    assert list(results["models"]) == list(kinds)
    for m in results["models"].values():
        assert set(m) == {
            "accuracy",
            "per_group",
            "routing_nmi",
            "expert_utilization",
            "personalization",
            "diagnostics",
            "n_test_pairs",
            "router_inputs",
            "routing_nmi_significant",
            "ties",
            "specialization",
            "decisions",
            "untrained_runs",
        }
        assert m["router_inputs"] and all(isinstance(x, str) and x != "auto" for x in m["router_inputs"])
        assert set(m["diagnostics"]) == {
            "routing_nmi_null",
            "routing_nmi_null_p95",
            "routing_nmi_p",
            "router_probe_nmi",
            "router_probe_accuracy",
            "router_probe_p",
            "oracle_routing_accuracy",
            "pooled_head_accuracy",
            "oracle_gain_p",
            "discovery_efficiency",
        }
        assert set(m["accuracy"]) == {"mean", "sd"}
        assert list(m["personalization"]) == list(adapters)
        for curve in m["personalization"].values():
            assert list(curve) == [str(k) for k in shots]
            assert all(set(v) == {"mean", "sd"} for v in curve.values())
    assert set(results["oracle"]) == {str(k) for k in shots if k > 0} | {"pool"}
    avr = results["active_vs_random"]
    assert avr["adapter"] in adapters and set(avr["active"]) == set(avr["random"]) == {str(k) for k in shots}
    assert set(results["timings"]) == {"embed_s", "train_s", "personalize_s", "total_s"}
    json.dumps(results)  # JSON-safe


def test_experiment_on_synthetic_features(features_file, tmp_path):
    cfg = ExperimentConfig(
        data=str(features_file),
        seeds=2,
        experts=2,
        top_k=1,
        epochs=4,
        min_steps=30,
        shots=(0, 1, 4, 8),
        draws=2,
        figures=True,
    )
    results = run_experiment(cfg, tmp_path / "out")
    check_shape(
        results, ("sparse", "dense", "single", "drm"), ("hedge", "batch", "gradient", "signed"), (0, 1, 4, 8)
    )
    assert results["config"]["users"] == ["long_fan", "short_fan"]
    assert set(results["weight_shift"]) == {"long_fan", "short_fan"}
    ws = results["weight_shift"]["long_fan"]
    assert len(ws["top_experts"]) == 2 and all(np.isfinite(ws["after"]))
    if ws["adapter"] != "signed":  # the simplex adapters; signed weights are free in sign and scale
        assert sum(ws["after"]) == pytest.approx(1.0, abs=1e-4)
    # The context reversal clears discovery's floor of training pairs and its test: routing is kept.
    assert set(results["models"]["sparse"]["decisions"]) == {"routed"}
    sparse = results["models"]["sparse"]
    assert sparse["accuracy"]["mean"] > 0.9  # the context reversal is learnable by routing
    assert set(sparse["per_group"]) == {"concise", "detailed"}
    # Users' tastes ignore the context: a few labels must beat the routed prior.
    best = max(sparse["personalization"].values(), key=lambda c: c["8"]["mean"])
    assert best["8"]["mean"] > best["0"]["mean"] + 0.1
    assert results["oracle"]["pool"]["mean"] > 0.8
    for name in (
        "results.json",
        "results.md",
        "personalization_curves.html",
        "routing_nmi.html",
        "active_vs_random.html",
    ):
        assert (tmp_path / "out" / name).is_file()
    assert (
        json.loads((tmp_path / "out" / "results.json").read_text())["models"].keys()
        == results["models"].keys()
    )
    assert "Few-shot personalization" in (tmp_path / "out" / "results.md").read_text()


def test_held_out_users_never_reach_training():
    feats = synthetic_features(n_general=10, n_user=3)
    dup = feats.pairs[-1]
    feats.pairs[0] = PreferencePair(
        dup.prompt, dup.rejected, dup.chosen, group="concise", id="dup"
    )  # same texts, no user
    protocol = plan_folds(feats, "user")
    assert protocol.name == "held-out users" and len(protocol.folds) == 1
    fold = protocol.folds[0]
    assert fold.held_users == ["long_fan", "short_fan"]
    # the duplicate repeats short_fan's last pair: excluded only when that pair is a test pair
    last = len(fold.user_index["short_fan"]) - 1
    train, dropped = training_index(
        feats, "user", fold, {"long_fan": np.array([0]), "short_fan": np.array([last])}
    )
    assert dropped == 1 and 0 not in train and all(feats.pairs[i].user is None for i in train)
    train, dropped = training_index(
        feats, "user", fold, {"long_fan": np.array([0]), "short_fan": np.array([0])}
    )
    assert dropped == 0 and 0 in train
    with pytest.raises(ValueError, match="no pair has"):
        plan_folds(feats.subset(range(10)), "user")
    with pytest.raises(ValueError, match="not in the data"):
        plan_folds(feats, "user", held_out_users=("nobody",))


def judges_features(n_comparisons: int = 40, judges=("a", "b", "c", "d")) -> PairFeatures:
    """Every judge labels the same comparisons (a multi-annotator set): judge d disagrees with the rest."""
    rng = np.random.default_rng(1)
    better = rng.normal(size=DIM)  # the direction everyone but d prefers
    pairs, prompt, chosen, rejected = [], [], [], []
    for i in range(n_comparisons):
        x = rng.normal(size=DIM) * 0.3 + better * 0.5  # x is the better response for everyone but d
        y = rng.normal(size=DIM) * 0.3 - better * 0.5
        for j in judges:
            first = j != "d"
            pairs.append(
                PreferencePair(
                    f"q{i}",
                    f"x{i}" if first else f"y{i}",
                    f"y{i}" if first else f"x{i}",
                    user=j,
                    group=j,
                    id=f"{j}-{i}",
                )
            )
            prompt.append(np.zeros(DIM))
            chosen.append(x if first else y)
            rejected.append(y if first else x)
    arrays = (np.asarray(a, dtype=np.float32) for a in (prompt, chosen, rejected))
    return PairFeatures(
        *arrays, pairs, {"backbone": "synthetic", "pooling": "mean", "max_length": 8, "dim": DIM}
    )


def test_leave_one_user_out_never_trains_on_a_held_out_test_comparison():
    feats = judges_features()
    protocol = plan_folds(feats, "user")
    assert protocol.name == "leave-one-user-out" and [f.held_users for f in protocol.folds] == [
        ["a"],
        ["b"],
        ["c"],
        ["d"],
    ]
    fold = protocol.folds[3]
    test = np.arange(0, 40, 2)  # half of d's comparisons are d's test pairs
    train, dropped = training_index(feats, "user", fold, {"d": test})
    test_keys = {feats.pairs[fold.user_index["d"][t]].prompt for t in test}
    assert all(feats.pairs[i].user != "d" for i in train)
    assert not any(feats.pairs[i].prompt in test_keys for i in train)  # no test comparison, by anyone
    assert (
        len(train) == 3 * 20 and dropped == 3 * 20
    )  # the others' labels on d's pool comparisons still train
    assert [f.held_users for f in plan_folds(feats, "user", held_out_users=("b", "d")).folds] == [
        ["b"],
        ["d"],
    ]
    assert len(plan_folds(feats, "user", max_folds=2, seed=3).folds) == 2


def test_experiment_with_held_out_users_lists_who_is_averaged_per_k():
    feats = judges_features()
    cfg = ExperimentConfig(
        data="unused",
        kinds=("single", "sparse"),
        adapters=("hedge", "signed"),
        seeds=1,
        experts=2,
        top_k=1,
        epochs=20,
        min_steps=300,
        shots=(0, 4, 16),
        draws=2,
        figures=False,
        describe=False,
        held_out_users=("d",),
        diagnostics=False,
    )
    import moe_reward.experiment.run as experiment

    original = experiment.load_features_or_pairs
    experiment.load_features_or_pairs = lambda *a, **k: feats
    try:
        results = run_experiment(cfg)
    finally:
        experiment.load_features_or_pairs = original
    assert results["config"]["protocol"] == "leave-one-user-out" and results["config"]["users"] == ["d"]
    assert results["users_per_k"] == {"0": ["d"], "4": ["d"], "16": ["d"]}
    fold = results["folds"][0]
    assert fold["held_out"] == ["d"] and fold["train_pool"] == 60 and "warning" in fold  # 60 < 100: warned
    assert results["warnings"] and "only 60 pairs" in results["warnings"][0]
    # d disagrees with everyone the model learned from: only the signed adapter can follow d
    signed = results["models"]["single"]["personalization"]["signed"]
    assert signed["0"]["mean"] < 0.2 and signed["16"]["mean"] > 0.8
    assert results["personalization_per_user"]["single"]["signed"]["16"]["d"] == signed["16"]
    assert results["models"]["single"]["personalization"]["hedge"]["16"]["mean"] < 0.2


def test_stat_and_config_validation():
    assert stat([1.0, 3.0]) == {"mean": 2.0, "sd": pytest.approx(2**0.5)}
    assert stat([None, float("nan")]) == {"mean": None, "sd": None}
    assert stat([0.5]) == {"mean": 0.5, "sd": 0.0}
    with pytest.raises(ValueError, match="user_field"):
        ExperimentConfig(user_field="annotator")
    with pytest.raises(ValueError, match="split field"):
        ExperimentConfig(split_by="question")
    with pytest.raises(ValueError, match="unknown kinds"):
        ExperimentConfig(kinds=("sparse", "huge"))


def test_personalize_and_describe_commands(features_file, tmp_path, capsys):
    from moe_reward.app.pipeline import TrainRequest, train_from_data
    from moe_reward.train.config import TrainConfig

    req = TrainRequest(
        data=str(features_file),
        kind="sparse",
        experts=2,
        top_k=1,
        train=TrainConfig.for_kind("sparse", epochs=4, min_steps=30),
    )
    train_from_data(req, tmp_path / "model")
    assert main(["personalize", "--model", str(tmp_path / "model"), "--data", str(features_file)]) == 0
    assert "long_fan (24)" in capsys.readouterr().out
    profile = tmp_path / "long.json"
    assert (
        main(
            [
                "personalize",
                "--model",
                str(tmp_path / "model"),
                "--data",
                str(features_file),
                "--user",
                "long_fan",
                "--adapter",
                "gradient",
                "--k",
                "8",
                "--select",
                "active",
                "--param",
                "l2=0.02",
                "--profile-out",
                str(profile),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "accuracy on long_fan's other pairs" in out
    saved = json.loads(profile.read_text())
    assert (
        len(saved["weights"]) == 2 and saved["user"] == "long_fan" and len(saved["labels"]["pair_ids"]) == 8
    )
    assert saved["accuracy_after"] >= saved["accuracy_before"]
    assert (
        main(
            [
                "personalize",
                "--model",
                str(tmp_path / "model"),
                "--data",
                str(features_file),
                "--user",
                "nobody",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "describe-experts",
                "--model",
                str(tmp_path / "model"),
                "--data",
                str(features_file),
                "--out",
                str(tmp_path / "experts.json"),
            ]
        )
        == 0
    )
    assert "expert 0" in capsys.readouterr().out and (tmp_path / "experts.json").is_file()


def small_text_dataset(path):
    """48 pairs, 144 texts at most: a brevity/detail reversal with cues, and two cue-blind users."""
    topics = ["tea", "rice", "bread", "pasta", "soup", "eggs", "beans", "salad"]
    pairs = []
    for i, t in enumerate(topics):
        short, long_ = (
            f"Cook the {t} briefly.",
            f"Cook the {t} slowly, stirring, tasting and adjusting the salt as you go.",
        )
        pairs.append(
            PreferencePair(
                f"Quick answer please: how do I cook {t}?", short, long_, group="concise", id=f"c{i}"
            )
        )
        pairs.append(
            PreferencePair(
                f"Explain in depth: how do I cook {t}?", long_, short, group="detailed", id=f"d{i}"
            )
        )
        pairs.append(
            PreferencePair(
                f"Hurry, how do I serve {t}?",
                f"Serve {t} hot.",
                f"Serve the {t} hot in warm bowls with bread on the side.",
                group="concise",
                id=f"s{i}",
            )
        )
        pairs.append(
            PreferencePair(
                f"In detail, how do I store {t}?",
                f"Store the {t} sealed in the fridge for up to three days.",
                f"Store {t} cold.",
                group="detailed",
                id=f"t{i}",
            )
        )
        pairs.append(
            PreferencePair(
                f"How do I reheat {t}?",
                f"Reheat {t} gently.",
                f"Reheat the {t} gently over low heat with a splash of water, covered.",
                user="terse",
                id=f"u{i}",
            )
        )
        pairs.append(
            PreferencePair(
                f"How do I season {t}?",
                f"Season the {t} with salt, pepper, herbs and a little acid, then taste.",
                f"Salt the {t}.",
                user="verbose",
                id=f"v{i}",
            )
        )
    save_jsonl(pairs, path)


@pytest.mark.slow
def test_experiment_command_end_to_end_with_the_real_backbone(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    small_text_dataset(data)
    out = tmp_path / "exp"
    code = main(
        [
            "experiment",
            "--data",
            str(data),
            "--seeds",
            "1",
            "--experts",
            "2",
            "--top-k",
            "1",
            "--epochs",
            "3",
            "--min-steps",
            "20",
            "--shots",
            "0,1,2,4",
            "--draws",
            "2",
            "--no-figures",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    check_shape(
        results, ("sparse", "dense", "single", "drm"), ("hedge", "batch", "gradient", "signed"), (0, 1, 2, 4)
    )
    assert results["config"]["users"] == ["terse", "verbose"]
    assert results["config"]["n_pairs"]["train_pool"] == 32
    assert "wrote" in capsys.readouterr().out


def test_experiment_without_a_working_chromium_warns_once_and_exits_0(
    features_file, tmp_path, capsys, monkeypatch
):
    """Issue 20 item 7: PNG export is optional. A Chromium that will not start (kaleido's BrowserFailedError)
    used to end the run as "internal error" (exit 3); now the HTML figures are written and one warning says
    why there are no PNGs."""
    monkeypatch.setenv("BROWSER_PATH", "/bin/false")  # exists, and exits at once
    out = tmp_path / "exp"
    args = ["--seeds", "1", "--experts", "2", "--top-k", "1", "--epochs", "2", "--min-steps", "10"]
    args += [
        "--shots",
        "0,1",
        "--draws",
        "1",
        "--kinds",
        "sparse,single",
        "--adapters",
        "hedge",
        "--no-diagnostics",
    ]
    code = main(["experiment", "--data", str(features_file), *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("warning: no PNG figures") == 1, err
    assert "BrowserFailedError" in err or "kaleido is not installed" in err
    assert (out / "routing_nmi.html").is_file() and not list(out.glob("*.png"))
    assert sum("no PNG figures" in w for w in json.loads((out / "results.json").read_text())["warnings"]) == 1
