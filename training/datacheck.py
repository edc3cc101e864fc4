"""Check written training data before it is used: the rules of a generated conversation (records.py),
task lists of a sensible size, no repeated id or conversation; rejects are counted by reason, for the
datasheet, and only the conversations that pass are kept."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from taskrouter.evaluation.benchfile import open_text

from .generate import fingerprint
from .records import check_generated


@dataclass
class CheckResult:
    """The conversations that passed, rejects by reason, and one line per reject (`file:line id: reason`)."""

    kept: list[dict] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)


def check_files(paths: list[str], min_tasks: int = 3, max_tasks: int = 25) -> CheckResult:
    """Every conversation of `paths` checked; the first of two with the same id or text is kept."""
    result, ids, prints = CheckResult(), set(), set()
    for path in paths:
        with open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record, reason = check_generated(json.loads(line))
                except ValueError:
                    record, reason = None, "bad_json"
                if record is not None:
                    if not min_tasks <= len(record["tasks"]) <= max_tasks:
                        reason = "list_size"
                    elif record["id"] in ids:
                        reason = "duplicate_id"
                    elif fingerprint(record["messages"]) in prints:
                        reason = "duplicate_text"
                if reason:
                    result.rejected[reason] += 1
                    result.lines.append(f"{path}:{n} {record['id'] if record else '?'}: {reason}")
                    continue
                ids.add(record["id"])
                prints.add(fingerprint(record["messages"]))
                result.kept.append(record)
    return result


def write_records(records: list[dict], out: str | Path) -> None:
    """Router-bench JSONL, written whole (a partial file is never left under the final name)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    partial.replace(out)
