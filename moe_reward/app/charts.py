"""The dashboard's charts as Vega-Lite specs: plain dicts, which a page hands to ``st.vega_lite_chart``.

    expert_bars(titles, colors, {"top-1 share": share}, points={"mean routing weight": load}, ...)
    category_bars(groups, {"accuracy": acc}, ...)       # bars over any categories (groups, experts)
    histogram({"routed here": a, "not routed": b}, colors, 40, ...)   # counted here, on shared bins
    heatmap(values, rows, columns, ...)                  # a table of numbers, each cell coloured
    lines(steps, {"E0": w0, "E1": w1}, ...)              # curves over labels, with error bars

Why Vega-Lite and not Plotly: a browser tab loads the chart library of each kind of chart it draws, and
Streamlit's Plotly chunk (4.7 MB) takes about a second of CPU to compile and run in every new tab on a
2-core machine, against about 0.15 s for Vega-Lite (``python bench/bench_pages.py --browser --floor``:
a bare app's title 0.70 s, with one Plotly bar chart 1.98 s, with one Vega-Lite bar chart 0.84 s).
The Expert map is drawn by ECharts (``map_chart``): it needs lasso selection, which Vega-Lite lacks.

Conventions. The data sit inline in each layer, so a spec alone says what is drawn (tests read it). An
expert is a category, its title ('E3', or 'E3 · brevity' once the analyst named it), in numeric order
and in its own colour (`moe_reward.app.colors.expert_color`). Text from a dataset is data, drawn as text
(never markup: Vega-Lite draws labels as SVG text and its tooltips escape HTML). A non-finite number is
drawn as nothing: it becomes ``null``, never NaN in the JSON. A height is the whole chart's, titles, axes
and legend included (as Streamlit sizes it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .colors import NEUTRAL

Spec = dict[str, Any]
Values = Sequence[float | None] | Sequence[float] | Sequence[int] | np.ndarray  # one number per category
Grid = Sequence[Sequence[float | None]] | np.ndarray
FADED = 0.4  # the opacity of the faded one of two series of bars drawn in the same colours
TABLEAU = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC")
LEGEND_BELOW = {"orient": "bottom", "title": None, "labelLimit": 400}


def _num(x) -> float | None:
    """A float for the JSON, or None (drawn as nothing) for None, NaN and the infinities."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _chart(layers: list[Spec], *, title: str, height: int, subtitle: str | None = None, **top) -> Spec:
    heading: Spec = {"text": title, "anchor": "start", "limit": 900}
    if subtitle:
        heading["subtitle"] = subtitle
    return {"title": heading, "height": height, "layer": layers, **top}


def _y(title: str, domain: Sequence[float] | None = None, *, counts: bool = False) -> Spec:
    y: Spec = {"type": "quantitative", "title": title}
    if domain is not None:
        y["scale"] = {"domain": [float(v) for v in domain]}
    if counts:
        y["axis"] = {"format": "d", "tickMinStep": 1}
    return y


def expert_bars(
    titles: Sequence[str],
    colors: Sequence[str],
    bars: Mapping[str, Values],
    *,
    title: str,
    y_title: str,
    points: Mapping[str, Values] | None = None,
    points_axis: str | None = None,
    y_domain: Sequence[float] | None = None,
    height: int = 340,
    subtitle: str | None = None,
    faded: str | None = None,
) -> Spec:
    """One bar per expert in the expert's colour, for one or two series (side by side, in the order given,
    one of the two faded; a legend names both), and optionally black diamonds for more series (e.g. the
    mean routing weight), on the bars' axis or, with `points_axis`, on an axis of their own at the right.

    Args:
        titles: the experts' titles in numeric order ('E0', 'E1 · brevity', ...): the categories.
        colors: each expert's colour, in the same order.
        bars: series name -> one value per expert (one or two series).
        points: series name -> one value per expert, drawn as diamonds.
        points_axis: the title of the diamonds' own y axis (None: they share the bars' axis).
        y_domain: the bars' y range, e.g. (0, 1) for weights.
        faded: which of two series is drawn faded (default: the first).
    """
    titles = [str(t) for t in titles]
    if len(bars) not in (1, 2):
        raise ValueError(f"expert_bars draws one or two series of bars, not {len(bars)}")
    names = list(bars)
    if faded is not None and faded not in names:
        raise ValueError(f"faded={faded!r} is not one of the series {names}")
    rows = [
        {"expert": t, "series": name, "value": _num(v)}
        for name in names
        for t, v in zip(titles, bars[name], strict=True)
    ]
    x = {"field": "expert", "type": "nominal", "sort": titles, "title": "expert", "axis": {"labelAngle": 0}}
    enc: Spec = {
        "x": x,
        "y": {"field": "value", **_y(y_title, y_domain)},
        "color": {
            "field": "expert",
            "type": "nominal",
            "scale": {"domain": titles, "range": list(colors)},
            "legend": None,
        },
        "tooltip": [
            {"field": "expert", "title": "expert"},
            {"field": "series", "title": "series"},
            {"field": "value", "type": "quantitative", "format": ".3f"},
        ],
    }
    if len(names) == 2:
        enc["xOffset"] = {"field": "series", "type": "nominal", "sort": names}
        enc["opacity"] = {
            "field": "series",
            "type": "nominal",
            "scale": {"domain": names, "range": [FADED if n == (faded or names[0]) else 1.0 for n in names]},
            "legend": {**LEGEND_BELOW, "symbolType": "square", "symbolFillColor": "#54575e"},
        }
    layers: list[Spec] = [{"data": {"values": rows}, "mark": {"type": "bar"}, "encoding": enc}]
    top: Spec = {}
    if points:
        prow = [
            {"expert": t, "series": name, "value": _num(v)}
            for name, values in points.items()
            for t, v in zip(titles, values, strict=True)
        ]
        y = {"field": "value", **_y(points_axis or y_title)}
        if points_axis:
            y["axis"] = {"orient": "right"}
        layers.append(
            {
                "data": {"values": prow},
                "mark": {"type": "point", "shape": "diamond", "filled": True, "size": 90, "color": "black"},
                "encoding": {
                    "x": x,
                    "y": y,
                    "shape": {
                        "field": "series",
                        "type": "nominal",
                        "scale": {"domain": list(points), "range": ["diamond"] * len(points)},
                        "legend": LEGEND_BELOW,
                    },
                    "tooltip": [
                        {"field": "expert"},
                        {"field": "series"},
                        {"field": "value", "type": "quantitative", "format": ".3f"},
                    ],
                },
            }
        )
        if points_axis:
            top["resolve"] = {"scale": {"y": "independent"}}
    return _chart(layers, title=title, height=height, subtitle=subtitle, **top)


def category_bars(
    categories: Sequence[str],
    series: Mapping[str, Values],
    *,
    title: str,
    x_title: str,
    y_title: str,
    colors: Mapping[str, str] | None = None,
    bar_colors: Sequence[str] | None = None,
    counts: Mapping[str, Values] | None = None,
    y_domain: Sequence[float] | None = None,
    integer: bool = False,
    horizontal: bool = False,
    rule: float | None = None,
    height: int = 340,
) -> Spec:
    """Bars over categories in the given order: one series, or several side by side with a legend.

    Args:
        categories: the categories (groups, experts) in the order drawn.
        series: series name -> one value per category (None: no bar).
        colors: series name -> colour (default: neutral grey for the first, then the Tableau colours).
        bar_colors: with one series, one colour per category (e.g. each expert's colour).
        counts: series name -> the number of pairs behind each value (shown on hover).
        integer: the values are counts (whole-number ticks).
        horizontal: categories down the y axis, values along x.
        rule: a dotted line at this value (e.g. 0.5, chance agreement).
    """
    categories = [str(c) for c in categories]
    names = list(series)
    rows = []
    for name in names:
        ns = (counts or {}).get(name)
        for i, (c, v) in enumerate(zip(categories, series[name], strict=True)):
            row: Spec = {"category": c, "series": name, "value": _num(v)}
            if ns is not None:
                n = _num(ns[i])
                row["pairs"] = None if n is None else int(n)
            rows.append(row)
    cat = {"field": "category", "type": "nominal", "sort": categories, "title": x_title}
    val = {"field": "value", **_y(y_title, y_domain, counts=integer)}
    if not horizontal:
        cat["axis"] = {"labelAngle": 0 if len(categories) <= 8 else -40}
    enc: Spec = {"x": val, "y": cat} if horizontal else {"x": cat, "y": val}
    offset = "yOffset" if horizontal else "xOffset"
    tooltip: list[Spec] = [
        {"field": "category", "title": x_title},
        {"field": "series"},
        {"field": "value", "type": "quantitative", "format": ".3f"},
    ]
    if counts:
        tooltip.append({"field": "pairs", "type": "quantitative"})
    enc["tooltip"] = tooltip
    if bar_colors is not None:
        if len(names) != 1:
            raise ValueError("bar_colors colours the bars of one series only")
        enc["color"] = {
            "field": "category",
            "type": "nominal",
            "scale": {"domain": categories, "range": list(bar_colors)},
            "legend": None,
        }
    else:
        palette = dict(colors or {})
        defaults = iter([NEUTRAL, *TABLEAU])
        rng = [palette.get(n) or next(defaults) for n in names]
        enc["color"] = {
            "field": "series",
            "type": "nominal",
            "sort": names,
            "scale": {"domain": names, "range": rng},
            "legend": LEGEND_BELOW if len(names) > 1 else None,
        }
        if len(names) > 1:
            enc[offset] = {"field": "series", "type": "nominal", "sort": names}
    layers: list[Spec] = [{"data": {"values": rows}, "mark": {"type": "bar"}, "encoding": enc}]
    if rule is not None:
        layers.append(_rule(rule, "x" if horizontal else "y"))
    return _chart(layers, title=title, height=height)


def _rule(at: float, axis: str, dash: Sequence[int] = (2, 3)) -> Spec:
    return {
        "data": {"values": [{"at": float(at)}]},
        "mark": {"type": "rule", "color": "grey", "strokeDash": list(dash)},
        "encoding": {axis: {"field": "at", "type": "quantitative"}},
    }


def histogram(
    series: Mapping[str, np.ndarray],
    colors: Mapping[str, str],
    bins: int | np.ndarray,
    *,
    title: str,
    x_title: str,
    y_title: str = "pairs",
    domain: Sequence[float] | None = None,
    rule: float | None = None,
    height: int = 340,
) -> Spec:
    """Overlaid histograms of several series on the same bins, counted here with numpy (the spec holds the
    counts, not the values); non-finite values are left out.

    Args:
        bins: the bin edges, or a number of equal bins over `domain` (default: the finite values' range).
        domain: (lo, hi) of the x axis when `bins` is a number, e.g. (0, 1) for a normalized entropy.
        rule: a dashed line at this x (e.g. 0, no margin).
    """
    if isinstance(bins, int):
        finite = [v[np.isfinite(v)] for v in (np.asarray(x, dtype=np.float64) for x in series.values())]
        pooled = np.concatenate(finite) if finite else np.zeros(0)
        span = domain if domain is not None else (pooled.min(), pooled.max()) if len(pooled) else (0.0, 1.0)
        edges = np.histogram_bin_edges(pooled, bins=bins, range=(float(span[0]), float(span[1])))
    else:
        edges = np.asarray(bins, dtype=np.float64)
    rows = []
    for name, values in series.items():
        v = np.asarray(values, dtype=np.float64)
        n, _ = np.histogram(v[np.isfinite(v)], bins=edges)
        rows += [
            {"series": name, "lo": float(lo), "hi": float(hi), "pairs": int(c)}
            for lo, hi, c in zip(edges[:-1], edges[1:], n, strict=True)
            if c
        ]
    names = list(series)
    enc: Spec = {
        "x": {
            "field": "lo",
            "type": "quantitative",
            "title": x_title,
            "scale": {"domain": [float(edges[0]), float(edges[-1])], "nice": False},
        },
        "x2": {"field": "hi"},
        "y": {"field": "pairs", **_y(y_title, counts=True), "stack": None},
        "y2": {"datum": 0},
        "color": {
            "field": "series",
            "type": "nominal",
            "sort": names,
            "scale": {"domain": names, "range": [colors[n] for n in names]},
            "legend": LEGEND_BELOW,
        },
        "tooltip": [
            {"field": "series"},
            {"field": "lo", "type": "quantitative", "format": ".3f", "title": "from"},
            {"field": "hi", "type": "quantitative", "format": ".3f", "title": "to"},
            {"field": "pairs", "type": "quantitative"},
        ],
    }
    layers: list[Spec] = [
        {"data": {"values": rows}, "mark": {"type": "bar", "opacity": 0.6, "binSpacing": 0}, "encoding": enc}
    ]
    if rule is not None:
        layers.append(_rule(rule, "x", dash=(5, 4)))
    return _chart(layers, title=title, height=height)


def heatmap(
    values: Grid,
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    title: str,
    x_title: str,
    y_title: str,
    color_title: str,
    scheme: str = "blues",
    domain: Sequence[float] | None = None,
    fmt: str = ".2f",
    height: int | None = None,
) -> Spec:
    """A grid of numbers, each cell coloured by its value and labelled with it (`fmt`, d3-format);
    empty cells (None, NaN) are left blank. `domain` fixes the colour range (e.g. 0..1 for accuracy)."""
    rows, columns = [str(r) for r in rows], [str(c) for c in columns]
    cells = [
        {"row": r, "column": c, "value": _num(v)}
        for r, line in zip(rows, values, strict=True)
        for c, v in zip(columns, line, strict=True)
    ]
    finite = [c["value"] for c in cells if c["value"] is not None]
    lo, hi = (
        float(v)
        for v in (domain if domain is not None else (min(finite, default=0.0), max(finite, default=1.0)))
    )
    # white text where the cell is dark: the top of a one-hue scheme, both ends of a diverging one
    if scheme in ("blues", "purples", "greens", "oranges", "greys"):
        light = f"datum.value > {lo + 0.6 * (hi - lo)!r}"
    else:
        light = f"datum.value < {lo + 0.2 * (hi - lo)!r} || datum.value > {lo + 0.8 * (hi - lo)!r}"
    x = {"field": "column", "type": "nominal", "sort": columns, "title": x_title, "axis": {"labelAngle": -40}}
    y = {"field": "row", "type": "nominal", "sort": rows, "title": y_title}
    scale: Spec = {"scheme": scheme}
    if domain is not None:
        scale["domain"] = [float(v) for v in domain]
    valid = [{"filter": "isValid(datum.value)"}]
    return _chart(
        [
            {
                "data": {"values": cells},
                "transform": valid,
                "mark": {"type": "rect"},
                "encoding": {
                    "x": x,
                    "y": y,
                    "color": {
                        "field": "value",
                        "type": "quantitative",
                        "scale": scale,
                        "title": color_title,
                    },
                    "tooltip": [
                        {"field": "row", "title": y_title},
                        {"field": "column", "title": x_title},
                        {"field": "value", "type": "quantitative", "format": fmt, "title": color_title},
                    ],
                },
            },
            {
                "data": {"values": cells},
                "transform": valid,
                "mark": {"type": "text", "fontSize": 11},
                "encoding": {
                    "x": x,
                    "y": y,
                    "text": {"field": "value", "type": "quantitative", "format": fmt},
                    "color": {"condition": {"test": light, "value": "white"}, "value": "black"},
                },
            },
        ],
        title=title,
        height=height or max(300, 60 + 26 * len(rows)),
    )


def lines(
    x: Values,
    series: Mapping[str, Values],
    *,
    title: str,
    x_title: str,
    y_title: str,
    colors: Mapping[str, str] | None = None,
    errors: Mapping[str, Values] | None = None,
    widths: Mapping[str, float] | None = None,
    dashed: Sequence[str] = (),
    xs: Mapping[str, Values] | None = None,
    y_domain: Sequence[float] | None = None,
    hline: tuple[float, str] | None = None,
    integer_x: bool = True,
    height: int = 320,
) -> Spec:
    """Curves with a marker per point, one per series, with a legend.

    Args:
        x: the x of every series (e.g. the number of labels), unless `xs` gives a series its own.
        series: series name -> one y per x (None: a gap).
        colors: series name -> colour; the other series take the category colours in turn (default:
            Vega-Lite's category colours for all).
        errors: series name -> ± this much around each y, drawn as error bars.
        widths: series name -> line width (default 2).
        dashed: the series drawn dashed (e.g. an oracle).
        hline: (y, label): a dotted horizontal line, labelled at the right.
        integer_x: x counts something (whole-number ticks).
    """
    names = list(series)
    data = []
    for name in names:
        xx = (xs or {}).get(name, x)
        err = (errors or {}).get(name)
        for i, (a, b) in enumerate(zip(xx, series[name], strict=True)):
            row: Spec = {"x": _num(a), "series": name, "y": _num(b)}
            if err is not None and row["y"] is not None:
                e = _num(err[i]) or 0.0
                row["lo"], row["hi"] = row["y"] - e, row["y"] + e
            data.append(row)
    xenc: Spec = {"field": "x", "type": "quantitative", "title": x_title}
    if integer_x:
        xenc["axis"] = {"format": "d", "tickMinStep": 1}
    color: Spec = {
        "field": "series",
        "type": "nominal",
        "sort": names,
        # one curve: the chart's title names it
        "legend": {"title": None, "labelLimit": 300} if len(names) > 1 else None,
    }
    scale: Spec = {"domain": names}
    if colors:  # the series without a colour of their own take the category colours in turn
        others = (c for c in TABLEAU * (len(names) // len(TABLEAU) + 1) if c not in colors.values())
        scale["range"] = [colors.get(n) or next(others) for n in names]
    color["scale"] = scale
    enc: Spec = {
        "x": xenc,
        "y": {"field": "y", **_y(y_title, y_domain)},
        "color": color,
        "tooltip": [
            {"field": "series"},
            {"field": "x", "type": "quantitative", "title": x_title},
            {"field": "y", "type": "quantitative", "format": ".3f", "title": y_title},
        ],
    }
    if widths:
        enc["strokeWidth"] = {
            "field": "series",
            "type": "nominal",
            "scale": {"domain": names, "range": [float(widths.get(n, 2)) for n in names]},
            "legend": None,
        }
    if dashed:
        enc["strokeDash"] = {
            "field": "series",
            "type": "nominal",
            "scale": {"domain": names, "range": [[6, 4] if n in dashed else [1, 0] for n in names]},
            "legend": None,
        }
    layers: list[Spec] = [
        {"data": {"values": data}, "mark": {"type": "line", "point": True}, "encoding": enc}
    ]
    if errors:
        layers.append(
            {
                "data": {"values": [r for r in data if "lo" in r]},
                "mark": {"type": "errorbar", "ticks": True},
                "encoding": {
                    "x": xenc,
                    "y": {"field": "lo", "type": "quantitative", "title": y_title},
                    "y2": {"field": "hi"},
                    "color": color,
                },
            }
        )
    if hline is not None:
        at, label = hline
        layers.append(
            {
                "data": {"values": [{"at": float(at), "label": label}]},
                "layer": [
                    {
                        "mark": {"type": "rule", "strokeDash": [2, 3], "color": "black"},
                        "encoding": {"y": {"field": "at", "type": "quantitative"}},
                    },
                    {
                        "mark": {
                            "type": "text",
                            "align": "right",
                            "baseline": "bottom",
                            "x": "width",
                            "dy": -2,
                        },
                        "encoding": {
                            "y": {"field": "at", "type": "quantitative"},
                            "text": {"field": "label"},
                        },
                    },
                ],
            }
        )
    return _chart(layers, title=title, height=height)
