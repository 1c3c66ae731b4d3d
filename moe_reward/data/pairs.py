"""Preference pairs: one record type, loaders for the common formats, and prompt-grouped splits.

Every loader reports each malformed row with file, line and field. By default a load with bad rows
raises `DataError` (carrying every problem, not just the first); with ``skip_bad=True`` the bad rows are
dropped and counted in `LoadResult.errors`, and the good rows are kept.

Files are read as streams (JSONL line by line, JSON arrays element by element, CSV record by record,
Parquet batch by batch, ``.gz`` decompressed on the fly), so `validate_file` needs memory independent of
the file's size, and one row is bounded (`MAX_ROW_BYTES`) before it is read. Problems of the file itself
(a directory, unreadable, not gzip, truncated, empty, JSON array content in a ``.jsonl``) are one error
naming the file; problems of a row name the file, the line and the field.

Duplicate ids are errors (the second row with an id is reported, naming the line of the first): the
dashboard, the label store and saved splits key pairs on their ids, so renaming one would silently
attach labels or splits to another row. ``skip_bad`` keeps the first row of each id.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.atomic import open_atomic
from .readers import RowError, Rows, reader_for

REQUIRED_FIELDS = ("prompt", "chosen", "rejected")
HH_ASSISTANT = "\n\nAssistant:"
# HelpSteer2's attribute columns; any numeric column other than these names' neighbours also works.
HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_META_DEPTH = 8  # nesting of a row's `meta` values
MAX_DISTINCT_LABELS = 100_000  # validate_file counts distinct groups/users up to this


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


def _describe_errors(errors: list[RowError], total_rows: int | None) -> str:
    file_level = [str(e) for e in errors if e.line <= 0]
    rows = [e for e in errors if e.line > 0]
    parts = list(file_level)
    if rows:
        n = len(rows)
        if total_rows is not None and total_rows > n:
            head = (
                f"{n} of {total_rows} rows are malformed (pass skip_bad=True / --skip-bad to drop them and keep "
                f"the other {total_rows - n}):"
            )
        elif total_rows is not None:
            head = f"all {n} rows are malformed:" if n > 1 else "the only row is malformed:"
        else:
            head = f"{n} rows are malformed:"
        shown = "\n  ".join(str(e) for e in rows[:20])
        more = f"\n  … and {n - 20} more" if n > 20 else ""
        parts.append(f"{head}\n  {shown}{more}")
    return "\n".join(parts)


class DataError(ValueError):
    """Raised when a file or some of its rows are malformed; `.errors` lists every problem."""

    def __init__(self, errors: list[RowError], total_rows: int | None = None):
        self.errors = errors
        self.total_rows = total_rows
        super().__init__(_describe_errors(errors, total_rows))


@dataclass
class LoadResult:
    pairs: list[PreferencePair]
    errors: list[RowError]
    source: str
    rows: int = 0  # rows read (valid or not)

    @property
    def skipped(self) -> int:
        return len(self.errors)


class _RowProblem(Exception):
    def __init__(self, field: str | None, reason: str):
        self.field, self.reason = field, reason


# ----------------------------------------------------------------------------- row normalization


def _check_encodable(text: str, name: str | None) -> str:
    """Reject lone surrogates (e.g. from a JSON ``"\\ud800"``): they cannot be written, hashed or tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _RowProblem(
            name,
            f"lone surrogate \\u{ord(text[exc.start]):04x} at character {exc.start} (not encodable as UTF-8)",
        ) from None
    return text


def _text(value: Any, name: str) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        raise _RowProblem(name, "missing")
    if isinstance(value, list):
        return _messages_text(value, name)
    if not isinstance(value, str):
        raise _RowProblem(name, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise _RowProblem(name, "empty")
    return _check_encodable(value, name)


def _message(m: Any, i: int, name: str) -> tuple[str, str]:
    """(role, content) of one chat message, checked."""
    if not isinstance(m, dict) or "content" not in m:
        raise _RowProblem(name, f"message {i} is not a {{role, content}} object")
    role, content = m.get("role"), m["content"]
    if not isinstance(role, str):
        raise _RowProblem(name, f"message {i} has no role (expected one of {', '.join(CHAT_ROLES)})")
    if role not in CHAT_ROLES:
        raise _RowProblem(
            name, f"message {i} has unknown role {role[:40]!r} (expected one of {', '.join(CHAT_ROLES)})"
        )
    if not isinstance(content, str):
        raise _RowProblem(name, f"message {i} content is not text")
    return role, _check_encodable(content, name)


def _messages_text(messages: list, name: str) -> str:
    checked = [_message(m, i, name) for i, m in enumerate(messages)]
    parts = [content if len(checked) == 1 else f"{role}: {content}" for role, content in checked]
    text = "\n\n".join(parts)
    if not text.strip():
        raise _RowProblem(name, "empty")
    return text


def _split_conversation(prompt_msgs: list, completion: list, name: str) -> tuple[list, str]:
    """TRL conversational rows: the completion's last turn, the assistant's, is the response; the messages
    before it (after the prompt's) are context."""
    if not completion:
        raise _RowProblem(name, "empty message list")
    role, content = _message(completion[-1], len(completion) - 1, name)
    if role != "assistant":
        raise _RowProblem(
            name, f"the response turn (message {len(completion) - 1}) has role {role!r}, expected 'assistant'"
        )
    if not content.strip():
        raise _RowProblem(name, "empty")
    return list(prompt_msgs) + list(completion[:-1]), content


def _hh_split(chosen: str, rejected: str) -> tuple[str, str, str]:
    """HH-RLHF: the prompt is the shared dialogue up to and including the last '\\n\\nAssistant:'."""
    cut_c, cut_r = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        raise _RowProblem("chosen" if cut_c < 0 else "rejected", "no '\\n\\nAssistant:' turn in dialogue")
    prompt_c, prompt_r = chosen[: cut_c + len(HH_ASSISTANT)], rejected[: cut_r + len(HH_ASSISTANT)]
    if prompt_c != prompt_r:
        n = 0
        while n < min(len(prompt_c), len(prompt_r)) and prompt_c[n] == prompt_r[n]:
            n += 1
        raise _RowProblem(
            "rejected",
            f"dialogue differs from chosen before the last '\\n\\nAssistant:' turn "
            f"(from character {n}): the two responses must answer the same dialogue",
        )
    return prompt_c.strip(), chosen[len(prompt_c) :].strip(), rejected[len(prompt_c) :].strip()


def _depth(v: Any, limit: int) -> int:
    """Nesting depth of a JSON value, counted up to `limit` + 1 (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(v, 0)]
    while stack:
        x, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        if isinstance(x, dict):
            stack.extend((y, d + 1) for y in x.values())
        elif isinstance(x, list):
            stack.extend((y, d + 1) for y in x)
    return deepest


def _strings_in(v: Any) -> Iterator[str]:
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)


def _meta(row: dict, known: set[str]) -> dict[str, Any]:
    meta_raw = row.get("meta")
    meta = dict(meta_raw) if isinstance(meta_raw, dict) else {}
    meta.update({k: v for k, v in row.items() if k not in known and _jsonable(v)})
    for k, v in meta.items():
        if _depth(v, MAX_META_DEPTH) > MAX_META_DEPTH:
            raise _RowProblem(f"meta.{k}"[:80], f"nested deeper than {MAX_META_DEPTH} levels")
        for s in _strings_in({k: v}):
            _check_encodable(s, f"meta.{k}"[:80])
    return meta


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
        if isinstance(prompt_raw, str):
            prompt_msgs = [{"role": "user", "content": prompt_raw}]
        elif isinstance(prompt_raw, list) or prompt_raw is None:
            prompt_msgs = prompt_raw or []
        else:
            raise _RowProblem("prompt", f"expected text or a message list, got {type(prompt_raw).__name__}")
        context, chosen = _split_conversation(prompt_msgs, chosen_raw, "chosen")
        context_r, rejected = _split_conversation(prompt_msgs, rejected_raw, "rejected")
        if context != context_r:
            raise _RowProblem(
                "rejected",
                "conversation differs from chosen before the response turn: the two "
                "responses must answer the same messages",
            )
        if not context:
            raise _RowProblem("prompt", "missing (no prompt messages before the response)")
        prompt = _messages_text(context, "prompt")
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
    rid = _optional_label(row.get("id"), "id")
    meta = _meta(row, {"prompt", "chosen", "rejected", "group", "user", "id", "meta"})
    return PreferencePair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        group=group,
        user=user,
        id=rid if rid is not None else default_id,
        meta=meta,
    )


def _optional_label(value: Any, name: str) -> str | None:
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _RowProblem(name, f"expected text, got {type(value).__name__}")
    return _check_encodable(str(value), name)


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) and not (isinstance(v, float) and v != v)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise DataError([RowError(str(path), 0, None, "is a directory, not a data file")])
    if not path.is_file():
        raise DataError([RowError(str(path), 0, None, "is not a regular file")])
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise DataError([RowError(str(path), 0, None, f"cannot read: {exc.strerror or exc}")]) from None


# ----------------------------------------------------------------------------- rows -> pairs


class _Ids:
    """First line of each id seen; in `compact` mode 8-byte hashes in arrays (memory ~16 bytes per row),
    with duplicates found by sorting at the end."""

    def __init__(self, compact: bool):
        from array import array

        self.compact = compact
        self.first: dict[str, int] = {}
        self.hashes, self.lines = array("Q"), array("Q")

    def add(self, pid: str, line: int) -> int | None:
        """The line of an earlier row with this id (now), or None; compact mode answers in `duplicates`."""
        if self.compact:
            self.hashes.append(
                int.from_bytes(hashlib.blake2b(pid.encode("utf-8"), digest_size=8).digest(), "little")
            )
            self.lines.append(line)
            return None
        if pid in self.first:
            return self.first[pid]
        self.first[pid] = line
        return None

    def duplicates(self) -> list[tuple[int, int]]:
        """(line, first line) of every repeated id (compact mode)."""
        import numpy as np

        h = np.frombuffer(self.hashes, dtype=np.uint64)
        lines = np.frombuffer(self.lines, dtype=np.uint64)
        order = np.lexsort((lines, h))
        h, lines = h[order], lines[order]
        out, first = [], 0
        for i in range(1, len(h)):
            if h[i] != h[i - 1]:
                first = i
            else:
                out.append((int(lines[i]), int(lines[first])))
        return sorted(out)


class _HelpSteer:
    """HelpSteer2-style rows (prompt, response, attribute ratings) -> one pair per attribute.

    For each prompt and each attribute, every two responses with different ratings make a pair whose
    chosen response has the higher rating; `group` is the attribute's name. With ``keep_text=False``
    only hashes of the texts are kept (validation)."""

    def __init__(self, source: str, attributes: Iterable[str] | None, keep_text: bool):
        self.source, self.keep_text = source, keep_text
        self.attrs = list(attributes) if attributes else None
        self.by_prompt: dict[Any, list[tuple[int, Any, dict]]] = {}
        self.rows = 0

    def add(self, lineno: int, row: Any) -> None:
        if not isinstance(row, dict):
            raise _RowProblem(None, f"row is a {type(row).__name__}, expected an object")
        prompt, response = _text(row.get("prompt"), "prompt"), _text(row.get("response"), "response")
        names = self.attrs or [k for k in HELPSTEER_ATTRIBUTES if k in row]
        if not names:
            raise _RowProblem(
                None,
                "no 'chosen'/'rejected' and no rating columns (HelpSteer2-style rows need some "
                f"of {', '.join(HELPSTEER_ATTRIBUTES)})",
            )
        scores = {}
        for name in names:
            value = row.get(name)
            try:
                if value is None or isinstance(value, bool):
                    raise TypeError
                scores[name] = float(value)
            except (TypeError, ValueError):
                raise _RowProblem(name, f"rating is not a number: {str(value)[:40]!r}") from None
            if scores[name] != scores[name] or abs(scores[name]) == float("inf"):
                raise _RowProblem(name, f"rating is not a finite number: {value!r}")
        key = prompt if self.keep_text else hashlib.sha1(prompt.encode("utf-8")).digest()
        resp = response if self.keep_text else hashlib.sha1(response.strip().encode("utf-8")).digest()
        self.by_prompt.setdefault(key, []).append((lineno, resp, scores))
        self.rows += 1

    def pairs(self) -> tuple[list[PreferencePair], int, str]:
        """(pairs (empty unless keep_text), number of pairs, why there are none when there are none)."""
        out, n = [], 0
        single = same_text = tied = 0
        for prompt, items in self.by_prompt.items():
            single += len(items) == 1
            for i in range(len(items)):
                for j in range(i + 1, len(items)):
                    (la, ra, sa), (lb, rb, sb) = items[i], items[j]
                    if (ra.strip() == rb.strip()) if self.keep_text else ra == rb:
                        same_text += 1
                        continue
                    differs = False
                    for name in sa:
                        if name in sb and sa[name] != sb[name]:
                            differs = True
                            n += 1
                            if self.keep_text:
                                hi, lo = (ra, rb) if sa[name] > sb[name] else (rb, ra)
                                out.append(
                                    PreferencePair(
                                        prompt,
                                        hi,
                                        lo,
                                        group=name,
                                        id=f"hs-{la}-{lb}-{name}",
                                        meta={"margin": abs(sa[name] - sb[name])},
                                    )
                                )
                    tied += not differs
        why = ""
        if self.rows and not n:
            why = (
                f"{self.rows} HelpSteer2-style rows (prompt, response, ratings) over {len(self.by_prompt)} prompts "
                f"made no pairs: {single} prompts have a single response, {tied} response pairs have equal "
                f"ratings on every attribute, {same_text} have identical text; a pair needs two different "
                "responses to one prompt whose ratings differ on some attribute"
            )
        return out, n, why


def helpsteer_to_pairs(
    rows: list[tuple[int, dict]], source: str, attributes: Iterable[str] | None = None
) -> tuple[list[PreferencePair], list[RowError]]:
    """HelpSteer2-style rows (prompt, response, attribute ratings) -> one pair per attribute."""
    hs, errors = _HelpSteer(source, attributes, keep_text=True), []
    for lineno, row in rows:
        try:
            hs.add(lineno, row)
        except _RowProblem as p:
            errors.append(RowError(source, lineno, p.field, p.reason))
    return hs.pairs()[0], errors


@dataclass
class ValidationReport:
    """What `validate_file` found: counts, and the first errors (every error went to `on_error`)."""

    source: str
    rows: int = 0  # rows read (valid or not)
    pairs: int = 0  # valid pairs (HelpSteer2 rows: pairs made)
    errors: int = 0
    groups: int = 0  # distinct groups (counted up to MAX_DISTINCT_LABELS)
    users: int = 0
    helpsteer: bool = False
    first_errors: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.pairs > 0


class _Collector:
    """Turns a reader's rows into pairs (kept, or only counted) and errors, one row at a time."""

    def __init__(self, source: str, keep: bool, on_error: Callable[[RowError], None] | None = None):
        self.source, self.keep, self.on_error = source, keep, on_error
        self.pairs: list[PreferencePair] = []
        self.errors: list[RowError] = []
        self.n_errors = self.n_rows = self.n_pairs = 0
        self.ids = _Ids(compact=not keep)
        self.helpsteer: _HelpSteer | None = None
        self.kind: str | None = None  # "pairs" or "helpsteer", decided by the first object row
        self.groups: set[str] = set()
        self.users: set[str] = set()
        self.stem = Path(source).stem

    def error(self, err: RowError) -> None:
        self.n_errors += 1
        if self.keep or len(self.errors) < 100:
            self.errors.append(err)
        if self.on_error:
            self.on_error(err)

    def add(self, lineno: int, row: Any) -> None:
        self.n_rows += 1
        if self.kind is None and isinstance(row, dict):
            self.kind = "helpsteer" if "response" in row and "chosen" not in row else "pairs"
            if self.kind == "helpsteer":
                self.helpsteer = _HelpSteer(self.source, None, keep_text=self.keep)
        try:
            if self.helpsteer is not None:
                self.helpsteer.add(lineno, row)
                return
            pair = normalize_row(row, default_id=f"{self.stem}-{lineno}")
        except _RowProblem as p:
            self.error(RowError(self.source, lineno, p.field, p.reason))
            return
        first = self.ids.add(pair.id, lineno)
        if first is not None:
            self.error(
                RowError(self.source, lineno, "id", f"duplicate id {pair.id[:60]!r} (first on line {first})")
            )
            return
        self.n_pairs += 1
        if self.keep:
            self.pairs.append(pair)
        else:
            for value, seen in ((pair.group, self.groups), (pair.user, self.users)):
                if value is not None and len(seen) < MAX_DISTINCT_LABELS:
                    seen.add(value)

    def run(self, rows: Rows) -> None:
        for lineno, row, err in rows:
            if err:
                self.n_rows += err.line > 0
                self.error(err)
            else:
                self.add(lineno, row)
        if self.helpsteer is not None:
            pairs, n, why = self.helpsteer.pairs()
            self.pairs, self.n_pairs = pairs, n
            if why:
                self.error(RowError(self.source, 0, None, why))
        elif not self.keep:
            for line, first in self.ids.duplicates():
                self.error(RowError(self.source, line, "id", f"duplicate id (first on line {first})"))
                self.n_pairs -= 1
        if self.n_rows == 0 and not any(e.line <= 0 for e in self.errors):
            self.error(RowError(self.source, 0, None, "empty file (no rows)"))


def _resolve(path: str | Path) -> Path:
    return default_dataset_path() if str(path) == "controlled" else Path(path)


def validate_file(
    path: str | Path, fmt: str | None = None, on_error: Callable[[RowError], None] | None = None
) -> ValidationReport:
    """Check every row of a file in one streaming pass (memory independent of the file's size): each
    problem goes to `on_error` as it is found (duplicate ids at the end); returns the counts."""
    path = _resolve(path)
    _check_readable(path)
    col = _Collector(str(path), keep=False, on_error=on_error)
    col.run(reader_for(path, fmt)(path))
    return ValidationReport(
        str(path),
        rows=col.n_rows,
        pairs=col.n_pairs,
        errors=col.n_errors,
        groups=len(col.groups),
        users=len(col.users),
        helpsteer=col.helpsteer is not None,
        first_errors=col.errors[:100],
    )


def load_pairs(path: str | Path, skip_bad: bool = False, fmt: str | None = None) -> LoadResult:
    """Load preference pairs from JSONL/JSON/CSV/Parquet (plain, TRL conversational, HH-RLHF, HelpSteer2).

    `path` may also be ``hf:<dataset id>[:split]`` to load from the Hugging Face hub (needs the optional
    `datasets` package and network access), or ``controlled`` for the embedded default dataset.
    """
    if str(path).startswith("hf:"):
        return load_hf_dataset(str(path)[3:], skip_bad=skip_bad)
    path = _resolve(path)
    _check_readable(path)
    reader = reader_for(path, fmt)
    col = _Collector(str(path), keep=True)
    col.run(reader(path))
    return _finish(col, skip_bad)


def _finish(col: _Collector, skip_bad: bool) -> LoadResult:
    errors = sorted(col.errors, key=lambda e: e.line)
    if errors and (not skip_bad or not col.pairs):
        raise DataError(errors, total_rows=col.n_rows)
    return LoadResult(col.pairs, errors, col.source, rows=col.n_rows)


def load_hf_dataset(spec: str, skip_bad: bool = False) -> LoadResult:
    """``owner/name[:split]`` from the Hugging Face hub; optional, never used by tests."""
    try:
        import datasets  # pyright: ignore[reportMissingImports] (the optional `hub` extra)
    except ImportError as exc:  # pragma: no cover - optional extra
        raise RuntimeError("loading from the hub needs `pip install moe-reward-lens[hub]`") from exc
    name, _, split = spec.partition(":")
    ds = datasets.load_dataset(name, split=split or "train")  # pragma: no cover - network
    col = _Collector(f"hf:{spec}", keep=True)  # pragma: no cover
    col.run((i + 1, dict(r), None) for i, r in enumerate(ds))  # pragma: no cover
    return _finish(col, skip_bad)  # pragma: no cover


def save_jsonl(pairs: Iterable[PreferencePair], path: str | Path) -> None:
    """Write pairs as JSONL, atomically (a failed write leaves any existing file as it was)."""
    with open_atomic(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")


def default_dataset_path() -> Path:
    return Path(__file__).resolve().parents[2] / "data" / "controlled" / "pairs.jsonl.gz"


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


def split_pairs(
    pairs: list[PreferencePair],
    validation: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    by: str | None = None,
) -> Splits:
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
