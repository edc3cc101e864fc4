"""One client for OpenAI-compatible `/chat/completions` endpoints (OpenAI, Azure OpenAI v1, vLLM, TGI, llama.cpp,
Ollama, LM Studio), shared by the data generator's teacher and the evaluation's hosted configs.

It retries 408 / 409 / 425 / 429 / 5xx, timeouts and dropped connections with exponential backoff, waits at
least as long as a `Retry-After` header asks (rate limits), and counts its retries, so a long run survives a
rate-limited or flaky endpoint. Written on `requests` rather than the `openai` package: the same few lines
serve every server above, and generation and evaluation need no extra dependency.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import requests

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ChatError(Exception):
    """One request failed after all retries (or the reply was no chat completion)."""


class FatalChatError(Exception):
    """The endpoint refused the request with a status that retrying cannot change (bad URL, key, model or body)."""

    def __init__(self, url: str, status: int, body: str):
        super().__init__(f"{url}: HTTP {status}: {body}")
        self.status, self.body = status, body


@dataclass(frozen=True)
class ChatReply:
    """The first choice's text ("" when the server sent none, e.g. a refusal), why it stopped, the token usage
    the server reported (`prompt_tokens`, `completion_tokens`; empty when it reports none) and the retries
    this request took."""

    text: str
    finish_reason: str | None
    usage: dict = field(default_factory=dict)
    retries: int = 0


class ChatClient:
    """POSTs chat completion bodies to `<base_url>/chat/completions`; thread-safe."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 120.0, max_retries: int = 5,
                 backoff: float = 1.0, max_backoff: float = 60.0):
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self.api_key, self.timeout = api_key, timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.retries, self._lock = 0, threading.Lock()
        self.session = requests.Session()

    def chat(self, body: dict, retry_status: frozenset[int] | set[int] = RETRY_STATUS) -> ChatReply:
        """The endpoint's reply to one request body; raises FatalChatError for a status outside
        `retry_status` or, after retries, ChatError."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        for attempt in range(self.max_retries + 1):
            wait = self.backoff * (2 ** attempt)
            try:
                response = self.session.post(self.url, json=body, headers=headers, timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return _reply(response, attempt)
                failure = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in retry_status:
                    raise FatalChatError(self.url, response.status_code, response.text[:300])
                wait = max(wait, _retry_after(response))
            if attempt == self.max_retries:
                raise ChatError(f"gave up after {self.max_retries} retries: {failure}")
            with self._lock:
                self.retries += 1
            time.sleep(min(wait, self.max_backoff))
        raise AssertionError("unreachable")


def _retry_after(response: requests.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0


def _reply(response: requests.Response, retries: int) -> ChatReply:
    try:
        data = response.json()
        choice = data["choices"][0]
        content = choice["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ChatError(f"not a chat completion: {response.text[:200]}") from None
    if content is not None and not isinstance(content, str):
        raise ChatError("not a chat completion: message content is not text")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = {k: usage[k] for k in ("prompt_tokens", "completion_tokens") if isinstance(usage.get(k), int)}
    return ChatReply(content or "", choice.get("finish_reason"), tokens, retries)
