"""Teacher LLMs that write synthetic conversations: an OpenAI-compatible chat endpoint or a local transformers model.

Both take chat messages and return the reply text. The HTTP teacher goes through the shared
`chat_client.ChatClient`, which retries 429 / 5xx / timeouts / connection errors with exponential
backoff and counts its retries, so a long generation run survives a rate-limited or flaky endpoint.
"""
from __future__ import annotations

import os
from typing import Protocol

from .chat_client import ChatClient, ChatError, FatalChatError


class TeacherError(Exception):
    """The teacher could not answer one request (after retries): the conversation is rejected."""


class FatalTeacherError(Exception):
    """The teacher can never answer (bad URL, key or model): the run stops."""


class Teacher(Protocol):
    name: str
    retries: int

    def complete(self, messages: list[dict], seed: int) -> str:
        """The teacher's reply to chat `messages`; `seed` makes sampling repeatable where supported."""


class OpenAITeacher:
    """Any OpenAI-compatible `/chat/completions` endpoint (OpenAI, vLLM, TGI, Ollama, LM Studio...)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, temperature: float = 0.9,
                 max_tokens: int = 1500, timeout: float = 120.0, max_retries: int = 5, backoff: float = 1.0,
                 max_backoff: float = 60.0):
        self.client = ChatClient(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff=backoff,
                                 max_backoff=max_backoff)
        self.name, self.model = model, model
        self.temperature, self.max_tokens = temperature, max_tokens

    @property
    def retries(self) -> int:
        return self.client.retries

    def complete(self, messages: list[dict], seed: int) -> str:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": seed}
        try:
            return self.client.chat(body).text
        except FatalChatError as exc:
            raise FatalTeacherError(f"--teacher {exc}") from None
        except ChatError as exc:
            raise TeacherError(str(exc)) from None


class LocalTeacher:
    """A local transformers causal LM (a directory or a cached hub id), sampled with its chat template."""

    def __init__(self, model: str, *, temperature: float = 0.9, max_new_tokens: int = 1500):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, self.retries = os.path.basename(model.rstrip("/")) or model, 0
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        # float32 on CPU: bf16 matmuls are several times slower on CPUs without native bf16
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, device_map="auto"
                                                          if torch.cuda.is_available() else None)
        self.model.eval()
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    def complete(self, messages: list[dict], seed: int) -> str:
        import torch

        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)["input_ids"]
        else:  # no template: plain role-prefixed text
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
            ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        ids = ids.to(self.model.device)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(ids, do_sample=True, temperature=self.temperature,
                                      max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def make_teacher(teacher: str, model: str | None, api_key_env: str, **options) -> Teacher:
    """An OpenAITeacher for an http(s) URL (needs --model), else a LocalTeacher for a model path or id."""
    if teacher.startswith(("http://", "https://")):
        if not model:
            raise FatalTeacherError("--model: required with an HTTP --teacher (the endpoint's model name)")
        return OpenAITeacher(teacher, model, os.environ.get(api_key_env), **options)
    local = {k: v for k, v in options.items() if k == "temperature"}
    return LocalTeacher(teacher, max_new_tokens=options.get("max_tokens", 1500), **local)
