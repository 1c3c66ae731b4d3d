"""Plotly figures as PNG files through kaleido and a Chromium: optional, so never fatal.

Both the stakeholder report (`app/report.py`) and the experiment's figures (`experiment/run.py`) call
`write_pngs`; when kaleido is not installed, no Chromium is found, or the browser fails to start
(kaleido's ``BrowserFailedError``), it writes nothing and says why in one line, and the caller goes on
with the HTML figures and one warning.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def find_chromium() -> str | None:
    """``$BROWSER_PATH`` when it exists, else a Chromium at a usual place or on the PATH."""
    path = os.environ.get("BROWSER_PATH")
    if path and Path(path).exists():
        return path
    for c in CHROMIUM_CANDIDATES:
        if Path(c).exists():
            return c
    return shutil.which("chromium")


def write_pngs(
    figures: Mapping[str, object], out_dir: Path, width: int | None = None, height: int | None = None
) -> tuple[list[Path], str | None]:
    """Each figure as ``out_dir/<name>.png`` through kaleido (one browser for all), whole files only;
    ([], reason) when that is not possible (nothing is written then)."""
    try:
        import kaleido
    except ImportError:
        return [], "kaleido is not installed"
    chromium = find_chromium()
    if chromium is None:
        return [], "no Chromium found (set BROWSER_PATH)"
    os.environ.setdefault("BROWSER_PATH", chromium)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = {k: v for k, v in (("width", width), ("height", height)) if v is not None}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".render-") as tmp:
        staged = [Path(tmp) / f"{name}.png" for name in figures]
        try:
            kaleido.write_fig_from_object_sync(
                [
                    {"fig": fig, "path": str(p), "opts": opts}
                    for fig, p in zip(figures.values(), staged, strict=True)
                ]
            )
        except Exception as exc:  # noqa: BLE001 - the HTML figures stand without their PNG copies
            return [], f"kaleido could not render: {type(exc).__name__}: {str(exc)[:200]}"
        written = []
        for p in staged:
            if p.is_file():
                os.replace(p, out_dir / p.name)  # whole files only, never a half-written PNG
                written.append(out_dir / p.name)
    return written, None if written else "kaleido wrote nothing"
