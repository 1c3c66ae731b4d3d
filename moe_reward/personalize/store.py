"""Labels and profiles on disk: one SQLite file, safe for many dashboard sessions at once.

Why this shape: every browser session (and every rerun) runs in its own thread, so each call opens its
own short-lived connection (sqlite3 connections must not be shared across threads, and per-thread ones
would pile up); writes in this process take a lock, WAL lets readers run beside the one writer, and
`busy_timeout` makes writers of other processes wait instead of failing.

**The labels are the single source of truth.** A label row keeps what the profile's adapter needs to
replay it (the expert margins oriented "preferred minus other", and the router logits of its prompt); a
profile row keeps only the adapter's *spec* (which adapter, its parameters, the starting weights).
`load_profile` rebuilds the profile from its labels, in label order, so every browser session that has
the profile open sees every session's labels, and nothing the page holds in memory can overwrite them.

Invariants the schema and the write transactions enforce:

- one label per (profile, pair): a second one raises `DuplicateLabel` and stores nothing, so a fast double
  click can never store a pair twice, let alone with opposite preferences;
- label ids are never reused (AUTOINCREMENT), also after Undo or Reset deleted the newest ones;
- Undo deletes the newest label *of the calling session* (`undo_last(profile_id, session)`), never another
  session's;
- a failed write (disk full, read-only file, lock timeout) raises `StoreError`, whose message says whether
  the label was stored (it is checked after the failure), and leaves everything else as it was.

A read-only workspace (a read-only mount, a file without write permission) still opens: reads work,
every write raises `StoreReadOnly`; `read_only` says why.
"""

from __future__ import annotations

import copy
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .adapters import Adapter, make_adapter

LABEL_COLUMNS = (
    "id INTEGER PRIMARY KEY AUTOINCREMENT, annotator_id INTEGER NOT NULL REFERENCES annotators(id), "
    "profile_id INTEGER REFERENCES profiles(id), pair_id TEXT NOT NULL, prompt TEXT NOT NULL, "
    "chosen TEXT NOT NULL, rejected TEXT NOT NULL, source TEXT NOT NULL DEFAULT 'manual', "
    "created_at REAL NOT NULL, session TEXT, margins_json TEXT, logits_json TEXT"
)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    id INTEGER PRIMARY KEY,
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    adapter TEXT NOT NULL,
    profile_json TEXT NOT NULL DEFAULT '{{}}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (annotator_id, name, model)
);
CREATE TABLE IF NOT EXISTS labels ({LABEL_COLUMNS});
CREATE TABLE IF NOT EXISTS profile_history (
    id INTEGER PRIMARY KEY,
    profile_id INTEGER NOT NULL REFERENCES profiles(id),
    step INTEGER NOT NULL,
    weights_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS labels_by_profile ON labels (profile_id, id);
CREATE INDEX IF NOT EXISTS labels_by_annotator ON labels (annotator_id, id);
"""
UNIQUE_PAIR_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS labels_one_per_pair ON labels (profile_id, pair_id) "
    "WHERE profile_id IS NOT NULL"
)
LABEL_SOURCES = ("manual", "typed", "simulated", "import")
SPEC_KEYS = ("format", "name", "num_experts", "params", "initial_weights")  # what a profile row keeps
MAX_IMPORT_LABELS = 100_000


class StoreError(RuntimeError):
    """A write that did not happen (or a file that cannot be opened); the message says which and why."""


class StoreReadOnly(StoreError):
    pass


class DuplicateLabel(StoreError):
    """The profile already has a label for this pair; nothing was stored."""

    def __init__(self, pair_id: str, existing_id: int):
        super().__init__(
            f"pair {pair_id!r} already has a label in this profile (label #{existing_id}); "
            "this one was not stored"
        )
        self.pair_id, self.existing_id = pair_id, existing_id


@dataclass
class Label:
    annotator: str
    pair_id: str
    prompt: str
    chosen: str  # the response the annotator preferred
    rejected: str
    profile_id: int | None = None
    source: str = "manual"
    created_at: float = 0.0
    id: int | None = None
    session: str | None = None  # the browser session (or CLI run) that stored it: Undo undoes only its own
    margins: list[float] | None = None  # expert margins, preferred minus other (what the adapter replays)
    logits: list[float] | None = None  # router logits of the prompt (for router-bias adapters)

    def __post_init__(self) -> None:
        if not self.annotator.strip():
            raise ValueError("annotator must not be empty")
        if self.source not in LABEL_SOURCES:
            raise ValueError(f"source must be one of {LABEL_SOURCES}, got {self.source!r}")


@dataclass
class ProfileRecord:
    id: int
    annotator: str
    name: str
    model: str
    adapter: str
    profile: dict  # the adapter spec (older files: a whole adapter dict, labels included)
    created_at: float
    updated_at: float
    raw: str = ""  # profile_json as stored: a cheap "did the spec change" check


@dataclass
class ProfileState:
    """A profile rebuilt from its labels: the adapter and the label ids it replayed (in order)."""

    profile: ProfileRecord
    adapter: Adapter
    label_ids: tuple[int, ...]
    unusable: int = 0  # stored labels without margins (older files): counted, not replayed
    pair_ids: set[str] = field(default_factory=set)  # every labeled pair of the profile


def adapter_spec(adapter: Adapter) -> dict:
    """What a profile row stores: the adapter's kind, parameters and starting weights (no labels)."""
    d = adapter.to_dict()
    return {k: d[k] for k in SPEC_KEYS}


def adapter_from_spec(spec: dict) -> Adapter:
    """A fresh adapter (no labels) from a profile's spec."""
    return Adapter.from_dict({k: spec[k] for k in SPEC_KEYS if k in spec})


def _disk_hint(path: Path) -> str:
    """'; the disk is full' when it is (sqlite reports a full disk as SQLITE_FULL or as a disk I/O error)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return ""
    return f"; the disk is full ({free} bytes free)" if free < 1 << 20 else ""


def _is_read_only_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, PermissionError) or any(
        s in text for s in ("readonly", "read-only", "unable to open", "permission denied", "read only")
    )


class LabelStore:
    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000):
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()  # one writer at a time in this process; busy_timeout across processes
        self.read_only: str | None = None  # why nothing can be written, when nothing can
        self._columns: set[str] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connection() as conn:
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once for the file
                conn.executescript(SCHEMA)
                self._migrate(conn)
                conn.executescript(INDEXES)
                try:
                    conn.execute(UNIQUE_PAIR_INDEX)
                except sqlite3.IntegrityError:
                    pass  # an older file holds duplicates: the write transaction still refuses new ones
        except (sqlite3.OperationalError, OSError) as exc:
            if not _is_read_only_error(exc):
                raise StoreError(
                    f"{self.path}: cannot open the label store, nothing can be saved "
                    f"({exc}{_disk_hint(self.path)})"
                ) from exc
            self.read_only = f"{self.path} cannot be written ({exc})"
            if self.path.is_file():
                try:
                    self._rows("SELECT COUNT(*) FROM annotators")
                except sqlite3.DatabaseError as inner:
                    raise StoreError(f"{self.path}: cannot read the label store ({inner})") from inner
        self._columns = self._label_columns()

    # ------------------------------------------------------------------ connections
    @contextmanager
    def _connection(self, read_only: bool = False) -> Iterator[sqlite3.Connection]:
        """A fresh connection per call: nothing is shared between threads and nothing leaks (Streamlit
        runs every rerun in a new thread, so per-thread connections would pile up)."""
        if read_only or self.read_only:
            # A WAL file in a read-only place cannot get its -shm index: read it as immutable.
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?immutable=1",
                uri=True,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
            )
        else:
            conn = sqlite3.connect(
                str(self.path), timeout=self.busy_timeout_ms / 1000, isolation_level=None
            )  # autocommit; transactions are explicit below
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys=ON")
            yield conn
        finally:
            conn.close()

    def _rows(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        if self.read_only and not self.path.is_file():
            return []  # nothing was ever stored here
        try:
            with self._connection() as conn:
                return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            # A full disk cannot even hold the WAL index (-shm) that a reader needs. With no WAL content
            # waiting (the last connection checkpointed it), the file itself is complete: read it as is.
            wal = self.path.with_name(self.path.name + "-wal")
            if not self.read_only and (not wal.exists() or wal.stat().st_size == 0):
                try:
                    with self._connection(read_only=True) as conn:
                        return conn.execute(sql, args).fetchall()
                except sqlite3.DatabaseError:
                    pass
            raise StoreError(f"cannot read {self.path}: {exc}") from exc

    def _write(self, fn, what: str = "the change"):
        """Run `fn(conn)` in one IMMEDIATE transaction (takes the write lock up front: no upgrade deadlock),
        committed before returning. sqlite errors become `StoreError`s that say nothing was written."""
        if self.read_only:
            raise StoreReadOnly(f"{what} was not saved: {self.read_only}")
        with self._lock:
            try:
                with self._connection() as conn:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        out = fn(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                    return out
            except sqlite3.DatabaseError as exc:  # full disk, read-only file, lock timeout, broken constraint
                cls = StoreReadOnly if _is_read_only_error(exc) else StoreError
                raise cls(f"{what} was not saved: {self.path}: {exc}{_disk_hint(self.path)}") from exc

    def close(self) -> None:
        """Nothing stays open between calls; kept so that callers can release a store explicitly."""

    # ------------------------------------------------------------------ schema
    def _label_columns(self) -> set[str]:
        return {r[1] for r in self._rows("PRAGMA table_info(labels)")}

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Files written before labels carried margins and sessions: rebuild the labels table with
        AUTOINCREMENT ids (never reused) and the new columns, keeping every row and its id."""
        row = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'labels'"
        ).fetchone()
        if row is None or "AUTOINCREMENT" in row[0].upper():
            return
        old = [r[1] for r in conn.execute("PRAGMA table_info(labels)")]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"CREATE TABLE labels_v2 ({LABEL_COLUMNS})")
            cols = ", ".join(old)
            conn.execute(f"INSERT INTO labels_v2 ({cols}) SELECT {cols} FROM labels")
            conn.execute("DROP TABLE labels")
            conn.execute("ALTER TABLE labels_v2 RENAME TO labels")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _label_select(self) -> str:
        extra = ", ".join(
            f"l.{c}" if c in self._columns else "NULL" for c in ("session", "margins_json", "logits_json")
        )
        return (
            "SELECT a.name, l.pair_id, l.prompt, l.chosen, l.rejected, l.profile_id, l.source, l.created_at, l.id, "
            f"{extra} FROM labels l JOIN annotators a ON a.id = l.annotator_id"
        )

    @staticmethod
    def _label(row) -> Label:
        *base, session, margins, logits = row
        return Label(
            *base,
            session=session,
            margins=None if margins is None else json.loads(margins),
            logits=None if logits is None else json.loads(logits),
        )

    # ------------------------------------------------------------------ annotators
    def annotator_id(self, name: str) -> int:
        """The id of annotator `name`, created on first use."""
        name = name.strip()
        if not name:
            raise ValueError("annotator name must not be empty")
        rows = self._rows("SELECT id FROM annotators WHERE name = ?", (name,))
        if rows:
            return int(rows[0][0])

        def add(conn):
            conn.execute(
                "INSERT OR IGNORE INTO annotators (name, created_at) VALUES (?, ?)", (name, time.time())
            )
            return int(conn.execute("SELECT id FROM annotators WHERE name = ?", (name,)).fetchone()[0])

        return self._write(add, f"annotator {name!r}")

    def annotators(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT name FROM annotators ORDER BY name")]

    # ------------------------------------------------------------------ profiles
    def _profile(self, row) -> ProfileRecord:
        try:
            spec = json.loads(row[5] or "{}")
        except ValueError:
            spec = {}
        return ProfileRecord(
            int(row[0]),
            row[1],
            row[2],
            row[3],
            row[4],
            spec if isinstance(spec, dict) else {},
            row[6],
            row[7],
            row[5] or "",
        )

    _PROFILE_SELECT = (
        "SELECT p.id, a.name, p.name, p.model, p.adapter, p.profile_json, p.created_at, p.updated_at "
        "FROM profiles p JOIN annotators a ON a.id = p.annotator_id"
    )

    def find_profile(self, annotator: str, name: str, model: str) -> ProfileRecord | None:
        rows = self._rows(
            self._PROFILE_SELECT + " WHERE a.name = ? AND p.name = ? AND p.model = ?",
            (annotator.strip(), name.strip(), model),
        )
        return self._profile(rows[0]) if rows else None

    def get_or_create_profile(
        self, annotator: str, name: str, model: str, adapter: str, profile: dict | None = None
    ) -> ProfileRecord:
        """The profile (annotator, name, model); created with `adapter` and spec `profile` if it is new
        (two sessions creating it at once get the same one)."""
        if not name.strip():
            raise ValueError("profile name must not be empty")
        found = self.find_profile(annotator, name, model)
        if found is not None:  # the common case (every page rerun): a read, no write lock
            return found
        spec = {k: v for k, v in (profile or {}).items() if k in SPEC_KEYS}

        def add(conn):
            now = time.time()
            conn.execute(
                "INSERT OR IGNORE INTO annotators (name, created_at) VALUES (?, ?)", (annotator.strip(), now)
            )
            aid = conn.execute("SELECT id FROM annotators WHERE name = ?", (annotator.strip(),)).fetchone()[0]
            conn.execute(
                "INSERT OR IGNORE INTO profiles (annotator_id, name, model, adapter, profile_json, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (aid, name.strip(), model, adapter, json.dumps(spec), now, now),
            )

        self._write(add, f"profile {name.strip()!r}")
        created = self.find_profile(annotator, name, model)
        if created is None:  # removed by another session between the write and this read
            raise StoreError(f"profile {annotator.strip()}/{name.strip()} was deleted while it was created")
        return created

    def profile(self, profile_id: int) -> ProfileRecord | None:
        rows = self._rows(self._PROFILE_SELECT + " WHERE p.id = ?", (profile_id,))
        return self._profile(rows[0]) if rows else None

    def profiles(
        self, annotator: str | None = None, model: str | None = None, recent_first: bool = False
    ) -> list[ProfileRecord]:
        sql, args = self._PROFILE_SELECT + " WHERE 1=1", []
        if annotator is not None:
            sql += " AND a.name = ?"
            args.append(annotator.strip())
        if model is not None:
            sql += " AND p.model = ?"
            args.append(model)
        order = " ORDER BY p.updated_at DESC, p.id DESC" if recent_first else " ORDER BY p.name"
        return [self._profile(r) for r in self._rows(sql + order, args)]

    def last_profile(self, annotator: str, model: str) -> ProfileRecord | None:
        """The annotator's most recently used profile for this model (labeled, created or changed last)."""
        found = self.profiles(annotator=annotator, model=model, recent_first=True)
        return found[0] if found else None

    def save_profile(self, profile_id: int, profile: dict, adapter: str | None = None) -> None:
        """Store a new spec (adapter kind, parameters, starting weights); every session rebuilds from it."""
        spec = {k: v for k, v in profile.items() if k in SPEC_KEYS}

        def upd(conn):
            conn.execute(
                "UPDATE profiles SET profile_json = ?, adapter = COALESCE(?, adapter), updated_at = ? "
                "WHERE id = ?",
                (json.dumps(spec), adapter or spec.get("name"), time.time(), profile_id),
            )

        self._write(upd, "the profile's settings")

    # ------------------------------------------------------------------ labels
    def add_label(self, label: Label) -> int:
        """A label without a profile (or with one, without margins): kept, but no profile replays it."""
        return self._write(
            lambda conn: self._insert_label(conn, label), f"the label of pair {label.pair_id!r}"
        )

    @staticmethod
    def _insert_label(conn, label: Label) -> int:
        now = time.time()
        if label.profile_id is not None:
            dup = conn.execute(
                "SELECT id FROM labels WHERE profile_id = ? AND pair_id = ?",
                (label.profile_id, label.pair_id),
            ).fetchone()
            if dup is not None:
                raise DuplicateLabel(label.pair_id, int(dup[0]))
        conn.execute(
            "INSERT OR IGNORE INTO annotators (name, created_at) VALUES (?, ?)",
            (label.annotator.strip(), now),
        )
        aid = conn.execute("SELECT id FROM annotators WHERE name = ?", (label.annotator.strip(),)).fetchone()[
            0
        ]
        cur = conn.execute(
            "INSERT INTO labels (annotator_id, profile_id, pair_id, prompt, chosen, rejected, source, created_at, "
            "session, margins_json, logits_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                aid,
                label.profile_id,
                label.pair_id,
                label.prompt,
                label.chosen,
                label.rejected,
                label.source,
                label.created_at or now,
                label.session,
                _vector_json(label.margins),
                _vector_json(label.logits),
            ),
        )
        if label.profile_id is not None:
            conn.execute("UPDATE profiles SET updated_at = ? WHERE id = ?", (now, label.profile_id))
        return int(cur.lastrowid)

    def record_label(self, label: Label, margins=None, logits=None, session: str | None = None) -> int:
        """Store one label of a profile, with what its adapter replays (margins oriented preferred minus
        other; router logits optional), in one committed transaction. Returns the label id.

        Raises `DuplicateLabel` when the profile already labeled this pair, `StoreReadOnly`/`StoreError`
        when the write failed; after a failure the file is asked whether the label is there, so the
        message never leaves that open."""
        if label.profile_id is None:
            raise ValueError("record_label needs a label with a profile_id (add_label stores one without)")
        label.margins = (
            label.margins if margins is None else [float(x) for x in np.asarray(margins).reshape(-1)]
        )
        label.logits = label.logits if logits is None else [float(x) for x in np.asarray(logits).reshape(-1)]
        label.session = session if session is not None else label.session
        if label.margins is None or not np.all(np.isfinite(label.margins)):
            raise ValueError(f"label of pair {label.pair_id!r}: expert margins must be finite numbers")
        rec = self.profile(label.profile_id)
        if rec is None:
            raise ValueError(f"no profile #{label.profile_id}")
        k = rec.profile.get("num_experts")
        if k is not None and len(label.margins) != int(k):
            raise ValueError(
                f"label of pair {label.pair_id!r}: {len(label.margins)} expert margins for a profile "
                f"over {k} experts"
            )
        label.created_at = label.created_at or time.time()
        try:
            return self._write(
                lambda conn: self._insert_label(conn, label), f"the label of pair {label.pair_id!r}"
            )
        except DuplicateLabel:
            raise
        except StoreError as exc:
            stored = self._find_label(label)
            if stored is not None:  # the commit reached the file before the error (e.g. a failed checkpoint)
                return stored
            raise type(exc)(f"{exc} (checked: the label is not in the store)") from exc

    def _find_label(self, label: Label) -> int | None:
        try:
            rows = self._rows(
                "SELECT id FROM labels WHERE profile_id = ? AND pair_id = ? AND created_at = ?",
                (label.profile_id, label.pair_id, label.created_at),
            )
        except sqlite3.Error:
            return None
        return int(rows[0][0]) if rows else None

    def labels(self, annotator: str | None = None, profile_id: int | None = None) -> list[Label]:
        sql, args = self._label_select() + " WHERE 1=1", []
        if annotator is not None:
            sql += " AND a.name = ?"
            args.append(annotator)
        if profile_id is not None:
            sql += " AND l.profile_id = ?"
            args.append(profile_id)
        return [self._label(row) for row in self._rows(sql + " ORDER BY l.id", args)]

    def label_ids(self, profile_id: int) -> list[int]:
        return [
            int(r[0])
            for r in self._rows("SELECT id FROM labels WHERE profile_id = ? ORDER BY id", (profile_id,))
        ]

    def count_labels(self, profile_id: int | None = None, session: str | None = None) -> int:
        """Labels in the store, in one profile, or (with `session`) stored by one session in it."""
        sql, args = "SELECT COUNT(*) FROM labels WHERE 1=1", []
        if profile_id is not None:
            sql += " AND profile_id = ?"
            args.append(profile_id)
        if session is not None:
            if "session" not in self._columns:
                return 0
            sql += " AND session = ?"
            args.append(session)
        rows = self._rows(sql, args)
        return int(rows[0][0]) if rows else 0

    def undo_last(self, profile_id: int, session: str | None) -> Label | None:
        """Delete the newest label that `session` stored in the profile (None: labels stored without a
        session, e.g. by older versions). Another session's labels are never touched."""

        def write(conn):
            cond = "session = ?" if session is not None else "session IS NULL"
            args = (profile_id, session) if session is not None else (profile_id,)
            row = conn.execute(
                f"SELECT id FROM labels WHERE profile_id = ? AND {cond} ORDER BY id DESC LIMIT 1", args
            ).fetchone()
            if row is None:
                return None
            gone = conn.execute(self._label_select() + " WHERE l.id = ?", (row[0],)).fetchone()
            conn.execute("DELETE FROM labels WHERE id = ?", (row[0],))
            conn.execute("UPDATE profiles SET updated_at = ? WHERE id = ?", (time.time(), profile_id))
            return self._label(gone)

        return self._write(write, "the undo")

    def reset_profile(self, profile_id: int, profile: dict | None = None) -> int:
        """Forget a profile's labels (every session's); optionally store a new spec. Returns how many."""

        def write(conn):
            n = conn.execute("DELETE FROM labels WHERE profile_id = ?", (profile_id,)).rowcount
            conn.execute("DELETE FROM profile_history WHERE profile_id = ?", (profile_id,))
            if profile is not None:
                spec = {k: v for k, v in profile.items() if k in SPEC_KEYS}
                conn.execute(
                    "UPDATE profiles SET profile_json = ?, updated_at = ? WHERE id = ?",
                    (json.dumps(spec), time.time(), profile_id),
                )
            return int(n)

        return self._write(write, "the reset")

    def replace_labels(
        self, profile_id: int, spec: dict, labels: Sequence[Label], session: str | None = None
    ) -> int:
        """Import: the profile's labels become `labels` (with margins) and its spec `spec`, in one
        transaction; returns how many labels it holds now."""
        if len(labels) > MAX_IMPORT_LABELS:
            raise ValueError(f"{len(labels)} labels: at most {MAX_IMPORT_LABELS} can be imported")
        seen: set[str] = set()
        for lab in labels:
            if lab.margins is None or not np.all(np.isfinite(lab.margins)):
                raise ValueError(f"label of pair {lab.pair_id!r}: expert margins must be finite numbers")
            if len(lab.margins) != int(spec["num_experts"]):
                raise ValueError(
                    f"label of pair {lab.pair_id!r}: {len(lab.margins)} margins for {spec['num_experts']} experts"
                )
            if lab.pair_id in seen:
                raise ValueError(f"pair {lab.pair_id!r} is labeled twice in the file")
            seen.add(lab.pair_id)

        def write(conn):
            conn.execute("DELETE FROM labels WHERE profile_id = ?", (profile_id,))
            conn.execute(
                "UPDATE profiles SET profile_json = ?, adapter = ?, updated_at = ? WHERE id = ?",
                (
                    json.dumps({k: spec[k] for k in SPEC_KEYS if k in spec}),
                    spec["name"],
                    time.time(),
                    profile_id,
                ),
            )
            for lab in labels:
                lab.profile_id, lab.session = profile_id, session
                self._insert_label(conn, lab)
            return len(labels)

        return self._write(write, "the import")

    # ------------------------------------------------------------------ profiles rebuilt from labels
    def load_profile(
        self, profile_id: int, previous: ProfileState | None = None, fallback: dict | None = None
    ) -> ProfileState:
        """The profile rebuilt from its stored labels, in label order. With `previous` (the state this
        caller rebuilt last time) only the labels added since are replayed when nothing else changed.
        `fallback`: the spec to use when the stored one is missing (a profile created without one)."""
        rec = self.profile(profile_id)
        if rec is None:
            raise ValueError(f"no profile #{profile_id}")
        ids = self.label_ids(profile_id)
        if previous is not None and previous.profile.raw == rec.raw and previous.profile.id == rec.id:
            n_prev = len(previous.label_ids)
            if tuple(ids[:n_prev]) == previous.label_ids:
                if len(ids) == n_prev:
                    previous.profile = rec
                    return previous
                new = self._replay_rows(rec, ids[n_prev:])
                adapter = copy.deepcopy(previous.adapter)  # `previous` stays valid (a rerun may be cut short)
                unusable = previous.unusable
                pair_ids = set(previous.pair_ids)
                for _, pair_id, m, a in new:
                    pair_ids.add(pair_id)
                    unusable += not _replay(adapter, pair_id, m, a)
                return ProfileState(rec, adapter, tuple(ids), unusable, pair_ids)
        spec = rec.profile if rec.profile.get("name") else (fallback or {})
        if not spec:
            raise ValueError(f"profile {rec.annotator}/{rec.name} has no adapter settings stored")
        adapter = adapter_from_spec(spec)
        rows = self._replay_rows(rec, ids)
        unusable = sum(not _replay(adapter, pair_id, m, a) for _, pair_id, m, a in rows)
        return ProfileState(rec, adapter, tuple(ids), unusable, {r[1] for r in rows})

    def _replay_rows(
        self, rec: ProfileRecord, ids: Sequence[int]
    ) -> list[tuple[int, str, list | None, list | None]]:
        """(id, pair id, margins, logits) of these labels; margins of labels stored by older versions come
        from the adapter dict those versions kept in the profile row."""
        if not ids:
            return []
        legacy: dict[str, tuple] = {}
        old = rec.profile.get("labels") or {}
        if old.get("expert_margins"):
            logits = old.get("router_logits") or [None] * len(old["expert_margins"])
            legacy = {
                pid: (m, a)
                for pid, m, a in zip(old.get("pair_ids") or [], old["expert_margins"], logits, strict=False)
            }
        out = []
        margins_col = "margins_json" if "margins_json" in self._columns else "NULL"
        logits_col = "logits_json" if "logits_json" in self._columns else "NULL"
        first = min(ids)
        rows = self._rows(
            f"SELECT id, pair_id, {margins_col}, {logits_col} FROM labels "
            "WHERE profile_id = ? AND id >= ? ORDER BY id",
            (rec.id, first),
        )
        wanted = set(ids)
        for lid, pair_id, m, a in rows:
            if lid not in wanted:
                continue
            if m is not None:
                out.append((lid, pair_id, json.loads(m), None if a is None else json.loads(a)))
            elif pair_id in legacy:
                out.append((lid, pair_id, legacy[pair_id][0], legacy[pair_id][1]))
            else:
                out.append((lid, pair_id, None, None))
        return out

    def profile_weights(self, profile_id: int) -> list[float]:
        """The profile's expert weights now (rebuilt from its labels)."""
        return self.load_profile(profile_id).adapter.weights.tolist()

    def history(self, profile_id: int) -> list[tuple[int, list[float]]]:
        """The profile's weights after each of its labels (rebuilt from the labels)."""
        state = self.load_profile(profile_id)
        return [(h.step, h.weights) for h in state.adapter.history]


def _vector_json(v) -> str | None:
    return None if v is None else json.dumps([float(x) for x in np.asarray(v, dtype=float).reshape(-1)])


def _replay(adapter: Adapter, pair_id: str, margins, logits) -> bool:
    """Apply one stored label; False when it cannot be (no margins stored, or another number of experts)."""
    if margins is None:
        return False
    try:
        adapter.update(margins, pair_id, logits)
    except ValueError:
        return False
    return True


def new_profile_spec(adapter: str, num_experts: int, prior, margin_scale=None, **params) -> dict:
    """The spec of a new profile: `adapter` with `params`, starting at `prior`."""
    if margin_scale is not None:
        params["margin_scale"] = margin_scale
    return adapter_spec(make_adapter(adapter, num_experts, prior, **params))
