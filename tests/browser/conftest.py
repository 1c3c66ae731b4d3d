"""One `streamlit run` server for the browser modules that can share it (test_browser_pages and
test_browser_dashboard: neither restarts it, and only the pages test labels): the tiny workspace plus a
second sparse model on other data. test_browser_labels keeps a server of its own (it kills it with -9)."""

from __future__ import annotations

import pytest
from app_workspace import build_tiny_workspace, tiny_features
from browser import _require_browser
from streamlit_server import Server

from moe_reward.app.pipeline import TrainRequest, train_from_data
from moe_reward.train.loop import TrainConfig


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory):
    _require_browser()
    home = tmp_path_factory.mktemp("browser-shared")
    ws = build_tiny_workspace(home)
    other = tiny_features(seed=5)
    for p in other.pairs:
        p.id = f"o-{p.id}"
    other.save(ws.uploads_dir / "other.safetensors")
    train_from_data(
        TrainRequest(
            data=str(ws.uploads_dir / "other.safetensors"),
            experts=3,
            top_k=1,
            train=TrainConfig.for_kind("sparse", epochs=4, min_steps=20, patience=4),
        ),
        ws.model_path("other-sparse"),
        features=other,
    )
    srv = Server(home).start()
    yield srv.url, home
    srv.stop()
