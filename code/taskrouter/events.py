"""Where a conversation stands, derived from the previous and the chosen task (BENCH_FORMAT.md)."""
from __future__ import annotations


def event_for(previous: str | None, task: str | None) -> str:
    """start / continue / switch / end / none, from the previous task P and this turn's task T."""
    if previous is None:
        return "none" if task is None else "start"
    if task is None:
        return "end"
    return "continue" if task == previous else "switch"
