"""Route with an LLM behind an OpenAI-compatible chat endpoint (OpenAI, Azure OpenAI, vLLM, TGI, llama.cpp, Ollama,
LM Studio), on the very prompt text the in-process models read, so their rows in one report are comparable.

The prompt of `taskrouter.prompts` goes out whole as one user message, character for character the
in-process prompt (not split into a system message: some chat templates, Gemma's among them, drop or refuse
the system role). Constrained where the server can: a GBNF `grammar` (llama.cpp) or an OpenAI
`response_format` JSON schema (OpenAI, Azure, vLLM, llama.cpp's llama-server, Ollama, LM Studio), configured
or detected by one probe request each. Otherwise the free text is read with the study's rule
(`taskrouter.router.free_choice`), and a reply that names no listed task is an invalid output, counted as none.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter

from taskrouter.events import event_for
from taskrouter.prompts import ANSWER_LEAD, REASONING_CLOSE, REASONING_LEAD, REASONING_TOKENS, Prompt, build_prompt
from taskrouter.router import FREE_TOKENS, free_choice
from taskrouter.schema import NONE, Candidate, RouteAnswer, RouteRequest
from taskrouter.training.chat_client import RETRY_STATUS, ChatClient, ChatError, FatalChatError

from .configs import EvalConfig

CONSTRAINTS = ("grammar", "json_schema")  # the order `constraint: auto` tries them: grammar reads like in-process
PROBE = "taskrouter_probe"  # a name no unconstrained model answers to "Say hello."
REFUSED = {400, 422, 500}  # how servers refuse an unknown constraint field (llama-cpp-python: 500, not 422)
REASONING_CHARS = REASONING_TOKENS * 4  # the in-process reasoning line's token cap, at about 4 characters a token
MAX_TOKENS = {"free": FREE_TOKENS, "constrained": 64, "reasoning": 192}  # reply caps, by how the answer comes


class HostedAnswer(RouteAnswer):
    """A RouteAnswer plus what only an endpoint has: the constraint used, retries and the reported token usage."""

    hosted: dict


def chat_messages(prompt: Prompt) -> list[dict]:
    """The prompt as chat messages, its text unchanged: one user message."""
    return [{"role": "user", "content": "".join(prompt.segments)}]


def _literal(text: str) -> str:
    """A GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


def gbnf(strategy: str, names: list[str]) -> str:
    """The grammar of an answer: a listed name right after the answer lead, after one bounded reasoning line
    and the strategy's closing for few_shot_cot / react (what the in-process router generates, then scores)."""
    answer = "answer ::= " + " | ".join(_literal(n) for n in names)
    if strategy in REASONING_LEAD:
        return (f"root ::= [^\\n]{{1,{REASONING_CHARS}}} {_literal(REASONING_CLOSE[strategy] + ANSWER_LEAD + ' ')} "
                f"answer\n{answer}\n")
    return f'root ::= " "? answer\n{answer}\n'


def json_schema(strategy: str, names: list[str]) -> dict:
    """The OpenAI `response_format` of an answer: {"task": a listed name}, after the reasoning for
    few_shot_cot / react."""
    properties: dict = {}
    if strategy in REASONING_LEAD:
        properties[REASONING_LEAD[strategy].rstrip(":").lower()] = {"type": "string"}
    properties["task"] = {"type": "string", "enum": names}
    schema = {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "route", "strict": True, "schema": schema}}


def read_answer(text: str, strategy: str, names: list[str], constraint: str | None) -> str | None:
    """The listed name (or none) a reply gives, or None when it gives none. Constrained replies are read
    exactly: JSON's `task`, or the grammar's answer. Free text by the study's rule: the first answer-lead
    line after reasoning, else the first line (a repeated answer lead dropped)."""
    if constraint == "grammar":
        if strategy in REASONING_LEAD:  # the reasoning line holds no newline, the closing starts with one
            text = text.partition(REASONING_CLOSE[strategy] + ANSWER_LEAD + " ")[2]
        answer = text.removeprefix(" ")
        return answer if answer in names else None
    if constraint == "json_schema":
        try:
            task = json.loads(text)["task"]
        except (ValueError, KeyError, TypeError):
            return None
        return task if isinstance(task, str) and task in names else None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if strategy in REASONING_LEAD:
        lines = [line for line in lines if line.startswith(ANSWER_LEAD)]
    if not lines:
        return None
    choice = free_choice(lines[0].removeprefix(ANSWER_LEAD), names)
    return None if choice is None else names[choice]


class HostedRouter:
    """Answers `route(RouteRequest)` like `Router`, through an OpenAI-compatible endpoint; thread-safe."""

    def __init__(self, config: EvalConfig, client: ChatClient | None = None):
        key = None
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"config {config.name}: api_key_env {config.api_key_env} is not set")
        self.config = config
        self.client = client or ChatClient(config.base_url, key)
        self._constraint: str | None = None
        self._known = False
        self._lock = threading.Lock()

    def constraint(self) -> str | None:
        """How this config's answers are constrained: None for free text (decoding free, or nothing supported)."""
        with self._lock:
            if not self._known:
                self._constraint, self._known = self._choose_constraint(), True
            return self._constraint

    def _choose_constraint(self) -> str | None:
        if self.config.decoding == "free":
            return None
        if self.config.constraint != "auto":
            return self.config.constraint
        for method in CONSTRAINTS:
            try:
                reply = self.client.chat(self._body([{"role": "user", "content": "Say hello."}], "zero_shot",
                                                    [PROBE], method), retry_status=RETRY_STATUS - {500})
            except FatalChatError as exc:
                if exc.status in REFUSED:  # the server refuses the field: it cannot constrain this way
                    print(f"config {self.config.name}: the endpoint refused {method} (HTTP {exc.status})",
                          file=sys.stderr)
                    continue
                raise RuntimeError(f"config {self.config.name}: {exc}") from None
            except ChatError as exc:
                raise RuntimeError(f"config {self.config.name}: {exc}") from None
            if read_answer(reply.text, "zero_shot", [PROBE], method) == PROBE:
                return method
        return None

    def _body(self, messages: list[dict], strategy: str, names: list[str], constraint: str | None) -> dict:
        kind = "reasoning" if strategy in REASONING_LEAD else "constrained" if constraint else "free"
        body: dict = {"model": self.config.model, "messages": messages, "temperature": 0,
                      "max_tokens": self.config.max_tokens or MAX_TOKENS[kind]}
        if constraint == "grammar":
            body["grammar"] = gbnf(strategy, names)
        elif constraint == "json_schema":
            body["response_format"] = json_schema(strategy, names)
        body.update(self.config.extra_body)
        return {k: v for k, v in body.items() if v is not None}

    def route(self, request: RouteRequest) -> HostedAnswer:
        """One chat completion per request; an answer outside the list is `valid: false`, task none."""
        strategy = self.config.strategy
        names = request.task_names + [NONE]
        constraint = self.constraint()
        prompt = build_prompt(strategy, request.tasks, request.messages, request.current_task)
        hosted: dict = {"constraint": constraint or "none"}
        try:
            reply = self.client.chat(self._body(chat_messages(prompt), strategy, names, constraint))
        except FatalChatError as exc:
            if not (exc.status == 400 and "content_filter" in exc.body):  # a filtered prompt is the model's refusal
                raise RuntimeError(f"config {self.config.name}: {exc}") from None
            raw, task = exc.body, None
        except ChatError as exc:
            raise RuntimeError(f"config {self.config.name}: {exc}") from None
        else:
            raw, task = reply.text, read_answer(reply.text, strategy, names, constraint)
            hosted.update(retries=reply.retries, **reply.usage)
        chosen = task or NONE
        return HostedAnswer(task=chosen, event=event_for(request.current_task, task), confidence=1.0 if task else 0.0,
                            candidates=[Candidate(task=chosen, p=1.0 if task else 0.0)], model=self.config.model,
                            adapter=None, strategy=strategy, decoding=self.config.decoding, valid=task is not None,
                            raw=raw, hosted=hosted)


def usage_summary(predictions: list[dict], config: EvalConfig) -> dict:
    """A hosted config's constraint(s), retries and token usage over its predictions, and the cost per 1,000
    turns at its prices (None without prices, or when the server did not report usage on every turn)."""
    rows = [p.get("hosted") or {} for p in predictions]
    counted = [r for r in rows if "prompt_tokens" in r and "completion_tokens" in r]
    prompt_tokens = sum(r["prompt_tokens"] for r in counted)
    completion_tokens = sum(r["completion_tokens"] for r in counted)
    cost = None
    if rows and len(counted) == len(rows) and config.price_input is not None:
        cost = 1000 * (prompt_tokens * config.price_input + completion_tokens * config.price_output) / 1e6 / len(rows)
    return {"constraint": dict(Counter(r.get("constraint", "unknown") for r in rows)),
            "retries": sum(r.get("retries", 0) for r in rows), "turns_with_usage": len(counted),
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "cost_per_1000_turns": cost}
