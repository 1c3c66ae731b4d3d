"""Preference pairs: one record type, loaders for the common formats, and prompt-grouped splits.

Every loader reports each malformed row with file, line and reason. By default a load with bad rows
raises `DataError` (carrying every problem, not just the first); with ``skip_bad=True`` the bad rows are
dropped and counted in `LoadResult.errors`, and the good rows are kept.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REQUIRED_FIELDS = ("prompt", "chosen", "rejected")
HH_ASSISTANT = "\n\nAssistant:"
# HelpSteer2's attribute columns; any numeric column other than these names' neighbours also works.
HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


@dataclass
class PreferencePair:
    """One binary preference: under `prompt`, `chosen` is preferred to `rejected`."""

    prompt: str
    chosen: str
    rejected: str
    group: str | None = None  # source or category of the pair
    user: str | None = None  # the annotator who gave the label
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RowError:
    file: str
    line: int  # 1-based line (JSONL), data row + 1 for the CSV header, or row index + 1 (Parquet)
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class DataError(ValueError):
    """Raised when a file has malformed rows; `.errors` lists every one of them."""

    def __init__(self, errors: list[RowError], total_rows: int | None = None):
        self.errors = errors
        shown = "\n  ".join(str(e) for e in errors[:20])
        more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
        of = f" of {total_rows}" if total_rows is not None else ""
        super().__init__(
            f"{len(errors)}{of} rows are malformed (pass skip_bad=True / --skip-bad to drop them):\n  {shown}{more}"
        )


@dataclass
class LoadResult:
    pairs: list[PreferencePair]
    errors: list[RowError]
    source: str

    @property
    def skipped(self) -> int:
        return len(self.errors)


class _RowProblem(Exception):
    def __init__(self, field: str | None, reason: str):
        self.field, self.reason = field, reason


# ----------------------------------------------------------------------------- row normalization


def _text(value: Any, name: str) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        raise _RowProblem(name, "missing")
    if isinstance(value, list):
        return _messages_text(value, name)
    if not isinstance(value, str):
        raise _RowProblem(name, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise _RowProblem(name, "empty")
    return value


def _messages_text(messages: list, name: str) -> str:
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "content" not in m:
            raise _RowProblem(name, f"message {i} is not a {{role, content}} object")
        if not isinstance(m["content"], str):
            raise _RowProblem(name, f"message {i} content is not text")
        parts.append(m["content"] if len(messages) == 1 else f"{m.get('role', 'user')}: {m['content']}")
    text = "\n\n".join(parts)
    if not text.strip():
        raise _RowProblem(name, "empty")
    return text


def _split_conversation(prompt_msgs: list, completion: list, name: str) -> tuple[str, str]:
    """TRL conversational rows: the completion's last assistant turn is the response."""
    if not completion:
        raise _RowProblem(name, "empty message list")
    last = completion[-1]
    if not isinstance(last, dict) or not isinstance(last.get("content"), str):
        raise _RowProblem(name, "last message has no text content")
    context = list(prompt_msgs) + list(completion[:-1])
    prompt = _messages_text(context, "prompt") if context else ""
    if not last["content"].strip():
        raise _RowProblem(name, "empty")
    return prompt, last["content"]


def _hh_split(chosen: str, rejected: str) -> tuple[str, str, str]:
    """HH-RLHF: the prompt is the shared dialogue up to and including the last '\\n\\nAssistant:'."""
    cut_c, cut_r = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        raise _RowProblem("chosen" if cut_c < 0 else "rejected", "no '\\n\\nAssistant:' turn in dialogue")
    prompt_c, prompt_r = chosen[: cut_c + len(HH_ASSISTANT)], rejected[: cut_r + len(HH_ASSISTANT)]
    if prompt_c != prompt_r:
        # Rare in HH: the dialogues diverge before the final turn; keep the longest shared prefix.
        n = 0
        while n < min(len(prompt_c), len(prompt_r)) and prompt_c[n] == prompt_r[n]:
            n += 1
        prompt_c = chosen[:n]
    return prompt_c.strip(), chosen[len(prompt_c) :].strip(), rejected[len(prompt_c) :].strip()


def normalize_row(row: dict[str, Any], default_id: str) -> PreferencePair:
    """Turn one raw row of any supported pairwise format into a `PreferencePair` (or raise _RowProblem)."""
    if not isinstance(row, dict):
        raise _RowProblem(None, f"row is a {type(row).__name__}, expected an object")
    for name in ("chosen", "rejected"):
        if name not in row:
            raise _RowProblem(name, "missing")
    chosen_raw, rejected_raw, prompt_raw = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen_raw, list) or isinstance(rejected_raw, list):  # TRL conversational
        if not (isinstance(chosen_raw, list) and isinstance(rejected_raw, list)):
            raise _RowProblem("rejected", "chosen and rejected must both be message lists")
        prompt_msgs = prompt_raw if isinstance(prompt_raw, list) else []
        if isinstance(prompt_raw, str):
            prompt_msgs = [{"role": "user", "content": prompt_raw}]
        prompt, chosen = _split_conversation(prompt_msgs, chosen_raw, "chosen")
        prompt_r, rejected = _split_conversation(prompt_msgs, rejected_raw, "rejected")
        if not prompt:
            raise _RowProblem("prompt", "missing (no prompt messages before the response)")
    elif prompt_raw is None and "prompt" not in row:  # HH-RLHF dialogue strings
        prompt, chosen, rejected = _hh_split(_text(chosen_raw, "chosen"), _text(rejected_raw, "rejected"))
        if not chosen:
            raise _RowProblem("chosen", "empty final assistant turn")
        if not rejected:
            raise _RowProblem("rejected", "empty final assistant turn")
    else:
        prompt = _text(prompt_raw, "prompt")
        chosen = _text(chosen_raw, "chosen")
        rejected = _text(rejected_raw, "rejected")
    if chosen.strip() == rejected.strip():
        raise _RowProblem("rejected", "identical to chosen")
    group, user = _optional_label(row.get("group"), "group"), _optional_label(row.get("user"), "user")
    rid = row.get("id")
    known = {"prompt", "chosen", "rejected", "group", "user", "id", "meta"}
    meta = dict(row.get("meta") or {}) if isinstance(row.get("meta"), dict) else {}
    meta.update({k: v for k, v in row.items() if k not in known and _jsonable(v)})
    return PreferencePair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        group=group,
        user=user,
        id=str(rid) if rid not in (None, "") and rid == rid else default_id,
        meta=meta,
    )


def _optional_label(value: Any, name: str) -> str | None:
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _RowProblem(name, f"expected text, got {type(value).__name__}")
    return str(value)


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) and not (isinstance(v, float) and v != v)


# ----------------------------------------------------------------------------- file readers


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the name ends in .gz (the default dataset ships as .jsonl.gz)."""
    return gzip.decompress(path.read_bytes()) if path.suffix.lower() == ".gz" else path.read_bytes()


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any, RowError | None]]:
    for lineno, raw in enumerate(_read_bytes(path).split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, None, RowError(str(path), lineno, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield lineno, None, RowError(str(path), lineno, None, f"bad JSON: {exc.msg} (column {exc.colno})")


def _read_json_array(path: Path) -> Iterator[tuple[int, Any, RowError | None]]:
    try:
        data = json.loads(_read_bytes(path).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError([RowError(str(path), 1, None, f"not valid UTF-8 ({exc.reason})")]) from None
    except json.JSONDecodeError as exc:
        raise DataError([RowError(str(path), exc.lineno, None, f"bad JSON: {exc.msg}")]) from None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), [data])
    for i, row in enumerate(data, start=1):
        yield i, row, None


_BAD_LINE = "__moe_reward_undecodable_line__"


def _read_csv(path: Path) -> Iterator[tuple[int, Any, RowError | None]]:
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Decode line by line so that one bad line costs one row, not the file.
        lines = []
        for bline in raw.split(b"\n"):
            try:
                lines.append(bline.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(_BAD_LINE)
        text = "\n".join(lines)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in reader:
        lineno = reader.line_num
        values = list(row.values())
        if any(isinstance(v, str) and _BAD_LINE in v for v in values):
            yield lineno, None, RowError(str(path), lineno, None, "not valid UTF-8")
        elif None in row:
            yield lineno, None, RowError(str(path), lineno, None, "more fields than the header")
        elif any((v or "").strip() for v in values if isinstance(v, str)):
            yield lineno, {k: (v if v != "" else None) for k, v in row.items()}, None


def _read_parquet(path: Path) -> Iterator[tuple[int, Any, RowError | None]]:
    import pandas as pd

    frame = pd.read_parquet(path)
    for i, row in enumerate(frame.to_dict(orient="records"), start=1):
        yield i, {k: _from_arrow(v) for k, v in row.items()}, None


def _from_arrow(v: Any) -> Any:
    """Parquet list columns arrive as numpy arrays of dicts; turn them back into lists."""
    if hasattr(v, "tolist") and not isinstance(v, str):
        return v.tolist()
    return v


READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json_array, ".csv": _read_csv,
           ".parquet": _read_parquet, ".pq": _read_parquet}


def _is_helpsteer(rows: list[dict]) -> bool:
    first = next((r for r in rows if isinstance(r, dict)), None)
    return bool(first) and "response" in first and "chosen" not in first


def helpsteer_to_pairs(rows: list[tuple[int, dict]], source: str,
                       attributes: Iterable[str] | None = None) -> tuple[list[PreferencePair], list[RowError]]:
    """HelpSteer2-style rows (prompt, response, attribute ratings) -> one pair per attribute.

    For each prompt and each attribute, every two responses with different ratings make a pair whose
    chosen response has the higher rating; `group` is the attribute's name.
    """
    errors: list[RowError] = []
    by_prompt: dict[str, list[tuple[int, str, dict]]] = {}
    attrs = list(attributes) if attributes else None
    for lineno, row in rows:
        try:
            prompt, response = _text(row.get("prompt"), "prompt"), _text(row.get("response"), "response")
        except _RowProblem as p:
            errors.append(RowError(source, lineno, p.field, p.reason))
            continue
        names = attrs or [k for k in HELPSTEER_ATTRIBUTES if k in row]
        scores = {}
        for name in names:
            try:
                scores[name] = float(row[name])
            except (KeyError, TypeError, ValueError):
                errors.append(RowError(source, lineno, name, f"rating is not a number: {row.get(name)!r}"))
                break
        else:
            by_prompt.setdefault(prompt, []).append((lineno, response, scores))
    pairs = []
    for prompt, items in by_prompt.items():
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (la, ra, sa), (lb, rb, sb) = items[i], items[j]
                if ra.strip() == rb.strip():
                    continue
                for name in sa:
                    if name in sb and sa[name] != sb[name]:
                        hi, lo = (ra, rb) if sa[name] > sb[name] else (rb, ra)
                        pairs.append(PreferencePair(prompt, hi, lo, group=name, id=f"hs-{la}-{lb}-{name}",
                                                    meta={"margin": abs(sa[name] - sb[name])}))
    return pairs, errors


def load_pairs(path: str | Path, skip_bad: bool = False, fmt: str | None = None) -> LoadResult:
    """Load preference pairs from JSONL/JSON/CSV/Parquet (plain, TRL conversational, HH-RLHF, HelpSteer2).

    `path` may also be ``hf:<dataset id>[:split]`` to load from the Hugging Face hub (needs the optional
    `datasets` package and network access), or ``controlled`` for the embedded default dataset.
    """
    spath = str(path)
    if spath == "controlled":
        path = default_dataset_path()
    elif spath.startswith("hf:"):
        return load_hf_dataset(spath[3:], skip_bad=skip_bad)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffixes = [x.lower() for x in path.suffixes]
    suffix = f".{fmt}" if fmt else (suffixes[-2] if suffixes[-1:] == [".gz"] and len(suffixes) > 1 else path.suffix.lower())
    reader = READERS.get(suffix)
    if reader is None:
        raise ValueError(f"{path}: unknown format {suffix!r}; use one of {sorted(READERS)}")
    raw_rows, errors = [], []
    for lineno, row, err in reader(path):
        if err:
            errors.append(err)
        else:
            raw_rows.append((lineno, row))
    return _finish(raw_rows, errors, str(path), skip_bad)


def _finish(raw_rows: list[tuple[int, Any]], errors: list[RowError], source: str, skip_bad: bool) -> LoadResult:
    if _is_helpsteer([r for _, r in raw_rows]):
        pairs, more = helpsteer_to_pairs(raw_rows, source)
        errors = errors + more
    else:
        pairs = []
        for lineno, row in raw_rows:
            try:
                pairs.append(normalize_row(row, default_id=f"{Path(source).stem}-{lineno}"))
            except _RowProblem as p:
                errors.append(RowError(source, lineno, p.field, p.reason))
    errors.sort(key=lambda e: e.line)
    total = len(raw_rows) + sum(1 for e in errors if e.field is None)
    if errors and not skip_bad:
        raise DataError(errors, total_rows=total)
    seen: dict[str, int] = {}
    for p in pairs:  # ids must be unique: the dashboard and the store key rows on them
        if p.id in seen:
            seen[p.id] += 1
            p.id = f"{p.id}#{seen[p.id]}"
        else:
            seen[p.id] = 0
    if not pairs:
        raise DataError(errors or [RowError(source, 0, None, "no rows")], total_rows=total)
    return LoadResult(pairs, errors, source)


def load_hf_dataset(spec: str, skip_bad: bool = False) -> LoadResult:
    """``owner/name[:split]`` from the Hugging Face hub; optional, never used by tests."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - optional extra
        raise RuntimeError("loading from the hub needs `pip install moe-reward-lens[hub]`") from exc
    name, _, split = spec.partition(":")
    ds = datasets.load_dataset(name, split=split or "train")  # pragma: no cover - network
    rows = [(i + 1, dict(r)) for i, r in enumerate(ds)]  # pragma: no cover
    return _finish(rows, [], f"hf:{spec}", skip_bad)  # pragma: no cover


def save_jsonl(pairs: Iterable[PreferencePair], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")


def default_dataset_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "controlled" / "pairs.jsonl.gz"


# ----------------------------------------------------------------------------- splits


def prompt_key(prompt: str) -> str:
    return hashlib.sha1(" ".join(prompt.lower().split()).encode("utf-8")).hexdigest()


def pair_key(p: PreferencePair) -> str:
    """Order-free identity of a pair's texts, for de-duplicating across splits."""
    a, b = sorted((p.chosen.strip(), p.rejected.strip()))
    return hashlib.sha1("\x00".join((" ".join(p.prompt.split()), a, b)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Splits:
    train: list[int]
    validation: list[int]
    test: list[int]


SPLIT_FIELDS = ("prompt", "group", "user", "id")  # plus "meta.<key>"


def split_value(p: PreferencePair, by: str | None) -> str:
    """The value that decides a pair's side of a split: its normalized prompt (default), a record field
    (`group`, `user`, `id`) or ``meta.<key>`` (e.g. ``meta.question_id``). A pair without that field
    falls back to its prompt, so it still never shares a prompt across sides."""
    if by in (None, "", "prompt"):
        return "prompt:" + prompt_key(p.prompt)
    value = p.meta.get(by[5:]) if by.startswith("meta.") else getattr(p, by)
    if value is None or value == "":
        return "prompt:" + prompt_key(p.prompt)
    return f"{by}:{value}"


def check_split_field(by: str | None, pairs: list[PreferencePair] | None = None) -> None:
    """Reject an unknown split field, or one that no pair has (a typo would silently split by prompt)."""
    if by in (None, "", "prompt"):
        return
    if not (by in SPLIT_FIELDS or (by.startswith("meta.") and len(by) > 5)):
        raise ValueError(f"split field must be one of {SPLIT_FIELDS} or meta.<key>, got {by!r}")
    if pairs is not None and pairs and all(split_value(p, by).startswith("prompt:") for p in pairs):
        raise ValueError(f"no pair has a value for split field {by!r}")


def split_pairs(pairs: list[PreferencePair], validation: float = 0.1, test: float = 0.1, seed: int = 0,
                by: str | None = None) -> Splits:
    """Deterministic split that keeps every pair of one prompt -- or of one value of `by`, e.g.
    ``meta.question_id`` for held-out questions -- on the same side."""
    if not 0 <= validation < 1 or not 0 <= test < 1 or validation + test >= 1:
        raise ValueError(f"bad split fractions: validation={validation}, test={test}")
    check_split_field(by, pairs)
    values = [split_value(p, by) for p in pairs]
    keys = sorted(set(values))
    random.Random(seed).shuffle(keys)
    n = len(keys)
    n_test, n_val = round(n * test), round(n * validation)
    if test > 0 and n >= 3:
        n_test = max(n_test, 1)
    if validation > 0 and n >= 3:
        n_val = max(n_val, 1)
    side = {k: "test" for k in keys[:n_test]}
    side.update({k: "validation" for k in keys[n_test : n_test + n_val]})
    out: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for i, v in enumerate(values):
        out[side.get(v, "train")].append(i)
    return Splits(**out)
