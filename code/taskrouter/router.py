"""The router: one request in, one decision out, over the prefix cache and the constrained scorer."""
from __future__ import annotations

import itertools
import re
import threading
import time

import torch
from transformers import DynamicCache

from .events import event_for
from .kvcache import PrefixCache, prefix_keys
from .loading import LoadedModel
from .prompts import ANSWER_LEAD, REASONING_CLOSE, REASONING_TOKENS, build_prompt, encode_prompt
from .schema import NONE, Candidate, RequestError, RouteAnswer, RouteRequest
from .scorer import NameTrie, score_names

FREE_TOKENS = 16


class Router:
    """Routes requests on a loaded model; thread-safe (model calls are serialised by a lock)."""

    def __init__(self, loaded: LoadedModel, cache_bytes: int = 512 * 2**20, max_prompt_tokens: int = 1024,
                 default_adapter: str | None = None):
        self.loaded = loaded
        self.cache = PrefixCache(cache_bytes)
        self.max_prompt_tokens = max_prompt_tokens
        self.default_adapter = default_adapter if default_adapter in loaded.adapters else next(iter(loaded.adapters), None)
        self.lock = threading.Lock()
        self._tries: dict[tuple[str, ...], NameTrie] = {}

    @property
    def model_name(self) -> str:
        return self.loaded.name

    def route(self, request: RouteRequest) -> RouteAnswer:
        """Choose the task after the request's last user message; never a name outside the list."""
        start = time.perf_counter()
        adapter = request.adapter if request.adapter is not None else self.default_adapter
        adapter = None if adapter == NONE else adapter  # "none": the bare base model
        if adapter is not None and adapter not in self.loaded.adapters:
            known = ", ".join(self.loaded.adapters) or "none loaded"
            raise RequestError("unknown_adapter", f"adapter: {adapter!r} is not loaded (known: {known})", 404)
        strategy = request.strategy or ("adapter" if adapter else "zero_shot")
        names = request.task_names + [NONE]
        prompt = build_prompt(strategy, request.tasks, request.messages, request.current_task)
        encoded = encode_prompt(self.loaded.tokenizer, prompt, self.prompt_budget(strategy, adapter))
        with self.lock, self.loaded.use_adapter(adapter), torch.inference_mode():
            cache, hidden = self._prefill(encoded.segments, f"{self.loaded.name}|{adapter}")
            raw = None
            if prompt.reasoning_lead:
                reasoning, cache, hidden = self._reason(cache, hidden, strategy)
                raw = reasoning
            if request.decoding == "free":
                text, _, _ = self._greedy(cache, hidden, FREE_TOKENS, stop="\n")
                raw = (raw + "\n" if raw else "") + text
                probs = self._parse_free(text, names)
            else:
                probs = score_names(self.loaded.model, self._trie(names), cache, hidden)
        order = torch.argsort(probs, descending=True).tolist()
        valid = bool(probs.sum() > 0)  # only free text can name nothing listed
        best = names[order[0]] if valid else NONE
        task = None if best == NONE else best
        return RouteAnswer(
            task=best,
            event=event_for(request.current_task, task),
            confidence=float(probs[order[0]]) if valid else 0.0,
            candidates=[Candidate(task=names[i], p=round(float(probs[i]), 6)) for i in order[: request.top_k]],
            model=self.loaded.name, adapter=adapter, strategy=strategy, decoding=request.decoding,
            valid=valid, raw=raw, latency_ms=round((time.perf_counter() - start) * 1000, 2),
        )

    def prompt_budget(self, strategy: str, adapter: str | None) -> int:
        """Prompt token budget: an adapter sees prompts truncated as in its training (train/serve parity)."""
        if strategy == "adapter" and adapter is not None:
            trained = self.loaded.adapters[adapter].get("hyper_parameters", {}).get("max_tokens")
            if trained:
                return min(self.max_prompt_tokens, int(trained))
        return self.max_prompt_tokens

    def _trie(self, names: list[str]) -> NameTrie:
        key = tuple(names)
        trie = self._tries.get(key)
        if trie is None:
            if len(self._tries) > 1024:
                self._tries.clear()
            trie = self._tries[key] = NameTrie.build(self.loaded.tokenizer, names)
        return trie

    def _forward(self, ids: list[int], cache: DynamicCache) -> torch.Tensor:
        """Extend `cache` by `ids`; returns the last position's final hidden state."""
        body = self.loaded.model.get_decoder()
        tensor = torch.tensor([ids], device=self.loaded.device)
        return body(input_ids=tensor, cache=cache, use_cache=True).last_hidden_state[0, -1]

    def _prefill(self, segments: list[list[int]], namespace: str) -> tuple[DynamicCache, torch.Tensor]:
        """Run what the longest cached prefix does not cover in ONE forward pass, then keep two
        checkpoints (after the instruction + task list, after the last message) as slices of it."""
        keys = prefix_keys(namespace, segments[:-1])  # the tail (current task + lead) is never cached
        covered, cache = self.cache.longest(keys)
        cache = cache if cache is not None else DynamicCache()
        hidden = self._forward([t for seg in segments[covered:] for t in seg], cache)
        ends = list(itertools.accumulate(len(seg) for seg in segments))
        for i in {0, len(keys) - 1}:
            if i >= covered and keys[i] not in self.cache:
                self.cache.put(keys[i], ends[i], cache)
        return cache, hidden

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.loaded.model.get_output_embeddings()(hidden[None]).float()[0]
        cap = getattr(self.loaded.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _greedy(self, cache: DynamicCache, hidden: torch.Tensor, max_tokens: int, stop: str):
        """Unconstrained greedy decoding (full vocabulary) until `stop` or `max_tokens`."""
        tokenizer = self.loaded.tokenizer
        out: list[int] = []
        for _ in range(max_tokens):
            token = int(torch.argmax(self._logits(hidden)))
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
            hidden = self._forward([token], cache)
            if stop in tokenizer.decode(out[-1:]):
                break
        return tokenizer.decode(out).split(stop)[0].strip(), cache, hidden

    def _reason(self, cache: DynamicCache, hidden: torch.Tensor, strategy: str):
        """Generate a bounded reasoning line, then close it with the answer lead."""
        start = cache.get_seq_length()
        text, cache, hidden = self._greedy(cache, hidden, REASONING_TOKENS, stop="\n")
        closing = self.loaded.tokenizer.encode(" " + text + REASONING_CLOSE[strategy] + ANSWER_LEAD,
                                               add_special_tokens=False)
        # re-encode what was generated so the cache holds exactly "reasoning + close + lead"
        if cache.get_seq_length() > start:
            cache.crop(start - cache.get_seq_length())
        hidden = self._forward(closing, cache)
        return text, cache, hidden

    @staticmethod
    def _parse_free(text: str, names: list[str]) -> torch.Tensor:
        """Free decoding: the first listed name the text starts with (longest first), else invalid."""
        probs = torch.zeros(len(names))
        cleaned = text.strip().strip("`'\".").lower()
        for i in sorted(range(len(names)), key=lambda i: -len(names[i])):
            if re.match(re.escape(names[i].lower()) + r"\b", cleaned):
                probs[i] = 1.0
                break
        return probs
