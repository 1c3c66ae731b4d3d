"""Issue 8: every hostile input of the generated corpus (tests/support/hostile_corpus.py) gets a clear answer.

For each case the CLI runs in-process: no traceback, the right exit code, and a message that names the
file (and the line and field where there is one). Then the library-level guarantees the CLI rests on:
no row is dropped silently, sizes are bounded before allocating, writes are atomic, a broken embedding
cache shard is dropped and recomputed.
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hostile_corpus import build, count_inputs

from moe_reward.cli import main

CORPUS = Path(tempfile.mkdtemp(prefix="moe-reward-hostile-"))
CASES = build(CORPUS)


@pytest.fixture(scope="module", autouse=True)
def _remove_corpus():
    yield
    shutil.rmtree(CORPUS, ignore_errors=True)


def test_corpus_is_large_enough():
    assert count_inputs(CORPUS) >= 60 and len(CASES) >= 60


def _run(case, capsys, monkeypatch) -> tuple[int, str]:
    for target, value in case.limits.items():
        module, name = target.rsplit(".", 1)
        monkeypatch.setattr(importlib.import_module(f"moe_reward.{module}"), name, value)
    try:
        rc = main([a.replace("{dir}", str(CORPUS)) for a in case.args])
    except SystemExit as exc:  # argparse rejects a bad option value (exit code 2, one usage line)
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out + out.err


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in root.rglob("*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(case, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_REWARD_HOME", str(tmp_path / "home"))
    before = None if case.ok else _snapshot(CORPUS)
    rc, text = _run(case, capsys, monkeypatch)
    assert "Traceback" not in text and "internal error" not in text, text
    assert (rc == 0) == case.ok, f"exit code {rc}:\n{text}"
    for part in case.expect:
        assert part in text, f"{part!r} not in:\n{text}"
    if before is not None:  # a refusal changes nothing on disk
        assert _snapshot(CORPUS) == before


def _data_files() -> list[Path]:
    from moe_reward.data.pairs import validate_file  # noqa: F401 (the files the validate cases read)

    names = {Path(c.args[2]).name for c in CASES if c.args[0] == "validate"}
    return sorted(p for p in CORPUS.iterdir() if p.name in names and p.is_file())


def test_no_row_is_dropped_silently():
    """Every row of every data file is a pair or a reported error: loading with skip_bad either raises
    (naming the file) or accounts for every row."""
    from moe_reward.data.pairs import DataError, load_pairs, validate_file

    for path in _data_files():
        try:
            report = validate_file(path)
        except ValueError as exc:
            assert path.name in str(exc) and "unknown format" in str(exc)
            continue
        try:
            res = load_pairs(path, skip_bad=True)
        except DataError as exc:
            assert path.name in str(exc) and report.errors > 0
            continue
        except ValueError as exc:  # not a data file at all (unknown format)
            assert path.name in str(exc)
            continue
        row_errors = [e for e in res.errors if e.line > 0]
        if not report.helpsteer:
            assert len(res.pairs) + len(row_errors) == res.rows == report.rows, path.name
            assert len(res.pairs) == report.pairs, path.name
        assert len(res.errors) == report.errors, path.name
        assert all(path.name in str(e) for e in res.errors)


def test_without_skip_bad_every_problem_is_listed():
    from moe_reward.data.pairs import DataError, load_pairs

    with pytest.raises(DataError) as info:
        load_pairs(CORPUS / "bad_rows.jsonl")
    assert [e.line for e in info.value.errors] == list(range(2, 11))
    assert "9 of 10 rows are malformed" in str(info.value)
    with pytest.raises(DataError, match=r"empty file \(no rows\)$"):
        load_pairs(CORPUS / "empty.jsonl")


def test_validate_streams_a_large_file_in_constant_memory(tmp_path):
    """Peak Python memory of validate_file does not grow with the file's text: only the duplicate-id check
    keeps something per row (two 8-byte integers, sorted at the end), ~1/40 of a row of this file."""
    from moe_reward.data.pairs import validate_file

    row = json.dumps({"prompt": "p " * 200, "chosen": "c " * 300, "rejected": "r " * 300, "group": "g"})

    def peak(n: int) -> int:
        path = tmp_path / f"big{n}.jsonl"
        with open(path, "w") as fh:
            for i in range(n):
                fh.write(row[:-1] + f', "id": "{i}"}}\n')
        tracemalloc.start()
        rep = validate_file(path)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert rep.pairs == n and rep.errors == 0
        return top, path.stat().st_size

    (small, _), (large, size) = peak(2000), peak(8000)
    assert (large - small) / 6000 < 64 and large < size / 20, (small, large, size)


def test_absurd_sizes_fail_fast_without_allocating():
    from moe_reward.model.moe import ModelConfig
    from moe_reward.personalize.adapters import Adapter

    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="num_experts must be an integer in"):
        Adapter.from_dict({"format": "moe-reward-profile/1", "name": "hedge", "num_experts": 50_000_000})
    for bad in ({"num_experts": 10**9}, {"hidden_dim": 1_000_000}, {"input_dim": 10**7}):
        with pytest.raises(ValueError, match="must be <="):
            ModelConfig(**bad)
    with pytest.raises(ValueError, match="lexical_vocabulary must have <= 4096 terms"):
        ModelConfig(num_experts=4096, router_input="lexical", lexical_vocabulary=["w"] * 100_000)
    with pytest.raises(ValueError, match="more than the limit"):  # the router over the largest vocabulary
        ModelConfig(
            num_experts=4096,
            input_dim=65536,
            router_input="lexical",
            lexical_vocabulary=[f"w{i}" for i in range(4096)],
        )
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert top < 5_000_000 and time.perf_counter() - t0 < 2


def test_broken_model_directories_raise_checkpoint_errors():
    from moe_reward.model.modeldir import read_metrics
    from moe_reward.model.moe import CheckpointError, SparseMoERewardModel

    broken = [
        p
        for p in (CORPUS / "models").iterdir()
        if p.name not in ("ok", "single")
        and p.is_dir()
        and not p.name.startswith("split_")
        and p.name != "metrics_truncated"
    ]
    assert len(broken) >= 35
    for path in broken:
        with pytest.raises(CheckpointError) as info:
            SparseMoERewardModel.from_pretrained(path)
        assert path.name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="metrics_truncated/metrics.json: bad JSON"):
        read_metrics(CORPUS / "models" / "metrics_truncated")
    model = SparseMoERewardModel.from_pretrained(CORPUS / "models" / "ok")
    assert model.num_experts == 3


def test_atomic_writes_leave_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    from moe_reward.core import atomic
    from moe_reward.data.pairs import PreferencePair, save_jsonl

    path = tmp_path / "pairs.jsonl"
    save_jsonl([PreferencePair("q", "a", "b", id="1")], path)
    before = path.read_bytes()

    class Full(OSError):
        pass

    def pairs():
        yield PreferencePair("q2", "a", "b", id="2")
        raise Full(28, "No space left on device")

    with pytest.raises(Full):
        save_jsonl(pairs(), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]
    # A model save that fails half-way keeps the previous, loadable model.
    from hostile_corpus import _model

    from moe_reward.model.moe import SparseMoERewardModel

    _model().save_pretrained(tmp_path / "m", {"ok": 1})
    real = atomic.write_text

    def failing(p, text, encoding="utf-8"):
        if Path(p).name == "metrics.json":
            with atomic.open_atomic(p) as fh:
                fh.write(text[:10])
                raise Full(28, "No space left on device")
        return real(p, text, encoding)

    monkeypatch.setattr(atomic, "write_text", failing)
    with pytest.raises(Full):
        _model().save_pretrained(tmp_path / "m", {"ok": 2, "more": "x" * 100})
    assert json.loads((tmp_path / "m" / "metrics.json").read_text()) == {"ok": 1}
    SparseMoERewardModel.from_pretrained(tmp_path / "m")
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")]


def test_broken_cache_shard_is_dropped_with_a_warning_and_recomputed(tmp_path):
    from moe_reward.embed.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path, "key")
    good = np.ones((2, 4), np.float32)
    cache.put(["h1", "h2"], good)
    cache.put(["h3"], np.full((1, 4), 2, np.float32))
    shards = sorted((tmp_path / "key").glob("*.safetensors"))
    assert len(shards) == 2
    shards[1].write_bytes(shards[1].read_bytes()[:-7])  # truncated, e.g. by a full disk before this fix
    with pytest.warns(UserWarning, match="dropped broken shard"):
        got = EmbeddingCache(tmp_path, "key").get(["h1", "h2", "h3"])
    assert set(got) == {"h1", "h2"} and np.array_equal(got["h1"], good[0])
    assert not shards[1].exists() and not shards[1].with_suffix(".json").exists()
    again = EmbeddingCache(tmp_path, "key")  # h3 is embedded again and cached; no more warnings
    again.put(["h3"], np.full((1, 4), 3, np.float32))
    assert set(EmbeddingCache(tmp_path, "key").get(["h1", "h2", "h3"])) == {"h1", "h2", "h3"}


def test_long_texts_are_cut_before_tokenization():
    """A 20 MB text never reaches the tokenizer whole, and the kept tokens are those of the whole text."""
    from moe_reward.embed.backbone import Backbone, BackboneSpec

    bb = Backbone(BackboneSpec(runtime="torch"))  # (tokenization only: any runtime)
    tok = bb.tokenizer
    seen: list[int] = []
    encode = tok.encode
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "internationalization", "x", "the", "fox,", "jumps.", "über", "日本語"])

    def text(n: int) -> str:
        return " ".join(rng.choice(words, n))

    def reference(prompt: str, response: str | None) -> list[int]:  # the whole texts through the tokenizer
        budget = bb.max_length - bb.n_special
        p = encode(prompt, add_special_tokens=False)
        if response is None:
            return bb._with_specials(p[-budget:] if len(p) > budget else p)
        r = encode(response, add_special_tokens=False)
        budget -= len(bb.separator)
        if len(p) + len(r) > budget:
            r = r[:budget]
            p = p[len(p) - (budget - len(r)) :] if budget > len(r) else []
        return bb._with_specials(p, r)

    for n_p, n_r in ((5, 5), (3000, 3), (3, 3000), (3000, 3000), (100, 150), (3000, None)):
        p, r = text(n_p), None if n_r is None else text(n_r)
        assert bb.token_ids(p, r) == reference(p, r), (n_p, n_r)
    tok.encode = lambda s, **kw: seen.append(len(s)) or encode(s, **kw)
    try:
        huge = "word " * 4_000_000  # 20 MB
        t0 = time.perf_counter()
        assert len(bb.token_ids("Tell me.", huge)) == bb.max_length
        assert len(bb.token_ids(huge, "Fine.")) == bb.max_length
        bb.token_ids("Tell me.", "a" * 20_000_000)  # one 20 MB "word": cut at the limit, not tokenized whole
        assert max(seen) <= bb.max_length * 4096 and time.perf_counter() - t0 < 10
    finally:
        del tok.encode


def test_the_installed_entry_point_prints_one_line_not_a_traceback(tmp_path):
    """The same through a real process (`python -m moe_reward.cli`), as a user runs it."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    bad = tmp_path / "x.jsonl"
    bad.mkdir()
    for args, rc, message in (
        (["validate", "--data", str(CORPUS / "bad_rows.jsonl")], 1, "bad_rows.jsonl:3: rejected: missing"),
        (["validate", "--data", str(bad)], 2, "x.jsonl: is a directory"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "moe_reward.cli", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (
            out.returncode == rc and message in out.stdout + out.stderr and "Traceback" not in out.stderr
        ), out


def test_select_writes_a_csv_that_is_safe_in_a_spreadsheet(tmp_path, monkeypatch, capsys):
    """Issue 20 item 8: `select --out sel.csv` wrote cells like =cmd|' /C calc'!A0 unchanged."""
    import csv

    from hostile_corpus import _features

    from moe_reward.core.csvsafe import FORMULA_START

    monkeypatch.setenv("MOE_REWARD_HOME", str(tmp_path / "home"))
    feats = _features()
    evil = ["=cmd|' /C calc'!A0", "+1+1", "-2-2", "@SUM(A1:A9)", "\t=1", "\r=1"]
    for i, p in enumerate(feats.pairs):
        p.prompt, p.chosen, p.group = (
            evil[i % len(evil)],
            evil[(i + 1) % len(evil)],
            evil[(i + 2) % len(evil)],
        )
        p.id = evil[(i + 3) % len(evil)] + str(i)
    feats.save(tmp_path / "evil.safetensors")
    out = tmp_path / "sel.csv"
    rc = main(
        [
            "select",
            "--model",
            str(CORPUS / "models" / "ok"),
            "--data",
            str(tmp_path / "evil.safetensors"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr()
    rows = list(csv.reader(out.open(newline="")))
    assert len(rows) == 25
    cells = [cell for row in rows for cell in row]

    def number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    assert not [c for c in cells if c.startswith(FORMULA_START) and not number(c)]
    assert "'=cmd|' /C calc'!A0" in cells  # shown as the text it was, behind the spreadsheets' text mark
    header = rows[0]
    margins = [float(r[header.index("margin")]) for r in rows[1:]]
    assert any(m < 0 for m in margins)  # numbers stay numbers, negative ones included
