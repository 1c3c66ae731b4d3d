"""The layout (issue 17): packages import only down the stage order, and the dashboard's views compute nothing
on scores that the library lacks.

(a) Every import inside `moe_reward/` (module level, inside functions, under TYPE_CHECKING) points to its
    own stage or one to its left: core -> data -> embed -> model -> train -> evaluate -> personalize ->
    experiment -> app -> serve -> rlhf -> cli; `moe_reward` never imports streamlit.
(b) pages/*.py, app.py and ui_common.py read state, call the library and draw: no torch, scikit-learn,
    scipy or umap import, no numpy function beyond a few formatting / shaping helpers, no reductions
    (``.mean()``, ``.sum()``, ``.argsort()``, ...) and no ``@``. What they do today is listed in
    `KNOWN_VIEW_COMPUTATIONS`: the test fails on anything new, and on an entry no longer needed.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "moe_reward"
STAGES = (
    "core",
    "data",
    "embed",
    "model",
    "train",
    "evaluate",
    "personalize",
    "experiment",
    "app",
    "serve",
    "rlhf",
    "cli",
)
VIEWS = ("app.py", "ui_common.py", "pages")

# ----------------------------------------------------------------------------- (a) imports down the stages


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `source` (the module `module`), at any depth."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "moe_reward" and len(parts) > 1 else None


def layering_violations(root: Path) -> list[str]:
    """'file:line: stage imports later stage' for every import that points up the stage order (and every
    streamlit import) under the package directory `root`."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        here = _stage(module)
        for line, name in imported_modules(
            path.read_text(encoding="utf-8"), module, path.name == "__init__.py"
        ):
            where = f"{path.relative_to(root.parent)}:{line}"
            if name.split(".")[0] == "streamlit":
                problems.append(f"{where}: imports streamlit (only the views may)")
            target = _stage(name)
            if here is None or target is None or target == here:
                continue
            if target not in STAGES:
                problems.append(f"{where}: imports {name}, not in a known stage")
            elif STAGES.index(target) > STAGES.index(here):
                problems.append(f"{where}: {here} imports {name} (a later stage)")
    return problems


def test_every_package_has_a_stage():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == set(STAGES), f"place new packages in STAGES: {sorted(packages ^ set(STAGES))}"


def test_imports_point_down_the_stage_order():
    assert layering_violations(PACKAGE) == []


def test_layering_check_catches_upward_and_streamlit_imports(tmp_path):
    pkg = tmp_path / "moe_reward"
    for stage in ("core", "model", "app"):
        (pkg / stage).mkdir(parents=True)
        (pkg / stage / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "ok.py").write_text("from ..core import atomic\nfrom . import other\nimport numpy\n")
    (pkg / "core" / "bad.py").write_text(
        "def f():\n    from ..model.moe import X\n    import streamlit as st\n"
    )
    (pkg / "app" / "__init__.py").write_text("from .. import app\nfrom moe_reward.cli import main\n")
    assert layering_violations(pkg) == [
        "moe_reward/app/__init__.py:2: app imports moe_reward.cli (a later stage)",
        "moe_reward/core/bad.py:2: core imports moe_reward.model.moe (a later stage)",
        "moe_reward/core/bad.py:3: imports streamlit (only the views may)",
    ]


def test_relative_imports_resolve():
    src = "from . import a\nfrom .b import c\nfrom ..evaluate import summary\nfrom ...x import y\n"
    assert imported_modules(src, "moe_reward.app.report", False) == [
        (1, "moe_reward.app"),
        (2, "moe_reward.app.b"),
        (3, "moe_reward.evaluate"),
        (4, "x"),
    ]
    assert imported_modules("from .jobs import Job\n", "moe_reward.app", True) == [(1, "moe_reward.app.jobs")]


# ----------------------------------------------------------------------------- (b) views compute nothing

FORBIDDEN_IMPORTS = ("torch", "sklearn", "scipy", "umap")
# numpy in a view: building, indexing and formatting arrays, never arithmetic on scores.
NUMPY_ALLOWED = {
    "array",
    "asarray",
    "arange",
    "zeros",
    "ones",
    "full",
    "tile",
    "stack",
    "concatenate",
    "where",
    "flatnonzero",
    "isin",
    "round",
    "random.default_rng",  # which response is shown as A: presentation, not scores
}
# Reductions and arithmetic, as methods (arrays, frames, series).
REDUCTIONS = {
    "mean",
    "sum",
    "std",
    "var",
    "median",
    "quantile",
    "prod",
    "cumsum",
    "cumprod",
    "argsort",
    "argmax",
    "argmin",
    "corr",
    "cov",
    "dot",
    "exp",
    "log",
    "clip",
    "percentile",
}

# What the views compute today (file -> {computation: occurrences}). Issue 17 (layout): this domain logic
# moves into the library (pages 3, 4 and 7 are being extracted); then its entry here goes. Never add one.
KNOWN_VIEW_COMPUTATIONS: dict[str, dict[str, int]] = {
    "pages/1_Routing_statistics.py": {"np.log": 2, "np.clip": 1, ".sum()": 1},
    "pages/2_Expert_map.py": {"np.percentile": 1, "np.abs": 1, ".sum()": 1},
    "pages/5_Compare_models.py": {".sum()": 1},
}


def view_computations(source: str) -> Counter[str]:
    """What a view computes itself: forbidden imports, numpy calls outside NUMPY_ALLOWED, reduction methods,
    and matrix products (``@``)."""
    tree = ast.parse(source)
    numpy_names = {"numpy"}
    found: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in FORBIDDEN_IMPORTS:
                    found[f"import {top}"] += 1
                if alias.name == "numpy":
                    numpy_names.add(alias.asname or "numpy")
        elif isinstance(node, ast.ImportFrom) and not node.level:
            top = (node.module or "").split(".")[0]
            if top in FORBIDDEN_IMPORTS:
                found[f"import {top}"] += 1
            if node.module == "numpy":
                found.update(f"np.{a.name}" for a in node.names if a.name not in NUMPY_ALLOWED)
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            found["@"] += 1
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        parts, base = [], node.func
        while isinstance(base, ast.Attribute):
            parts.append(base.attr)
            base = base.value
        dotted = ".".join(reversed(parts))
        if isinstance(base, ast.Name) and base.id in numpy_names:
            if dotted not in NUMPY_ALLOWED:
                found[f"np.{dotted}"] += 1
        elif node.func.attr in REDUCTIONS:
            found[f".{node.func.attr}()"] += 1
    return found


def _views() -> list[Path]:
    return sorted(
        p for name in VIEWS for p in ((ROOT / name).glob("*.py") if name == "pages" else [ROOT / name])
    )


@pytest.mark.parametrize("path", _views(), ids=lambda p: str(p.relative_to(ROOT)))
def test_views_compute_nothing_new(path):
    name = str(path.relative_to(ROOT))
    found = view_computations(path.read_text(encoding="utf-8"))
    known = KNOWN_VIEW_COMPUTATIONS.get(name, {})
    new = {k: n - known.get(k, 0) for k, n in found.items() if n > known.get(k, 0)}
    assert not new, f"{name} computes on its own {new}: add it to the library (e.g. evaluate/) and call it"
    gone = {k: n - found.get(k, 0) for k, n in known.items() if found.get(k, 0) < n}
    assert not gone, f"{name} no longer computes {gone}: lower KNOWN_VIEW_COMPUTATIONS in this test"


def test_known_computations_name_existing_views():
    names = {str(p.relative_to(ROOT)) for p in _views()}
    assert set(KNOWN_VIEW_COMPUTATIONS) <= names


def test_view_check_catches_computation():
    src = (
        "import numpy as xp\nimport pandas as pd\nfrom numpy import log, asarray\n"
        "def f(s):\n    import torch\n    from sklearn.cluster import KMeans\n"
        "    a = xp.asarray(s.margin).round(3)\n"
        "    return xp.exp(a) + xp.linalg.norm(a), s.correct.mean(), a @ a, pd.DataFrame(a).groupby('x')\n"
    )
    assert view_computations(src) == Counter(
        {
            "np.log": 1,
            "import torch": 1,
            "import sklearn": 1,
            "np.exp": 1,
            "np.linalg.norm": 1,
            ".mean()": 1,
            "@": 1,
        }
    )
