"""Test layout: ``unit/`` (one module's behaviour, no server), ``integration/`` (the CLI, the pages through
Streamlit's AppTest, training on whole datasets), ``browser/`` (a real `streamlit run` driven by Chromium).
Helpers shared across them live in ``support/`` (on the import path, see pyproject.toml)."""

from __future__ import annotations

import os

import pytest

# Under pytest-xdist the workers already share the cores: each computes on one thread. (Two workers with two
# OpenMP and BLAS threads each on 2 cores spend CPU spinning: test_discovery beside one busy core took
# 47 s and 49 CPU-s with two threads, 40 s and 39 CPU-s with one.) Set before anything imports torch or
# numpy; the servers and CLI processes the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

# Modules that run on one xdist worker together: the browser modules that share one `streamlit run` server
# (tests/browser/conftest.py: shared_server), and the two that fit UMAP (its first fit in a process compiles
# numba code for ~9 s).
GROUPS = {
    "test_browser_pages": "shared_server",
    "test_browser_dashboard": "shared_server",
    "test_projection": "umap",
    "test_app_pages": "umap",
}


# The groups handed out first, longest first (wall time under two workers, measured): the browser modules
# mostly wait on Chromium and their server, so they run beside the CPU-bound ones instead of after them; the
# small modules come last and fill the gaps. The others keep their collection order.
FIRST = (
    "test_browser_analyst",
    "test_reversal",
    "test_browser_labels",
    "umap",
    "shared_server",
    "test_discovery",
    "test_serve",
    "test_experiment",
    "test_labels_hostile",
    "test_dashboard_truth",
    "test_hostile",
    "test_backbones",
    "test_drm",
    "test_embed_ray",
)


@pytest.fixture(scope="session", autouse=True)
def _share_tiny_workspaces(tmp_path_factory) -> None:
    """xdist workers share the tiny workspaces they train (tests/support/app_workspace.py): under
    pytest-xdist each worker's temporary root sits in one folder of the run."""
    import app_workspace

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    app_workspace.SHARED_DIR = base / "shared-tiny-workspaces"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n`, `--dist loadgroup`, see pyproject.toml) a module's tests run on one worker,
    so its module fixtures (trained models, servers) are built once; the modules of `GROUPS` share a worker,
    and the groups of `FIRST` are handed out first (`--no-loadscope-reorder` keeps this order). Without
    xdist only the order changes."""
    rank = {group: i for i, group in enumerate(FIRST)}
    groups = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        groups[item.nodeid] = group = GROUPS.get(module, module)
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(FIRST)))  # stable: modules stay whole
