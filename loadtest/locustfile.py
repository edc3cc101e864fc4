"""Locust scenario: agents replaying real conversations turn by turn against a running router.

Each simulated user picks a conversation from a router-bench JSONL file and sends
one POST /invocations per user turn, with the messages up to that turn, the
conversation's task list and, as `current_task`, the router's previous answer,
exactly as an agent in a live conversation would; then it moves to another
conversation. An answer that is not 200 or names a task outside the list is a failure.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --bench evaluation/benchmarks/sales.jsonl
(or `taskrouter loadtest`, which runs it headless with bounded users and time).
Options: --bench FILE (env TASKROUTER_BENCH), --think-time SECONDS between turns (default 0).
"""
from __future__ import annotations

import json
import os
import random
from functools import lru_cache
from pathlib import Path

from locust import HttpUser, events, task

# Locust loads this file by path (it may run without taskrouter importable): the sample bench sits in the
# evaluation folder beside this one, in a checkout and in an installed wheel alike
DEFAULT_BENCH = str(Path(__file__).resolve().parent.parent / "evaluation" / "benchmarks" / "sample.jsonl")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--bench", default=os.environ.get("TASKROUTER_BENCH", DEFAULT_BENCH),
                        help="router-bench JSONL file whose conversations the users replay")
    parser.add_argument("--think-time", type=float, default=float(os.environ.get("TASKROUTER_THINK_TIME", "0")),
                        help="seconds each user waits between two turns (default 0: closed loop)")
    parser.add_argument("--api-key", default=os.environ.get("TASKROUTER_API_KEY", ""),
                        help="sent as a Bearer token when the server requires TASKROUTER_API_KEY")


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


def user_turns(conversation: dict) -> list[int]:
    """Indices of the user messages: one routing request each."""
    return [i for i, m in enumerate(conversation["messages"]) if m["role"] == "user"]


class Agent(HttpUser):
    """One agent: replays a conversation turn by turn, feeding back the router's previous answer."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.conversations = load_conversations(options.bench if options else DEFAULT_BENCH)
        self.think = options.think_time if options else 0.0
        key = options.api_key if options else ""
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"
        self._next_conversation()

    def wait_time(self) -> float:
        return self.think

    def _next_conversation(self) -> None:
        self.conversation = random.choice(self.conversations)
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
