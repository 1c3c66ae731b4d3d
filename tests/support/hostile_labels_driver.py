"""Run by tests/integration/test_labels_hostile.py inside a mount namespace where the workspace is really read-only
(`ro`) or sits on a really full disk (`full`): drives the CLI and the pages (AppTest) and prints one JSON
object with what each returned, printed and raised. Never run it directly on a workspace you care about."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))


def cli(argv: list[str]) -> dict:
    from moe_reward.cli import main

    out, err = io.StringIO(), io.StringIO()
    tb = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException:  # noqa: BLE001 - this is what the test looks for
            rc, tb = None, traceback.format_exc()
    return {"argv": argv, "rc": rc, "out": out.getvalue(), "err": err.getvalue(), "traceback": tb}


def page_report(at) -> dict:
    return {
        "exceptions": [e.value for e in at.exception],
        "errors": [e.value for e in at.error],
        "warnings": [w.value for w in at.warning],
        "success": [s.value for s in at.success],
        "info": [i.value for i in at.info],
        "label_buttons": {
            b.label: b.disabled for b in at.button if b.label in ("A is better", "B is better")
        },
    }


def app(page: str):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / page), default_timeout=120).run()


def click(at, label: str):
    return next(b for b in at.button if b.label == label).click().run()


def count_labels(home: Path) -> int:
    if not (home / "labels.sqlite").is_file():
        return 0
    uri = (home / "labels.sqlite").resolve().as_uri()
    with contextlib.closing(sqlite3.connect(f"{uri}?immutable=1", uri=True)) as conn:
        return conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def read_only(home: Path, data: str) -> dict:
    probe = home / "write-probe"
    try:
        probe.write_text("x")
        writable = True
    except OSError:
        writable = False
    before = count_labels(home)
    out = {
        "writable": writable,
        "labels_before": before,
        "cli": [
            cli(["workspace"]),
            cli(["labels"]),
            cli(["labels", "--profiles"]),
            cli(["labels", "--out", str(home / "export.jsonl")]),
            cli(
                [
                    "label",
                    "--model",
                    "default-sparse",
                    "--data",
                    data,
                    "--annotator",
                    "ro-cli",
                    "--pair",
                    "rev-0-brief-0",
                    "--prefer",
                    "chosen",
                ]
            ),
        ],
    }
    out["personalize"] = page_report(app("pages/4_Personalize.py"))
    out["score"] = page_report(app("pages/6_Score_your_own.py"))
    out["data_page"] = page_report(app("pages/7_Data_and_training.py"))
    out["labels_after"] = count_labels(home)
    return out


def full_disk(source: Path, disk: Path) -> dict:
    home = disk / "ws"
    shutil.copytree(source, home, ignore=shutil.ignore_patterns("labels.sqlite*", "*.log"))
    os.environ["MOE_REWARD_HOME"] = str(home)
    at = app("pages/4_Personalize.py")
    at = click(at, "A is better")  # the profile and its first label, while there is room
    first = page_report(at)
    filler = disk / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
    for chunk in (65536, 512, 1):  # fill the disk to the last byte
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError:
            pass
    os.close(fd)
    labels_full = count_labels(home)
    at = click(at, "A is better")
    during = page_report(at)
    labels_during = count_labels(home)
    cli_during = cli(
        [
            "label",
            "--model",
            "default-sparse",
            "--data",
            str(home / "uploads" / "tiny.safetensors"),
            "--annotator",
            "guest",
            "--profile",
            "default",
            "--pair",
            "rev-0-brief-0",
            "--prefer",
            "chosen",
        ]
    )
    filler.unlink()
    at = click(at, "A is better")
    after = page_report(at)
    return {
        "first": first,
        "labels_when_full": labels_full,
        "during": during,
        "labels_during": labels_during,
        "cli_during": cli_during,
        "after": after,
        "labels_after": count_labels(home),
    }


if __name__ == "__main__":
    scenario = sys.argv[1]
    if scenario == "ro":
        result = read_only(Path(os.environ["MOE_REWARD_HOME"]), sys.argv[2])
    else:
        result = full_disk(Path(sys.argv[2]), Path(sys.argv[3]))
    print("RESULT " + json.dumps(result, default=str))
