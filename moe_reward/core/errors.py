"""The root of every expected failure: `MoeRewardError`.

An expected failure is one a user can cause and fix: a malformed data file, a broken or tampered model
directory, a profile with impossible numbers, a label the store refuses. Its message is one line that
names the file (and the row and field where there is one) and says what is wrong. The CLI prints it as
``error: <message>`` and exits 2; the dashboard shows it as a refusal. Anything else that escapes is a
bug (the CLI's exit 3).

`MoeRewardError` is a ValueError, so code that catches ValueError (the convention for bad input before
this type existed) keeps catching every subclass:

    MoeRewardError
    ├── CheckpointError      a model directory that cannot be used (model/modeldir.py)
    │   └── MissingCheckpointFile
    ├── DataError            a data file or some of its rows (data/pairs.py)
    ├── BackboneError        a backbone that cannot be loaded safely (embed/backbone.py)
    ├── StoreError           a label-store write that did not happen (personalize/store.py; also a RuntimeError)
    ├── ModelNameTaken       a workspace model name in use (app/workspace.py)
    └── TrainingDiverged     training produced non-finite values (train/loop.py; also a RuntimeError)
"""

from __future__ import annotations


class MoeRewardError(ValueError):
    """An expected failure; the message is one line naming the file, row and field where there are any."""


class BackboneError(MoeRewardError):
    """A backbone path or id that cannot be loaded (not a model folder, unsafe weight files, unreadable
    tokenizer); the message names the backbone."""
