"""Tests for the embedded controlled preference dataset and its text features."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from moe_reward.data import controlled as C
from moe_reward.data import controlled_content as CC
from moe_reward.data import text_features as TF
from moe_reward.data.controlled_content import QUESTIONS

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "controlled" / "pairs.jsonl.gz"

RECORD_KEYS = ["id", "prompt", "chosen", "rejected", "group", "user", "meta"]
META_KEYS = [
    "topic",
    "question_id",
    "criterion",
    "pole",
    "cue",
    "reversal_of",
    "chosen_attrs",
    "rejected_attrs",
    "noisy",
    "utility",
]


@pytest.fixture(scope="module")
def records():
    return C.generate()


@pytest.fixture(scope="module")
def general(records):
    return [r for r in records if r["user"] is None]


@pytest.fixture(scope="module")
def persona(records):
    return [r for r in records if r["user"] is not None]


@pytest.fixture(scope="module")
def features(records):
    """text_features.measure for every unique response text (measured once)."""
    texts = {t for r in records for t in (r["chosen"], r["rejected"])}
    return {t: TF.measure(t) for t in texts}


@pytest.fixture(scope="module")
def scores(features):
    return {t: TF.pole_scores_from(f) for t, f in features.items()}


# ------------------------------------------------------------ determinism
def test_generate_is_deterministic(records):
    assert C.dumps(C.generate()) == C.dumps(records)


def test_committed_file_matches_generator(records, tmp_path):
    assert DATA.exists(), "run: python -m moe_reward.data.controlled --out data/controlled/pairs.jsonl.gz"
    assert C.read_text_bytes(DATA) == C.dumps(records).encode("utf-8")
    assert DATA.read_bytes() == C.write(tmp_path / "regen.jsonl.gz", records).read_bytes()


def test_check_flag(tmp_path, capsys):
    assert C.main(["--check", str(DATA)]) == 0
    bad = tmp_path / "pairs.jsonl"
    bad.write_bytes(C.read_text_bytes(DATA).replace(b"ctl-000001", b"ctl-999999", 1))
    assert C.main(["--check", str(bad)]) == 1
    assert C.main(["--check", str(tmp_path / "missing.jsonl")]) == 1
    capsys.readouterr()


def test_write_roundtrip(tmp_path, records):
    path = C.write(tmp_path / "sub" / "out.jsonl", records[:50])
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    assert C.load(path) == records[:50]
    first = raw.split(b"\n")[0].decode("utf-8")
    assert first == json.dumps(records[0], ensure_ascii=False)


def test_seed_changes_output(records):
    other = C.generate(seed=1)
    assert C.dumps(other[:200]) != C.dumps(records[:200])
    assert C.stats(other)["questions"] == C.stats(records)["questions"]


# ------------------------------------------------------------ the content file
def test_content_is_package_data():
    """The content is a data file next to its loader, shipped with the package (pyproject's package-data)."""
    assert CC.CONTENT_FILE.parent == Path(C.__file__).parent and CC.CONTENT_FILE.suffix == ".json"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # (tomllib: Python 3.11+ only)
    assert '"moe_reward.data" = ["controlled_content.json"]' in pyproject
    questions, keep_case = CC.load_content()
    assert questions == QUESTIONS and keep_case == CC.KEEP_CASE and "Python" in keep_case
    assert all(isinstance(q["q"], tuple) and all(isinstance(s, tuple) for s in q["steps"]) for q in questions)


def _content(tmp_path, edit) -> Path:
    doc = json.loads(CC.CONTENT_FILE.read_text(encoding="utf-8"))
    edit(doc)
    path = tmp_path / "content.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "edit, expect",
    [
        (
            lambda d: d["questions"][3].pop("caveat"),
            r"questions\[3\] \(cooking-04\): missing fields \['caveat'\]",
        ),
        (
            lambda d: d["questions"][0].update(hint="x"),
            r"questions\[0\] \(cooking-01\): .*unknown fields \['hint'\]",
        ),
        (lambda d: d["questions"][1]["steps"].pop(), r"questions\[1\] \(cooking-02\): steps: expected 4"),
        (lambda d: d["questions"][2].update(q=["only one"]), r"questions\[2\] \(cooking-03\): q: expected 2"),
        (
            lambda d: d["questions"][0].update(short=""),
            r"questions\[0\] \(cooking-01\): short: expected non-empty",
        ),
        (lambda d: d["questions"][0].update(example=[]), r"questions\[0\] \(cooking-01\): example:"),
        (
            lambda d: d["questions"][1].update(id="cooking-01"),
            r"questions\[1\]: id 'cooking-01' is used twice",
        ),
        (lambda d: d.update(format="other"), "not a controlled-content file"),
        (lambda d: d.update(keep_case="Python"), "keep_case: expected a list"),
    ],
)
def test_broken_content_file_names_question_and_field(tmp_path, edit, expect):
    path = _content(tmp_path, edit)
    with pytest.raises(ValueError, match=expect) as info:
        CC.load_content(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_content_file(tmp_path):
    bad = tmp_path / "content.json"
    bad.write_text('{"format": ', encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read the controlled content"):
        CC.load_content(bad)


# --------------------------------------------------------------- coverage
def test_coverage_topics_questions_axes():
    topics = Counter(q["topic"] for q in QUESTIONS)
    assert len(topics) >= 8
    assert len(QUESTIONS) >= 60
    assert len({q["id"] for q in QUESTIONS}) == len(QUESTIONS)
    assert len(C.AXES) >= 6
    assert len(C.POLES) == 12 and len(set(C.POLES)) == 12
    assert set(C.CUES) == set(C.POLES)
    for pole, phrases in C.CUES.items():
        assert len(set(phrases)) >= 5, pole
    for q in QUESTIONS:
        assert len(q["q"]) >= 2 and all(p.strip() for p in q["q"])
        assert len(q["steps"]) >= 3


def test_schema_and_ids(records):
    assert 3000 <= sum(r["user"] is None for r in records) <= 4500
    for i, r in enumerate(records):
        assert list(r) == RECORD_KEYS
        assert list(r["meta"]) == META_KEYS
        assert r["id"] == f"ctl-{i:06d}"
        for key in ("chosen_attrs", "rejected_attrs"):
            assert list(r["meta"][key]) == list(C.AXES)
            assert all(r["meta"][key][a] in C.AXES[a] for a in C.AXES)


def test_no_pair_is_degenerate(records):
    for r in records:
        assert r["chosen"] != r["rejected"]
        assert r["meta"]["chosen_attrs"] != r["meta"]["rejected_attrs"]
    # No exact duplicate for the same user (two personas may share a pair).
    keys = [(r["user"], r["prompt"], r["chosen"], r["rejected"]) for r in records]
    assert len(keys) == len(set(keys))


def test_sizes_fit_the_embedding_budget(records, features):
    st = C.stats(records)
    assert st["unique_texts"] < 10_000
    assert st["unique_prompt_response"] < 10_000
    for r in records:
        assert len(r["prompt"].split()) <= 40
    for f in features.values():
        assert f["word_count"] <= 180


# ---------------------------------------------------------- general pairs
def test_general_pairs_follow_cued_criterion(general, scores):
    for r in general:
        axis, pole = r["meta"]["criterion"], r["meta"]["pole"]
        assert C.POLE_AXIS[pole] == axis and r["group"] == pole
        assert r["meta"]["chosen_attrs"][axis] == pole
        assert r["meta"]["rejected_attrs"][axis] == C.OPPOSITE[pole]
        sign = 1.0 if pole == C.AXES[axis][0] else -1.0
        margin = sign * (scores[r["chosen"]][axis] - scores[r["rejected"]][axis])
        assert margin > 0, (r["id"], axis, pole)


def test_every_response_is_classified_as_its_attributes(records, scores):
    """Stronger than pairwise: the sign of each pole score recovers every attribute."""
    seen = {}
    for r in records:
        for text, attrs in (
            (r["chosen"], r["meta"]["chosen_attrs"]),
            (r["rejected"], r["meta"]["rejected_attrs"]),
        ):
            if text in seen:
                assert seen[text] == attrs
                continue
            seen[text] = attrs
            for axis, (first, second) in C.AXES.items():
                predicted = first if scores[text][axis] > 0 else second
                assert predicted == attrs[axis], (r["id"], axis, text)


def test_all_attribute_combinations_are_measurable():
    combos = [dict(zip(C.AXES, c, strict=True)) for c in itertools.product(*C.AXES.values())]
    for q in QUESTIONS[::7]:
        for attrs in combos:
            assert TF.classify(C.render(q, attrs)) == attrs, (q["id"], attrs)


def test_prompts_carry_their_cue(general):
    for r in general:
        cue = r["meta"]["cue"]
        assert cue in C.CUES[r["meta"]["pole"]]
        assert cue in r["prompt"]
        question = r["prompt"].replace(cue, "").strip()
        phrasings = {p.lower() for p in _question(r)["q"]}
        assert question.lower() in phrasings, r["prompt"]


def test_other_axes_are_independent_of_the_label(general):
    """Non-cued axes: chosen has each pole ~half the time, equal to rejected ~half."""
    by_group = defaultdict(list)
    for r in general:
        by_group[r["group"]].append(r)
    for group, rows in by_group.items():
        for axis, (first, _) in C.AXES.items():
            if axis == C.POLE_AXIS[group]:
                continue
            frac_first = sum(r["meta"]["chosen_attrs"][axis] == first for r in rows) / len(rows)
            frac_equal = sum(
                r["meta"]["chosen_attrs"][axis] == r["meta"]["rejected_attrs"][axis] for r in rows
            ) / len(rows)
            assert 0.35 <= frac_first <= 0.65, (group, axis, frac_first)
            assert 0.35 <= frac_equal <= 0.65, (group, axis, frac_equal)


def test_groups_are_balanced(general):
    counts = Counter(r["group"] for r in general)
    assert set(counts) == set(C.POLES)
    assert min(counts.values()) >= 200
    assert max(counts.values()) <= 1.3 * min(counts.values())


def test_reversal_pairs(records, general):
    by_id = {r["id"]: r for r in records}
    linked = [r for r in general if r["meta"]["reversal_of"]]
    assert len(linked) >= 0.4 * len(general)
    for r in linked:
        m = by_id[r["meta"]["reversal_of"]]
        assert m["meta"]["reversal_of"] == r["id"]
        assert (m["chosen"], m["rejected"]) == (r["rejected"], r["chosen"])
        assert m["meta"]["question_id"] == r["meta"]["question_id"]
        assert m["meta"]["criterion"] == r["meta"]["criterion"]
        assert m["meta"]["pole"] == C.OPPOSITE[r["meta"]["pole"]]
        assert m["meta"]["cue"] in C.CUES[m["meta"]["pole"]]
        assert m["meta"]["chosen_attrs"] == r["meta"]["rejected_attrs"]
        assert m["user"] is None and r["user"] is None


# ---------------------------------------------------------- persona pairs
def test_personas_defined():
    assert len(C.PERSONAS) >= 8
    for name, weights in C.PERSONAS.items():
        assert set(weights) <= set(C.POLES), name
        assert any(w > 0 for w in weights.values())


def test_persona_pairs(persona):
    counts = Counter(r["user"] for r in persona)
    assert set(counts) == set(C.PERSONAS)
    assert min(counts.values()) >= 96
    all_cues = [c for phrases in C.CUES.values() for c in phrases]
    for r in persona:
        m = r["meta"]
        assert r["group"] == "persona"
        assert m["criterion"] is None and m["pole"] is None and m["cue"] is None
        assert m["reversal_of"] is None and m["noisy"] is False
        assert r["prompt"] in _question(r)["q"]
        assert not any(c.lower() in r["prompt"].lower() for c in all_cues)
        uc = C.persona_utility(r["user"], m["chosen_attrs"])
        ur = C.persona_utility(r["user"], m["rejected_attrs"])
        assert uc > ur, r["id"]
        assert m["utility"] == {"chosen": uc, "rejected": ur}
        assert sum(m["chosen_attrs"][a] != m["rejected_attrs"][a] for a in C.AXES) >= 2


def test_persona_utility_example():
    attrs = {
        "length": "concise",
        "format": "steps",
        "register": "formal",
        "warmth": "neutral",
        "caution": "direct",
        "example": "abstract",
    }
    assert C.persona_utility("busy_executive", attrs) == 4.5
    with pytest.raises(KeyError):
        C.persona_utility("nobody", attrs)


def test_label_noise(records):
    noisy = C.generate(noise=0.25)
    assert len(noisy) == len(records)
    flipped = 0
    for a, b in zip(records, noisy, strict=True):
        if a["user"] is None:
            assert a == b
            continue
        if b["meta"]["noisy"]:
            flipped += 1
            assert (b["chosen"], b["rejected"]) == (a["rejected"], a["chosen"])
            assert b["meta"]["utility"]["chosen"] < b["meta"]["utility"]["rejected"]
        else:
            assert a == b
    n = sum(r["user"] is not None for r in records)
    assert 0.18 <= flipped / n <= 0.32
    with pytest.raises(ValueError):
        C.generate(noise=1.5)


# ------------------------------------------------------------- content lint


def _pieces(q):
    yield "short", q["short"]
    yield "detail", q["detail"]
    for head, why in q["steps"]:
        yield "step", head
        yield "step", why
    yield "caveat", q["caveat"]
    for s in q["example"]:
        yield "example", s


def test_content_is_register_neutral_and_markers_are_confined():
    for q in QUESTIONS:
        for kind, text in _pieces(q):
            f = TF.measure(text)
            where = (q["id"], kind, text)
            for feat in (
                "contractions",
                "exclamations",
                "casual_markers",
                "formal_markers",
                "warmth_markers",
                "numbered_steps",
            ):
                assert f[feat] == 0, (feat,) + where
            assert (f["caveat_markers"] > 0) == (kind == "caveat"), where
            assert f["example_markers"] == 0, where
            assert "```" not in text, where
        for text in (q["short"], q["detail"]):
            assert TF.measure(text)["question_back"] == 0


def test_short_answers_are_one_or_two_sentences():
    for q in QUESTIONS:
        assert 1 <= TF.measure(q["short"])["sentences"] <= 2, q["id"]
        assert len(q["short"].split()) <= 30, q["id"]


def test_programming_examples_are_code():
    for q in QUESTIONS:
        if q["topic"] == "programming":
            assert q.get("code", "").startswith("```") and q["code"].endswith("```")
        else:
            assert not q.get("code")


def test_casualize_and_lc_first():
    assert C.casualize("It is fine. Do not run `it is` code.") == "It's fine. Don't run `it is` code."
    assert C.casualize("That is, the end.") == "That is, the end."
    assert C.lc_first("The oven") == "the oven"
    assert C.lc_first("DNA is") == "DNA is"
    assert C.lc_first("London is") == "London is"
    assert C.lc_first("$1,000 at") == "$1,000 at"


# ---------------------------------------------------------- text features
def test_measure_returns_documented_features():
    f = TF.measure("Hello")
    for name in (
        "word_count",
        "numbered_steps",
        "contractions",
        "exclamations",
        "casual_markers",
        "formal_markers",
        "warmth_markers",
        "caveat_markers",
        "has_code",
        "example_markers",
        "question_back",
        "hedging",
        "politeness",
        "refusal",
    ):
        assert name in f and isinstance(f[name], float)
    assert tuple(f) == TF.FEATURE_NAMES


def test_features_on_generic_assistant_text():
    refusal = "I'm sorry, but I can't help with that request. As an AI, I must decline."
    f = TF.measure(refusal)
    assert f["refusal"] >= 2 and f["contractions"] >= 2
    chatty = "Hey! That's a pretty cool idea, you'll love it! Want me to show more?"
    f = TF.measure(chatty)
    assert f["question_back"] == 1 and f["exclamations"] == 2 and f["casual_markers"] >= 2
    assert TF.pole_score(chatty, "register") < 0
    formal = "Certainly. Please note that the results may vary; therefore, consult a specialist."
    f = TF.measure(formal)
    assert f["formal_markers"] >= 3 and f["caveat_markers"] >= 2 and f["hedging"] >= 1
    assert TF.pole_score(formal, "register") > 0 and TF.pole_score(formal, "caution") > 0
    listy = "Do this:\n1. First.\n2. Second.\n3) Third."
    assert TF.measure(listy)["numbered_steps"] == 3 and TF.pole_score(listy, "format") > 0
    code = "Use this:\n```js\nif (a !== b) { x = 'it's'; }\n```"
    f = TF.measure(code)
    assert f["has_code"] == 1 and f["code_lines"] == 1
    assert f["exclamations"] == 0 and f["contractions"] == 0
    assert TF.pole_score(code, "example") > 0
    warm = "Great question! Don't worry, you've got this."
    assert TF.measure(warm)["warmth_markers"] == 3 and TF.pole_score(warm, "warmth") > 0
    assert TF.pole_score("Short answer.", "length") > 0
    assert TF.pole_score("word " * 200, "length") < 0
    assert TF.measure("Thanks, please try again.")["politeness"] == 2
    assert TF.measure("For example, e.g. this.")["example_markers"] == 2
    with pytest.raises(KeyError):
        TF.pole_score("x", "nonsense")


# ----------------------------------------------------------------- helpers
_Q = {q["id"]: q for q in QUESTIONS}


def _question(record):
    return _Q[record["meta"]["question_id"]]


def test_dataset_card_counts_are_current(records):
    card = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    st = C.stats(records)
    for key in (
        "total_pairs",
        "general_pairs",
        "persona_pairs",
        "reversal_pairs",
        "general_pairs_in_reversals",
        "unique_prompts",
        "unique_responses",
        "unique_texts",
        "unique_prompt_response",
    ):
        assert f"{st[key]:,}" in card, key
    for pole, n in st["per_group"].items():
        assert f"{pole} {n}" in card, pole
    for name, weights in C.PERSONAS.items():
        assert f"`{name}`" in card
        assert ", ".join(f"{p} {w}" for p, w in weights.items()) in card, name
