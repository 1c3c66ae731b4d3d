"""Exported pair tables (CSV or JSONL): the one builder of the pair rows that `moe-reward select|slice
export|labels` and the dashboard's download buttons write.

CSV goes through `core.csvsafe` (the one CSV writer: cells a spreadsheet would run as a formula get a
leading ``'``); JSONL keeps the text as it is. Files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core import csvsafe
from ..core.atomic import open_atomic


def pair_rows(features, scores=None, index=None) -> list[dict]:
    """One dict per pair (`features.pairs[i]` for i in `index`, all when None): its fields without meta,
    and with `scores` (metrics.PairScores) the margin, whether the model is right, the top expert and
    the routing weights."""
    idx = range(len(features)) if index is None else np.asarray(index, dtype=np.int64)
    rows = []
    for i in idx:
        p = features.pairs[int(i)]
        row = {k: v for k, v in p.to_dict().items() if k != "meta"}
        if scores is not None:
            row.update(
                margin=round(float(scores.margin[i]), 6),
                correct=bool(scores.correct[i]),
                top_expert=int(scores.top_expert[i]),
                routing=scores.routing[i].round(6).tolist(),
            )
        rows.append(row)
    return rows


def _flat(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k != "routing"}
    out.update({f"w_E{k}": w for k, w in enumerate(row.get("routing") or [])})
    return out


def _columns(flat: list[dict]) -> list[str]:
    names: list[str] = []
    for r in flat:  # every key of every row, in first-seen order
        names.extend(k for k in r if k not in names)
    return names or ["id"]


def to_csv(rows: list[dict]) -> bytes:
    flat = [_flat(r) for r in rows]
    return csvsafe.rows_csv(flat, _columns(flat)).encode("utf-8")


def to_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_rows(rows: list[dict], out: str | Path) -> Path:
    """`rows` to `out`: CSV when it ends in .csv, JSONL otherwise (atomic)."""
    path = Path(out)
    if path.suffix == ".csv":
        flat = [_flat(r) for r in rows]
        return csvsafe.write_rows(path, flat, _columns(flat))
    with open_atomic(path, "wb") as fh:
        fh.write(to_jsonl(rows))
    return path
