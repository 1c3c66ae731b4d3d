"""The experiment's protocol: who the users are, how folds hold them out, which pairs may train, and each
held-out user's adaptation pool, test set and label draws.

- **Users** are the values of `user_field` ("user" or "group") of the pairs (`plan_folds`):
  - when some pairs have no user (general pairs plus annotators or personas), one fold holds out every
    user (or the names in `held_out_users`); the user-less pairs and other users' pairs train;
  - when *every* pair has a user, **leave-one-user-out**: one fold per user (or per name in
    `held_out_users`, at most `max_folds` chosen with `user_seed`), trained on the other users' pairs.
  Held-out users' pairs never train, and neither does any pair that repeats a comparison of a held-out
  user's *test* pairs (`data.pair_key`, `training_index`): when several annotators judged the same
  comparisons, the others' labels on the held-out user's adaptation comparisons still train, so the
  training pool does not collapse. A fold whose training pool is under `MIN_TRAIN_POOL` pairs is reported
  with a warning (run.py).
- Each held-out user's pairs are split (seed s) into an adaptation pool and a test set
  (`user_pool_and_test`); `label_draws` gives the seeded k-label draws from the pool, shared by every
  kind, adapter and the oracle.

Nothing here trains or measures: run.py does, with these plans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.pairs import pair_key
from ..embed.features import PairFeatures

MIN_TRAIN_POOL = 100  # a fold that trains on fewer pairs than this is reported with a warning


@dataclass
class Fold:
    """Users held out together, and all their pairs. Training for a fold uses every other pair except
    those that repeat a comparison in a held-out user's *test* pairs (`training_index`)."""

    held_users: list[str]
    user_index: dict[str, list[int]]


@dataclass
class Protocol:
    """The planned folds (`plan_folds`)."""

    name: str  # "held-out users" or "leave-one-user-out"
    folds: list[Fold]
    users: list[str]  # every held-out user, over all folds (sorted)
    numbers: dict[str, int]  # a stable number per user (seeds each user's splits and label draws)


def plan_folds(
    features: PairFeatures,
    user_field: str,
    held_out_users: tuple[str, ...] = (),
    max_folds: int | None = None,
    seed: int = 0,
) -> Protocol:
    """The experiment's folds.

    - Some pairs have no user (e.g. general pairs plus annotators' or personas' pairs): one fold holds out
      every user (or `held_out_users`); the user-less pairs and any non-held-out user's pairs train.
    - Every pair has a user: **leave-one-user-out**, one fold per user (or per name in `held_out_users`;
      at most `max_folds`, a seeded choice); each fold trains on the other users' pairs.
    """
    users = [getattr(p, user_field) for p in features.pairs]
    names = sorted({u for u in users if u is not None})
    if not names:
        raise ValueError(
            f"no pair has a {user_field!r}: nothing to personalize to "
            f"(try --user-field {'group' if user_field == 'user' else 'user'})"
        )
    unknown = sorted(set(held_out_users) - set(names))
    if unknown:
        raise ValueError(f"held-out users not in the data: {unknown}; the {user_field}s are: {names[:20]}")
    index: dict[str, list[int]] = {u: [] for u in names}
    for i, u in enumerate(users):
        if u is not None:
            index[u].append(i)
    numbers = {u: n for n, u in enumerate(names)}
    held = sorted(held_out_users) if held_out_users else names
    if any(u is None for u in users):
        return Protocol("held-out users", [Fold(held, {u: index[u] for u in held})], held, numbers)
    if len(names) < 2:
        raise ValueError(f"every pair has the same {user_field}: no one is left to train on")
    if max_folds is not None and len(held) > max_folds:
        pick = np.random.default_rng(seed).choice(len(held), max_folds, replace=False)
        held = sorted(held[i] for i in pick)
    return Protocol("leave-one-user-out", [Fold([u], {u: index[u]}) for u in held], held, numbers)


def training_index(
    features: PairFeatures, user_field: str, fold: Fold, test_rows: dict[str, np.ndarray]
) -> tuple[list[int], int]:
    """(pairs that may train this fold, how many were excluded as repeats of a held-out test comparison).

    Held-out users' own pairs never train. Another pair with the same texts as one of their *test* pairs
    (`data.pair_key`: the same comparison, judged by someone else or by no one) never trains either, so
    no test comparison is seen in training; comparisons in their adaptation pools may train (they are the
    labels of other people)."""
    held = set(fold.held_users)
    excluded = {
        pair_key(features.pairs[fold.user_index[u][j]]) for u in fold.held_users for j in test_rows[u]
    }
    train, dropped = [], 0
    for i, p in enumerate(features.pairs):
        if getattr(p, user_field) in held:
            continue
        if pair_key(p) in excluded:
            dropped += 1
        else:
            train.append(i)
    return train, dropped


# ----------------------------------------------------------------------------- a held-out user's data


def user_pool_and_test(
    n: int, test_fraction: float, seed: int, user_number: int
) -> tuple[np.ndarray, np.ndarray]:
    """(adaptation pool, test set): sorted indices into a held-out user's own `n` pairs (seeded by the seed
    and the user's number; at least one pair each when n >= 2)."""
    perm = np.random.default_rng([seed, user_number, 7]).permutation(n)
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def label_draws(pool_size: int, k: int, draws: int, seed: int, user_number: int) -> list[np.ndarray]:
    """The seeded k-label draws from a pool (shared by every kind, adapter and the oracle)."""
    if k == 0:
        return [np.zeros(0, dtype=np.int64)]
    return [
        np.random.default_rng([seed, user_number, k, d]).choice(pool_size, k, replace=False)
        for d in range(draws)
    ]


@dataclass
class UserData:
    """A held-out user in one seed: their pairs split into the adaptation pool and the test set."""

    name: str
    number: int
    pool: np.ndarray  # indices into the user's own pairs
    test: np.ndarray
    ids: list[str]
