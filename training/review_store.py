"""The review's SQLite store: conversations, leases that keep two reviewers off one conversation, decisions.

Every call is one short transaction on its own connection (WAL, synchronous=FULL,
BEGIN IMMEDIATE), so claims from many threads or processes are atomic and a
decision is on disk before the browser hears back: a crash or a closed tab loses
nothing. `decisions` holds the latest decision per conversation, `log` all of them.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import ValidationError

from .records import BenchRecord, describe, labels_for

STATUSES = ("confirmed", "relabelled", "later", "wrong")
ACTIONS = ("confirm", "relabel", "later", "wrong")
SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (pos INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (conv_id TEXT PRIMARY KEY REFERENCES conversations(id),
    reviewer TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (conv_id TEXT PRIMARY KEY REFERENCES conversations(id),
    status TEXT NOT NULL CHECK (status IN ('confirmed', 'relabelled', 'later', 'wrong')),
    labels TEXT NOT NULL, reviewer TEXT NOT NULL, decided_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY AUTOINCREMENT, conv_id TEXT NOT NULL, reviewer TEXT NOT NULL,
    status TEXT NOT NULL, labels TEXT NOT NULL, at REAL NOT NULL);
"""


# threads of one process queue on a lock per database rather than on SQLite's polling busy handler,
# which can starve a waiting thread while another keeps writing
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _process_lock(path: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(os.path.realpath(path), threading.Lock())


class Conflict(Exception):
    """Another reviewer holds the conversation."""


class ReviewStore:
    """Conversations under review in one SQLite file, shared by every server thread and process."""

    def __init__(self, path: str | Path, lease_seconds: float = 900.0):
        self.path, self.lease_seconds = str(path), lease_seconds
        self._lock = _process_lock(self.path)
        with self._tx() as db:
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE) so read-then-write steps are atomic."""
        with self._lock:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA foreign_keys=ON")
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                db.close()

    def import_file(self, path: str | Path) -> int:
        """Add the conversations of a router-bench file (each checked); ids already present are kept as they are."""
        rows = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = BenchRecord.model_validate_json(line)
                except ValidationError as exc:
                    raise ValueError(f"{path}:{line_no}: {describe(exc)}") from None
                rows.append((record.id, record.model_dump_json()))
        with self._tx() as db:
            before = db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
            db.executemany("INSERT OR IGNORE INTO conversations (id, record) VALUES (?, ?)", rows)
            return db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] - before

    def claim(self, reviewer: str, pool: str = "new") -> dict | None:
        """The conversation this reviewer holds, else a free one (undecided, or marked for later) leased to them."""
        now = time.time()
        wanted = "d.conv_id IS NULL" if pool == "new" else "d.status = 'later'"
        with self._tx() as db:
            held = db.execute(f"""SELECT l.conv_id FROM leases l LEFT JOIN decisions d ON d.conv_id = l.conv_id
                WHERE l.reviewer = ? AND l.expires > ? AND {wanted} ORDER BY l.expires DESC LIMIT 1""",
                              (reviewer, now)).fetchone()
            if held is None:
                order = "c.pos" if pool == "new" else "d.decided_at"
                held = db.execute(f"""SELECT c.id FROM conversations c
                    LEFT JOIN decisions d ON d.conv_id = c.id
                    LEFT JOIN leases l ON l.conv_id = c.id AND l.expires > ?
                    WHERE {wanted} AND l.conv_id IS NULL ORDER BY {order} LIMIT 1""", (now,)).fetchone()
            if held is None:
                db.execute("DELETE FROM leases WHERE reviewer = ?", (reviewer,))
                return None
            self._lease(db, reviewer, held[0], now)
            return self._item(db, held[0])

    def back(self, reviewer: str, current: str | None) -> dict | None:
        """The conversation this reviewer decided before `current` (their own order), leased to them again."""
        now = time.time()
        with self._tx() as db:
            history = [row[0] for row in db.execute(
                "SELECT conv_id FROM log WHERE reviewer = ? GROUP BY conv_id ORDER BY MIN(seq)", (reviewer,))]
            position = history.index(current) if current in history else len(history)
            if position == 0:
                return None
            conv_id = history[position - 1]
            self._check_lease(db, reviewer, conv_id, now)
            self._lease(db, reviewer, conv_id, now)
            return self._item(db, conv_id)

    def renew(self, reviewer: str, conv_id: str) -> bool:
        """Extend the reviewer's lease while their tab is open; False if they no longer hold it."""
        with self._tx() as db:
            cursor = db.execute("UPDATE leases SET expires = ? WHERE conv_id = ? AND reviewer = ?",
                                (time.time() + self.lease_seconds, conv_id, reviewer))
            return cursor.rowcount == 1

    def decide(self, reviewer: str, conv_id: str, action: str, tasks: list[str | None] | None = None) -> str:
        """Store one decision at once and release the lease; returns the status.

        confirm / relabel with `tasks` (one per user message) store those labels, events re-derived:
        `confirmed` if they equal the file's labels, else `relabelled`. later / wrong keep the file's labels.
        """
        if action not in ACTIONS:
            raise ValueError(f"action: must be one of {', '.join(ACTIONS)}")
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT record FROM conversations WHERE id = ?", (conv_id,)).fetchone()
            if row is None:
                raise KeyError(f"id: no conversation {conv_id!r}")
            self._check_lease(db, reviewer, conv_id, now)
            record = json.loads(row[0])
            labels, status = record["labels"], {"confirm": "confirmed", "later": "later", "wrong": "wrong"}.get(action)
            if action in ("confirm", "relabel") and (tasks is not None or action == "relabel"):
                labels = self._relabel(record, tasks)
                status = "confirmed" if labels == record["labels"] else "relabelled"
            db.execute("""INSERT INTO decisions (conv_id, status, labels, reviewer, decided_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (conv_id) DO UPDATE SET status = excluded.status, labels = excluded.labels,
                reviewer = excluded.reviewer, decided_at = excluded.decided_at""",
                       (conv_id, status, json.dumps(labels), reviewer, now))
            db.execute("INSERT INTO log (conv_id, reviewer, status, labels, at) VALUES (?, ?, ?, ?, ?)",
                       (conv_id, reviewer, status, json.dumps(labels), now))
            db.execute("DELETE FROM leases WHERE conv_id = ?", (conv_id,))
            return status

    def progress(self) -> dict:
        """Counts: total, decided (confirmed + relabelled + wrong), each status, and conversations open in a tab."""
        with self._tx() as db:
            counts = dict(db.execute("SELECT status, COUNT(*) FROM decisions GROUP BY status").fetchall())
            total = db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
            open_now = db.execute("SELECT COUNT(*) FROM leases WHERE expires > ?", (time.time(),)).fetchone()[0]
        out = {status: counts.get(status, 0) for status in STATUSES}
        out.update(total=total, decided=out["confirmed"] + out["relabelled"] + out["wrong"], in_review=open_now)
        return out

    def decision(self, conv_id: str) -> dict | None:
        """The latest decision on a conversation: status, labels, reviewer."""
        with self._tx() as db:
            row = db.execute("SELECT status, labels, reviewer FROM decisions WHERE conv_id = ?", (conv_id,)).fetchone()
        return None if row is None else {"status": row[0], "labels": json.loads(row[1]), "reviewer": row[2]}

    def export(self, out: str | Path) -> dict:
        """Write confirmed and relabelled conversations (with their decided labels) as router-bench JSONL."""
        counts = {status: 0 for status in STATUSES} | {"undecided": 0, "written": 0}
        with self._tx() as db:
            rows = db.execute("""SELECT c.record, d.status, d.labels FROM conversations c
                LEFT JOIN decisions d ON d.conv_id = c.id ORDER BY c.pos""").fetchall()
        tmp = Path(f"{out}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for record_json, status, labels in rows:
                counts[status or "undecided"] += 1
                if status in ("confirmed", "relabelled"):
                    record = json.loads(record_json) | {"labels": json.loads(labels)}
                    f.write(BenchRecord.model_validate(record).model_dump_json() + "\n")
                    counts["written"] += 1
        os.replace(tmp, out)
        return counts

    def _lease(self, db: sqlite3.Connection, reviewer: str, conv_id: str, now: float) -> None:
        db.execute("DELETE FROM leases WHERE reviewer = ?", (reviewer,))
        db.execute("INSERT OR REPLACE INTO leases (conv_id, reviewer, expires) VALUES (?, ?, ?)",
                   (conv_id, reviewer, now + self.lease_seconds))

    @staticmethod
    def _check_lease(db: sqlite3.Connection, reviewer: str, conv_id: str, now: float) -> None:
        row = db.execute("SELECT reviewer FROM leases WHERE conv_id = ? AND expires > ?", (conv_id, now)).fetchone()
        if row is not None and row[0] != reviewer:
            raise Conflict(f"conversation {conv_id!r} is being reviewed by {row[0]}")

    @staticmethod
    def _relabel(record: dict, tasks: list[str | None] | None) -> list[dict]:
        names = {t["name"] for t in record["tasks"]}
        if not isinstance(tasks, list):
            raise ValueError("tasks: a list with one task name (or null) per user message is required")
        for k, task in enumerate(tasks):
            if task is not None and task not in names:
                raise ValueError(f"tasks[{k}]: {task!r} is not in the conversation's task list")
        return labels_for(record["messages"], tasks)

    @staticmethod
    def _item(db: sqlite3.Connection, conv_id: str) -> dict:
        pos, record = db.execute("SELECT pos, record FROM conversations WHERE id = ?", (conv_id,)).fetchone()
        decided = db.execute("SELECT status, labels FROM decisions WHERE conv_id = ?", (conv_id,)).fetchone()
        item = json.loads(record)
        item["original_labels"] = item["labels"]
        item["status"] = decided[0] if decided else None
        if decided:
            item["labels"] = json.loads(decided[1])
        item["pos"] = pos
        return item
