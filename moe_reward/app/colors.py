"""One colour per expert, the same on every page, chart and report.

`EXPERT_COLORS` holds 24 colours that stay apart on a white background: the ten Tableau colours, then
14 more picked greedily to maximise the smallest CIELAB distance to those already chosen (lightness 30-82,
chroma > 25, so none is a pale or grey tint). Expert k always gets ``EXPERT_COLORS[k % 24]``; with more
than 24 experts the map also changes the marker symbol every 24 experts (`expert_symbol`), so no two
experts look the same. Groups use the same palette in sorted order (numeric parts sorted as numbers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

EXPERT_COLORS = (
    "#4C78A8",
    "#F58518",
    "#54A24B",
    "#E45756",
    "#72B7B2",
    "#B279A2",
    "#9D755D",
    "#EECA3B",
    "#FF9DA6",
    "#79706E",
    "#0000FF",
    "#FF1EE1",
    "#00E100",
    "#695AE1",
    "#FF0000",
    "#C30078",
    "#FF96FF",
    "#005A3C",
    "#00E1B4",
    "#87780F",
    "#87C300",
    "#873C00",
    "#C3D296",
    "#5A3C87",
)
SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "x")
NEUTRAL = "#BAB0AC"  # "everything else": unselected experts, all pairs of a group


def expert_color(k: int) -> str:
    return EXPERT_COLORS[int(k) % len(EXPERT_COLORS)]


def expert_symbol(k: int) -> str:
    return SYMBOLS[(int(k) // len(EXPERT_COLORS)) % len(SYMBOLS)]


def expert_name(k: int) -> str:
    return f"E{int(k)}"


def natural_key(text: str) -> list:
    """'E2' < 'E10', 'group 9' < 'group 10': digit runs compare as numbers."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower())
        for part in re.split(r"(\d+)", str(text))
        if part != ""
    ]


def natural_sorted(items: Iterable[str]) -> list[str]:
    return sorted(items, key=natural_key)


def category_colors(categories: Iterable[str]) -> dict[str, str]:
    """A stable colour for each category (groups, users): the palette in natural order of the names.
    Expert names ('E3') map to their expert's colour."""
    cats = natural_sorted(set(categories))
    if cats and all(re.fullmatch(r"E\d+", c) for c in cats):
        return {c: expert_color(int(c[1:])) for c in cats}
    return {c: EXPERT_COLORS[i % len(EXPERT_COLORS)] for i, c in enumerate(cats)}


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def rgba(color: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(color)
    return f"rgba({r},{g},{b},{alpha:.2f})"
