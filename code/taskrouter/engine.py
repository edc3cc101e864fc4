"""The engine: prompts in, constrained choices out, in ONE forward pass per batch.

Hand-written because it is where the time goes. For a batch of items (prompt
segments + a name trie) it looks up each item's longest cached prefix, lays the
distinct cached prefixes end to end, then every item's new tokens, then every
item's trie nodes (`NameTrie.internal`), and runs the decoder once over the new
tokens and the trie nodes: each token sees its own item's prefix and its own
ancestors (tree attention), so every item computes exactly what it would alone
and the constrained choice needs no second pass. Then it stores each item's
prefix checkpoints (after the task list, after the last message) in the prefix
cache. Everything that shapes the computation is given to the constructor: the
model (in the dtype it was loaded in), the prefix cache, the attention
(`"blocks"`: one sdpa call per item; `"dense"`: one masked call for the batch) and
whether each pass is padded to one of a few row counts (`rows.padded`).
"""
from __future__ import annotations

import functools
import inspect
import itertools
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

from .kvcache import PrefixCache, join_spans, prefix_keys
from .rows import padded
from .scorer import NameTrie, name_distribution, softcap
from .treeattention import Layout, enable_block_attention, supports_block_attention, tree_inputs

ATTENTIONS = ("blocks", "dense")


@functools.cache
def _cache_keyword(decoder_type: type) -> str:
    return "cache" if "cache" in inspect.signature(decoder_type.forward).parameters else "past_key_values"


def cache_kwargs(decoder: torch.nn.Module, cache) -> dict:
    """The decoder's KV-cache keyword with `cache`: `cache` from transformers 5.24 on, `past_key_values` before
    (5.5.3, in the SageMaker image), where an unknown `cache=` is swallowed by **kwargs and the cache stays empty."""
    return {_cache_keyword(type(decoder)): cache}


def pick_attention(model) -> str:
    """Block attention where the model's attention takes it (Gemma 3), dense masked sdpa elsewhere."""
    return "blocks" if supports_block_attention(model) else "dense"


@dataclass
class EngineStats:
    forwards: int = 0  # decoder passes run
    tokens: int = 0  # tokens they computed (new prompt tokens, trie nodes, decoded tokens)
    padding: int = 0  # rows they computed beyond those (`rows.padded`)


@dataclass(frozen=True)
class Item:
    """One prompt to extend: its token segments (cache boundaries; the last is never cached) and the
    trie whose choice follows it, or None when more text comes first (reasoning, free decoding)."""

    segments: list[list[int]]
    trie: NameTrie | None


@dataclass(frozen=True)
class Outcome:
    """What one item's forward gave: the names' probabilities (None without a trie), the final hidden
    state at the prompt's last token, the tokens computed for it, and its own cache (a copy, made on demand)."""

    probs: torch.Tensor | None
    hidden: torch.Tensor
    computed: int
    own_cache: Callable[[], DynamicCache]


class Engine:
    """Runs batches of items on one model; not thread-safe (the router's batcher runs one batch at a time)."""

    def __init__(self, model, cache: PrefixCache, attention: str, pad_rows: bool = True):
        if attention not in ATTENTIONS:
            raise ValueError(f"attention: {attention!r} is not one of {', '.join(ATTENTIONS)}")
        if attention == "blocks":
            if not supports_block_attention(model):
                raise ValueError(f"attention: {type(model).__name__} does not take block attention; use dense")
            enable_block_attention(model)
        self.model, self.cache, self.attention, self.pad_rows = model, cache, attention, pad_rows
        self.decoder = model.get_decoder()
        self.device = model.device
        self.stats = EngineStats()

    def run(self, items: list[Item], namespace: str) -> list[Outcome]:
        """Every item's new tokens and trie nodes in one forward pass over the cached prefixes;
        `namespace` keys the prefix cache (model and adapter: their caches never mix)."""
        keys = [prefix_keys(namespace, item.segments[:-1]) for item in items]  # the tail is never cached
        hits = [self.cache.longest(k) for k in keys]
        prefix_segment: dict[int, int] = {}  # id(stored cache) -> its segment in the layout
        stored: list[DynamicCache] = []
        for _, cache in hits:
            if cache is not None and id(cache) not in prefix_segment:
                prefix_segment[id(cache)] = len(stored)
                stored.append(cache)
        news = [[t for seg in item.segments[covered:] for t in seg] for item, (covered, _) in zip(items, hits)]
        lengths = [c.get_seq_length() for c in stored] + [len(n) for n in news]
        parents = [-1] * len(stored) + [prefix_segment[id(c)] if c is not None else -1 for _, c in hits]
        ids = [t for n in news for t in n]
        first_node = len(lengths)
        nodes = [self._add_trie(item.trie, len(stored) + k, lengths, parents, ids) for k, item in enumerate(items)]
        past = join_spans([(c, 0, c.get_seq_length()) for c in stored])
        hidden = self._forward(past, lengths, parents, len(stored), ids)
        layout = Layout(lengths, parents)
        ends = list(itertools.accumulate(len(n) for n in news))
        outcomes = []
        for k, (item, slots) in enumerate(zip(items, nodes)):
            own = functools.partial(self._own_cache, past, layout, len(stored) + k)
            at_lead = hidden[ends[k] - 1]
            probs = self._probs(item.trie, at_lead, hidden, slots, ends[-1], first_node)
            outcomes.append(Outcome(probs, at_lead, len(news[k]) + len(slots), own))
        for item, key, (covered, _), outcome in zip(items, keys, hits, outcomes):
            self._store(item.segments, key, covered, outcome)
        return outcomes

    def extend(self, cache: DynamicCache, ids: list[int], trie: NameTrie | None = None) -> Outcome:
        """Extend an item's own `cache` by `ids` (kept in it) and, with a trie, score it in the same pass
        (its nodes are dropped from the cache afterwards)."""
        lengths, parents, all_ids = [cache.get_seq_length(), len(ids)], [-1, 0], list(ids)
        slots = self._add_trie(trie, 1, lengths, parents, all_ids)
        hidden = self._forward(cache, lengths, parents, 1, all_ids)
        if slots:
            cache.crop(-len(slots))
        at_lead = hidden[len(ids) - 1]
        probs = self._probs(trie, at_lead, hidden, slots, len(ids), 2)
        return Outcome(probs, at_lead, len(all_ids), lambda: cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits at one final hidden state (free decoding)."""
        return softcap(self.model, self.model.get_output_embeddings()(hidden[None]).float()[0])

    @staticmethod
    def _add_trie(trie: NameTrie | None, segment: int, lengths: list[int], parents: list[int],
                  ids: list[int]) -> dict[int, int]:
        """Append the trie's internal nodes as one-token segments continuing `segment`: node -> segment."""
        slots: dict[int, int] = {}
        for node in trie.internal if trie is not None else []:  # a node's parent is the lead or a slotted node
            slots[node] = len(lengths)
            parents.append(slots.get(trie.parent[node], segment))
            lengths.append(1)
            ids.append(trie.tokens[node])
        return slots

    def _forward(self, past: DynamicCache, lengths: list[int], parents: list[int], cached: int,
                 ids: list[int]) -> torch.Tensor:
        """Final hidden states of `ids` (segments `cached:`), extending `past` (segments `:cached`).

        With `pad_rows`, the pass runs over `rows.padded(len(ids))` tokens: the extra ones continue the last
        segment, so no real token sees them, and they leave `past` before it returns."""
        pad = padded(len(ids)) - len(ids) if self.pad_rows and ids else 0
        if pad:
            lengths, parents, ids = lengths + [pad], parents + [len(lengths) - 1], ids + [ids[-1]] * pad
        inputs = tree_inputs(self.model, lengths, parents, cached, blocks=self.attention == "blocks")
        tensor = torch.tensor([ids], device=self.device)
        out = self.decoder(input_ids=tensor, use_cache=True, **cache_kwargs(self.decoder, past), **inputs)
        if pad:
            past.crop(-pad)
        self.stats.forwards += 1
        self.stats.tokens += len(ids) - pad
        self.stats.padding += pad
        return out.last_hidden_state[0, : len(ids) - pad]

    def _probs(self, trie: NameTrie | None, at_lead: torch.Tensor, hidden: torch.Tensor, slots: dict[int, int],
               node_offset: int, first_node: int) -> torch.Tensor | None:
        """The trie's distribution; slot s of the layout is row `node_offset + s - first_node` of `hidden`."""
        if trie is None:
            return None
        states = {0: at_lead, **{n: hidden[node_offset + s - first_node] for n, s in slots.items()}}
        return name_distribution(self.model, trie, states)

    @staticmethod
    def _own_cache(past: DynamicCache, layout: Layout, segment: int) -> DynamicCache:
        return join_spans([(past, start, n) for start, n in layout.spans(segment)])

    def _store(self, segments: list[list[int]], keys: list[str], covered: int, outcome: Outcome) -> None:
        """Checkpoint the item after the task list and after its last message, where not cached yet."""
        missing = [j for j in {0, len(keys) - 1} if j >= covered and keys[j] not in self.cache]
        if missing:
            own, ends = outcome.own_cache(), list(itertools.accumulate(len(s) for s in segments))
            for j in missing:
                self.cache.put(keys[j], ends[j], own)
