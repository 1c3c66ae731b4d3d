"""Two models on one subset of a data file: the pairs that can stand for both models' held-out accuracy.

    scope, warning = comparison_scope(relate(dir_a, feats), relate(dir_b, feats), len(feats))

The subset is model A's held-out test split less any pair model B trained on or chose its checkpoint with
(or, without a test split for A, the pairs neither trained on). Where a model saved no split, which pairs it
trained on is unknown: every pair, and a warning that says so.
"""

from __future__ import annotations

import numpy as np

from .summary import DataRelation, Scope, never_trained


def comparison_scope(
    a: DataRelation, b: DataRelation, n_pairs: int, slice_rows: np.ndarray | None = None, slice_name: str = ""
) -> tuple[Scope, str]:
    """(the subset both models are compared on, named; a warning for the page, '' when none)."""
    free_a, free_b = never_trained(a), never_trained(b)
    everything = np.arange(n_pairs, dtype=np.int64)
    warning = ""
    if free_a is None or free_b is None:
        rows, label = everything, "all pairs (training pairs may be included)"
        warning = (
            "One of the models saved no train/test split, so which pairs it trained on is unknown: the "
            "comparison is on all pairs of the file."
        )
    else:
        if a.headline.key == "test":
            base, label = a.headline.index, f"A's {a.headline.label}"
        else:
            base, label = free_a, "pairs neither model trained on"
        rows = np.intersect1d(base, free_b)
        if a.headline.key == "test" and len(rows) < len(base):
            label += f", less the {len(base) - len(rows)} pairs B trained on"
        if not len(rows):
            rows, label = everything, "all pairs (training pairs included)"
            warning = (
                "No pair of this file is held out from both models (B trained on A's test pairs); the "
                "comparison is on all pairs, training pairs included."
            )
    if slice_rows is not None:
        rows = np.intersect1d(rows, slice_rows)
        label += f" ∩ slice {slice_name}"
    return Scope("compare", label, rows.astype(np.int64)), warning
