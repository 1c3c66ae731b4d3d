import json

import pandas as pd
import pytest

from moe_reward.data.pairs import DataError, PreferencePair, load_pairs, pair_key, prompt_key, split_pairs


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "group": "math", "user": "ann", "id": "a"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon", "group": "geo"},
]


def test_jsonl_plain_fields_and_extras(tmp_path):
    rows = [dict(ROWS[0], source="web"), ROWS[1]]
    path = write(tmp_path, "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    res = load_pairs(path)
    assert [p.chosen for p in res.pairs] == ["4", "Paris"]
    first = res.pairs[0]
    assert (first.group, first.user, first.id, first.meta) == ("math", "ann", "a", {"source": "web"})
    assert res.pairs[1].id == "p-2" and res.pairs[1].user is None


def test_csv_and_parquet(tmp_path):
    pd.DataFrame(ROWS).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "p.parquet")
    for name in ("p.csv", "p.parquet"):
        res = load_pairs(tmp_path / name)
        assert [(p.prompt, p.chosen, p.rejected, p.group) for p in res.pairs] == [
            (r["prompt"], r["chosen"], r["rejected"], r["group"]) for r in ROWS
        ]


def test_trl_conversational(tmp_path):
    row = {
        "prompt": [{"role": "user", "content": "Hi, name a colour."}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    implicit = {  # TRL's implicit-prompt form: the shared history sits inside chosen/rejected
        "chosen": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Go away."}],
    }
    path = write(tmp_path, "t.jsonl", json.dumps(row) + "\n" + json.dumps(implicit) + "\n")
    a, b = load_pairs(path).pairs
    assert (a.prompt, a.chosen, a.rejected) == ("Hi, name a colour.", "Blue.", "No.")
    assert (b.prompt, b.chosen, b.rejected) == ("Say hi", "Hi!", "Go away.")
    pd.DataFrame([row]).to_parquet(tmp_path / "t.parquet")
    (c,) = load_pairs(tmp_path / "t.parquet").pairs
    assert (c.prompt, c.chosen) == ("Hi, name a colour.", "Blue.")


def test_hh_rlhf_dialogues(tmp_path):
    ctx = "\n\nHuman: How do I bake bread?\n\nAssistant: Which kind?\n\nHuman: Sourdough.\n\nAssistant:"
    row = {
        "chosen": ctx + " Feed a starter, mix, proof overnight, bake hot.",
        "rejected": ctx + " I don't know.",
    }
    (p,) = load_pairs(write(tmp_path, "hh.jsonl", json.dumps(row) + "\n")).pairs
    assert p.prompt == ctx.strip() and p.prompt.endswith("Assistant:")
    assert p.chosen == "Feed a starter, mix, proof overnight, bake hot." and p.rejected == "I don't know."


def test_helpsteer_rows_become_per_attribute_pairs(tmp_path):
    rows = [
        {
            "prompt": "Explain tides.",
            "response": "The Moon's gravity pulls the oceans.",
            "helpfulness": 4,
            "verbosity": 1,
        },
        {"prompt": "Explain tides.", "response": "Water.", "helpfulness": 1, "verbosity": 1},
        {
            "prompt": "Explain tides.",
            "response": "Tides are caused by the Moon and the Sun, and...",
            "helpfulness": 4,
            "verbosity": 3,
        },
    ]
    pairs = load_pairs(write(tmp_path, "hs.jsonl", "\n".join(json.dumps(r) for r in rows))).pairs
    by_group = {}
    for p in pairs:
        by_group.setdefault(p.group, []).append((p.chosen, p.rejected))
    assert set(by_group) == {"helpfulness", "verbosity"}
    assert ("The Moon's gravity pulls the oceans.", "Water.") in by_group["helpfulness"]
    assert all(len(c) > 10 for c, _ in by_group["verbosity"])  # the verbose answer wins on verbosity
    assert len(by_group["helpfulness"]) == 2 and len(by_group["verbosity"]) == 2


BAD_LINES = [
    (json.dumps(ROWS[0]), None),
    ('{"prompt": "x", "chosen": "a", ', "bad JSON"),
    (json.dumps({"prompt": "x", "chosen": "a"}), "rejected: missing"),
    (json.dumps({"prompt": "x", "chosen": "  ", "rejected": "b"}), "chosen: empty"),
    (json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"}), "identical"),
    (json.dumps({"prompt": 3, "chosen": "a", "rejected": "b"}), "prompt: expected text, got int"),
    (json.dumps({"prompt": "x", "chosen": "a", "rejected": "b", "group": ["g"]}), "group: expected text"),
]


def test_every_kind_of_bad_row_is_reported_with_file_line_and_reason(tmp_path):
    body = (
        b"\n".join(line.encode() for line, _ in BAD_LINES)
        + b"\n"
        + b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n'
    )
    path = write(tmp_path, "bad.jsonl", body, mode="wb")
    with pytest.raises(DataError) as info:
        load_pairs(path)
    errors = info.value.errors
    assert [e.line for e in errors] == [2, 3, 4, 5, 6, 7, 8]
    for err, (_, reason) in zip(errors, BAD_LINES[1:], strict=False):
        assert reason in str(err) and err.file == str(path)
    assert "UTF-8" in str(errors[-1])
    assert "bad.jsonl:3: rejected: missing" in str(info.value)


def test_skip_bad_keeps_good_rows_and_counts_the_rest(tmp_path):
    path = write(tmp_path, "bad.jsonl", "\n".join(line for line, _ in BAD_LINES) + "\n")
    res = load_pairs(path, skip_bad=True)
    assert len(res.pairs) == 1 and res.skipped == len(BAD_LINES) - 1


def test_csv_bad_rows_and_non_utf8(tmp_path):
    body = "prompt,chosen,rejected\nq,a,b\nq2,,b\nq3,\xff,b\nq4,a,b\n".encode("latin-1")
    with pytest.raises(DataError) as info:
        load_pairs(write(tmp_path, "b.csv", body, mode="wb"))
    lines = {e.line: str(e) for e in info.value.errors}
    assert "chosen: missing" in lines[3] and "UTF-8" in lines[4] and set(lines) == {3, 4}
    assert len(load_pairs(tmp_path / "b.csv", skip_bad=True).pairs) == 2


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="unknown format"):
        load_pairs(write(tmp_path, "x.txt", "hi"))


def test_duplicate_ids_are_reported_not_renamed(tmp_path):
    rows = [dict(ROWS[0]), dict(ROWS[1], id="a")]
    path = write(tmp_path, "d.jsonl", "\n".join(map(json.dumps, rows)))
    with pytest.raises(DataError, match=r"d.jsonl:2: id: duplicate id 'a' \(first on line 1\)"):
        load_pairs(path)
    res = load_pairs(path, skip_bad=True)  # the first row of an id is kept
    assert [p.chosen for p in res.pairs] == ["4"] and res.skipped == 1


def test_split_is_deterministic_and_keeps_prompts_together():
    pairs = [PreferencePair(f"prompt {i % 37}", f"c{i}", f"r{i}") for i in range(400)]
    a, b = split_pairs(pairs, 0.1, 0.2, seed=3), split_pairs(pairs, 0.1, 0.2, seed=3)
    assert a == b and sorted(a.train + a.validation + a.test) == list(range(400))
    side = {}
    for name in ("train", "validation", "test"):
        for i in getattr(a, name):
            assert side.setdefault(prompt_key(pairs[i].prompt), name) == name
    assert a.test and a.validation and split_pairs(pairs, 0.1, 0.2, seed=4) != a


def test_pair_key_ignores_order():
    p = PreferencePair("q", "a", "b")
    assert pair_key(p) == pair_key(PreferencePair("q ", "b", "a")) != pair_key(PreferencePair("q", "a", "c"))


@pytest.mark.parametrize("by", ["meta.question_id", "group", "user"])
def test_split_by_a_field_keeps_every_value_on_one_side(by):
    pairs = [
        PreferencePair(
            f"{cue} question {q} take {t}",
            f"a{q}{t}{cue}",
            f"b{q}{t}{cue}",
            group=cue,
            user=f"u{(q + t) % 5}",
            id=f"{q}-{t}-{cue}",
            meta={"question_id": f"q{q}"},
        )
        for q in range(20)
        for t in range(3)
        for cue in ("short", "long", "formal", "casual", "steps", "prose")
    ]
    splits = split_pairs(pairs, 0.2, 0.2, seed=1, by=by)
    assert sorted(splits.train + splits.validation + splits.test) == list(range(len(pairs)))

    def value(p):
        return p.meta["question_id"] if by.startswith("meta.") else getattr(p, by)

    sides = [{value(pairs[i]) for i in getattr(splits, name)} for name in ("train", "validation", "test")]
    assert (
        all(sides) and not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    )
    assert split_pairs(pairs, 0.2, 0.2, seed=1, by=by) == splits  # deterministic
    if by == "meta.question_id":  # prompts differ within a question, so a prompt split would mix questions
        by_prompt = split_pairs(pairs, 0.2, 0.2, seed=1)
        train_q = {value(pairs[i]) for i in by_prompt.train}
        assert train_q & {value(pairs[i]) for i in by_prompt.test}


def test_split_by_rejects_unknown_or_absent_fields():
    pairs = [PreferencePair(f"p{i}", "a", "b", id=str(i)) for i in range(6)]
    with pytest.raises(ValueError, match="split field"):
        split_pairs(pairs, by="question")
    with pytest.raises(ValueError, match="no pair has a value"):
        split_pairs(pairs, by="meta.question_id")
