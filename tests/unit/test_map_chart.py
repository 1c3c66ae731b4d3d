"""The Expert map's ECharts option (moe_reward.app.map_chart): what is drawn, where, and what a selection
reads back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moe_reward.app import map_chart
from moe_reward.app.map_chart import Anchors, Density, Points, expert_map, selected_region
from moe_reward.evaluate.projection import density_grid, points_in_box


def _xy(n: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 2))


def _scatter(option: dict, name: str) -> dict:
    return next(s for s in option["series"] if s["type"] == "scatter" and s["name"] == name)


def test_each_series_draws_its_finite_rows_with_raw_labels_and_json_has_no_nan():
    xy = _xy()
    xy[3] = [np.nan, 0.0]
    labels = [f"p{i} <b>bold</b> & co" for i in range(len(xy))]
    option = expert_map(
        xy,
        [
            Points("E1", np.arange(0, 20), color="#4C78A8", labels=labels, symbol="diamond"),
            Points("E0", np.arange(20, 40), color="#F58518", labels=labels),
            Points("search: bold", np.array([5, 25]), color="#000000", ring=True, size=13),
        ],
        title="PCA of router logits (40 pairs)",
        axes=("PC 1", "PC 2"),
        legend=["E0", "E1", "search: bold"],
    )
    json.dumps(option, allow_nan=False)  # raises on NaN or infinity
    e1 = _scatter(option, "E1")
    assert len(e1["data"]) == 19  # row 3 has no x: not drawn
    assert e1["data"][0] == {
        "value": [round(xy[0, 0], 6), round(xy[0, 1], 6)],
        "name": labels[0],
    }  # not escaped
    assert e1["symbol"] == "diamond" and e1["itemStyle"]["color"] == "#4C78A8"
    ring = _scatter(option, "search: bold")
    assert ring["itemStyle"]["color"] == "rgba(0,0,0,0)" and ring["itemStyle"]["borderColor"] == "#000000"
    assert ring["silent"] is True and "name" not in ring["data"][0]  # a mark, not pairs to hover
    assert option["legend"]["data"] == ["E0", "E1", "search: bold"]  # the order given, not the drawing order
    assert [s["name"] for s in option["series"]] == ["E1", "E0", "search: bold"]
    assert (option["xAxis"][0]["name"], option["yAxis"][0]["name"]) == ("PC 1", "PC 2")
    assert option["tooltip"]["formatter"] == "{b}"  # the hover text, escaped by ECharts' template
    brush = option["toolbox"]["feature"]["brush"]["type"]
    assert brush == ["rect", "polygon", "clear"] and option["brush"]["xAxisIndex"] == 0


def test_density_layer_cells_lie_on_the_data_coordinates():
    xy = _xy(500)
    gx, gy, counts = density_grid(xy, bins=10)
    option = expert_map(xy, [], title="t", axes=("x", "y"), density=Density(gx, gy, counts))
    heat = option["series"][0]
    assert heat["type"] == "heatmap" and heat["xAxisIndex"] == 1 and heat["yAxisIndex"] == 1
    x_axis, cat_x = option["xAxis"]
    y_axis, cat_y = option["yAxis"]
    assert x_axis["min"] == pytest.approx(xy[:, 0].min(), abs=1e-5)  # the value axis spans the grid's edges
    assert x_axis["max"] == pytest.approx(xy[:, 0].max(), abs=1e-5)
    assert y_axis["min"] == pytest.approx(xy[:, 1].min(), abs=1e-5)
    assert (
        cat_x["type"] == cat_y["type"] == "category" and len(cat_x["data"]) == 10 and cat_x["show"] is False
    )
    cells = {(c, r): v for c, r, v in heat["data"]}
    assert len(cells) == int((counts > 0).sum())
    # every cell's count is the number of points whose data coordinates fall in that cell
    w = (gx[1] - gx[0], gy[1] - gy[0])
    for (c, r), v in list(cells.items())[:10]:
        inside = points_in_box(xy, (gx[c] - w[0] / 2, gx[c] + w[0] / 2), (gy[r] - w[1] / 2, gy[r] + w[1] / 2))
        assert v == pytest.approx(np.log1p(len(inside)), abs=1e-3)
    assert option["visualMap"][0]["seriesIndex"] == 0 and option["visualMap"][0]["show"] is False


def test_values_are_clipped_to_the_scale_and_coloured_by_it():
    xy = _xy(5)
    margin = np.array([-9.0, -0.5, 0.0, 0.5, np.inf])
    option = expert_map(
        xy,
        [Points("pairs", np.arange(5), labels=[str(m) for m in margin], values=margin)],
        title="t",
        axes=("x", "y"),
        scale=("margin", 1.0),
    )
    json.dumps(option, allow_nan=False)
    data = _scatter(option, "pairs")["data"]
    assert [d["value"][2] for d in data[:4]] == [-1.0, -0.5, 0.0, 0.5]  # clipped: the colour saturates
    assert len(data[4]["value"]) == 2  # no value: drawn without one
    scale = option["visualMap"][0]
    assert (
        scale["seriesIndex"] == [0]
        and (scale["min"], scale["max"]) == (-1.0, 1.0)
        and scale["dimension"] == 2
    )
    assert scale["inRange"]["color"] == list(map_chart.DIVERGING)


def test_anchors_are_labelled_and_the_plot_square():
    k = 4
    pos = np.stack([np.cos(np.arange(k)), np.sin(np.arange(k))], 1)
    option = expert_map(
        _xy(),
        [Points("E0", np.arange(10), color="#4C78A8")],
        title="t",
        axes=("← routing mix →", "← routing mix →"),
        anchors=Anchors(pos, ["E0", "E1", "E2", "E3"], ["#1", "#2", "#3", "#4"]),
        square=True,
        height=640,
    )
    anchors = _scatter(option, "expert anchors")
    assert [d["name"] for d in anchors["data"]] == ["E0", "E1", "E2", "E3"]
    assert [d["itemStyle"]["color"] for d in anchors["data"]] == ["#1", "#2", "#3", "#4"]
    grid = option["grid"]
    assert grid["width"] == grid["height"] == 640 - grid["top"] - 44  # one unit as long on x as on y
    assert option["xAxis"][0]["axisLabel"] == {"show": False}
    assert option["legend"]["data"] == ["E0"]


def test_bad_coordinates_are_refused():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        expert_map(np.zeros((3, 3)), [], title="t", axes=("x", "y"))


def test_selected_region_reads_the_last_box_or_lasso():
    assert selected_region(None) is None and selected_region({"selected": [], "areas": []}) is None
    box = {"areas": [{"brush_index": 0, "brush_type": "rect", "coord_range": [[2, -1], [0.5, 3]]}]}
    assert selected_region(box) == ("box", [[-1.0, 2.0], [0.5, 3.0]])
    lasso = {"areas": [box["areas"][0], {"brush_type": "polygon", "coord_range": [[0, 0], [1, 0], [0, 1]]}]}
    assert selected_region(lasso) == ("lasso", [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # malformed areas from the browser are skipped, never a traceback
    bad = {"areas": [box["areas"][0], {"brush_type": "rect", "coord_range": "x"}, {"brush_type": "polygon"}]}
    assert selected_region(bad) == ("box", [[-1.0, 2.0], [0.5, 3.0]])
    assert selected_region({"areas": [{"brush_type": "lineX", "coord_range": [0, 1]}]}) is None


def test_axes_span_every_pair_and_anchor_with_a_margin():
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 0.0]])  # all on one line: y has no spread
    option = expert_map(xy, [Points("E0", np.arange(3), color="#4C78A8")], title="t", axes=("x", "y"))
    x_axis, y_axis = option["xAxis"][0], option["yAxis"][0]
    assert (x_axis["min"], x_axis["max"]) == (-0.5, 10.5)  # 5% each side: no point on the frame
    assert (y_axis["min"], y_axis["max"]) == (-1.0, 1.0)  # a unit when every value is the same
    pos = np.array([[-2.0, 3.0], [12.0, -3.0]])
    option = expert_map(
        xy, [], title="t", axes=("x", "y"), anchors=Anchors(pos, ["E0", "E1"], ["#1", "#2"]), square=True
    )
    assert option["xAxis"][0]["min"] < -2.0 and option["xAxis"][0]["max"] > 12.0  # the anchors are inside
    assert option["yAxis"][0]["min"] < -3.0 and option["yAxis"][0]["max"] > 3.0
    spans = [option[a][0]["max"] - option[a][0]["min"] for a in ("xAxis", "yAxis")]
    assert spans[0] == pytest.approx(spans[1])  # square: a unit as long on both axes
