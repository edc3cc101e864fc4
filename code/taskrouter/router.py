"""The router: one request in, one decision out, over the prefix cache and the constrained scorer."""
from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from .batching import DEFAULT_BATCH, MicroBatcher
from .events import event_for
from .kvcache import PrefixCache, join_spans, prefix_keys
from .loading import LoadedModel, is_embedded, load_model
from .prompts import ANSWER_LEAD, REASONING_CLOSE, REASONING_TOKENS, PromptTooLong, build_prompt, encode_prompt
from .schema import NONE, Candidate, RequestError, RouteAnswer, RouteRequest, parse_request
from .scorer import Anchor, NameTrie, cache_kwargs, score_names, softcap
from .treeattention import Layout, tree_inputs

FREE_TOKENS = 16


@dataclass(frozen=True)
class _Batch:
    """A prefilled batch: its KV cache (distinct cached prefixes, then each item's new tokens),
    their layout, each item's segment and the hidden state at each item's answer lead."""

    cache: DynamicCache
    layout: Layout
    segments: list[int]
    hidden: list[torch.Tensor]

    def own_cache(self, item: int) -> DynamicCache:
        """Item's own contiguous cache (its prefix then its new tokens), a copy."""
        return join_spans([(self.cache, start, n) for start, n in self.layout.spans(self.segments[item])])


@dataclass(frozen=True)
class _Job:
    """A validated request, prompt encoded, waiting for its batch."""

    request: RouteRequest
    started: float
    adapter: str | None
    strategy: str
    names: list[str]
    reasoning_lead: str | None
    segments: list[list[int]]


class Router:
    """Routes requests on a loaded model; thread-safe. Concurrent requests run as micro-batches
    (up to `max_batch`, waiting `batch_window_ms` for company) in one forward pass."""

    def __init__(self, loaded: LoadedModel, cache_bytes: int = 512 * 2**20, max_prompt_tokens: int = 1024,
                 default_adapter: str | None = None, max_batch: int = DEFAULT_BATCH, batch_window_ms: float = 2.0):
        self.loaded = loaded
        self.cache = PrefixCache(cache_bytes)
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

    def route(self, request: RouteRequest | dict | None = None, /, **fields: Any) -> RouteAnswer:
        """Choose the task after the request's last user message; never a name outside the list.

        `request` is a `RouteRequest` or the JSON request as a dict; or give its fields as keywords:
        `route(messages=[...], tasks=[...], current_task=...)`. Bad input raises `RequestError`.
        """
        if not isinstance(request, RouteRequest):
            request = parse_request({**(request or {}), **fields})
        return self.batcher.submit(self._job(request))

    def _job(self, request: RouteRequest) -> _Job:
        """Resolve adapter and strategy and encode the prompt, in the caller's thread (errors stay its own)."""
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
            encoded = encode_prompt(self.loaded.tokenizer, prompt, self.max_prompt_tokens, history)
        except PromptTooLong as exc:
            raise RequestError("too_large", str(exc), 413) from None
        return _Job(request, started, adapter, strategy, request.task_names + [NONE], prompt.reasoning_lead,
                    encoded.segments)

    def prompt_ids(self, request: RouteRequest) -> list[int]:
        """The token ids the model reads for this request, up to the answer (or reasoning) lead."""
        return [i for segment in self._job(request).segments for i in segment]

    def _route_batch(self, jobs: Sequence[_Job]) -> list[RouteAnswer | Exception]:
        """Per adapter: one prefill forward for the whole batch, one forward for all constrained
        choices; reasoning and free decoding then run request by request."""
        results: list[RouteAnswer | Exception] = [RuntimeError("not routed")] * len(jobs)
        by_adapter: dict[str | None, list[int]] = {}
        for i, job in enumerate(jobs):
            by_adapter.setdefault(job.adapter, []).append(i)
        for adapter, indices in by_adapter.items():
            with self.loaded.use_adapter(adapter), torch.inference_mode():
                try:
                    batch = self._prefill([jobs[i].segments for i in indices], f"{self.loaded.name}|{adapter}")
                    direct = [k for k, i in enumerate(indices)
                              if jobs[i].request.decoding == "constrained" and not jobs[i].reasoning_lead]
                    anchors = [Anchor(self._trie(jobs[indices[k]].names), batch.segments[k], batch.hidden[k])
                               for k in direct]
                    for k, probs in zip(direct, score_names(self.loaded.model, batch.cache, batch.layout, anchors)):
                        results[indices[k]] = self._answer(jobs[indices[k]], probs, None)
                except Exception as exc:  # noqa: BLE001 (reported to each caller of these forward passes)
                    for i in indices:
                        results[i] = exc
                    continue
                for k, i in enumerate(indices):
                    if k not in direct:
                        try:
                            results[i] = self._answer(jobs[i], *self._decode(jobs[i], batch.own_cache(k),
                                                                             batch.hidden[k]))
                        except Exception as exc:  # noqa: BLE001 (one request's failure is its own)
                            results[i] = exc
        return results

    def _decode(self, job: _Job, cache: DynamicCache, hidden: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Reasoning (few_shot_cot / react) then the constrained choice, or free text: (probabilities, raw text)."""
        raw = None
        if job.reasoning_lead:
            raw, cache, hidden = self._reason(cache, hidden, job.strategy)
        if job.request.decoding == "free":
            text, _, _ = self._greedy(cache, hidden, FREE_TOKENS, stop="\n")
            return self._parse_free(text, job.names), (raw + "\n" if raw else "") + text
        layout = Layout([cache.get_seq_length()], [-1])
        return score_names(self.loaded.model, cache, layout, [Anchor(self._trie(job.names), 0, hidden)])[0], raw

    def _answer(self, job: _Job, probs: torch.Tensor, raw: str | None) -> RouteAnswer:
        request, names = job.request, job.names
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

    def _forward(self, ids: list[int], cache: DynamicCache) -> torch.Tensor:
        """Extend `cache` by `ids`; returns the last position's final hidden state."""
        body = self.loaded.model.get_decoder()
        tensor = torch.tensor([ids], device=self.loaded.device)
        return body(input_ids=tensor, use_cache=True, **cache_kwargs(body, cache)).last_hidden_state[0, -1]

    def _prefill(self, items: list[list[list[int]]], namespace: str) -> _Batch:
        """For every item (prompt segments), compute what its longest cached prefix does not cover:
        all items in ONE forward pass, the distinct cached prefixes laid end to end and each item's
        new tokens attending to its own prefix and itself. Keeps two checkpoints per item (after
        the instruction + task list, after the last message) in the prefix cache."""
        keys = [prefix_keys(namespace, segments[:-1]) for segments in items]  # the tail is never cached
        hits = [self.cache.longest(k) for k in keys]
        prefixes: dict[int, int] = {}  # id(stored cache) -> its segment in the layout
        stored: list[DynamicCache] = []
        for _, cache in hits:
            if cache is not None and id(cache) not in prefixes:
                prefixes[id(cache)] = len(stored)
                stored.append(cache)
        news = [[t for seg in segments[covered:] for t in seg] for segments, (covered, _) in zip(items, hits)]
        layout = Layout([c.get_seq_length() for c in stored] + [len(n) for n in news],
                        [-1] * len(stored) + [prefixes[id(c)] if c is not None else -1 for _, c in hits])
        past = join_spans([(c, 0, c.get_seq_length()) for c in stored])
        ids = torch.tensor([[t for n in news for t in n]], device=self.loaded.device)
        inputs = tree_inputs(self.loaded.model, layout.lengths, layout.parents, cached=len(stored))
        decoder = self.loaded.model.get_decoder()
        hidden = decoder(input_ids=ids, use_cache=True, **cache_kwargs(decoder, past), **inputs).last_hidden_state[0]
        ends_new = list(itertools.accumulate(len(n) for n in news))
        batch = _Batch(past, layout, [len(stored) + i for i in range(len(items))],
                       [hidden[end - 1] for end in ends_new])
        for i, (segments, (covered, _)) in enumerate(zip(items, hits)):
            ends = list(itertools.accumulate(len(seg) for seg in segments))
            missing = [j for j in {0, len(keys[i]) - 1} if j >= covered and keys[i][j] not in self.cache]
            own = batch.own_cache(i) if missing else None
            for j in missing:
                self.cache.put(keys[i][j], ends[j], own)
        return batch

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return softcap(self.loaded.model, self.loaded.model.get_output_embeddings()(hidden[None]).float()[0])

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
