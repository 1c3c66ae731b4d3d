"""The CLI's exit codes (issue 17: one root exception): every expected failure is `error: <message>` and exit 2,
anything else is exit 3 ("internal error ... a bug"), an interrupt 130."""

from __future__ import annotations

import pytest

import moe_reward.cli as cli
from moe_reward.core.errors import BackboneError, MoeRewardError
from moe_reward.data.pairs import DataError
from moe_reward.model.modeldir import CheckpointError, MissingCheckpointFile
from moe_reward.personalize.store import DuplicateLabel, StoreError, StoreReadOnly


def test_every_error_of_the_package_derives_from_the_root():
    from moe_reward.app.workspace import ModelNameTaken

    for cls in (CheckpointError, MissingCheckpointFile, DataError, BackboneError, StoreError, ModelNameTaken):
        assert issubclass(cls, MoeRewardError) and issubclass(cls, ValueError), cls
    assert issubclass(StoreError, RuntimeError)  # what it was before the root existed


@pytest.mark.parametrize(
    "exc, code",
    [
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
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, BaseException) else str(x),
)
def test_exit_codes(exc, code, monkeypatch, capfd):
    """(capfd, not capsys: after a Ray or Streamlit test in the same process, sys.stderr may be a stream
    onto file descriptor 2 that capsys does not see; under xdist that order happens.)"""
    assert cli.exit_code(exc) == code

    def fail(_args):
        raise exc

    monkeypatch.setattr(cli, "cmd_validate", fail)
    monkeypatch.delenv("MOE_REWARD_DEBUG", raising=False)
    assert cli.main(["validate", "--data", "x.jsonl"]) == code
    err = capfd.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert ("internal error" in err) == (code == 3)


def test_training_diverged_is_expected_once_training_ran():
    from moe_reward.train.loop import TrainingDiverged

    assert cli.exit_code(TrainingDiverged("loss became NaN")) == 2


def test_interrupt_is_130(monkeypatch, capsys):
    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_validate", interrupted)
    assert cli.main(["validate", "--data", "x.jsonl"]) == 130 and "interrupted" in capsys.readouterr().err
