"""Driving the dashboard's pages with Streamlit's AppTest: point the app at a workspace, open a page with
a link's query parameters."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


def use_workspace(monkeypatch, home: Path) -> Path:
    """The app reads `home` as its workspace (and no repository data), from the repository root."""
    monkeypatch.setenv("MOE_REWARD_HOME", str(home))
    monkeypatch.setenv("MOE_REWARD_DATA_DIR", str(home / "no-repo-data"))
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    return home


def open_page(page: str = "app.py", **query) -> AppTest:
    """`page` run once as a link with `query` opens it; fails on any exception the page shows."""
    at = AppTest.from_file(str(ROOT / page), default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at
