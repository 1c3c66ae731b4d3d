"""A corpus of hostile inputs: data files, model directories and profiles, each with the command that
reads it and what a correct answer looks like (issue 8).

Generated, never committed: ``python tests/support/hostile_corpus.py OUT_DIR`` writes it (and lists the cases);
`tests/integration/test_hostile.py` generates it into a temporary directory and runs every case through the CLI.

Each `Case` says: the command-line arguments (``{dir}`` is the corpus directory), whether it must
succeed (rc 0) or fail (rc != 0), and substrings the output must contain (the file's name, the line
and the field where there is one, the reason).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GOOD = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "group": "math", "id": "a"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon", "group": "geo", "id": "b"},
    {"prompt": "Colour of the sky?", "chosen": "Blue", "rejected": "Green", "group": "geo", "id": "c"},
]


@dataclass
class Case:
    name: str
    args: list[str]  # CLI arguments; "{dir}" is replaced by the corpus directory
    ok: bool  # must exit 0 (True) or != 0 (False)
    expect: list[str] = field(default_factory=list)  # substrings of stdout + stderr
    limits: dict[str, int] = field(
        default_factory=dict
    )  # module constants lowered for this case ("module.NAME")
    needs_backbone: bool = False  # embeds text with the real MiniLM (slower)


def _many(n: int) -> list[dict]:
    return [
        {
            "prompt": f"Question {i}?",
            "chosen": f"A good answer to {i}.",
            "rejected": f"No idea about {i}.",
            "id": f"m{i}",
        }
        for i in range(n)
    ]


def _jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def _write(root: Path, name: str, content: str | bytes) -> str:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return name


def _validate(name: str, ok: bool, *expect: str, **kw) -> Case:
    return Case(f"validate {name}", ["validate", "--data", "{dir}/" + name], ok, [name, *expect], **kw)


# ----------------------------------------------------------------------------- data files


def data_cases(root: Path) -> list[Case]:
    w = lambda name, content: _write(root, name, content)  # noqa: E731
    good = _jsonl(GOOD)
    hh_ctx = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bake bread?\n\nAssistant:"
    trl_user = [{"role": "user", "content": "Say hi"}]
    deep = "[" * 100_000 + "]" * 100_000
    cases = [
        # valid or near-valid files
        _validate(w("ok_bom.jsonl", "\ufeff" + good), True, "3 rows, 3 valid pairs"),
        _validate(w("ok_crlf.jsonl", good.replace("\n", "\r\n")), True, "3 valid pairs"),
        _validate(w("ok.json", json.dumps(GOOD, indent=2)), True, "3 valid pairs"),
        _validate(w("ok_bom.json", "\ufeff" + json.dumps(GOOD)), True, "3 valid pairs"),
        _validate(w("ok_wrapped.json", json.dumps({"data": GOOD})), True, "3 valid pairs"),
        _validate(w("ok.jsonl.gz", gzip.compress(good.encode())), True, "3 valid pairs"),
        _validate(w("ok_bom.csv", "\ufeffprompt,chosen,rejected\nq,a,b\nq2,c,d\n"), True, "2 valid pairs"),
        _validate(w("ok.csv.gz", gzip.compress(b"prompt,chosen,rejected\nq,a,b\n")), True, "1 valid pairs"),
        _validate(
            w("ok_multiline.csv", 'prompt,chosen,rejected\n"line one\nline two",a,b\n'), True, "1 valid pairs"
        ),
        # file-level problems: one clear error
        _validate(
            w("array.jsonl", json.dumps(GOOD, indent=2)),
            False,
            "starts a JSON array",
            "rename it to .json",
            "1 problems",
        ),
        _validate(w("array_one_line.jsonl", json.dumps(GOOD)), False, "starts a JSON array", "1 problems"),
        _validate(
            w("pretty_object.jsonl", json.dumps(GOOD[0], indent=2)), False, "JSON object over several lines"
        ),
        _validate(w("lines.json", good), False, "holds JSON Lines", "rename it to .jsonl", "1 problems"),
        _validate(w("empty.jsonl", ""), False, "empty file", "0 rows"),
        _validate(w("blank.jsonl", "\n\n   \n"), False, "empty file"),
        _validate(w("empty.json", ""), False, "empty file"),
        _validate(w("empty_array.json", "[]"), False, "empty file"),
        _validate(w("empty.csv", ""), False, "empty file"),
        _validate(w("header_only.csv", "prompt,chosen,rejected\n"), False, "empty file"),
        _validate(w("scalar.json", "42"), False, "bad JSON at line 1", "array of rows"),
        _validate(
            w("broken.json", '[\n{"prompt": "q", "chosen": "a", "rejected": "b"},\n{"prompt": \n'),
            False,
            "bad JSON at line",
            "the rest of the file was not read",
        ),
        _validate(w("deep.json", "[" + deep + "]"), False, "nested too deeply"),
        _validate(
            w("truncated.jsonl.gz", gzip.compress(_jsonl(_many(300)).encode())[:3000]),
            False,
            "the gzip stream ends early after line",
        ),
        _validate(w("not_gzip.jsonl.gz", good), False, "not a valid gzip file"),
        _validate(
            w("corrupt.jsonl.gz", gzip.compress(good.encode())[:10] + b"\x00garbage" * 20), False, "gzip"
        ),
        _validate(w("corrupt.parquet", b"PAR1" + os.urandom(200)), False, "not a readable Parquet file"),
        _validate(w("unknown.txt", good), False, "unknown format"),
        _validate(
            w("long_line.jsonl", good + json.dumps({**GOOD[0], "id": "z", "chosen": "x" * 5000}) + "\n"),
            False,
            "long_line.jsonl:4",
            "longer than",
            limits={"data.readers.MAX_ROW_BYTES": 4096},
        ),
        # rows: every problem with its line and field
        _validate(
            w(
                "bad_rows.jsonl",
                _jsonl(
                    [
                        GOOD[0],
                        '{"prompt": "x", "chosen": "a", ',
                        {"prompt": "x", "chosen": "a"},
                        {"prompt": "x", "chosen": "  ", "rejected": "b"},
                        {"prompt": "x", "chosen": "same", "rejected": "same"},
                        {"prompt": 3, "chosen": "a", "rejected": "b"},
                        {"prompt": "x", "chosen": "a", "rejected": "b", "group": ["g"]},
                        {"prompt": "x", "chosen": "a", "rejected": "b", "id": [1]},
                        {"prompt": "x", "chosen": "a", "rejected": "b", "id": 1.5},
                        '"just a string"',
                    ]
                ),
            ),
            False,
            "bad_rows.jsonl:2: bad JSON",
            "bad_rows.jsonl:3: rejected: missing",
            ":4: chosen: empty",
            ":5: rejected: identical",
            ":6: prompt: expected text",
            ":7: group: expected text",
            ":8: id: expected text",
            ":9: id: expected text",
            ":10: row is a str",
            "9 problems",
        ),
        _validate(
            w("all_bad.jsonl", _jsonl([{"prompt": "x"}, {"prompt": "y"}])),
            False,
            "all_bad.jsonl:1: chosen: missing",
            "0 valid pairs",
            "2 problems",
        ),
        _validate(
            w("bad_utf8.jsonl", good.encode() + b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n'),
            False,
            "bad_utf8.jsonl:4",
            "not valid UTF-8",
        ),
        _validate(  # (UnicodeDecodeError is a ValueError: the JSON reader must name it, not the codec)
            w("bad_utf8.json", b'[{"prompt": "q", "chosen": "a", "rejected": "b"},\n{"prompt": "\xff\xfe"}]'),
            False,
            "bad_utf8.json",
            "not valid UTF-8 (invalid start byte)",
        ),
        _validate(
            w("bad_utf8.csv", "prompt,chosen,rejected\nq,a,b\nq3,\xff,b\n".encode("latin-1")),
            False,
            "bad_utf8.csv:3",
            "not valid UTF-8",
        ),
        _validate(
            w("extra_fields.csv", "prompt,chosen,rejected\nq,a,b,c\n"),
            False,
            "extra_fields.csv:2",
            "more fields than the header",
        ),
        _validate(
            w("missing_field.csv", "prompt,chosen,rejected\nq,a,\n"),
            False,
            "missing_field.csv:2: rejected: missing",
        ),
        _validate(w("nul_bytes.csv", "prompt,chosen,rejected\nq,a\x00b,c\n"), True, "1 valid pairs"),
        # issue 20 item 11: one message for a file in another encoding, not one error per line
        _validate(
            w("utf16.jsonl", good.encode("utf-16")), False, "utf16.jsonl: this file is UTF-16", "1 problems"
        ),
        _validate(
            w("utf16_no_bom.csv", "prompt,chosen,rejected\nq,a,b\n".encode("utf-16-le")),
            False,
            "this file is UTF-16",
        ),
        _validate(
            w("utf32.json", json.dumps(GOOD).encode("utf-32")), False, "utf32.json: this file is UTF-32"
        ),
        _validate(w("utf16.jsonl.gz", gzip.compress(good.encode("utf-16"))), False, "this file is UTF-16"),
        _validate(
            w("deep_row.jsonl", good + '{"prompt": ' + deep + "}\n"),
            False,
            "deep_row.jsonl:4",
            "nested too deeply",
        ),
        _validate(
            w(
                "huge_int.jsonl",
                good + '{"prompt": "q", "chosen": "a", "rejected": "b", "n": ' + "9" * 5000 + "}\n",
            ),
            False,
            "huge_int.jsonl:4: bad JSON: a number too long to read",
        ),
        _validate(
            w("deep_meta.jsonl", _jsonl([{**GOOD[0], "meta": {"x": json.loads("[" * 20 + "]" * 20)}}])),
            False,
            "deep_meta.jsonl:1: meta.x: nested deeper",
        ),
        _validate(
            w(
                "lone_surrogate.jsonl",
                good + '{"prompt": "q\\ud800x", "chosen": "a", "rejected": "b", "id": "s"}\n',
            ),
            False,
            "lone_surrogate.jsonl:4: prompt: lone surrogate \\ud800 at character 1",
        ),
        _validate(
            w(
                "lone_surrogate_label.jsonl",
                '{"prompt": "q", "chosen": "a", "rejected": "b", "group": "\\udfff"}\n',
            ),
            False,
            "lone_surrogate_label.jsonl:1: group: lone surrogate",
        ),
        _validate(
            w(
                "lone_surrogate_meta.jsonl",
                '{"prompt": "q", "chosen": "a", "rejected": "b", "note": "\\ud834"}\n',
            ),
            False,
            "lone_surrogate_meta.jsonl:1: meta.note: lone surrogate",
        ),
        _validate(
            w("dup_ids.jsonl", _jsonl([GOOD[0], GOOD[1], {**GOOD[2], "id": "a"}])),
            False,
            "dup_ids.jsonl:3: id: duplicate id",
            "first on line 1",
            "1 problems",
        ),
        _validate(
            w(
                "dup_default_ids.jsonl",
                _jsonl([{**GOOD[0], "id": None}, {**GOOD[1], "id": "dup_default_ids-1"}]),
            ),
            False,
            "dup_default_ids.jsonl:2: id: duplicate id",
        ),
        _validate(
            w(
                "hh_diverging.jsonl",
                _jsonl([{"chosen": hh_ctx + " Yes.", "rejected": hh_ctx.replace("Hello", "Hey") + " No."}]),
            ),
            False,
            "hh_diverging.jsonl:1: rejected: dialogue differs from chosen",
        ),
        _validate(
            w("hh_no_turn.jsonl", _jsonl([{"chosen": "Human: hi", "rejected": "Human: hey"}])),
            False,
            "hh_no_turn.jsonl:1: chosen: no '\\n\\nAssistant:' turn",
        ),
        _validate(
            w(
                "trl_bad_role.jsonl",
                _jsonl(
                    [
                        {
                            "prompt": [{"role": "wizard", "content": "hi"}],
                            "chosen": [{"role": "assistant", "content": "a"}],
                            "rejected": [{"role": "assistant", "content": "b"}],
                        }
                    ]
                ),
            ),
            False,
            "trl_bad_role.jsonl:1: prompt: message 0 has unknown role 'wizard'",
        ),
        _validate(
            w(
                "trl_user_response.jsonl",
                _jsonl(
                    [
                        {
                            "prompt": trl_user,
                            "chosen": [{"role": "user", "content": "a"}],
                            "rejected": [{"role": "assistant", "content": "b"}],
                        }
                    ]
                ),
            ),
            False,
            "trl_user_response.jsonl:1: chosen: the response turn (message 0) has role 'user'",
        ),
        _validate(
            w(
                "trl_no_role.jsonl",
                _jsonl(
                    [
                        {
                            "prompt": trl_user,
                            "chosen": [{"content": "a"}],
                            "rejected": [{"role": "assistant", "content": "b"}],
                        }
                    ]
                ),
            ),
            False,
            "trl_no_role.jsonl:1: chosen: message 0 has no role",
        ),
        _validate(
            w(
                "trl_context_differs.jsonl",
                _jsonl(
                    [
                        {
                            "chosen": trl_user + [{"role": "assistant", "content": "Hi!"}],
                            "rejected": [
                                {"role": "user", "content": "Say bye"},
                                {"role": "assistant", "content": "Bye"},
                            ],
                        }
                    ]
                ),
            ),
            False,
            "trl_context_differs.jsonl:1: rejected: conversation differs",
        ),
        _validate(
            w(
                "trl_content_not_text.jsonl",
                _jsonl(
                    [
                        {
                            "prompt": trl_user,
                            "chosen": [{"role": "assistant", "content": 5}],
                            "rejected": [{"role": "assistant", "content": "b"}],
                        }
                    ]
                ),
            ),
            False,
            "trl_content_not_text.jsonl:1: chosen: message 0 content is not text",
        ),
        _validate(
            w(
                "trl_mixed.jsonl",
                _jsonl([{"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}]),
            ),
            False,
            "trl_mixed.jsonl:1: rejected: chosen and rejected must both be message lists",
        ),
        _validate(
            w(
                "helpsteer_ties.jsonl",
                _jsonl(
                    [
                        {
                            "prompt": "Explain tides.",
                            "response": "The Moon.",
                            "helpfulness": 3,
                            "verbosity": 1,
                        },
                        {
                            "prompt": "Explain tides.",
                            "response": "Gravity.",
                            "helpfulness": 3,
                            "verbosity": 1,
                        },
                        {"prompt": "Why?", "response": "Because.", "helpfulness": 2, "verbosity": 2},
                    ]
                ),
            ),
            False,
            "made no pairs",
            "1 prompts have a single response",
            "1 response pairs have equal ratings",
        ),
        _validate(
            w(
                "helpsteer_bad_rating.jsonl",
                _jsonl(
                    [
                        {"prompt": "Explain tides.", "response": "The Moon.", "helpfulness": "high"},
                        {"prompt": "Explain tides.", "response": "Gravity.", "helpfulness": 1},
                        {"prompt": "Explain tides.", "response": "Water.", "helpfulness": 2},
                    ]
                ),
            ),
            False,
            "helpsteer_bad_rating.jsonl:1: helpfulness: rating is not a number",
            "1 valid pairs",
        ),
        _validate(
            w(
                "helpsteer_nan.jsonl",
                '{"prompt": "q", "response": "a", "helpfulness": NaN}\n'
                '{"prompt": "q", "response": "b", "helpfulness": 1}\n',
            ),
            False,
            "helpsteer_nan.jsonl:1: helpfulness: rating is not a finite number",
        ),
        _validate(
            w("helpsteer_no_ratings.jsonl", _jsonl([{"prompt": "q", "response": "a"}])),
            False,
            "helpsteer_no_ratings.jsonl:1",
            "no rating columns",
        ),
        _validate(
            w("json_rows_not_objects.json", json.dumps([GOOD[0], 1, None, "x"])),
            False,
            "json_rows_not_objects.json:2: row is a int",
            ":3: row is a NoneType",
            ":4: row is a str",
        ),
        Case(
            "validate missing file",
            ["validate", "--data", "{dir}/nope.jsonl"],
            False,
            ["nope.jsonl", "no such file"],
        ),
    ]
    (root / "dir.jsonl").mkdir(exist_ok=True)
    cases.append(_validate("dir.jsonl", False, "is a directory"))
    fifo = root / "fifo.jsonl"
    if hasattr(os, "mkfifo") and not fifo.exists():
        os.mkfifo(fifo)
        cases.append(_validate("fifo.jsonl", False, "not a regular file"))
    if os.geteuid() != 0:  # root reads everything: the permission case only means something for others
        w("unreadable.jsonl", good)
        os.chmod(root / "unreadable.jsonl", 0)
        cases.append(_validate("unreadable.jsonl", False, "cannot read", "ermission denied"))
    import pandas as pd

    pd.DataFrame(GOOD).to_parquet(root / "ok.parquet")
    cases.append(_validate("ok.parquet", True, "3 valid pairs"))
    whole = (root / "ok.parquet").read_bytes()
    w("truncated.parquet", whole[: len(whole) // 2])
    cases.append(_validate("truncated.parquet", False, "not a readable Parquet file"))
    pd.DataFrame(
        [
            {
                "prompt": trl_user,
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "tool", "content": "b"}],
            }
        ]
    ).to_parquet(root / "trl_bad.parquet")
    cases.append(_validate("trl_bad.parquet", False, "trl_bad.parquet:1: rejected: the response turn"))
    # embedding and training need the backbone: a few cases that reach it
    w("three.jsonl", good)
    w("some_bad.jsonl", _jsonl([GOOD[0], {"prompt": "x", "chosen": "a"}, GOOD[1], "{", GOOD[2]]))
    cases += [
        Case(
            "train 3 rows",
            ["train", "--data", "{dir}/three.jsonl", "--model", "single", "--out", "{dir}/runs/three"],
            False,
            [
                "three.jsonl",
                "3 pairs over 3 distinct prompt values",
                "left 1 training pairs",
                "--validation 0 --test 0",
            ],
            needs_backbone=True,
        ),
        Case(
            "train 3 rows, no held-out split",
            [
                "train",
                "--data",
                "{dir}/three.jsonl",
                "--model",
                "single",
                "--validation",
                "0",
                "--test",
                "0",
                "--epochs",
                "2",
                "--out",
                "{dir}/runs/three",
            ],
            True,
            ["no held-out pairs"],
            needs_backbone=True,
        ),
        Case(
            "train --skip-bad, one row left",
            [
                "train",
                "--data",
                "{dir}/bad_rows.jsonl",
                "--model",
                "single",
                "--skip-bad",
                "--validation",
                "0",
                "--test",
                "0",
                "--out",
                "{dir}/runs/skip",
            ],
            False,
            ["skipped 9 malformed rows of 10", "bad_rows.jsonl", "1 pairs", "add data"],
            needs_backbone=True,
        ),
        Case(
            "train --skip-bad says how many",
            [
                "train",
                "--data",
                "{dir}/some_bad.jsonl",
                "--model",
                "single",
                "--skip-bad",
                "--validation",
                "0",
                "--test",
                "0",
                "--epochs",
                "1",
                "--out",
                "{dir}/runs/some_bad",
            ],
            True,
            ["skipped 2 malformed rows of 5 in", "some_bad.jsonl:2: rejected: missing", "on 3 pairs"],
            needs_backbone=True,
        ),
        Case(
            "train --experts 50000000",
            ["train", "--data", "{dir}/three.jsonl", "--experts", "50000000", "--out", "{dir}/runs/x"],
            False,
            ["--experts: must be in [1, 4096]"],
        ),
        Case(
            "train --max-length 0",
            ["train", "--data", "{dir}/three.jsonl", "--max-length", "0", "--out", "{dir}/runs/x"],
            False,
            ["--max-length: must be in [1,"],
        ),
        Case(
            "train on a lone surrogate",
            [
                "train",
                "--data",
                "{dir}/lone_surrogate.jsonl",
                "--model",
                "single",
                "--out",
                "{dir}/runs/surrogate",
            ],
            False,
            ["lone_surrogate.jsonl:4: prompt: lone surrogate"],
            needs_backbone=True,
        ),
        Case(
            "embed a truncated gzip",
            ["embed", "--data", "{dir}/truncated.jsonl.gz", "--out", "{dir}/t.safetensors"],
            False,
            ["truncated.jsonl.gz: the gzip stream ends early after line"],
        ),
    ]
    # issue 20 item 10: a split field with one value cannot hold anything out; say so (not "--validation 0")
    w("constant_group.jsonl", _jsonl([{**r, "group": "same"} for r in _many(6)]))
    cases.append(
        Case(
            "train --split-by a constant field",
            [
                "train",
                "--data",
                "{dir}/constant_group.jsonl",
                "--split-by",
                "group",
                "--out",
                "{dir}/runs/const",
            ],
            False,
            [
                "split field 'group' has 1 distinct value over 6 pairs ('same')",
                "the test and validation split",
            ],
            needs_backbone=True,
        )
    )
    # issue 20 item 11: backbones that are not safe model folders get one line naming them (exit 2)
    pickled = root / "backbone_pickle"
    pickled.mkdir(exist_ok=True)
    (pickled / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": [0.0] * 8}))
    for name, backbone, expect in (
        ("a pickle backbone", "{dir}/backbone_pickle", "its weights are pickle files (pytorch_model.bin)"),
        ("/etc as a backbone", "/etc", "no config.json in this folder"),
        ("a data file as a backbone", "{dir}/three.jsonl", "not a folder"),
        ("a missing backbone folder", "{dir}/no_such_backbone", "no such folder"),
    ):
        cases.append(
            Case(
                f"embed with {name}",
                [
                    "embed",
                    "--data",
                    "{dir}/three.jsonl",
                    "--out",
                    "{dir}/runs/b.safetensors",
                    "--backbone",
                    backbone,
                ],
                False,
                [f"{backbone.split('/')[-1]}': ", expect],
            )
        )
    return cases


# ----------------------------------------------------------------------------- model directories

DIM = 8


def _features(n: int = 24, seed: int = 0, prefix: str = "f"):
    from moe_reward.data.pairs import PreferencePair
    from moe_reward.embed.features import PairFeatures

    rng = np.random.default_rng(seed)
    pairs = [
        PreferencePair(f"prompt {i}", f"good {i}", f"bad {i}", group=f"g{i % 2}", id=f"{prefix}{i}")
        for i in range(n)
    ]
    x = rng.normal(size=(3, n, DIM)).astype(np.float32)
    return PairFeatures(
        x[0],
        x[1],
        x[2],
        pairs,
        {"backbone": "all-MiniLM-L6-v2", "pooling": "mean", "max_length": 64, "dim": DIM},
    )


def _model(kind: str = "sparse", **kw):
    import torch

    from moe_reward.model.moe import ModelConfig, SparseMoERewardModel

    torch.manual_seed(0)
    cfg = ModelConfig(
        kind=kind,
        input_dim=DIM,
        num_experts=3,
        top_k=2,
        backbone={"backbone": "all-MiniLM-L6-v2", "pooling": "mean", "max_length": 64, "dim": DIM},
        **{"router_input": "pooled", **kw},
    )
    return SparseMoERewardModel(cfg)


def _save_model(root: Path, name: str, model=None, split: dict | None = None) -> Path:
    out = root / "models" / name
    (model or _model()).save_pretrained(out, {"data": "feats.safetensors", "test": {"accuracy": 0.5}})
    feats_ids = [f"f{i}" for i in range(24)]
    split = split or {"train": feats_ids[:16], "validation": feats_ids[16:20], "test": feats_ids[20:]}
    (out / "split_ids.json").write_text(json.dumps(split))
    return out


def _edit_config(out: Path, **changes) -> None:
    cfg = json.loads((out / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("backbone."):
            cfg["backbone"][key[9:]] = value
        else:
            cfg[key] = value
    (out / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(out: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(out / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"))


def _eval(name: str, ok: bool, *expect: str, data: str = "feats.safetensors", split: str = "all") -> Case:
    return Case(
        f"eval {name} on {data} ({split})",
        ["eval", "--model", "{dir}/models/" + name, "--data", "{dir}/" + data, "--split", split],
        ok,
        list(expect),
    )


def model_cases(root: Path) -> list[Case]:
    import torch

    _features().save(root / "feats.safetensors")
    _features(seed=1, prefix="other").save(root / "foreign.safetensors")
    cases = []
    _save_model(root, "ok")
    cases.append(_eval("ok", True, "accuracy", "on 24 pairs"))
    cases.append(_eval("ok", True, "on 4 pairs", split="test"))
    cases.append(
        _eval(
            "ok",
            False,
            "foreign.safetensors",
            "none of its 24 pairs is in the test split",
            "--split all",
            data="foreign.safetensors",
            split="test",
        )
    )
    single = _save_model(root, "single", _model("single"))
    assert single.exists()
    cases.append(_eval("single", True, "n/a: one expert"))
    features_files = {
        "feats_truncated.safetensors": (root / "feats.safetensors").read_bytes()[:300],
        "feats_random.safetensors": os.urandom(500),
        "feats_empty.safetensors": b"",
    }
    for name, content in features_files.items():
        _write(root, name, content)
        cases.append(_eval("ok", False, name, "not a readable safetensors features file", data=name))

    def model_dir(name: str) -> Path:
        return _save_model(root, name)

    safet = "model.safetensors"
    (model_dir("st_empty") / safet).write_bytes(b"")
    cases.append(_eval("st_empty", False, "st_empty/model.safetensors", "empty file"))
    out = model_dir("st_truncated")
    (out / safet).write_bytes((out / safet).read_bytes()[:-40])
    cases.append(
        _eval("st_truncated", False, "st_truncated/model.safetensors", "not a readable safetensors file")
    )
    (model_dir("st_random") / safet).write_bytes(os.urandom(600))
    cases.append(_eval("st_random", False, "st_random/model.safetensors"))
    (model_dir("st_huge_header") / safet).write_bytes((2**62).to_bytes(8, "little") + b"{}" + b" " * 50)
    cases.append(
        _eval("st_huge_header", False, "st_huge_header/model.safetensors", "not a readable safetensors")
    )
    (model_dir("st_bad_header_json") / safet).write_bytes((10).to_bytes(8, "little") + b"{not json}")
    cases.append(_eval("st_bad_header_json", False, "st_bad_header_json/model.safetensors"))
    out = model_dir("st_is_dir")
    (out / safet).unlink()
    (out / safet).mkdir()
    cases.append(_eval("st_is_dir", False, "st_is_dir", "missing model.safetensors"))
    (model_dir("st_missing") / safet).unlink()
    cases.append(_eval("st_missing", False, "st_missing", "missing model.safetensors"))
    _edit_tensors(model_dir("wrong_shape"), lambda t: t.__setitem__("head", torch.zeros(3, 5)))
    cases.append(
        _eval(
            "wrong_shape",
            False,
            "wrong_shape/model.safetensors",
            "tensor 'head' has shape [3, 5]",
            "config.json implies [3, 8]",
        )
    )
    _edit_tensors(model_dir("missing_tensor"), lambda t: t.pop("head"))
    cases.append(_eval("missing_tensor", False, "missing_tensor/model.safetensors", "missing tensor 'head'"))
    _edit_tensors(model_dir("extra_tensor"), lambda t: t.__setitem__("trojan", torch.zeros(2)))
    cases.append(_eval("extra_tensor", False, "extra_tensor/model.safetensors", "unexpected tensor 'trojan'"))
    _edit_tensors(
        model_dir("int_tensor"), lambda t: t.__setitem__("head", torch.zeros(3, DIM, dtype=torch.int64))
    )
    cases.append(_eval("int_tensor", False, "int_tensor/model.safetensors", "dtype I64"))
    _edit_tensors(model_dir("nan_weights"), lambda t: t["head"].__setitem__((0, 0), float("nan")))
    cases.append(_eval("nan_weights", False, "nan_weights/model.safetensors", "tensor 'head' has NaN"))
    _edit_tensors(model_dir("inf_weights"), lambda t: t["router.weight"].__setitem__((0, 0), float("inf")))
    cases.append(
        _eval("inf_weights", False, "inf_weights/model.safetensors", "'router.weight' has NaN or infinite")
    )
    _edit_tensors(model_dir("zero_scale"), lambda t: t["response_scale"].zero_())
    cases.append(_eval("zero_scale", False, "zero_scale/model.safetensors", "'response_scale' (a divisor)"))
    config_edits = {
        "backbone_string": ({"backbone": "all-MiniLM-L6-v2"}, "backbone must be an object, got str"),
        "max_length_zero": ({"backbone.max_length": 0}, "backbone.max_length must be an integer in [1,"),
        "max_length_negative": ({"backbone.max_length": -5}, "backbone.max_length"),
        "pooling_unknown": ({"backbone.pooling": "median"}, "backbone.pooling must be one of"),
        "experts_50M": ({"num_experts": 50_000_000}, "num_experts must be <= 4096"),
        "hidden_1M": ({"hidden_dim": 1_000_000}, "hidden_dim must be <= 65536"),
        "hidden_large": ({"hidden_dim": 60_000, "input_dim": 8000}, "more than the limit"),
        "bigger_than_file": ({"hidden_dim": 60_000}, "describes a model of about"),
        "experts_string": ({"num_experts": "8"}, "num_experts must be an integer, got str"),
        "experts_zero": ({"num_experts": 0}, "num_experts must be >= 1"),
        "top_k_too_big": ({"top_k": 9}, "top_k must be in [1, num_experts=3]"),
        "kind_unknown": ({"kind": "banana"}, "kind must be one of"),
        "unknown_field": ({"evil": 1}, "unknown field 'evil'"),
        "router_auto": ({"router_input": "auto"}, "router_input 'auto'"),
        "router_unknown": ({"router_input": "telepathy"}, "router input must be"),
        "noise_nan": ({"router_noise": float("nan")}, "router_noise must be a finite number, got float nan"),
        "vocabulary_not_list": ({"lexical_vocabulary": "abc"}, "lexical_vocabulary must be a list of texts"),
        "input_dim_mismatch": ({"input_dim": 16}, "config.json implies [3, 16]"),
    }
    for name, (changes, expect) in config_edits.items():
        _edit_config(model_dir(f"config_{name}"), **changes)
        where = "model.safetensors" if name == "input_dim_mismatch" else "config.json"
        cases.append(_eval(f"config_{name}", False, f"config_{name}/{where}", expect))
    for name, content, expect in (
        ("config_truncated", None, "bad JSON"),
        ("config_array", "[1, 2]", "expected a JSON object, got list"),
        ("config_empty", "", "bad JSON"),
        ("config_binary", b"\xff\xfe\x00", "not valid UTF-8"),
        ("config_deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ):
        out = model_dir(name)
        if content is None:
            text = (out / "config.json").read_text()
            content = text[: len(text) // 2]
        _write(out, "config.json", content)
        cases.append(_eval(name, False, f"{name}/config.json", expect))
    (model_dir("config_missing") / "config.json").unlink()
    cases.append(_eval("config_missing", False, "config_missing", "missing config.json"))
    for name, content, expect in (
        ("split_bad_json", '{"test": [', "bad JSON"),
        (
            "split_wrong_type",
            '{"train": [], "validation": [], "test": "f1"}',
            "test: expected a list of pair ids",
        ),
        ("split_array", "[]", "expected an object"),
    ):
        _write(model_dir(name), "split_ids.json", content)
        cases.append(_eval(name, False, f"{name}/split_ids.json", expect, split="test"))
    (model_dir("split_missing") / "split_ids.json").unlink()
    cases.append(
        _eval("split_missing", False, "split_missing/split_ids.json", "no saved split", split="test")
    )
    _write(model_dir("metrics_truncated"), "metrics.json", '{"data": "x", "te')
    cases.append(
        _eval(
            "metrics_truncated",
            False,
            "metrics_truncated/metrics.json",
            "bad JSON",
            data="foreign.safetensors",
            split="test",
        )
    )
    (root / "models" / "not_a_dir").write_text("x")
    cases.append(_eval("not_a_dir", False, "not_a_dir", "missing config.json"))
    # issue 20 item 4: tampered values a trained model cannot hold (each flipped or blew up the reward)
    lexical = dict(router_input="lexical", lexical_vocabulary=["alpha", "beta", "gamma"])
    tampered = {
        "idf_negative": (lexical, lambda t: t["lexical_idf"].fill_(-1.0), "'lexical_idf' has values in [-1"),
        "idf_huge": (lexical, lambda t: t["lexical_idf"].mul_(1e30), "an idf weight is between 1 and"),
        "heads_huge": ({}, lambda t: t["head"].mul_(1e38), "tensor 'head' holds a value of magnitude"),
        "head_norm": ({}, lambda t: t["head"].mul_(1e5), "tensor 'head' has a head of norm"),
        "scale_tiny": (
            {},
            lambda t: t["response_scale"].fill_(1e-30),
            "'response_scale' (a divisor) has a value",
        ),
    }
    for name, (kw, edit, expect) in tampered.items():
        _edit_tensors(_save_model(root, f"tampered_{name}", _model(**kw)), edit)
        cases.append(_eval(f"tampered_{name}", False, f"tampered_{name}/model.safetensors", expect))
    # issue 20 item 11: duplicate vocabulary terms are named in config.json (not sklearn's "Vocabulary of size")
    out = _save_model(root, "vocabulary_duplicate", _model(**lexical))
    _edit_config(out, lexical_vocabulary=["alpha", "beta", "alpha"])
    cases.append(
        _eval(
            "vocabulary_duplicate",
            False,
            "vocabulary_duplicate/config.json",
            "lexical_vocabulary[2] repeats the term 'alpha' of lexical_vocabulary[0]",
        )
    )
    cases.append(
        Case(
            "report on tampered heads",
            [
                "report",
                "--model",
                "{dir}/models/tampered_heads_huge",
                "--out",
                "{dir}/runs/r.html",
                "--no-png",
            ],
            False,
            ["tampered_heads_huge/model.safetensors", "tensor 'head' holds a value of magnitude"],
        )
    )
    # issue 20 item 11: a corrupt config.json is named, not the metrics.json beside it
    cases.append(
        Case(
            "report on a truncated config.json",
            ["report", "--model", "{dir}/models/config_truncated", "--out", "{dir}/runs/r.html", "--no-png"],
            False,
            ["config_truncated/config.json", "bad JSON"],
        )
    )
    return cases


# ----------------------------------------------------------------------------- profiles


def profile_cases(root: Path) -> list[Case]:
    from moe_reward.personalize.adapters import make_adapter

    good = make_adapter("hedge", 3).to_dict()
    profiles = {
        "profile_50M.json": (
            {"format": "moe-reward-profile/1", "name": "hedge", "num_experts": 50_000_000},
            "num_experts must be an integer in [1, 4096]",
        ),
        "profile_bool_k.json": ({**good, "num_experts": True}, "num_experts must be an integer"),
        "profile_nan.json": (
            json.dumps({**good, "weights": [float("nan"), 0.5, 0.5]}),
            "weights[0] is not a finite number",
        ),
        "profile_short.json": ({**good, "weights": [1.0]}, "weights must be a list of 3 numbers"),
        "profile_other_k.json": (make_adapter("hedge", 5).to_dict(), "a profile over 5 experts"),
        "profile_array.json": ([1, 2], "expected a JSON object, got list"),
        "profile_bad_json.json": ('{"name": "hedge", ', "bad JSON"),
        "profile_format.json": ({**good, "format": "evil/9"}, "not a profile"),
        "profile_adapter.json": ({**good, "name": "rm -rf"}, "name must be one of"),
        "profile_params.json": ({**good, "params": {"eta": "fast"}}, "params.eta must be a finite number"),
        "profile_unknown_param.json": ({**good, "params": {"evil": 1}}, "params.evil: unknown parameter"),
        "profile_labels.json": (
            {**good, "labels": {"expert_margins": [[1, 2]], "pair_ids": ["a"]}},
            "labels.expert_margins[0] must be a list of 3 numbers",
        ),
        "profile_no_weights.json": ({k: v for k, v in good.items() if k != "weights"}, "weights: missing"),
    }
    cases = []
    for name, (content, expect) in profiles.items():
        _write(root, name, content if isinstance(content, str) else json.dumps(content))
        cases.append(_score_profile_case(name, expect))
    return cases


def _score_profile_case(name: str, expect: str) -> Case:
    """`score --profile FILE` on the ok model must refuse the profile file `name`, saying `expect`."""
    args = [
        "score",
        "--model",
        "{dir}/models/ok",
        "--prompt",
        "q",
        "--response",
        "a",
        "--profile",
        "{dir}/" + name,
    ]
    return Case(f"score --profile {name}", args, False, [name, expect])


def personalize_cases(root: Path) -> list[Case]:
    """Issue 20 item 2: parameters that made a profile NaN are refused; nothing is written."""
    base = [
        "personalize",
        "--model",
        "{dir}/models/ok",
        "--data",
        "{dir}/feats.safetensors",
        "--user-field",
        "group",
        "--user",
        "g0",
        "--k",
        "4",
        "--profile-out",
        "{dir}/runs/profile.json",
    ]
    cases = [
        Case("personalize signed, ordinary rates", [*base[:-2], "--adapter", "signed"], True, ["g0: signed"])
    ]
    for adapter, param, expect in (
        ("signed", "lr=1e308", "params.lr must be in (0, 10], got 1e+308"),
        ("signed", "l2=1e308", "params.l2 must be in [0, 1000], got 1e+308"),
        ("gradient", "lr=1e308", "params.lr must be in (0, 10]"),
        ("gradient", "l2=1e308", "params.l2 must be in [0, 1000]"),
        ("batch", "temperature=1e-320", "params.temperature must be in [0.001, 1000], got 9.99989e-321"),
        ("hedge", "eta=NaN", "params.eta must be a finite number"),
        ("signed", "lr=Infinity", "params.lr must be a finite number"),
    ):
        cases.append(
            Case(
                f"personalize {adapter} --param {param}",
                [*base, "--adapter", adapter, "--param", param],
                False,
                [expect],
            )
        )
    from moe_reward.personalize.adapters import make_adapter

    good = make_adapter("signed", 3).to_dict()
    labels = {"pair_ids": ["f0", "f1"], "expert_margins": [[1.0, -2.0, 0.5], [0.3, 0.1, -1.0]]}
    for name, content, expect in (
        (
            "profile_lr_huge.json",
            {**good, "params": {**good["params"], "lr": 1e308}, "labels": labels},
            "params.lr",
        ),
        (
            "profile_scale_tiny.json",
            {**good, "params": {**good["params"], "margin_scale": [1e-300] * 3}},
            "margin_scale",
        ),
        (
            "profile_margins_huge.json",
            {**good, "labels": {**labels, "expert_margins": [[1e300] * 3] * 2}},
            "must be in [-1e+09, 1e+09], got 1e+300",
        ),
    ):
        _write(root, name, json.dumps(content))
        cases.append(_score_profile_case(name, expect))
    return cases


def build(root: str | Path) -> list[Case]:
    """Write the corpus under `root`; the cases that read it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return data_cases(root) + model_cases(root) + profile_cases(root) + personalize_cases(root)


def count_inputs(root: str | Path) -> int:
    """Data files, model directories and profiles in a built corpus."""
    root = Path(root)
    files = [p for p in root.iterdir() if p.name not in ("models", "runs")]
    models = list((root / "models").iterdir()) if (root / "models").is_dir() else []
    return len(files) + len(models)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    for case in build(out):
        print(
            f"{'ok  ' if case.ok else 'fail'}  moe-reward {' '.join(a.replace('{dir}', str(out)) for a in case.args)}"
        )
    print(f"{count_inputs(out)} inputs in {out}")
