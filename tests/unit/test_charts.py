"""moe_reward.app.charts: every spec is valid Vega-Lite (the schema the dashboard's Vega-Lite reads), holds
exactly the data it was given, and never a non-finite number."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from page_charts import rows

from moe_reward.app import charts

jsonschema = pytest.importorskip("jsonschema")
core = pytest.importorskip("altair.vegalite.v6.schema.core")

TITLES = ["E0", "E1 · brevity", "E2"]
COLORS = ["#4C78A8", "#F58518", "#54A24B"]


@pytest.fixture(scope="module")
def valid():
    schema = core.load_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)

    def check(spec: dict) -> dict:
        errors = [e.message[:200] for e in validator.iter_errors(spec)]
        assert not errors, errors
        json.dumps(spec, allow_nan=False)  # no NaN or infinity anywhere
        return spec

    return check


def test_the_schema_check_rejects_a_broken_spec(valid):
    with pytest.raises(AssertionError):
        valid({"layer": [{"mark": "barr", "encoding": {"x": {"field": "a", "type": "nominal"}}}]})


def test_expert_bars_keep_order_colours_and_drop_non_finite_values(valid):
    spec = valid(
        charts.expert_bars(
            TITLES,
            COLORS,
            {"top-1 share": [0.5, float("nan"), 0.5]},
            points={"mean routing weight": np.array([0.4, 0.35, float("inf")])},
            title="Expert utilization",
            y_title="share of pairs",
        )
    )
    bars, diamonds = spec["layer"]
    assert bars["encoding"]["x"]["sort"] == TITLES
    assert bars["encoding"]["color"]["scale"] == {"domain": TITLES, "range": COLORS}
    assert [r["value"] for r in bars["data"]["values"]] == [0.5, None, 0.5]
    assert [r["value"] for r in diamonds["data"]["values"]] == [0.4, 0.35, None]
    assert diamonds["encoding"]["shape"]["legend"] is not None  # the diamonds are named in a legend


def test_two_series_of_bars_fade_the_one_asked_for_and_a_second_axis_is_independent(valid):
    spec = valid(
        charts.expert_bars(
            TITLES, COLORS, {"A": [1, 2, 3], "B": [3, 2, 1]}, title="t", y_title="r", faded="B"
        )
    )
    enc = spec["layer"][0]["encoding"]
    assert enc["xOffset"]["sort"] == ["A", "B"]
    assert enc["opacity"]["scale"] == {"domain": ["A", "B"], "range": [1.0, charts.FADED]}
    with pytest.raises(ValueError, match="faded"):
        charts.expert_bars(
            TITLES, COLORS, {"A": [1, 2, 3], "B": [3, 2, 1]}, title="t", y_title="r", faded="C"
        )
    with pytest.raises(ValueError, match="one or two"):
        charts.expert_bars(TITLES, COLORS, {"A": [1] * 3, "B": [1] * 3, "C": [1] * 3}, title="t", y_title="r")
    two_axes = valid(
        charts.expert_bars(
            TITLES,
            COLORS,
            {"p": [0.2, 0.3, 0.5]},
            points={"m": [1, -2, 3]},
            points_axis="margin",
            title="t",
            y_title="p",
        )
    )
    assert two_axes["resolve"] == {"scale": {"y": "independent"}}
    assert two_axes["layer"][1]["encoding"]["y"]["title"] == "margin"


def test_category_bars_carry_counts_colours_and_a_rule(valid):
    spec = valid(
        charts.category_bars(
            ["brief", "deep <b>x</b>"],
            {"own": [0.5, None], "leads": [0.75, 1.0]},
            counts={"leads": [4, 2]},
            title="Accuracy per group",
            x_title="group",
            y_title="accuracy",
            y_domain=(0, 1),
        )
    )
    data = spec["layer"][0]["data"]["values"]
    assert {
        "category": "deep <b>x</b>",
        "series": "leads",
        "value": 1.0,
        "pairs": 2,
    } in data  # text stays text
    assert spec["layer"][0]["encoding"]["xOffset"]["sort"] == ["own", "leads"]
    flat = valid(
        charts.category_bars(
            ["E2", "E0"],
            {"agreement": [0.9, 0.1]},
            bar_colors=["#111111", "#222222"],
            horizontal=True,
            rule=0.5,
            title="t",
            x_title="expert",
            y_title="share",
            integer=False,
        )
    )
    enc = flat["layer"][0]["encoding"]
    assert enc["y"]["field"] == "category" and enc["x"]["field"] == "value"
    assert flat["layer"][1]["data"]["values"] == [{"at": 0.5}]
    with pytest.raises(ValueError, match="one series"):
        charts.category_bars(
            ["a"], {"x": [1], "y": [2]}, bar_colors=["#000000"], title="t", x_title="", y_title=""
        )


def test_histogram_counts_every_finite_value_once(valid):
    rng = np.random.default_rng(0)
    a, b = rng.random(101), np.append(rng.random(40), [np.nan, np.inf])
    spec = valid(
        charts.histogram(
            {"a": a, "b": b}, {"a": "#111111", "b": "#222222"}, np.linspace(0, 1, 31), title="t", x_title="x"
        )
    )
    counted = {name: sum(r["pairs"] for r in rows(spec) if r["series"] == name) for name in ("a", "b")}
    assert counted == {"a": 101, "b": 40}
    assert all(r["hi"] > r["lo"] for r in rows(spec))
    # a number of bins: over the domain given, else over the finite values of every series
    fixed = valid(charts.histogram({"a": a}, {"a": "#111111"}, 10, domain=(0, 2), title="t", x_title="x"))
    assert fixed["layer"][0]["encoding"]["x"]["scale"]["domain"] == [0.0, 2.0]
    assert max(r["hi"] for r in rows(fixed)) <= 1.2  # the values are in [0, 1): five bins of 0.2
    pooled = valid(
        charts.histogram({"a": a, "b": b + 3}, {"a": "#111111", "b": "#222222"}, 8, title="t", x_title="x")
    )
    lo, hi = pooled["layer"][0]["encoding"]["x"]["scale"]["domain"]
    assert lo == pytest.approx(a.min()) and hi == pytest.approx(np.nanmax(b[np.isfinite(b)]) + 3)
    same = valid(charts.histogram({"a": np.ones(5)}, {"a": "#111111"}, 4, title="t", x_title="x"))
    assert (
        sum(r["pairs"] for r in rows(same)) == 5
    )  # one value everywhere: still counted, in a bin of width 1


def test_heatmap_leaves_empty_cells_blank_and_labels_every_other(valid):
    spec = valid(
        charts.heatmap(
            [[1.0, float("nan")], [0.25, 0.0]],
            ["g1", "g2"],
            ["E0", "E1"],
            title="t",
            x_title="expert",
            y_title="group",
            color_title="accuracy",
            scheme="redyellowgreen",
            domain=(0, 1),
        )
    )
    cells = spec["layer"][0]["data"]["values"]
    assert {"row": "g1", "column": "E1", "value": None} in cells and len(cells) == 4
    assert all(layer["transform"] == [{"filter": "isValid(datum.value)"}] for layer in spec["layer"])
    assert spec["layer"][0]["encoding"]["color"]["scale"] == {
        "scheme": "redyellowgreen",
        "domain": [0.0, 1.0],
    }


def test_lines_with_errors_their_own_x_a_dashed_oracle_and_a_reference(valid):
    spec = valid(
        charts.lines(
            [],
            {"sparse · hedge": [0.6, 0.7], "oracle": [0.8, 0.9, 0.95]},
            xs={"sparse · hedge": [0, 8], "oracle": [0, 8, 16]},
            errors={"sparse · hedge": [0.05, None]},
            widths={"sparse · hedge": 3},
            dashed=["oracle"],
            hline=(0.5, "model routing"),
            title="t",
            x_title="labels",
            y_title="accuracy",
            y_domain=(0, 1.05),
        )
    )
    line, bars, ref = spec["layer"]
    assert [(r["x"], r["y"]) for r in line["data"]["values"] if r["series"] == "oracle"] == [
        (0, 0.8),
        (8, 0.9),
        (16, 0.95),
    ]
    assert [(r["lo"], r["hi"]) for r in bars["data"]["values"]] == [
        pytest.approx((0.55, 0.65)),
        pytest.approx((0.7, 0.7)),
    ]
    assert line["encoding"]["strokeDash"]["scale"]["range"] == [[1, 0], [6, 4]]
    # only the oracle has a colour of its own: the model's curve takes a category colour, not grey
    coloured = charts.lines(
        [0, 1],
        {"sparse": [0.5, 0.6], "oracle": [0.7, 0.8]},
        colors={"oracle": "black"},
        title="t",
        x_title="k",
        y_title="a",
    )
    rng = coloured["layer"][0]["encoding"]["color"]["scale"]["range"]
    assert rng[1] == "black" and rng[0] == charts.TABLEAU[0]
    assert ref["data"]["values"] == [{"at": 0.5, "label": "model routing"}]
    assert not any(isinstance(v, float) and math.isnan(v) for r in rows(spec) for v in r.values())
