"""Test layout: ``unit/`` (one module's behaviour, no server), ``integration/`` (the CLI, the pages through
Streamlit's AppTest, training on whole datasets), ``browser/`` (a real `streamlit run` driven by Chromium).
Helpers shared across them live in ``support/`` (on the import path, see pyproject.toml)."""

from __future__ import annotations

import pytest

# Modules that run on one xdist worker together: the browser modules that share one `streamlit run` server
# (tests/browser/conftest.py: shared_server), and the two that fit UMAP (its first fit in a process compiles
# numba code for ~9 s).
GROUPS = {
    "test_browser_pages": "shared_server",
    "test_browser_dashboard": "shared_server",
    "test_projection": "umap",
    "test_app_pages": "umap",
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n`, `--dist loadgroup`, see pyproject.toml) a module's tests run on one worker,
    so its module fixtures (trained models, servers) are built once; the modules of `GROUPS` share a worker.
    Without xdist the markers change nothing."""
    for item in items:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        group = GROUPS.get(module, module)
        item.add_marker(pytest.mark.xdist_group(group))
