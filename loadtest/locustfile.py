"""Locust scenario: agents replaying real conversations turn by turn against a running router.

Each simulated user picks a conversation from a router-bench JSONL file and sends
one POST /invocations per user turn, with the messages up to that turn, the
conversation's task list and, as `current_task`, the router's previous answer,
exactly as an agent in a live conversation would; then it moves to another
conversation. An answer that is not 200 or names a task outside the list is a failure.
With --distinct every replay is a conversation the server has never seen (a numbered
first message, the task list in another order), so caches grow as they would with
thousands of real users: the memory soak of `taskrouter loadtest --distinct`.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --bench evaluation/benchmarks/sales.jsonl
(or `taskrouter loadtest`, which runs it headless with bounded users and time).
Options: --bench FILE, --think-time SECONDS between turns (default 0), --distinct, --api-key KEY.
"""
from __future__ import annotations

import itertools
import json
import random
from functools import lru_cache
from pathlib import Path

from locust import HttpUser, events, task

# Locust loads this file by path (it may run without taskrouter importable): the sample bench sits in the
# evaluation folder beside this one, in a checkout and in an installed wheel alike
DEFAULT_BENCH = str(Path(__file__).resolve().parent.parent / "evaluation" / "benchmarks" / "sample.jsonl")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--bench", default=DEFAULT_BENCH,
                        help="router-bench JSONL file whose conversations the users replay")
    parser.add_argument("--think-time", type=float, default=0.0,
                        help="seconds each user waits between two turns (default 0: closed loop)")
    parser.add_argument("--distinct", action="store_true",
                        help="make every replayed conversation one the server has not seen")
    parser.add_argument("--api-key", default="", help="sent as a Bearer token when the server requires one")


@lru_cache(maxsize=4)
def load_conversations(path: str) -> list[dict]:
    """Conversations of a router-bench file that have at least one user turn."""
    conversations = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                conv = json.loads(line)
                if any(m["role"] == "user" for m in conv["messages"]):
                    conversations.append(conv)
    if not conversations:
        raise ValueError(f"--bench {path}: no conversation with a user turn")
    return conversations


_replays = itertools.count()


def distinct_copy(conversation: dict, number: int) -> dict:
    """The conversation with a numbered first message and its task list in another order."""
    messages = [dict(m) for m in conversation["messages"]]
    messages[0]["content"] = f"[conversation {number}] {messages[0]['content']}"
    tasks = list(conversation["tasks"])
    random.Random(number).shuffle(tasks)
    return dict(conversation, messages=messages, tasks=tasks)


def user_turns(conversation: dict) -> list[int]:
    """Indices of the user messages: one routing request each."""
    return [i for i, m in enumerate(conversation["messages"]) if m["role"] == "user"]


class Agent(HttpUser):
    """One agent: replays a conversation turn by turn, feeding back the router's previous answer."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.conversations = load_conversations(options.bench if options else DEFAULT_BENCH)
        self.think = options.think_time if options else 0.0
        self.distinct = options.distinct if options else False
        key = options.api_key if options else ""
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"
        self._next_conversation()

    def wait_time(self) -> float:
        return self.think

    def _next_conversation(self) -> None:
        self.conversation = random.choice(self.conversations)
        if self.distinct:
            self.conversation = distinct_copy(self.conversation, next(_replays))
        self.turns = user_turns(self.conversation)
        self.current_task: str | None = None

    @task
    def route_next_turn(self) -> None:
        conv = self.conversation
        turn = self.turns.pop(0)
        payload = {"messages": conv["messages"][: turn + 1], "tasks": conv["tasks"], "current_task": self.current_task}
        names = {t["name"] for t in conv["tasks"]} | {"none"}
        with self.client.post("/invocations", json=payload, name="/invocations", catch_response=True) as res:
            if res.status_code != 200:
                res.failure(f"HTTP {res.status_code}: {res.text[:200]}")
            else:
                try:
                    answer = res.json().get("task")
                except ValueError:
                    answer = None
                if answer not in names:
                    res.failure(f"answer {answer!r} is not in the request's task list")
                else:
                    self.current_task = None if answer == "none" else answer
        if not self.turns:
            self._next_conversation()
