"""Router-bench conversations for tests, labelled by hand-written rule (not by the code under test)."""
from __future__ import annotations

TASKS = [{"name": "meeting_recap", "description": "Write a recap of a meeting"},
         {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"},
         {"name": "prepare_a_quote", "description": "Prepare a price quote"}]


def conversation(cid: str, turns: list[tuple[str, str | None]], tasks: list[dict] = TASKS) -> dict:
    """A BENCH_FORMAT record: each (user text, gold task) is a labelled user turn, with an assistant reply between."""
    messages, labels, previous = [], [], None
    for text, task in turns:
        if messages:
            messages.append({"role": "assistant", "content": "Sure, here it is."})
        labels.append({"turn": len(messages), "task": task,
                       "event": ("none" if task is None else "start") if previous is None else
                       ("end" if task is None else "continue" if task == previous else "switch")})
        messages.append({"role": "user", "content": text})
        previous = task
    return {"id": cid, "source": "test", "tasks": tasks, "messages": messages, "labels": labels}
