"""Prefix KV cache: reuse the model state of the longest prompt prefix seen before.

Hand-written because it is the product's main speed lever: the instruction and
task list are shared by every request with that list, and a conversation grows by
one turn at a time, so most of a prompt was already computed. Keys are chained
hashes over segment token ids (model + adapter namespaced), so finding the longest
cached prefix costs one dict lookup per segment. Entries are evicted least
recently used once their tensors exceed `max_bytes`.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache


def _layer(cache: DynamicCache, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Set layer `index` of `cache` to these tensors, without copying them (DynamicCache.update would)."""
    cache.update(keys[..., :0, :], values[..., :0, :], index)
    cache.layers[index].keys, cache.layers[index].values = keys, values


def join_spans(spans: list[tuple[DynamicCache, int, int]]) -> DynamicCache:
    """A new cache of the `(cache, start, length)` token spans laid end to end; the sources are not touched.

    A cache's tensors are never written in place (extending one makes new tensors), so a single span
    is a view of its source and several are one copy.
    """
    joined = DynamicCache()
    spans = [(c, start, n) for c, start, n in spans if n > 0]
    if spans:
        for i in range(len(spans[0][0].layers)):
            keys = [c.layers[i].keys[..., start: start + n, :] for c, start, n in spans]
            values = [c.layers[i].values[..., start: start + n, :] for c, start, n in spans]
            if len(spans) > 1:
                keys, values = [torch.cat(keys, dim=-2)], [torch.cat(values, dim=-2)]
            _layer(joined, i, keys[0], values[0])
    return joined


def clone_cache(cache: DynamicCache, n_tokens: int | None = None) -> DynamicCache:
    """A copy of the first `n_tokens` (default all) in tensors of their own: holds no bigger storage alive."""
    clone = DynamicCache()
    n = cache.get_seq_length() if n_tokens is None else n_tokens
    for i, layer in enumerate(cache.layers):
        _layer(clone, i, layer.keys[..., :n, :].clone(), layer.values[..., :n, :].clone())
    return clone


def cache_bytes(cache: DynamicCache) -> int:
    return sum(l.keys.numel() * l.keys.element_size() * 2 for l in cache.layers if l.keys is not None)


def prefix_keys(namespace: str, segments: list[list[int]]) -> list[str]:
    """Key of every segment boundary: key[i] identifies segments[: i + 1]."""
    digest = hashlib.blake2b(namespace.encode(), digest_size=16)
    keys = []
    for seg in segments:
        digest.update(len(seg).to_bytes(4, "little"))
        digest.update(b"".join(t.to_bytes(4, "little") for t in seg))
        keys.append(digest.copy().hexdigest())
    return keys


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


class PrefixCache:
    """LRU map from a prefix key to the KV cache of that prefix, bounded in bytes."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[int, DynamicCache, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def longest(self, keys: list[str]) -> tuple[int, DynamicCache | None]:
        """(number of segments covered, their stored cache) for the longest cached prefix.

        The stored cache is shared: read it (e.g. with `join_spans`), never extend it.
        """
        with self._lock:
            for i in range(len(keys) - 1, -1, -1):
                entry = self._entries.get(keys[i])
                if entry is not None:
                    self._entries.move_to_end(keys[i])
                    self.stats.hits += 1
                    return i + 1, entry[1]
            self.stats.misses += 1
            return 0, None

    def put(self, key: str, n_tokens: int, cache: DynamicCache) -> None:
        """Store a copy of the first `n_tokens` tokens of `cache` under `key`."""
        size = cache_bytes(cache) * n_tokens // max(1, cache.get_seq_length())
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            self._entries[key] = (n_tokens, clone_cache(cache, n_tokens), size)
            self.stats.bytes += size
            while self.stats.bytes > self.max_bytes:
                _, (_, _, freed) = self._entries.popitem(last=False)
                self.stats.bytes -= freed
                self.stats.evictions += 1
            self.stats.entries = len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def clear(self) -> None:
        """Drop every entry (the statistics stay)."""
        with self._lock:
            self._entries.clear()
            self.stats.bytes = self.stats.entries = 0
