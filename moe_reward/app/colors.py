"""One colour per expert, the same on every page, chart and report.

`EXPERT_COLORS` holds 24 colours that stay apart on a white background: the ten Tableau colours, then
14 more picked greedily to maximise the smallest CIELAB distance to those already chosen (lightness 30-82,
chroma > 25, so none is a pale or grey tint). Expert k always gets ``EXPERT_COLORS[k % 24]``; with more
than 24 experts the map also changes the marker symbol every 24 experts (`expert_symbol`), so no two
experts look the same. Groups (and users) get a palette of their own, `GROUP_COLORS`: 16 colours picked
the same way but away from every expert colour and the neutral grey (CIELAB distance >= 27 to each), so a
group never appears in an expert's colour; in sorted order of the names (numeric parts as numbers).
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
GROUP_COLORS = (
    "#A52DF0",
    "#871E3C",
    "#5A96FF",
    "#870096",
    "#00C3FF",
    "#F0B478",
    "#FF0069",
    "#0FD25A",
    "#B40F00",
    "#4B4B1E",
    "#B4B4F0",
    "#004B5A",
    "#003CF0",
    "#1E5A00",
    "#FF78B4",
    "#4B3C5A",
)
SYMBOLS = ("circle", "diamond", "rect", "triangle", "pin", "arrow")  # the map's marker shapes (ECharts names)
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


def group_colors(categories: Iterable[str]) -> dict[str, str]:
    """A stable colour for each group (or user): `GROUP_COLORS` in natural order of the names."""
    cats = natural_sorted(set(categories))
    return {c: GROUP_COLORS[i % len(GROUP_COLORS)] for i, c in enumerate(cats)}


def category_colors(categories: Iterable[str]) -> dict[str, str]:
    """A stable colour for each category: expert ids ('E3') get their expert's colour, anything else
    (groups, users, 'correct'/'incorrect') the group palette."""
    cats = natural_sorted(set(categories))
    if cats and all(re.fullmatch(r"E\d+", c) for c in cats):
        return {c: expert_color(int(c[1:])) for c in cats}
    return group_colors(cats)


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)
