"""The review's SQLite store: conversations, leases that keep two reviewers off one conversation, decisions.

Every call is one short transaction on its own connection (WAL, synchronous=FULL,
BEGIN IMMEDIATE), so claims from many threads or processes are atomic and a
decision is on disk before the browser hears back: a crash or a closed tab loses
nothing. `decisions` holds the latest decision per conversation, `log` all of them.
Reviewers are known by a token issued once (only its sha256 is stored), and only the
holder of a conversation's lease may decide it. A stable sample of the decided
conversations (`second_share`) goes to a second, independent reviewer; `agreement()`
compares the two reviews (Cohen's kappa over the turns' tasks), and `export()` holds back a
conversation whose two reviews disagree.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
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
CREATE TABLE IF NOT EXISTS reviewers (name TEXT PRIMARY KEY, token_sha256 TEXT UNIQUE NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS second_reviews (conv_id TEXT PRIMARY KEY REFERENCES conversations(id),
    status TEXT NOT NULL, labels TEXT NOT NULL, reviewer TEXT NOT NULL, decided_at REAL NOT NULL);
"""
KEPT = ("confirmed", "relabelled")  # decisions whose labels a second review can check
# a conversation waiting for its second review by :me (rows c, d, s: conversations, decisions, second_reviews)
PENDING_SECOND = ("(d.status IN ('confirmed', 'relabelled') AND d.reviewer != :me AND s.conv_id IS NULL "
                  "AND sampled(c.id))")


# threads of one process queue on a lock per database rather than on SQLite's polling busy handler,
# which can starve a waiting thread while another keeps writing
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _process_lock(path: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(os.path.realpath(path), threading.Lock())


class Conflict(Exception):
    """The conversation is not the caller's to decide: another reviewer holds it, or nobody leased it to them."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class ReviewStore:
    """Conversations under review in one SQLite file, shared by every server thread and process."""

    def __init__(self, path: str | Path, lease_seconds: float = 900.0, second_share: float = 0.0):
        self.path, self.lease_seconds, self.second_share = str(path), lease_seconds, second_share
        self._lock = _process_lock(self.path)
        with self._tx() as db:
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE) so read-then-write steps are atomic."""
        with self._lock:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.create_function("sampled", 1, self.sampled, deterministic=True)
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

    def sampled(self, conv_id: str) -> bool:
        """Whether a conversation is in the second-review sample: a stable share of ids, by a salted hash (a
        file drawn as the ids of lowest sha256 would otherwise fall into the sample whole)."""
        return int(_digest("second-review:" + conv_id)[:8], 16) < self.second_share * 16**8

    def add_reviewer(self, name: str, new_token: bool = False) -> str | None:
        """Register a reviewer and return their login token (shown once); None when they have one already,
        unless `new_token` replaces it."""
        if not name.strip():
            raise ValueError("--reviewer: a reviewer needs a name")
        token = secrets.token_urlsafe(24)
        with self._tx() as db:
            known = db.execute("SELECT 1 FROM reviewers WHERE name = ?", (name,)).fetchone()
            if known and not new_token:
                return None
            db.execute("INSERT OR REPLACE INTO reviewers (name, token_sha256, created) VALUES (?, ?, ?)",
                       (name, _digest(token), time.time()))
        return token

    def reviewers(self) -> list[str]:
        with self._tx() as db:
            return [row[0] for row in db.execute("SELECT name FROM reviewers ORDER BY name")]

    def reviewer_for(self, token: str) -> str | None:
        """The reviewer a token belongs to (looked up by its sha256), or None."""
        with self._tx() as db:
            row = db.execute("SELECT name FROM reviewers WHERE token_sha256 = ?", (_digest(token),)).fetchone()
        return row[0] if row else None

    def claim(self, reviewer: str, pool: str = "new") -> dict | None:
        """The conversation this reviewer holds, else a free one leased to them: in the "new" pool a second
        review waiting for them first, then an undecided one; in "later" one marked for later."""
        now = time.time()
        wanted = f"(d.conv_id IS NULL OR {PENDING_SECOND})" if pool == "new" else "d.status = 'later'"
        joins = """FROM conversations c LEFT JOIN decisions d ON d.conv_id = c.id
            LEFT JOIN second_reviews s ON s.conv_id = c.id"""
        args = {"me": reviewer, "now": now}
        with self._tx() as db:
            held = db.execute(f"""SELECT c.id {joins} JOIN leases l ON l.conv_id = c.id
                WHERE l.reviewer = :me AND l.expires > :now AND {wanted} ORDER BY l.expires DESC LIMIT 1""",
                              args).fetchone()
            if held is None:
                order = "(d.conv_id IS NULL), c.pos" if pool == "new" else "d.decided_at"
                held = db.execute(f"""SELECT c.id {joins}
                    LEFT JOIN leases l ON l.conv_id = c.id AND l.expires > :now
                    WHERE {wanted} AND l.conv_id IS NULL ORDER BY {order} LIMIT 1""", args).fetchone()
            if held is None:
                db.execute("DELETE FROM leases WHERE reviewer = ?", (reviewer,))
                return None
            self._lease(db, reviewer, held[0], now)
            return self._item(db, held[0], reviewer)

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
            return self._item(db, conv_id, reviewer)

    def renew(self, reviewer: str, conv_id: str) -> bool:
        """Extend the reviewer's lease while their tab is open; False if they no longer hold it."""
        with self._tx() as db:
            cursor = db.execute("UPDATE leases SET expires = ? WHERE conv_id = ? AND reviewer = ?",
                                (time.time() + self.lease_seconds, conv_id, reviewer))
            return cursor.rowcount == 1

    def decide(self, reviewer: str, conv_id: str, action: str, tasks: list[str | None] | None = None) -> str:
        """Store one decision at once and release the lease; returns the status. Only the lease holder decides.

        confirm / relabel with `tasks` (one per user message) store those labels, events re-derived:
        `confirmed` if they equal the file's labels, else `relabelled`. later / wrong keep the file's labels.
        A conversation waiting for this reviewer's second review gets a second review instead.
        """
        if action not in ACTIONS:
            raise ValueError(f"action: must be one of {', '.join(ACTIONS)}")
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT record FROM conversations WHERE id = ?", (conv_id,)).fetchone()
            if row is None:
                raise KeyError(f"id: no conversation {conv_id!r}")
            self._check_lease(db, reviewer, conv_id, now)
            if not db.execute("SELECT 1 FROM leases WHERE conv_id = ? AND reviewer = ? AND expires > ?",
                              (conv_id, reviewer, now)).fetchone():
                raise Conflict(f"conversation {conv_id!r} is not leased to {reviewer}: claim it first")
            record = json.loads(row[0])
            labels, status = record["labels"], {"confirm": "confirmed", "later": "later", "wrong": "wrong"}.get(action)
            if action in ("confirm", "relabel") and (tasks is not None or action == "relabel"):
                labels = self._relabel(record, tasks)
                status = "confirmed" if labels == record["labels"] else "relabelled"
            table = "second_reviews" if self._is_second(db, reviewer, conv_id) else "decisions"
            db.execute(f"""INSERT INTO {table} (conv_id, status, labels, reviewer, decided_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (conv_id) DO UPDATE SET status = excluded.status, labels = excluded.labels,
                reviewer = excluded.reviewer, decided_at = excluded.decided_at""",
                       (conv_id, status, json.dumps(labels), reviewer, now))
            db.execute("INSERT INTO log (conv_id, reviewer, status, labels, at) VALUES (?, ?, ?, ?, ?)",
                       (conv_id, reviewer, status, json.dumps(labels), now))
            db.execute("DELETE FROM leases WHERE conv_id = ?", (conv_id,))
            return status

    @staticmethod
    def _is_second(db: sqlite3.Connection, reviewer: str, conv_id: str) -> bool:
        """Whether this reviewer's review of the conversation is its second review (waiting, or theirs already)."""
        return db.execute(f"""SELECT 1 FROM conversations c JOIN decisions d ON d.conv_id = c.id
            LEFT JOIN second_reviews s ON s.conv_id = c.id
            WHERE c.id = :id AND ({PENDING_SECOND} OR s.reviewer = :me)""",
                          {"id": conv_id, "me": reviewer}).fetchone() is not None

    def agreement(self) -> dict:
        """How the second reviews agree with the first: the share of same statuses, and over the turns of
        conversations both kept, the share of same tasks and Cohen's kappa (None while undefined)."""
        from sklearn.metrics import cohen_kappa_score

        with self._tx() as db:
            rows = db.execute("""SELECT d.status, d.labels, s.status, s.labels FROM decisions d
                JOIN second_reviews s ON s.conv_id = d.conv_id""").fetchall()
        kept = [(json.loads(a), json.loads(b)) for sa, a, sb, b in rows if sa in KEPT and sb in KEPT]
        first = [label["task"] or "none" for a, _ in kept for label in a]
        second = [label["task"] or "none" for _, b in kept for label in b]
        kappa = float(cohen_kappa_score(first, second)) if len(set(first) | set(second)) > 1 else None
        return {"second_reviews": len(rows), "same_status": sum(sa == sb for sa, _, sb, _ in rows) / len(rows)
                if rows else None, "turns": len(first),
                "same_task": sum(a == b for a, b in zip(first, second)) / len(first) if first else None,
                "kappa": kappa}

    def progress(self) -> dict:
        """Counts: total, decided (confirmed + relabelled + wrong), each status, and conversations open in a tab."""
        with self._tx() as db:
            counts = dict(db.execute("SELECT status, COUNT(*) FROM decisions GROUP BY status").fetchall())
            total = db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
            open_now = db.execute("SELECT COUNT(*) FROM leases WHERE expires > ?", (time.time(),)).fetchone()[0]
            by_reviewer = dict(db.execute("""SELECT reviewer, COUNT(*) FROM (SELECT reviewer FROM decisions
                UNION ALL SELECT reviewer FROM second_reviews) GROUP BY reviewer ORDER BY reviewer""").fetchall())
        out = {status: counts.get(status, 0) for status in STATUSES}
        out.update(total=total, decided=out["confirmed"] + out["relabelled"] + out["wrong"], in_review=open_now,
                   by_reviewer=by_reviewer, agreement=self.agreement())
        return out

    def decision(self, conv_id: str) -> dict | None:
        """The latest decision on a conversation: status, labels, reviewer."""
        with self._tx() as db:
            row = db.execute("SELECT status, labels, reviewer FROM decisions WHERE conv_id = ?", (conv_id,)).fetchone()
        return None if row is None else {"status": row[0], "labels": json.loads(row[1]), "reviewer": row[2]}

    def export(self, out: str | Path) -> dict:
        """Write confirmed and relabelled conversations (with their decided labels) as router-bench JSONL; one
        whose second review differs from its first (in decision or labels) is held back as disputed."""
        counts = {status: 0 for status in STATUSES} | {"undecided": 0, "disputed": 0, "written": 0}
        with self._tx() as db:
            rows = db.execute("""SELECT c.record, d.status, d.labels, s.status, s.labels FROM conversations c
                LEFT JOIN decisions d ON d.conv_id = c.id LEFT JOIN second_reviews s ON s.conv_id = c.id
                ORDER BY c.pos""").fetchall()
        tmp = Path(f"{out}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for record_json, status, labels, second_status, second_labels in rows:
                counts[status or "undecided"] += 1
                if status not in KEPT:
                    continue
                if second_status is not None and (second_status not in KEPT or
                                                  json.loads(second_labels) != json.loads(labels)):
                    counts["disputed"] += 1
                    continue
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
            if task is not None and not isinstance(task, str):
                raise ValueError(f"tasks[{k}]: a task name or null, not {type(task).__name__}")
            if task is not None and task not in names:
                raise ValueError(f"tasks[{k}]: {task!r} is not in the conversation's task list")
        return labels_for(record["messages"], tasks)

    def _item(self, db: sqlite3.Connection, conv_id: str, reviewer: str) -> dict:
        """The conversation as the reviewer sees it: for a second review, the file's labels (independent)."""
        pos, record = db.execute("SELECT pos, record FROM conversations WHERE id = ?", (conv_id,)).fetchone()
        item = json.loads(record)
        item["original_labels"] = item["labels"]
        item["second_review"] = self._is_second(db, reviewer, conv_id)
        table = "second_reviews" if item["second_review"] else "decisions"
        decided = db.execute(f"SELECT status, labels FROM {table} WHERE conv_id = ?", (conv_id,)).fetchone()
        item["status"] = decided[0] if decided else None
        if decided:
            item["labels"] = json.loads(decided[1])
        item["pos"] = pos
        return item
