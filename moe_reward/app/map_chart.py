"""The Expert map's chart: an Apache ECharts option (a plain dict), which the page hands to
``st.echarts_chart(option, on_select="rerun")``.

    option = expert_map(xy, [Points("E0", rows0, color="#4C78A8", labels=hover), ...],
                        title="PCA of router logits (600 pairs)", axes=("PC 1", "PC 2"))

Why ECharts and not Plotly: a browser tab loads the chart library of each kind of chart it draws, and
Streamlit's Plotly chunk (4.7 MB) costs about a second of CPU in every new tab on a 2-core machine. A bare
app with a 600-point scatter, box and lasso selection and a legend opens in 0.92 s with ECharts against
1.99 s with Plotly (0.63 s with no chart; median of five new tabs each). ECharts keeps what the map needs:
a canvas for thousands of points, box and lasso selection reported in data coordinates (so the server
selects among *all* pairs, drawn or not), and a legend per expert. Vega-Lite has no lasso.

Conventions (as in ``charts``). A series is one :class:`Points`: some rows of ``xy``, their colour,
symbol and hover text; the data sit inline, so the option alone says what is drawn (tests read it).
Dataset text is data: ECharts draws it as canvas text and its tooltip template escapes HTML, so it is
never pre-escaped here. A non-finite coordinate or value is not drawn (JSON holds no NaN).

Selections: the toolbox at the top right holds the box and lasso tools (and clear); a selection is
reported as ``selection.areas[-1]`` with ``brush_type`` "rect" (``coord_range`` [[x0, x1], [y0, y1]]) or
"polygon" ([[x, y], ...]); :func:`selected_region` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Option = dict[str, Any]
STAR = "path://M50,2 L61,38 L98,38 L68,60 L79,96 L50,74 L21,96 L32,60 L2,38 L39,38 Z"  # the selected pair
DIVERGING = ("#2166AC", "#67A9CF", "#D1E5F0", "#F7F7F7", "#FDDBC7", "#EF8A62", "#B2182B")  # RdBu, low → high
GRID_LINES = "#EEEEEE"  # (the browser tests find the plotting area by this colour)
TOOLBOX = {"right": 12, "top": 2, "itemSize": 16, "itemGap": 12}  # where the box, lasso, clear icons sit


@dataclass(frozen=True)
class Points:
    """One series of the map.

    Args:
        name: the legend entry (an expert "E3", a group, "correct") or what the series marks.
        rows: the rows of ``xy`` drawn.
        color: the fill colour ("#RRGGBB"); None with ``values``: coloured by the map's value scale.
        symbol: an ECharts symbol name (``colors.SYMBOLS``) or a ``path://`` shape.
        size: the marker size in pixels.
        opacity: the fill opacity (a ring's line is opaque).
        labels: hover text, one per row of ``xy`` (indexed by row); None: no tooltip.
        values: one number per row of ``xy`` for the value scale (the reward margin).
        ring: drawn as an empty ring in ``color`` (search matches, a slice, an expert brought forward).
        legend: whether the series has a legend entry.
    """

    name: str
    rows: np.ndarray
    color: str | None = None
    symbol: str = "circle"
    size: float = 7.0
    opacity: float = 0.8
    labels: Sequence[str] | None = None
    values: np.ndarray | None = None
    ring: bool = False
    legend: bool = True


@dataclass(frozen=True)
class Density:
    """Counts of all pairs on a regular grid (``evaluate.projection.density_grid``): drawn as a grey layer
    under the points, so the pairs that were not drawn still show where they are.

    Args:
        x: the centres of the columns (evenly spaced).
        y: the centres of the rows (evenly spaced).
        counts: [len(y), len(x)] pairs per cell.
    """

    x: np.ndarray
    y: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True)
class Anchors:
    """The experts as labelled points (the "experts as anchors" layout).

    Args:
        xy: [K, 2] positions.
        names: one label per expert.
        colors: one colour per expert.
    """

    xy: np.ndarray
    names: Sequence[str]
    colors: Sequence[str]


def _num(x) -> float | None:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def _point(xy: np.ndarray, row: int, label: str | None, value: float | None) -> dict | None:
    x, y = _num(xy[row, 0]), _num(xy[row, 1])
    if x is None or y is None:
        return None
    item: dict[str, Any] = {"value": [x, y] if value is None else [x, y, value]}
    if label is not None:
        item["name"] = label
    return item


def _series(xy: np.ndarray, p: Points, scale: float | None) -> Option:
    data = []
    for row in np.asarray(p.rows, dtype=np.int64):
        value = None
        if p.values is not None and scale is not None:
            v = _num(p.values[row])
            value = (
                None if v is None else max(-scale, min(scale, v))
            )  # the colour saturates; the label says it
        item = _point(xy, int(row), None if p.labels is None else str(p.labels[row]), value)
        if item is not None:
            data.append(item)
    style: Option = (
        {"color": "rgba(0,0,0,0)", "borderColor": p.color or "#000000", "borderWidth": 1.5}
        if p.ring
        else {"opacity": p.opacity, **({"color": p.color} if p.color else {})}
    )
    series: Option = {
        "type": "scatter",
        "name": p.name,
        "symbol": p.symbol,
        "symbolSize": p.size,
        "itemStyle": style,
        "data": data,
    }
    if p.labels is None:
        series["silent"] = True  # no tooltip, no hover: a ring or a marker, not pairs to read
        series["tooltip"] = {"show": False}
    if p.ring:
        series["z"] = 3
    return series


def expert_map(
    xy: np.ndarray,
    points: Sequence[Points],
    *,
    title: str,
    axes: tuple[str, str],
    subtitle: str = "",
    density: Density | None = None,
    scale: tuple[str, float] | None = None,
    anchors: Anchors | None = None,
    square: bool = False,
    legend: Sequence[str] | None = None,
    height: int = 620,
) -> Option:
    """The map: ``points`` drawn in order (later on top) over an optional density layer of all pairs.

    Args:
        xy: [N, 2] coordinates of every pair.
        points: the series; legend entries in the order given.
        title: the chart's title; ``subtitle`` a line under it.
        axes: the x and y axis titles.
        density: a grey layer of all pairs under the points.
        scale: (title, limit) of a diverging colour scale for the series that carry ``values``
            (clipped to ±limit).
        anchors: the experts as labelled points (axes without numbers: only the mix is meaningful).
        square: one unit is as long on x as on y (a square plotting area).
        legend: the legend's entries in order (default: the series in ``points`` that have one, in order);
            the drawing order stays that of ``points``.
        height: the chart's height in pixels, title, legend and axes included (pass the same height to
            ``st.echarts_chart``): sizes the square plotting area.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must be [N, 2], got {xy.shape}")
    limit = None
    if scale is not None:
        limit = float(scale[1]) if math.isfinite(scale[1]) and scale[1] > 0 else 1.0
    series: list[Option] = []
    visual_maps: list[Option] = []
    x_axes: list[Option] = [
        {"type": "value", "scale": True, "name": axes[0], "nameLocation": "middle", "nameGap": 28}
    ]
    y_axes: list[Option] = [
        {"type": "value", "scale": True, "name": axes[1], "nameLocation": "middle", "nameGap": 40}
    ]
    spread = xy if anchors is None else np.concatenate([xy, np.asarray(anchors.xy, dtype=np.float64)])
    for axis, column in ((x_axes[0], spread[:, 0]), (y_axes[0], spread[:, 1])):
        axis["splitLine"] = {"lineStyle": {"color": GRID_LINES}}
        _extent(axis, column)
    if density is not None and len(density.x) and len(density.y):
        series.append(_density(density, x_axes, y_axes))
        visual_maps.append(
            {
                "type": "continuous",
                "show": False,
                "seriesIndex": 0,
                "dimension": 2,
                "min": 0.0,
                "max": max(float(np.log1p(np.max(density.counts))), 1e-6),
                "inRange": {"color": ["#F0F0F0", "#4D4D4D"]},
            }
        )
    valued: list[int] = []
    for p in points:
        if p.values is not None and limit is not None:
            valued.append(len(series))
        series.append(_series(xy, p, limit if p.values is not None else None))
    if valued and scale is not None and limit is not None:
        visual_maps.append(
            {
                "type": "continuous",
                "seriesIndex": valued,
                "dimension": 2,
                "min": -limit,
                "max": limit,
                "inRange": {"color": list(DIVERGING)},
                "text": [f"{scale[0]} +{limit:.3g}", f"−{limit:.3g}"],
                "right": 4,
                "top": "middle",
                "itemHeight": 200,
                "calculable": False,
            }
        )
    if anchors is not None:
        series.append(
            {
                "type": "scatter",
                "name": "expert anchors",
                "symbolSize": 26,
                "silent": True,
                "tooltip": {"show": False},
                "z": 4,
                "label": {
                    "show": True,
                    "position": "inside",
                    "formatter": "{b}",
                    "color": "#FFFFFF",
                    "fontSize": 11,
                },
                "data": [
                    {
                        "name": str(name),
                        "value": [_num(p[0]), _num(p[1])],
                        "itemStyle": {"color": color, "borderColor": "#FFFFFF", "borderWidth": 1},
                    }
                    for p, name, color in zip(
                        np.asarray(anchors.xy), anchors.names, anchors.colors, strict=True
                    )
                ],
            }
        )
        for axis in (*x_axes[:1], *y_axes[:1]):
            axis["axisLabel"] = {"show": False}
    shown = {p.name for p in points if p.legend}
    entries = (
        [n for n in legend if n in shown] if legend is not None else [p.name for p in points if p.legend]
    )
    top = 64 if subtitle else 48
    grid: Option = {"top": top + 26, "bottom": 44, "left": 56, "right": 96 if valued else 24}
    if square:  # one unit as long on x as on y: both axes as long as the longer, each about its centre
        ends = [(a["min"], a["max"]) for a in (x_axes[0], y_axes[0]) if a.get("min") is not None]
        if len(ends) == 2:
            half = max(hi - lo for lo, hi in ends) / 2
            for axis, (lo, hi) in zip((x_axes[0], y_axes[0]), ends, strict=True):
                axis.update(min=_num((lo + hi) / 2 - half), max=_num((lo + hi) / 2 + half))
        side = height - grid["top"] - grid["bottom"]
        grid = {"top": grid["top"], "width": side, "height": side, "left": "center"}
    option: Option = {
        "animation": False,
        "title": {"text": title, "subtext": subtitle, "left": 8, "textStyle": {"fontSize": 15}},
        "legend": {"type": "scroll", "top": top, "left": 8, "right": 8, "data": entries},
        "tooltip": {"trigger": "item", "confine": True, "formatter": "{b}"},
        "toolbox": {
            **TOOLBOX,
            "feature": {
                "brush": {
                    "type": ["rect", "polygon", "clear"],
                    "title": {
                        "rect": "Box select",
                        "polygon": "Lasso select",
                        "clear": "Clear the selection",
                    },
                }
            },
        },
        "brush": {
            "xAxisIndex": 0,
            "yAxisIndex": 0,
            "brushMode": "single",
            "transformable": False,  # a drag inside the last region draws a new one (never moves the old)
            "throttleType": "debounce",
            "throttleDelay": 250,
            "outOfBrush": {"colorAlpha": 0.2},
        },
        "grid": grid,
        "xAxis": x_axes,
        "yAxis": y_axes,
        "series": series,
    }
    if visual_maps:
        option["visualMap"] = visual_maps
    return option


def _extent(axis: Option, values: np.ndarray) -> None:
    """The axis spans every pair (drawn or not) with a margin of 5% on each side (a unit when all values are
    equal), so no point sits on the frame and the view stays put when the sample or the colouring changes."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    axis.update(min=_num(lo - pad), max=_num(hi + pad), scale=False)
    axis["axisLabel"] = {"showMinLabel": False, "showMaxLabel": False}  # the ends are not round numbers


def _density(d: Density, x_axes: list[Option], y_axes: list[Option]) -> Option:
    """A heatmap on hidden category axes laid exactly over the value axes: the value axes span the grid's
    edges, so cell i covers [edge i, edge i+1] of the data."""
    gx, gy, counts = np.asarray(d.x, float), np.asarray(d.y, float), np.asarray(d.counts, float)
    wx = float(gx[1] - gx[0]) if len(gx) > 1 else 1.0
    wy = float(gy[1] - gy[0]) if len(gy) > 1 else 1.0
    x_axes[0].update(min=_num(gx[0] - wx / 2), max=_num(gx[-1] + wx / 2))  # (the grid's edges)
    y_axes[0].update(min=_num(gy[0] - wy / 2), max=_num(gy[-1] + wy / 2))
    for axes, n in ((x_axes, len(gx)), (y_axes, len(gy))):
        axes.append({"type": "category", "data": list(range(n)), "show": False, "boundaryGap": True})
    rows, cols = np.nonzero(counts > 0)
    return {
        "type": "heatmap",
        "name": "density (all pairs)",
        "xAxisIndex": 1,
        "yAxisIndex": 1,
        "silent": True,
        "tooltip": {"show": False},
        "itemStyle": {"opacity": 0.35},
        "z": 0,
        "data": [
            [int(c), int(r), round(float(np.log1p(counts[r, c])), 4)] for r, c in zip(rows, cols, strict=True)
        ],
    }


def selected_region(selection: Mapping[str, Any] | None) -> tuple[str, list[list[float]]] | None:
    """("box", [[x0, x1], [y0, y1]]) or ("lasso", [[x, y], ...]) from the chart's selection state (the last
    region drawn), or None when no region is drawn. Ranges are in data coordinates."""
    areas = list((selection or {}).get("areas") or [])
    for area in reversed(areas):
        kind, rng = area.get("brush_type"), area.get("coord_range")
        try:
            if kind == "rect":
                (x0, x1), (y0, y1) = rng
                return "box", [sorted([float(x0), float(x1)]), sorted([float(y0), float(y1)])]
            if kind == "polygon" and len(rng) >= 3:
                return "lasso", [[float(x), float(y)] for x, y in rng]
        except (TypeError, ValueError):
            continue  # a malformed area from the browser: ignored, never a traceback
    return None
