"""Test layout: ``unit/`` (one module's behaviour, no server), ``integration/`` (the CLI, the pages through
Streamlit's AppTest, training on whole datasets), ``browser/`` (a real `streamlit run` driven by Chromium).
Helpers shared across them live in ``support/`` (on the import path, see pyproject.toml)."""

from __future__ import annotations

import pytest

# The browser modules that share one `streamlit run` server (tests/browser/conftest.py: shared_server).
SHARED_SERVER_MODULES = {"test_browser_pages", "test_browser_dashboard"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n`, `--dist loadgroup`, see pyproject.toml) a module's tests run on one worker,
    so its module fixtures (trained models, servers) are built once; the modules that share one server run
    on the same worker. Without xdist the markers change nothing."""
    for item in items:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        group = "shared_server" if module in SHARED_SERVER_MODULES else module
        item.add_marker(pytest.mark.xdist_group(group))
