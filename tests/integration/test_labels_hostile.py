"""Issue 8 (labels, profiles, the workspace) under hostile conditions, for real: a read-only workspace
(CLI `workspace`/`labels`/`label`, the Personalize, Score and Data pages), a full disk during a label
click, broken model directories, two sessions training the same model name, and the CLI's label rules."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import fs_limits
import pytest
from app_pages import use_workspace
from app_workspace import build_tiny_workspace

from moe_reward.app import jobs
from moe_reward.app.pipeline import TrainRequest
from moe_reward.app.workspace import ModelNameTaken, Workspace, model_problem
from moe_reward.cli import main as cli_main
from moe_reward.personalize.store import LabelStore
from moe_reward.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "support" / "hostile_labels_driver.py"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile-ws")
    build_tiny_workspace(root)
    return root


@pytest.fixture
def env(home, monkeypatch) -> dict:
    monkeypatch.setenv("MOE_REWARD_HOME", str(home))
    monkeypatch.setenv("MOE_REWARD_DATA_DIR", str(home / "no-repo-data"))
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'support'}"}


def _data(home: Path) -> str:
    return str(home / "uploads" / "tiny.safetensors")


def _label(home: Path, *extra: str) -> int:
    return cli_main(
        ["label", "--model", "default-sparse", "--data", _data(home), "--annotator", "cli-user", *extra]
    )


def _result(proc) -> dict:
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, (
        f"driver failed (rc {proc.returncode}): {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return json.loads(line[len("RESULT ") :])


def test_cli_labels_follow_the_store_rules(home, env, capsys):
    assert _label(home, "--pair", "rev-0-brief-0", "--prefer", "chosen", "--param", "eta=0.3") == 0
    assert "label #" in capsys.readouterr().out
    assert (
        _label(home, "--pair", "rev-0-brief-0", "--prefer", "rejected") == 1
    )  # one label per pair and profile
    assert "already has a label" in capsys.readouterr().err
    assert _label(home, "--pair", "rev-0-brief-1", "--prefer", "rejected") == 0
    store = LabelStore(home / "labels.sqlite")
    [rec] = store.profiles(annotator="cli-user")
    assert store.load_profile(rec.id).adapter.params["eta"] == 0.3
    assert _label(home, "--undo") == 0 and store.count_labels(rec.id) == 1
    assert _label(home, "--pair", "nope", "--prefer", "chosen") == 2
    assert "no pair 'nope'" in capsys.readouterr().err
    assert cli_main(["labels", "--profiles"]) == 0
    assert "cli-user/default" in capsys.readouterr().out


def test_read_only_workspace_reads_and_refuses_writes_clearly(home, env):
    fs_limits.require_namespaces()
    assert _label(home, "--pair", "rev-0-deep-2", "--prefer", "chosen") in (0, 1)
    before = LabelStore(home / "labels.sqlite").count_labels()
    proc = fs_limits.run_read_only(home, [fs_limits.python(), str(DRIVER), "ro", _data(home)], env)
    out = _result(proc)
    assert not out["writable"] and out["labels_before"] == before == out["labels_after"]
    by_cmd = {" ".join(c["argv"][:2]): c for c in out["cli"]}
    for c in out["cli"]:
        assert c["traceback"] is None, c
    ws, labels = by_cmd["workspace"], by_cmd["labels"]
    assert ws["rc"] == 0 and "read-only" in ws["out"] and "default-sparse" in ws["out"]
    assert labels["rc"] == 0 and f"{before} labels" in labels["out"]
    assert by_cmd["labels --profiles"]["rc"] == 0 and "cli-user/default" in by_cmd["labels --profiles"]["out"]
    export = by_cmd["labels --out"]
    assert export["rc"] == 2 and "export.jsonl" in export["err"] and "nothing was written" in export["err"]
    label = by_cmd["label --model"]
    assert label["rc"] == 2 and "no label stored" in label["err"] and "labels.sqlite" in label["err"]
    for page in ("personalize", "score", "data_page"):
        assert out[page]["exceptions"] == [], (page, out[page])
    assert any("Labels cannot be saved" in w for w in out["personalize"]["warnings"])
    assert out["personalize"]["label_buttons"] == {"A is better": True, "B is better": True}
    assert any("cannot be written" in w for w in out["data_page"]["warnings"])


def test_disk_full_during_a_label_click(home, env, tmp_path):
    fs_limits.require_namespaces()
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = fs_limits.run_on_small_disk(
        disk, "16m", [fs_limits.python(), str(DRIVER), "full", str(home), str(disk)], env
    )
    out = _result(proc)
    assert any("Saved label" in s for s in out["first"]["success"]), out["first"]
    assert out["labels_when_full"] == 1
    during = out["during"]
    assert during["exceptions"] == [] and during["success"] == []
    assert any(
        "was not saved" in e and "disk is full" in e and "not in the store" in e for e in during["errors"]
    ), during
    assert out["labels_during"] == 1
    assert out["cli_during"]["traceback"] is None and out["cli_during"]["rc"] == 2
    assert "labels.sqlite" in out["cli_during"]["err"] and "disk is full" in out["cli_during"]["err"]
    assert any("Saved label" in s for s in out["after"]["success"]), out["after"]
    assert out["labels_after"] == 2


def test_broken_model_directories_are_skipped_with_a_note(tmp_path, home):
    import shutil

    ws = Workspace(tmp_path / "ws")
    good = home / "models" / "default-sparse"
    broken = {
        "truncated-weights": lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:100]
        ),
        "empty-weights": lambda d: (d / "model.safetensors").write_bytes(b""),
        "truncated-metrics": lambda d: (d / "metrics.json").write_text((d / "metrics.json").read_text()[:50]),
        "bad-config": lambda d: (d / "config.json").write_text('{"kind": 3'),
        "missing-weights": lambda d: (d / "model.safetensors").unlink(),
    }
    shutil.copytree(good, ws.models_dir / "fine")
    for name, damage in broken.items():
        shutil.copytree(good, ws.models_dir / name)
        damage(ws.models_dir / name)
    assert ws.list_models() == ["fine"]
    assert set(ws.model_notes) == set(broken)
    assert (
        "metrics.json" in ws.model_notes["truncated-metrics"]
        and "config.json" in ws.model_notes["bad-config"]
    )
    assert model_problem(ws.models_dir / "fine") is None
    assert all(note.strip() for note in ws.model_notes.values())


def test_two_sessions_training_one_name_exactly_one_wins(tmp_path, home):
    ws = Workspace(tmp_path / "ws")
    data = _data(home)
    req = TrainRequest(
        data=data, experts=2, top_k=1, train=TrainConfig.for_kind("sparse", epochs=2, min_steps=10)
    )
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def session() -> None:
        barrier.wait()
        try:
            ws.train_in_background("race", req)
            outcomes.append("training")
        except ModelNameTaken as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=session) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("training") == 1
    # the others are told: it is being trained (or, if it finished that fast, that it exists now)
    assert all(
        "being trained by another session" in o or "exists" in o for o in outcomes if o != "training"
    ), outcomes
    job = jobs.wait("train:race", timeout=120)
    assert job.status == jobs.DONE, job.error
    assert ws.list_models() == ["race"]
    with pytest.raises(ModelNameTaken, match="exists"):  # Replace unticked: the name is taken now
        ws.train_in_background("race", req)
    assert not list(ws.models_dir.glob(".*"))  # no lock or staging left behind
    staging = ws.models_dir / ".staging-test"
    staging.mkdir()
    (staging / "x").write_text("x")
    with pytest.raises(ModelNameTaken, match="appeared"):  # the last line of defence: the rename itself
        ws.install_model(staging, "race")


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    import subprocess
    import sys

    ws = Workspace(tmp_path / "ws")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (ws.models_dir / ".orphan.lock").write_text(json.dumps({"pid": int(dead.stdout), "key": "gone"}))
    with ws.reserve_model("orphan") as out:
        assert out.name == "orphan"
        with pytest.raises(ModelNameTaken, match="being trained"):
            ws.acquire_model_name("orphan")
    assert not (ws.models_dir / ".orphan.lock").exists()


def test_embedding_runs_once_whatever_the_pages_do(tmp_path, home, monkeypatch):
    """Issue 8.13: pages asking for a file while it is embedded get the same keyed job (one embedding,
    progress shown in every page's sidebar); a training on that file waits for that job too."""
    from streamlit.testing.v1 import AppTest

    from moe_reward.app import workspace as workspace_module
    from moe_reward.data.pairs import save_jsonl
    from moe_reward.embed.features import PairFeatures

    feats = PairFeatures.load(_data(home))
    data = home / "uploads" / "slow.jsonl"
    save_jsonl(feats.pairs, data)
    calls, release = [], threading.Event()

    def slow_embedding(path, backbone=None, progress=None, **_):
        calls.append(str(path))
        for done in range(0, 101, 20):
            progress(done, 100)
            release.wait(0.2)
        return feats

    monkeypatch.setattr(workspace_module, "load_features_or_pairs", slow_embedding)
    monkeypatch.setattr(workspace_module, "preload_backbone_imports", lambda: None)
    use_workspace(monkeypatch, home)
    ws = Workspace(home)
    try:
        first = ws.features_in_background(data)
        assert ws.features_in_background(data) is first  # a rerun, another page, another session
        page = AppTest.from_file(str(ROOT / "pages" / "7_Data_and_training.py"), default_timeout=60).run()
        assert not page.exception
        assert any("Running in the background" in c.value for c in page.sidebar.caption)
        req = TrainRequest(
            data=str(data), experts=2, top_k=1, train=TrainConfig.for_kind("sparse", epochs=2, min_steps=10)
        )
        training = ws.train_in_background("after-embedding", req)
        messages = set()
        while training.active:
            messages.add(training.message.split(":")[0])
            jobs.wait(training.key, timeout=0.05)
        assert training.status == jobs.DONE, training.error
        assert "embedding slow.jsonl" in messages  # the training page shows the embedding's progress
        assert calls == [str(data)]  # embedded once
        assert ws.features_in_background(data) is None  # on disk now
    finally:
        release.set()
        jobs.forget(ws.features_job_key(data))
        for leftover in (data, *ws.features_dir.glob("*.safetensors")):
            leftover.unlink(missing_ok=True)
