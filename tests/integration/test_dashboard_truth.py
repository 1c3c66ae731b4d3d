"""Issue 9: held-out headline numbers with their subset, a model that selects its own data, one colour per
expert on every page, views in the URL, diagnostics, the report, the map's library parts (AppTest + unit)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import page_charts as charts
import pytest
from app_pages import open_page, use_workspace
from app_workspace import TINY_PAIRS, build_tiny_workspace, tiny_features

from moe_reward.app import colors
from moe_reward.app.pipeline import TrainRequest, train_from_data
from moe_reward.evaluate import summary
from moe_reward.evaluate.metrics import evaluate, score_pairs
from moe_reward.model.moe import SparseMoERewardModel
from moe_reward.train.config import TrainConfig

streamlit = pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DIAGNOSTICS = {
    "router_probe_nmi": 0.91,
    "router_probe_accuracy": 0.97,
    "oracle_routing_accuracy": 0.88,
    "discovery_efficiency": 0.42,
    "contingency": {"brief": [3, 0, 1, 0], "deep": [0, 4, 0, 2]},
}


@pytest.fixture(scope="module")
def truth_home(tmp_path_factory) -> Path:
    """The tiny workspace, plus a second data file with a model trained on it, and a model whose
    metrics.json carries specialization diagnostics (as the lead's evaluate will write them)."""
    root = tmp_path_factory.mktemp("truth")
    ws = build_tiny_workspace(root)
    other = tiny_features(seed=7)
    for p in other.pairs:
        p.id = f"other-{p.id}"
    other_path = ws.uploads_dir / "other.safetensors"
    other.save(other_path)
    req = TrainRequest(
        data=str(other_path),
        kind="sparse",
        experts=3,
        top_k=1,
        train=TrainConfig.for_kind("sparse", epochs=4, min_steps=20, patience=4),
    )
    train_from_data(req, ws.model_path("other-sparse"), features=other)
    diag_dir = ws.model_path("with-diagnostics")
    shutil.copytree(ws.model_path("default-sparse"), diag_dir)
    metrics = json.loads((diag_dir / "metrics.json").read_text())
    metrics["test"]["diagnostics"] = DIAGNOSTICS
    (diag_dir / "metrics.json").write_text(json.dumps(metrics))
    untrained = ws.model_path("untrained")
    shutil.copytree(ws.model_path("default-sparse"), untrained)
    metrics = json.loads((untrained / "metrics.json").read_text())
    metrics["checkpoint_untrained"] = True
    (untrained / "metrics.json").write_text(json.dumps(metrics))
    return root


@pytest.fixture
def home(truth_home, monkeypatch) -> Path:
    return use_workspace(monkeypatch, truth_home)


app = open_page


def metric(at: AppTest, prefix: str):
    return next(m for m in at.metric if m.label.startswith(prefix))


def chart_specs(at: AppTest) -> list[dict]:
    """Every chart the page drew: the Vega-Lite specs, then the Expert map's ECharts option."""
    return charts.vega_specs(at) + charts.echarts_options(at)


def same_colour(a: str, b: str) -> bool:
    """'#E45756' and 'rgba(228,87,86,0.60)' are the same colour."""

    def rgb(c):
        if c.startswith("#"):
            return colors.hex_to_rgb(c)
        return tuple(int(float(x)) for x in re.findall(r"[\d.]+", c)[:3])

    return rgb(a) == rgb(b)


# ----------------------------------------------------------------------------- 1: held-out headline numbers


def test_overview_headline_is_held_out_and_matches_routing_statistics(home):
    at = app()
    assert at.sidebar.selectbox(key="model_name").value == "default-sparse"
    split = json.loads((home / "models" / "default-sparse" / "split_ids.json").read_text())
    n_test = len(split["test"])
    acc = metric(at, "Accuracy")
    assert at.metric[0] == acc and acc.delta == f"held-out test split · {n_test} pairs"
    # the value is the accuracy on exactly the saved test ids
    model = SparseMoERewardModel.from_pretrained(home / "models" / "default-sparse")
    feats = tiny_features()
    test = feats.subset([i for i, p in enumerate(feats.pairs) if p.id in set(split["test"])])
    assert acc.value == f"{evaluate(model, test)['accuracy']:.3f}"
    headline = [
        m for m in at.metric if m.label in ("Accuracy", "Routing NMI", "Routing entropy", "Experts in use")
    ]
    assert len(headline) == 4 and all(m.delta == f"held-out test split · {n_test} pairs" for m in headline)
    assert all(
        m.delta for m in at.metric
    )  # every metric says its subset (diagnostics: the pairs they rest on)
    subsets = at.dataframe[0].value  # the same statistics on every subset, the training split included
    assert (
        subsets["subset"].tolist()[0] == "held-out test split"
        and "training split (seen in training)" in subsets["subset"].tolist()
    )
    assert any(f"only {n_test} pairs" in w.value for w in at.warning)  # a 10-pair test split is flagged
    # Routing statistics shows the same statistic with the same value on the same subset
    rs = app("pages/1_Routing_statistics.py")
    for name in ("Routing NMI", "Routing entropy", "Accuracy"):
        assert metric(rs, name).delta == metric(at, name).delta
        assert metric(rs, name).value == metric(at, name).value


def test_relate_names_subsets_and_foreign_data(tmp_path):
    ws = build_tiny_workspace(tmp_path / "ws")
    model_dir = ws.model_path("default-sparse")
    feats = tiny_features()
    rel = summary.relate(model_dir, feats)
    split = json.loads((model_dir / "split_ids.json").read_text())
    assert rel.kind == "training" and rel.headline.key == "test" and rel.headline.n == len(split["test"])
    assert [s.key for s in rel.scopes][-1] == "all" and rel.scope("train").n == len(split["train"])
    other = tiny_features(seed=3)
    for p in other.pairs:
        p.id = "x-" + p.id
    foreign = summary.relate(model_dir, other, data_name="x.jsonl")
    assert (
        foreign.kind == "foreign"
        and foreign.headline.key == "all"
        and "not the data the model was trained on" in foreign.warning
    )
    part = summary.relate(
        model_dir, feats.subset([i for i, p in enumerate(feats.pairs) if p.id in set(split["train"])])
    )
    assert part.kind == "partial" and "used to train" in part.message
    (model_dir / "split_ids.json").unlink()
    assert summary.relate(model_dir, feats, same_file=True).kind == "unsplit"
    assert "include the pairs it was trained on" in summary.relate(model_dir, feats, same_file=True).warning


# ----------------------------------------------------------------------------- 2: the model selects its data


def test_selecting_a_model_selects_its_data_and_foreign_data_is_flagged(home):
    at = app()
    assert at.sidebar.selectbox(key="data_label").value == "uploads/tiny.safetensors"
    at.sidebar.selectbox(key="model_name").select("other-sparse").run()
    assert not at.exception
    assert at.sidebar.selectbox(key="data_label").value == "uploads/other.safetensors"
    assert metric(at, "Accuracy").delta.startswith("held-out test split")
    assert not any("not the data the model was trained on" in w.value for w in at.warning)
    at.sidebar.selectbox(key="data_label").select(
        "uploads/tiny.safetensors"
    ).run()  # evaluate elsewhere: said plainly
    assert any("not the data the model was trained on" in w.value for w in at.warning)
    assert metric(at, "Accuracy").delta.startswith("all pairs (data the model never saw)")
    at.sidebar.selectbox(key="model_name").select("default-sparse").run()
    assert at.sidebar.selectbox(key="data_label").value == "uploads/tiny.safetensors"


# ----------------------------------------------------------------------------- 6: one colour per expert


def test_each_expert_has_one_colour_on_every_page(home):
    # the busiest expert of the test split (experts that lead no pair are one line, with no chart)
    used = json.loads((home / "models" / "default-sparse" / "metrics.json").read_text())["test"][
        "expert_utilization"
    ]
    busy = f"E{int(np.argmax(used))}"
    pages = {
        "overview": app(),
        "routing": app("pages/1_Routing_statistics.py"),
        "map": app("pages/2_Expert_map.py"),
        "detail": app("pages/3_Expert_detail.py", expert=busy[1:]),
    }
    seen: dict[str, dict[str, str]] = {}
    for name, at in pages.items():
        found: dict[str, str] = {}
        for spec in chart_specs(at):
            found.update(charts.expert_colors(spec))
        seen[name] = found
        assert found, f"no expert-coloured chart on {name}"
    for name, found in seen.items():
        for expert, col in found.items():
            assert same_colour(col, colors.expert_color(int(expert[1:]))), (name, expert, col)
    assert busy in seen["detail"] and busy in seen["overview"]
    # the map's legend is in numeric order and its traces are the experts
    map_option = charts.echarts_options(pages["map"])[0]
    legend = map_option["legend"]["data"]
    experts = [n for n in legend if re.fullmatch(r"E\d+", n)]
    assert experts and experts == colors.natural_sorted(experts)
    assert set(experts) == {
        s["name"] for s in charts.map_series(map_option) if re.fullmatch(r"E\d+", s["name"])
    }


def test_palette_is_distinct_and_ordered():
    assert len(set(colors.EXPERT_COLORS)) >= 24
    lab = np.array([_lab(c) for c in colors.EXPERT_COLORS])
    dist = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(len(lab)) * 1e9
    assert dist.min() > 15  # CIELAB ΔE: clearly different colours
    assert colors.natural_sorted(["E10", "E2", "E1", "E0", "E11"]) == ["E0", "E1", "E2", "E10", "E11"]
    assert colors.expert_color(24) == colors.expert_color(0) and colors.expert_symbol(
        24
    ) != colors.expert_symbol(0)
    groups = colors.category_colors([f"g{i}" for i in range(13)])
    assert len(set(groups.values())) == 13
    # groups have a palette of their own: no group is drawn in (or near) an expert's colour
    glab = np.array([_lab(c) for c in colors.GROUP_COLORS])
    assert np.linalg.norm(glab[:, None] - lab[None], axis=-1).min() > 25
    assert not set(groups.values()) & set(colors.EXPERT_COLORS)
    assert colors.group_colors(["b", "a"]) == {"a": colors.GROUP_COLORS[0], "b": colors.GROUP_COLORS[1]}


def _lab(hex_color: str) -> np.ndarray:
    rgb = np.array(colors.hex_to_rgb(hex_color)) / 255
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    f = np.cbrt(xyz / np.array([0.95047, 1.0, 1.08883]))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


# ----------------------------------------------------------------------------- 9: shareable views


def test_a_link_with_expert_3_opens_expert_detail_on_e3_and_the_url_follows(home):
    at = app("pages/3_Expert_detail.py", model="default-sparse", data="uploads/tiny.safetensors", expert="3")
    assert at.selectbox(key="detail_expert").value == 3
    assert at.query_params["expert"] == "3" and at.query_params["model"] == "default-sparse"
    at.selectbox(key="detail_expert").select(1).run()
    assert at.query_params["expert"] == "1"


def test_links_restore_model_data_filters_and_map_view(home):
    at = app(model="other-sparse")  # a link naming only the model opens it on its own data
    assert at.sidebar.selectbox(key="model_name").value == "other-sparse"
    assert at.sidebar.selectbox(key="data_label").value == "uploads/other.safetensors"
    rs = app("pages/1_Routing_statistics.py", group="deep", correct="correct", subset="all")
    assert rs.multiselect(key="rs_groups").value == ["deep"] and rs.radio(key="rs_correct").value == "correct"
    assert rs.selectbox(key="rs_scope").value == "all"
    assert rs.query_params["group"] == "deep" and rs.query_params["subset"] == "all"
    pair = tiny_features().pairs[5].id
    mp = app(
        "pages/2_Expert_map.py",
        view="router",
        layout="pca",
        color="group",
        box="-100,100,-100,100",
        pair=pair,
    )
    assert mp.radio(key="map_layout").value == "pca" and mp.radio(key="map_color").value == "group"
    assert any(
        s.value.startswith(f"Selection: {TINY_PAIRS} pairs") for s in mp.subheader
    )  # the box over every pair
    assert any(f"Pair {pair}" in m.value.replace("\\", "") for m in mp.markdown)
    assert mp.query_params["pair"] == pair and mp.query_params["layout"] == "pca"


# ----------------------------------------------------------------------------- diagnostics, compare, tables


def test_diagnostics_render_on_overview_and_expert_detail(home):
    at = app(model="with-diagnostics", data="uploads/tiny.safetensors")
    assert metric(at, "Router probe NMI").value == "0.910"
    assert metric(at, "Discovery efficiency").value == "0.420"
    assert any("ceiling that unsupervised routing could reach" in c.value for c in at.caption)
    table = next(d.value for d in at.dataframe if "group" in d.value.columns and "E1" in d.value.columns)
    # the live contingency (computed on the test split shown) wins over the saved one; probe/oracle are saved
    split = json.loads((home / "models" / "with-diagnostics" / "split_ids.json").read_text())
    assert table.set_index("group").loc[:, "E0":].to_numpy().sum() == len(split["test"])
    # Expert detail is on one subset (the test split): its group chart counts that split's pairs led by
    # E1; the model-level diagnostics stay on the Overview (a pointer says so)
    detail = app("pages/3_Expert_detail.py", model="with-diagnostics", expert="1")
    assert not any(m.label.startswith("Oracle-routing") for m in detail.metric)
    assert any("diagnostics" in c.value and "Overview" in c.value for c in detail.caption)
    model = SparseMoERewardModel.from_pretrained(home / "models" / "with-diagnostics")
    split = json.loads((home / "models" / "with-diagnostics" / "split_ids.json").read_text())
    feats = tiny_features()
    test = feats.subset([i for i, p in enumerate(feats.pairs) if p.id in set(split["test"])])
    led = int((score_pairs(model, test).top_expert == 1).sum())
    assert any(
        f"Groups of the {led} pairs whose top expert is E1 (held-out test split)" in json.dumps(s)
        for s in chart_specs(detail)
    )
    # a model trained by the pipeline shows the probe its own training saved (it needs the training pairs)
    plain = app(model="default-sparse")
    saved = json.loads((home / "models" / "default-sparse" / "metrics.json").read_text())["test"][
        "diagnostics"
    ]
    assert metric(plain, "Router probe NMI").value == f"{saved['router_probe_nmi']:.3f}"


def test_compare_never_compares_a_model_with_itself(home, tmp_path, monkeypatch):
    at = app("pages/5_Compare_models.py")
    assert at.selectbox(key="cmp_other").value != "default-sparse"
    assert "default-sparse" not in at.selectbox(key="cmp_other").options
    lonely = tmp_path / "lonely"
    build_tiny_workspace(lonely)
    shutil.rmtree(lonely / "models" / "tiny-dense")
    monkeypatch.setenv("MOE_REWARD_HOME", str(lonely))
    alone = app("pages/5_Compare_models.py")
    assert any("only model in the workspace" in i.value for i in alone.info) and not charts.chart_count(alone)


def test_small_tables_show_every_row_and_charts_have_axis_titles(home, monkeypatch):
    import pandas as pd

    import ui_common

    heights = []
    monkeypatch.setattr(
        ui_common.st, "dataframe", lambda frame, **kw: heights.append((len(frame), kw["height"]))
    )
    for rows in (2, 12, 13, 40):
        ui_common.table(pd.DataFrame({"x": range(rows)}))
    assert all(h >= 35 * (rows + 1) for rows, h in heights), heights  # room for every row: no inner scroll
    monkeypatch.undo()
    monkeypatch.setenv("MOE_REWARD_HOME", str(home))
    monkeypatch.setenv("MOE_REWARD_DATA_DIR", str(home / "no-repo-data"))
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    for page in (
        "app.py",
        "pages/1_Routing_statistics.py",
        "pages/2_Expert_map.py",
        "pages/3_Expert_detail.py",
        "pages/5_Compare_models.py",
    ):
        at = app(page)
        for spec in charts.vega_specs(at):
            titles = charts.axis_titles(spec)
            assert titles.get("x") and titles.get("y"), (page, charts.title(spec), titles)
        for option in charts.echarts_options(at):
            titles = charts.axis_titles(option)
            assert titles.get("x") and titles.get("y"), (page, option["title"], titles)


def test_page_icon_is_a_local_file():
    source = (ROOT / "app.py").read_text()
    assert "page_icon=str(ui.ICON)" in source and (ROOT / "assets" / "icon.png").is_file()
    assert ":material/" not in source.split("page_icon=")[1].split(")")[0]


# ----------------------------------------------------------------------------- 5, 7, 8: the map's library parts


def test_projections_of_what_the_model_sees(tmp_path):
    from moe_reward.evaluate import projection as pj

    ws = build_tiny_workspace(tmp_path / "ws")
    feats = tiny_features()
    model = SparseMoERewardModel.from_pretrained(ws.model_path("default-sparse"))
    s = score_pairs(model, feats)
    logits = pj.embedding_matrix(feats, "router", s)
    assert logits.shape == (TINY_PAIRS, 4) and np.allclose(logits.mean(1), 0, atol=1e-5)
    anchors = pj.project(
        feats, pj.ProjectionParams("anchors", "router"), tmp_path / "p", ("m", "d"), scores=s
    ).coords
    # experts are regions: a pair lies closer to its top expert's anchor than to the others on average
    pos = pj.anchor_positions(4)
    d = np.linalg.norm(anchors[:, None, :] - pos[None], axis=-1)
    assert (d.argmin(1) == s.top_expert).mean() > 0.9
    margins = pj.project(feats, pj.ProjectionParams("pca", "margins"), tmp_path / "p", ("m", "d"), scores=s)
    assert margins.coords.shape == (TINY_PAIRS, 2) and np.isfinite(margins.coords).all()
    with pytest.raises(ValueError):
        pj.ProjectionParams("anchors", "prompt")
    with pytest.raises(ValueError):
        pj.project(
            feats, pj.ProjectionParams("pca", "router"), None
        )  # the router view needs the model's scores
    views = pj.precompute_views(feats, s, tmp_path / "pre", ("m", "d"), umap=False)
    assert len(views) == len(pj.INSTANT_VIEWS) and all(not v.cached for v in views)
    assert all(v.cached for v in pj.precompute_views(feats, s, tmp_path / "pre", ("m", "d"), umap=False))
    assert not list((tmp_path / "pre").glob("*.tmp")) and not list((tmp_path / "pre").glob(".*"))


def test_sampling_density_and_selection_over_all_points():
    from moe_reward.evaluate import projection as pj

    rng = np.random.default_rng(0)
    cats = np.array(["E0"] * 9000 + ["E1"] * 950 + ["E2"] * 50)
    draw = pj.draw_sample(cats, 1000, keep=np.array([3]))
    assert (
        len(draw) <= 1000 + 1 and 3 in draw and (cats[draw] == "E2").sum() == 50
    )  # small experts stay whole
    assert np.array_equal(pj.draw_sample(cats, 20_000), np.arange(10_000))
    xy = rng.uniform(-1, 1, size=(10_000, 2)).astype(np.float32)
    box = pj.points_in_box(xy, (0, 1), (0, 1))
    assert np.array_equal(box, np.flatnonzero((xy[:, 0] >= 0) & (xy[:, 1] >= 0)))
    square = pj.points_in_polygon(xy, [0, 1, 1, 0], [0, 0, 1, 1])
    assert abs(len(square) - len(box)) <= 2
    triangle = pj.points_in_polygon(xy, [-1, 1, -1], [-1, -1, 1])  # lower-left half
    assert np.all(xy[triangle, 0] + xy[triangle, 1] <= 1e-6) and 4500 < len(triangle) < 5500
    gx, gy, counts = pj.density_grid(xy, bins=20)
    assert counts.shape == (20, 20) and counts.sum() == 10_000 and len(gx) == 20


def test_time_estimates_learn_from_this_workspace(tmp_path):
    from moe_reward.evaluate import projection as pj

    p = pj.ProjectionParams("umap", "router")
    cold = pj.estimate_seconds(p, 5000, 12, tmp_path, warm=False)
    warm = pj.estimate_seconds(p, 5000, 12, tmp_path, warm=True)
    assert cold - warm == pytest.approx(pj.UMAP_COLD_EXTRA_SECONDS) and warm == pytest.approx(4.0)
    pj.save_cached(
        tmp_path,
        "k1",
        np.zeros((8000, 2)),
        {"params": {"method": "umap"}, "n": 8000, "dim": 12, "seconds": 20.0, "warm": True},
    )
    learned = pj.estimate_seconds(p, 8000, 12, tmp_path, warm=True)
    assert learned == pytest.approx(20.0, rel=1e-6)  # this machine's own timing, not the shipped constant
    (tmp_path / "umap-warmup-descent.json").write_text(
        json.dumps(
            {
                "params": {"method": "umap"},
                "n": 4200,
                "dim": 8,
                "warm": False,
                "seconds": 50.0,
                "warm_estimate": 5.0,
            }
        )
    )
    assert pj.estimate_seconds(p, 8000, 12, tmp_path, warm=False) == pytest.approx(
        20.0 + 45.0
    )  # its compile time
    assert pj.estimate_seconds(p, 8000, 12, tmp_path, warm=False, compiling_for=40) == pytest.approx(25.0)
    # a map under 4,096 points runs UMAP's exact-neighbour code: the large maps' compile time is not its own
    small = pj.estimate_seconds(p, 1000, 12, tmp_path, warm=False) - pj.estimate_seconds(
        p, 1000, 12, tmp_path, warm=True
    )
    assert small == pytest.approx(pj.UMAP_COLD_EXTRA_SECONDS_EXACT)
    assert pj.umap_path(4095) == "exact" and pj.umap_path(4096) == "descent"
    assert pj.estimate_seconds(pj.ProjectionParams("pca", "router"), 5000, 12) < 1


# ----------------------------------------------------------------------------- 4 and 10: score verdict, report


def test_cli_score_says_which_response_wins():
    from moe_reward.app.pipeline import ScoredResponse
    from moe_reward.cli import winner_lines

    a = ScoredResponse("a", -0.5, [1.0], [1.0], [-0.5], personalized_reward=0.3)
    b = ScoredResponse("b", 0.2, [1.0], [1.0], [0.2], personalized_reward=-0.1)
    lines = winner_lines([a, b])
    assert (
        lines[0].startswith("model (routed mix): response B wins") and "0.7000 above response A" in lines[0]
    )
    assert lines[1].startswith("profile: response A wins") and lines[1].endswith("disagrees with the model")


def test_report_is_self_contained_and_honest(home, tmp_path):
    from moe_reward.cli import main

    out = tmp_path / "r" / "report.html"
    model_dir = home / "models" / "with-diagnostics"
    assert main(["report", "--model", str(model_dir), "--out", str(out), "--no-png"]) == 0
    text = out.read_text()
    n_test = len(json.loads((model_dir / "split_ids.json").read_text())["test"])
    assert f"held-out test split</b>\n({n_test} pairs)" in text
    assert "Router probe NMI" in text and "0.910" in text and "Group × top expert" in text
    assert "&lt;span" not in text  # the contingency table's expert swatches are markup, not text
    assert "Personalization: one user" in text
    assert (
        "No user or group in this data has enough pairs outside the training split" in text
    )  # tiny: all split
    assert (
        'src="https://cdn.plot.ly' not in text and len(text) > 3_000_000
    )  # plotly.js is inline: works offline
    assert text.count(colors.expert_color(3)) >= 2  # the expert's colour in the table and the chart
    assert "<script>alert" not in text


def test_report_escapes_dataset_text_and_has_a_personalization_example(tmp_path):
    from moe_reward.app.report import build_report, personalization_example
    from moe_reward.evaluate.describe import describe_experts

    ws = build_tiny_workspace(tmp_path / "ws")
    feats = tiny_features()
    model = SparseMoERewardModel.from_pretrained(ws.model_path("default-sparse"))
    scores = score_pairs(model, feats)
    descriptions = describe_experts(model, feats, scores)
    descriptions[0].label = "<script>alert(1)</script>"
    out = build_report(
        ws.model_path("default-sparse"),
        "unused",
        tmp_path / "x.html",
        features=feats,
        pngs=False,
        descriptions=descriptions,
    )
    text = out.html.read_text()
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text
    assert "How training found these experts" in text and "<li>The router reads" in text
    ex = personalization_example(scores, feats)  # terse-tess / thorough-theo label 8 of their pairs
    assert ex["field"] == "user" and ex["n_labels"] == 8 and ex["n_eval"] == TINY_PAIRS // 2 - 8
    assert abs(sum(ex["after"]) - 1) < 1e-6 and 0 <= ex["profile_accuracy"] <= 1


def test_overview_reads_numbers_against_chance_and_says_untrained(home):
    at = app()
    caption = next(c.value for c in at.caption if c.value.startswith("Read against chance")).replace("\\", "")
    assert "accuracy: 95%" in caption and "routing NMI: chance" in caption
    assert any(m.value.startswith("**Heterogeneity:") for m in at.markdown)
    assert not any("Untrained model" in e.value for e in at.error)
    bad = app(model="untrained")
    assert any("Untrained model" in e.value for e in bad.error)
