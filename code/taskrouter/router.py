"""The router: one request in, one decision out.

The request path, end to end:

1. `Router.route(request)` turns the request into a `_Job` in the caller's thread: adapter and
   strategy resolved, prompt built and encoded (client text can never become control tokens),
   the name trie built. Everything a request can get wrong fails here, as its own `RequestError`
   (404 unknown adapter, 413 prompt too long, 400 `tasks` whose names read as the same tokens),
   before it can join a batch.
2. The job waits in the `MicroBatcher` queue; whichever caller holds the run lock takes up to
   `max_batch` queued jobs and calls `Router._route_batch` with them.
3. Per adapter, `Engine.run` computes the whole group in ONE forward pass: each job's longest
   cached prefix is reused, its new tokens and its trie nodes are computed together, and the
   names' constrained probabilities come out of that pass; the prefix cache keeps the new
   checkpoints. Jobs that reason first (few_shot_cot / react) or decode freely continue one by
   one on their own copy of the cache with `Engine.extend`, whose last pass scores the trie.
4. `_answer` applies the adapter's none bias, orders the candidates and sets the event.

A fault while computing a group fails only the job that caused it: the group is retried job by job.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from .batching import DEFAULT_BATCH, MicroBatcher
from .engine import Engine, Item, Outcome, pick_attention
from .events import event_for
from .kvcache import PrefixCache
from .loading import LoadedModel, is_embedded, load_model
from .prompts import (ANSWER_LEAD, REASONING_CLOSE, REASONING_TOKENS, PromptTooLong, build_prompt, encode_prompt,
                      encode_text)
from .schema import NONE, Candidate, RequestError, RouteAnswer, RouteRequest, parse_request
from .scorer import NameTrie

FREE_TOKENS = 16


@dataclass(frozen=True)
class _Job:
    """A validated request, prompt encoded and trie built, waiting for its batch."""

    request: RouteRequest
    started: float
    adapter: str | None
    strategy: str
    trie: NameTrie
    reasoning_lead: str | None
    segments: list[list[int]]

    @property
    def chooses_now(self) -> bool:
        """Whether the constrained choice follows the prompt directly (no reasoning, no free text)."""
        return self.request.decoding == "constrained" and not self.reasoning_lead


class Router:
    """Routes requests on a loaded model; thread-safe. Concurrent requests run as micro-batches
    (up to `max_batch`, waiting `batch_window_ms` for company) in one forward pass."""

    def __init__(self, loaded: LoadedModel, cache_bytes: int = 512 * 2**20, max_prompt_tokens: int = 1024,
                 default_adapter: str | None = None, max_batch: int = DEFAULT_BATCH, batch_window_ms: float = 2.0,
                 attention: str | None = None, history_slack: int = 0, pad_rows: bool = True):
        self.loaded = loaded
        self.history_slack = history_slack  # an adapter's history window moves in chunks this much longer
        self.engine = Engine(loaded.model, PrefixCache(cache_bytes), attention or pick_attention(loaded.model),
                             pad_rows)
        self.max_prompt_tokens = max_prompt_tokens
        self.default_adapter = default_adapter if default_adapter in loaded.adapters else next(iter(loaded.adapters), None)
        self.batcher = MicroBatcher(self._route_batch, max_batch, batch_window_ms / 1000)
        self._tries: dict[tuple[str, ...], NameTrie] = {}

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, adapters: dict[str, Path] | None = None,
                        dtype: str = "auto", **options: Any) -> "Router":
        """A router on the embedded default (`None`) with its shipped adapter, on an artifact (its folder
        or model.tar.gz) with its adapters, or on a model folder or hub id. `adapters` (name -> folder)
        replaces the shipped ones (`{}`: the bare base); `options` go to `Router` (e.g. `max_batch`)."""
        from .artifacts import unpack_artifact

        if not is_embedded(source) and Path(source).exists():
            source = str(unpack_artifact(source))
        return cls(load_model(source, adapters, dtype=dtype), **options)

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def cache(self) -> PrefixCache:
        return self.engine.cache

    def route(self, request: RouteRequest | dict | None = None, /, **fields: Any) -> RouteAnswer:
        """Choose the task after the request's last user message; never a name outside the list.

        `request` is a `RouteRequest` or the JSON request as a dict; or give its fields as keywords:
        `route(messages=[...], tasks=[...], current_task=...)`. Bad input raises `RequestError`.
        """
        if not isinstance(request, RouteRequest):
            request = parse_request({**(request or {}), **fields})
        return self.batcher.submit(self._job(request))

    def _job(self, request: RouteRequest) -> _Job:
        """Resolve adapter and strategy, encode the prompt and build the trie, in the caller's thread."""
        started = time.perf_counter()
        adapter = request.adapter if request.adapter is not None else self.default_adapter
        adapter = None if adapter == NONE else adapter  # "none": the bare base model
        if adapter is not None and adapter not in self.loaded.adapters:
            known = ", ".join(self.loaded.adapters) or "none loaded"
            raise RequestError("unknown_adapter", f"adapter: {adapter!r} is not loaded (known: {known})", 404)
        strategy = request.strategy or ("adapter" if adapter else "zero_shot")
        history, prompt_format = None, "adapter"  # an adapter's prompt is laid out as in its training
        if strategy == "adapter" and adapter is not None:
            manifest = self.loaded.adapters[adapter]
            history = manifest.get("hyper_parameters", {}).get("history_tokens")
            prompt_format = manifest.get("prompt_format", "adapter")
        prompt = build_prompt(strategy, request.tasks, request.messages, request.current_task, prompt_format)
        try:
            encoded = encode_prompt(self.loaded.tokenizer, prompt, self.max_prompt_tokens, history,
                                    self.history_slack if history else 0)
            trie = self._trie(request.task_names + [NONE])
        except PromptTooLong as exc:
            raise RequestError("too_large", str(exc), 413) from None
        except ValueError as exc:  # names that tokenize alike: no choice could tell them apart
            raise RequestError("invalid_field", str(exc), 400) from None
        return _Job(request, started, adapter, strategy, trie, prompt.reasoning_lead, encoded.segments)

    def prompt_ids(self, request: RouteRequest) -> list[int]:
        """The token ids the model reads for this request, up to the answer (or reasoning) lead."""
        return [i for segment in self.prompt_segments(request)[1] for i in segment]

    def prompt_segments(self, request: RouteRequest) -> tuple[str, list[list[int]]]:
        """(prefix-cache namespace, token segments) of this request's prompt: what `Engine.run` gets."""
        job = self._job(request)
        return self._namespace(job.adapter), job.segments

    def _namespace(self, adapter: str | None) -> str:
        return f"{self.loaded.name}|{adapter}"

    def _route_batch(self, jobs: Sequence[_Job]) -> list[RouteAnswer | Exception]:
        """Per adapter, one engine pass for the group (job by job if it fails), then each job's answer."""
        results: list[RouteAnswer | Exception] = [RuntimeError("not routed")] * len(jobs)
        by_adapter: dict[str | None, list[int]] = {}
        for i, job in enumerate(jobs):
            by_adapter.setdefault(job.adapter, []).append(i)
        for adapter, indices in by_adapter.items():
            self.loaded.use_adapter(adapter)
            with torch.inference_mode():
                namespace = self._namespace(adapter)
                try:
                    done = list(zip(indices, self._run([jobs[i] for i in indices], namespace)))
                except Exception:  # noqa: BLE001 (retried job by job: the fault stays with the job that caused it)
                    done = []
                    for i in indices:
                        try:
                            done.append((i, self._run([jobs[i]], namespace)[0]))
                        except Exception as exc:  # noqa: BLE001 (this job's own failure)
                            results[i] = exc
                for i, outcome in done:
                    try:
                        results[i] = self._finish(jobs[i], outcome)
                    except Exception as exc:  # noqa: BLE001 (one request's failure is its own)
                        results[i] = exc
        return results

    def _run(self, jobs: list[_Job], namespace: str) -> list[Outcome]:
        return self.engine.run([Item(job.segments, job.trie if job.chooses_now else None) for job in jobs], namespace)

    def _finish(self, job: _Job, outcome: Outcome) -> RouteAnswer:
        """The answer from the engine's outcome, after reasoning and / or free decoding where the job asks."""
        if job.chooses_now:
            return self._answer(job, outcome.probs, None)
        cache, hidden, reasoning = outcome.own_cache(), outcome.hidden, None
        constrained = job.request.decoding == "constrained"
        if job.reasoning_lead:
            reasoning = self._greedy(cache, hidden, REASONING_TOKENS)
            closing = encode_text(self.loaded.tokenizer, " " + reasoning + REASONING_CLOSE[job.strategy] + ANSWER_LEAD)
            closed = self.engine.extend(cache, closing, job.trie if constrained else None)
            if constrained:
                return self._answer(job, closed.probs, reasoning)
            hidden = closed.hidden
        text = self._greedy(cache, hidden, FREE_TOKENS)
        return self._answer(job, self._parse_free(text, job.trie.names), (reasoning + "\n" if reasoning else "") + text)

    def _answer(self, job: _Job, probs: torch.Tensor, raw: str | None) -> RouteAnswer:
        request, names = job.request, job.trie.names
        bias = self.none_bias(job.adapter) if job.strategy == "adapter" and request.decoding == "constrained" else 0.0
        if bias:  # names end with none: shift its log-probability, then renormalise
            logp = torch.log(probs)
            logp[-1] += bias
            probs = torch.softmax(logp, dim=0)
        order = torch.argsort(probs, descending=True).tolist()
        valid = bool(probs.sum() > 0)  # only free text can name nothing listed
        best = names[order[0]] if valid else NONE
        task = None if best == NONE else best
        return RouteAnswer(
            task=best,
            event=event_for(request.current_task, task),
            confidence=float(probs[order[0]]) if valid else 0.0,
            candidates=[Candidate(task=names[i], p=round(float(probs[i]), 6)) for i in order[: request.top_k]],
            model=self.loaded.name, adapter=job.adapter, strategy=job.strategy, decoding=request.decoding,
            valid=valid, raw=raw, latency_ms=round((time.perf_counter() - job.started) * 1000, 2),
        )

    def none_bias(self, adapter: str | None) -> float:
        """The adapter's tuned none bias (router.json `none_bias.value`, 0 if untuned): a log-odds
        offset added to none before the choice. It corrects the prior of none a small adapter learns
        from its training mix; `taskrouter eval --tune` sets it on held-out labelled turns."""
        manifest = self.loaded.adapters.get(adapter) if adapter else None
        return float((manifest or {}).get("none_bias", {}).get("value", 0.0))

    def _trie(self, names: list[str]) -> NameTrie:
        key = tuple(names)
        trie = self._tries.get(key)
        if trie is None:
            if len(self._tries) > 1024:
                self._tries.clear()
            trie = self._tries[key] = NameTrie.build(self.loaded.tokenizer, names)
        return trie

    def _greedy(self, cache: DynamicCache, hidden: torch.Tensor, max_tokens: int) -> str:
        """Unconstrained greedy decoding (full vocabulary) of one line, at most `max_tokens`; the cache
        holds the prompt alone again afterwards (what follows is re-encoded as text)."""
        tokenizer = self.loaded.tokenizer
        start, out = cache.get_seq_length(), []
        for _ in range(max_tokens):
            token = int(torch.argmax(self.engine.logits(hidden)))
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
            hidden = self.engine.extend(cache, [token]).hidden
            if "\n" in tokenizer.decode(out[-1:]):
                break
        if cache.get_seq_length() > start:
            cache.crop(start - cache.get_seq_length())
        return tokenizer.decode(out).split("\n")[0].strip()

    @staticmethod
    def _parse_free(text: str, names: list[str]) -> torch.Tensor:
        """Free decoding: probability 1 on the name `free_choice` reads, all zeros (invalid) when none."""
        probs = torch.zeros(len(names))
        choice = free_choice(text, names)
        if choice is not None:
            probs[choice] = 1.0
        return probs


def free_choice(text: str, names: list[str]) -> int | None:
    """The index of the first listed name free text starts with (longest first), else None: the study's
    rule for reading an unconstrained answer, shared by in-process free decoding and hosted endpoints."""
    cleaned = text.strip().strip("`'\".").lower()
    for i in sorted(range(len(names)), key=lambda i: -len(names[i])):
        if re.match(re.escape(names[i].lower()) + r"\b", cleaned):
            return i
    return None
