"""Labels and profiles on disk: one SQLite file, safe for many dashboard sessions at once.

Why this shape: every browser session (and every rerun) runs in its own thread, so each call opens its
own short-lived connection (sqlite3 connections must not be shared across threads, and per-thread ones
would pile up); writes in this process take a lock, WAL lets readers run beside the one writer, and
`busy_timeout` makes writers of other processes wait instead of failing. A label, the profile it produced
and the profile's history row are written in one transaction, committed before the caller returns, so a
confirmed label is never lost and never half-written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
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
    profile_json TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (annotator_id, name, model)
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    profile_id INTEGER REFERENCES profiles(id),
    pair_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    chosen TEXT NOT NULL,
    rejected TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'manual',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_profile ON labels (profile_id, id);
CREATE INDEX IF NOT EXISTS labels_by_annotator ON labels (annotator_id, id);
CREATE TABLE IF NOT EXISTS profile_history (
    id INTEGER PRIMARY KEY,
    profile_id INTEGER NOT NULL REFERENCES profiles(id),
    step INTEGER NOT NULL,
    weights_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_profile ON profile_history (profile_id, step);
"""
LABEL_SOURCES = ("manual", "typed", "simulated", "import")


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
    profile: dict
    created_at: float
    updated_at: float


class LabelStore:
    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()  # one writer at a time in this process; busy_timeout across processes
        with self._connection() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once for the file
            conn.executescript(SCHEMA)

    # ------------------------------------------------------------------ connections
    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection per call: nothing is shared between threads and nothing leaks (Streamlit
        runs every rerun in a new thread, so per-thread connections would pile up)."""
        conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_ms / 1000,
                               isolation_level=None)  # autocommit; transactions are explicit below
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys=ON")
            yield conn
        finally:
            conn.close()

    def _rows(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        with self._connection() as conn:
            return conn.execute(sql, args).fetchall()

    def _write(self, fn):
        """Run `fn(conn)` in one IMMEDIATE transaction (takes the write lock up front: no upgrade deadlock),
        committed before returning."""
        with self._lock, self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out

    def close(self) -> None:
        """Nothing stays open between calls; kept so that callers can release a store explicitly."""

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
            conn.execute("INSERT OR IGNORE INTO annotators (name, created_at) VALUES (?, ?)", (name, time.time()))
            return int(conn.execute("SELECT id FROM annotators WHERE name = ?", (name,)).fetchone()[0])

        return self._write(add)

    def annotators(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT name FROM annotators ORDER BY name")]

    # ------------------------------------------------------------------ profiles
    def _profile(self, row) -> ProfileRecord:
        return ProfileRecord(int(row[0]), row[1], row[2], row[3], row[4], json.loads(row[5] or "{}"), row[6], row[7])

    _PROFILE_SELECT = ("SELECT p.id, a.name, p.name, p.model, p.adapter, p.profile_json, p.created_at, p.updated_at "
                       "FROM profiles p JOIN annotators a ON a.id = p.annotator_id")

    def get_or_create_profile(self, annotator: str, name: str, model: str, adapter: str,
                              profile: dict | None = None) -> ProfileRecord:
        """The profile (annotator, name, model); created with `adapter` and `profile` if it is new."""
        if not name.strip():
            raise ValueError("profile name must not be empty")
        where = " WHERE a.name = ? AND p.name = ? AND p.model = ?"
        key = (annotator.strip(), name.strip(), model)
        rows = self._rows(self._PROFILE_SELECT + where, key)
        if rows:  # the common case (every page rerun): a read, no write lock
            return self._profile(rows[0])
        aid = self.annotator_id(annotator)

        def add(conn):
            now = time.time()
            conn.execute("INSERT OR IGNORE INTO profiles (annotator_id, name, model, adapter, profile_json, created_at, "
                         "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (aid, name.strip(), model, adapter, json.dumps(profile or {}), now, now))

        self._write(add)
        return self._profile(self._rows(self._PROFILE_SELECT + where, key)[0])

    def profile(self, profile_id: int) -> ProfileRecord | None:
        rows = self._rows(self._PROFILE_SELECT + " WHERE p.id = ?", (profile_id,))
        return self._profile(rows[0]) if rows else None

    def profiles(self, annotator: str | None = None, model: str | None = None) -> list[ProfileRecord]:
        sql, args = self._PROFILE_SELECT + " WHERE 1=1", []
        if annotator is not None:
            sql += " AND a.name = ?"
            args.append(annotator)
        if model is not None:
            sql += " AND p.model = ?"
            args.append(model)
        return [self._profile(r) for r in self._rows(sql + " ORDER BY p.name", args)]

    def save_profile(self, profile_id: int, profile: dict, adapter: str | None = None) -> None:
        def upd(conn):
            conn.execute("UPDATE profiles SET profile_json = ?, adapter = COALESCE(?, adapter), updated_at = ? "
                         "WHERE id = ?", (json.dumps(profile), adapter, time.time(), profile_id))

        self._write(upd)

    # ------------------------------------------------------------------ labels
    def add_label(self, label: Label) -> int:
        return self._write(lambda conn: self._insert_label(conn, label))

    @staticmethod
    def _insert_label(conn, label: Label) -> int:
        now = time.time()
        conn.execute("INSERT OR IGNORE INTO annotators (name, created_at) VALUES (?, ?)", (label.annotator.strip(), now))
        aid = conn.execute("SELECT id FROM annotators WHERE name = ?", (label.annotator.strip(),)).fetchone()[0]
        cur = conn.execute(
            "INSERT INTO labels (annotator_id, profile_id, pair_id, prompt, chosen, rejected, source, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (aid, label.profile_id, label.pair_id, label.prompt, label.chosen, label.rejected, label.source,
             label.created_at or now))
        return int(cur.lastrowid)

    def record_label(self, label: Label, profile: dict | None = None, weights: list[float] | None = None,
                     step: int | None = None) -> int:
        """Label + updated profile + history row, in one committed transaction. Returns the label id."""
        def write(conn):
            label_id = self._insert_label(conn, label)
            now = time.time()
            if label.profile_id is not None and profile is not None:
                conn.execute("UPDATE profiles SET profile_json = ?, updated_at = ? WHERE id = ?",
                             (json.dumps(profile), now, label.profile_id))
            if label.profile_id is not None and weights is not None:
                conn.execute("INSERT INTO profile_history (profile_id, step, weights_json, created_at) VALUES (?, ?, ?, ?)",
                             (label.profile_id, int(step or 0), json.dumps([float(w) for w in weights]), now))
            return label_id

        return self._write(write)

    def labels(self, annotator: str | None = None, profile_id: int | None = None) -> list[Label]:
        sql = ("SELECT a.name, l.pair_id, l.prompt, l.chosen, l.rejected, l.profile_id, l.source, l.created_at, l.id "
               "FROM labels l JOIN annotators a ON a.id = l.annotator_id WHERE 1=1")
        args: list = []
        if annotator is not None:
            sql += " AND a.name = ?"
            args.append(annotator)
        if profile_id is not None:
            sql += " AND l.profile_id = ?"
            args.append(profile_id)
        return [Label(*row) for row in self._rows(sql + " ORDER BY l.id", args)]

    def count_labels(self, profile_id: int | None = None) -> int:
        if profile_id is None:
            return int(self._rows("SELECT COUNT(*) FROM labels")[0][0])
        return int(self._rows("SELECT COUNT(*) FROM labels WHERE profile_id = ?", (profile_id,))[0][0])

    def undo_last(self, profile_id: int, profile: dict | None = None) -> Label | None:
        """Delete the profile's newest label and history row (and store the rolled-back profile)."""
        def write(conn):
            row = conn.execute("SELECT id FROM labels WHERE profile_id = ? ORDER BY id DESC LIMIT 1", (profile_id,)).fetchone()
            if row is None:
                return None
            gone = conn.execute(
                "SELECT a.name, l.pair_id, l.prompt, l.chosen, l.rejected, l.profile_id, l.source, l.created_at, l.id "
                "FROM labels l JOIN annotators a ON a.id = l.annotator_id WHERE l.id = ?", (row[0],)).fetchall()
            conn.execute("DELETE FROM labels WHERE id = ?", (row[0],))
            conn.execute("DELETE FROM profile_history WHERE id = (SELECT MAX(id) FROM profile_history WHERE profile_id = ?)",
                         (profile_id,))
            if profile is not None:
                conn.execute("UPDATE profiles SET profile_json = ?, updated_at = ? WHERE id = ?",
                             (json.dumps(profile), time.time(), profile_id))
            return Label(*gone[0]) if gone else None

        return self._write(write)

    def reset_profile(self, profile_id: int, profile: dict) -> int:
        """Forget a profile's labels and history; returns how many labels were removed."""
        def write(conn):
            n = conn.execute("DELETE FROM labels WHERE profile_id = ?", (profile_id,)).rowcount
            conn.execute("DELETE FROM profile_history WHERE profile_id = ?", (profile_id,))
            conn.execute("UPDATE profiles SET profile_json = ?, updated_at = ? WHERE id = ?",
                         (json.dumps(profile), time.time(), profile_id))
            return int(n)

        return self._write(write)

    def history(self, profile_id: int) -> list[tuple[int, list[float]]]:
        rows = self._rows("SELECT step, weights_json FROM profile_history WHERE profile_id = ? ORDER BY id",
                          (profile_id,))
        return [(int(s), json.loads(w)) for s, w in rows]
