"""A tiny served model for the reward-server tests: a tiny BERT backbone built here (no download), the
reversal pairs embedded with it, a sparse model trained in a second, saved inside a workspace's
``models/`` folder, and a profile with labels in that workspace's label store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from reversal_data import reversal_pairs
from tiny_backbones import save_tiny

MODEL_NAME = "tiny-serve"
ANNOTATOR, PROFILE = "alice", "default"


def build_served_model(root: Path, experts: int = 4) -> Path:
    """root/workspace/models/tiny-serve (trained on the tiny backbone); returns the model directory."""
    from moe_reward.app.pipeline import TrainRequest, train_from_data
    from moe_reward.embed.backbone import BackboneSpec
    from moe_reward.embed.pairs import embed_pairs
    from moe_reward.train.loop import TrainConfig

    backbone = save_tiny(root / "backbone", "bert")
    # 4 cues a side: 192 pairs, enough for discovery to test routing (TrainConfig.min_discovery_pairs)
    feats = embed_pairs(reversal_pairs(seed=0, cues_per_side=4), BackboneSpec(str(backbone)), cache_dir=None)
    model_dir = root / "workspace" / "models" / MODEL_NAME
    req = TrainRequest(
        data="reversal",
        kind="sparse",
        experts=experts,
        top_k=2,
        router_input="pooled+lexical",
        train=TrainConfig.for_kind("sparse", epochs=3, min_steps=10, patience=3),
    )
    train_from_data(req, model_dir, features=feats)
    return model_dir


def add_profile_label(
    model_dir: Path, pair_id: str, margins, annotator: str = ANNOTATOR, profile: str = PROFILE
) -> int:
    """Store one label (with the expert margins its adapter replays) in the model's workspace store,
    creating the Hedge profile on first use; returns the label id."""
    from moe_reward.personalize.store import Label, LabelStore, new_profile_spec

    store = LabelStore(model_dir.parent.parent / "labels.sqlite")
    k = len(margins)
    spec = new_profile_spec("hedge", k, np.full(k, 1.0 / k))
    rec = store.get_or_create_profile(annotator, profile, model_dir.name, "hedge", spec)
    return store.record_label(
        Label(annotator, pair_id, "a prompt", "the preferred", "the other", profile_id=rec.id),
        np.asarray(margins, dtype=float),
        session="tests",
    )


def start_server(model_dir: Path, *args: str, timeout: float = 180.0, env: dict | None = None):
    """`moe-reward serve --model DIR --port 0 ARGS` in a subprocess on 127.0.0.1; returns (process, base
    URL) once /health answers 200. The caller stops it with `stop_server`."""
    import os
    import subprocess
    import sys
    import threading
    import time
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "moe_reward.cli", "serve", "--model", str(model_dir), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + timeout
    base = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            time.sleep(0.2)
            raise RuntimeError(f"server exited with {proc.returncode}: {''.join(lines)[-2000:]}")
        if base is None:
            for line in lines:
                if " on http://" in line:
                    base = line.split(" on ", 1)[1].split(" ", 1)[0]
        if base is not None:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        proc.output = lines  # type: ignore[attr-defined]
                        return proc, base
            except OSError:
                pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"server did not answer /health in {timeout}s: {''.join(lines)[-2000:]}")


def stop_server(proc) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def call(
    base: str,
    path: str,
    body=None,
    token: str | None = None,
    method: str | None = None,
    raw: bytes | None = None,
    headers: dict | None = None,
):
    """(status, parsed JSON body) of one request; `raw` sends bytes as they are."""
    import json
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    h = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        h["Authorization"] = f"Bearer {token}"
    h |= headers or {}
    req = urllib.request.Request(
        base + path, data=data, headers=h, method=method or ("POST" if data is not None else "GET")
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload)
        except ValueError:
            return exc.code, payload.decode("utf-8", "replace")
