"""Reading the charts a page drew (AppTest): Vega-Lite specs of moe_reward.app.charts, and the Expert
map's ECharts option (moe_reward.app.map_chart)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from streamlit.testing.v1 import AppTest

EXPERT = re.compile(r"(E\d+)(?:$| ·)")


def vega_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def echarts_options(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("echarts_chart")]


def chart_count(at: AppTest) -> int:
    return len(at.get("vega_lite_chart")) + len(at.get("echarts_chart"))


def map_series(option: dict, name: str | None = None) -> list[dict]:
    """The map's scatter series (of one name)."""
    return [
        s for s in option.get("series", []) if s.get("type") == "scatter" and name in (None, s.get("name"))
    ]


def layers(spec: dict) -> Iterator[dict]:
    """Every unit of a (possibly nested) layered Vega-Lite spec."""
    if "layer" in spec:
        for layer in spec["layer"]:
            yield from layers(layer)
    else:
        yield spec


def title(spec: dict) -> str:
    t = spec.get("title") or {}
    return t.get("text", "") if isinstance(t, dict) else str(t)


def rows(spec: dict, series: str | None = None) -> list[dict]:
    """The data rows of every layer (of one series); a nested layer's data is its parent's, counted once."""
    out = []
    for row in (spec.get("data") or {}).get("values", []):
        if series is None or row.get("series") == series:
            out.append(row)
    for layer in spec.get("layer", []):
        out += rows(layer, series)
    return out


def series_values(spec: dict, series: str, field: str = "value") -> dict[str, float | None]:
    """{category or expert: value} of one series."""
    return {r.get("expert", r.get("category")): r[field] for r in rows(spec, series)}


def expert_colors(spec: dict) -> dict[str, str]:
    """{'E3': colour} from a Vega-Lite colour scale over experts, or from the map's ECharts series named E3."""
    found: dict[str, str] = {}
    if "series" in spec:  # the map (ECharts)
        for series in map_series(spec):
            col = (series.get("itemStyle") or {}).get("color")
            named = EXPERT.match(str(series.get("name", "")))
            if named and isinstance(col, str):
                found[named.group(1)] = col
        return found
    for layer in layers(spec):
        scale = ((layer.get("encoding") or {}).get("color") or {}).get("scale") or {}
        domain, rng = scale.get("domain") or [], scale.get("range") or []
        if isinstance(rng, list) and len(domain) == len(rng):
            for cat, col in zip(domain, rng, strict=True):
                m = EXPERT.match(str(cat))
                if m:
                    found[m.group(1)] = col
    return found


def axis_titles(spec: dict) -> dict[str, str]:
    """{'x': title, 'y': title} of a Vega-Lite spec's first layer with both axes encoded, or of the map."""
    if "series" in spec:  # the map (ECharts): its first x and y axes
        return {axis: (spec.get(f"{axis}Axis") or [{}])[0].get("name") or "" for axis in ("x", "y")}
    for layer in layers(spec):
        enc = layer.get("encoding") or {}
        if "x" in enc and "y" in enc:
            return {axis: enc[axis].get("title") or "" for axis in ("x", "y")}
    return {}
