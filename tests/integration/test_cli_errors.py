"""The CLI's exit codes (issue 17: one root exception): every expected failure is `error: <message>` and exit 2,
anything else is exit 3 ("internal error ... a bug"), an interrupt 130."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import moe_reward.cli as cli
from moe_reward.core.errors import BackboneError, MoeRewardError
from moe_reward.data.pairs import DataError
from moe_reward.model.modeldir import CheckpointError, MissingCheckpointFile
from moe_reward.personalize.store import DuplicateLabel, StoreError, StoreReadOnly

ROOT = Path(__file__).resolve().parents[2]


def test_every_error_of_the_package_derives_from_the_root():
    from moe_reward.app.workspace import ModelNameTaken

    for cls in (CheckpointError, MissingCheckpointFile, DataError, BackboneError, StoreError, ModelNameTaken):
        assert issubclass(cls, MoeRewardError) and issubclass(cls, ValueError), cls
    assert issubclass(StoreError, RuntimeError)  # what it was before the root existed


CASES = [
    (CheckpointError("m/config.json: bad JSON"), 2),
    (MissingCheckpointFile("m: not a saved model"), 2),
    (DataError([]), 2),
    (BackboneError("backbone '/etc': no config.json"), 2),
    (StoreReadOnly("the label was not saved: read-only"), 2),
    (DuplicateLabel("p1", 3), 2),
    (MoeRewardError("anything refused on purpose"), 2),
    (ValueError("bad option value"), 2),
    (FileNotFoundError(2, "No such file or directory", "x.jsonl"), 2),
    (EOFError("truncated"), 2),
    (MemoryError(), 2),
    (KeyError("oops"), 3),
    (TypeError("unsupported operand"), 3),
    (AttributeError("no attribute"), 3),
    (RuntimeError("something broke"), 3),
    (ZeroDivisionError("division by zero"), 3),
]


@pytest.fixture(scope="module")
def printed() -> list[tuple[int, str]]:
    """(exit code, stderr) of `moe-reward validate` failing with each of CASES, then interrupted (the last
    row), in one fresh process: what
    the CLI prints must not depend on whatever an earlier test in this process did to sys.stderr (under
    xdist, output of this test was once found in pytest's capture instead of capsys or capfd)."""
    script = (
        "import contextlib, io, json, sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]\n"
        "import moe_reward.cli as cli\n"
        "from test_cli_errors import CASES\n"
        "out = []\n"
        "for exc, code in [*CASES, (KeyboardInterrupt(), 130)]:\n"
        "    def fail(_args, exc=exc):\n"
        "        raise exc\n"
        "    cli.cmd_validate = fail\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = cli.main(['validate', '--data', 'x.jsonl'])\n"
        "    out.append([rc, err.getvalue()])\n"
        "print(json.dumps(out))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MOE_REWARD_DEBUG"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [tuple(row) for row in json.loads(done.stdout.strip().splitlines()[-1])]


@pytest.mark.parametrize(
    "case",
    range(len(CASES)),
    ids=[type(exc).__name__ + f"-{code}" for exc, code in CASES],
)
def test_exit_codes(case, printed):
    exc, code = CASES[case]
    assert cli.exit_code(exc) == code
    rc, err = printed[case]
    assert rc == code
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert ("internal error" in err) == (code == 3)


def test_training_diverged_is_expected_once_training_ran():
    from moe_reward.train.loop import TrainingDiverged

    assert cli.exit_code(TrainingDiverged("loss became NaN")) == 2


def test_interrupt_is_130(printed):
    rc, err = printed[-1]
    assert rc == 130 and "interrupted" in err
