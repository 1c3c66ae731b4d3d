"""The dashboard server runs without the per-run costs that made every click of every session wait: no file
watcher walking sys.modules after each run, no full garbage collection after each run. `streamlit run app.py`
from the repository root reads .streamlit/config.toml; `moe-reward app` passes the same flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_reward.cli import SERVER_FLAGS

ROOT = Path(__file__).resolve().parents[2]


def test_config_and_moe_reward_app_turn_off_the_per_run_costs():
    tomllib = pytest.importorskip("tomllib")  # (Python 3.11+)
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "none"
    assert config["runner"]["postScriptGC"] is False
    flags = dict(zip(SERVER_FLAGS[::2], SERVER_FLAGS[1::2], strict=True))
    assert flags == {"--server.fileWatcherType": "none", "--runner.postScriptGC": "false"}
