"""Attention for sequences that branch: several continuations share one prefix.

Used three ways: the constrained scorer (trie nodes on top of a prompt's KV
cache), batched prefill (several requests' new tokens on top of their cached
prefixes, in one forward pass) and training (many examples on one shared
task-list head). Segments are laid end to end; each continues a parent segment.
A token sees its own segment's earlier tokens and all of its ancestors, and its
position continues the ancestors', so every branch computes exactly what it
would compute alone. The masks are boolean 4D (True = attend), one per layer
type where the model has several, so sliding-window layers (Gemma 3) also drop
keys further away than their window.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """How the tokens of a KV cache are laid out: segments end to end, `parents[i]` = -1 for a root."""

    lengths: list[int]
    parents: list[int]

    def spans(self, segment: int) -> list[tuple[int, int]]:
        """(start, length) of the segment and its ancestors, root first: the tokens its own sequence holds."""
        starts = [0, *itertools.accumulate(self.lengths)]
        chain = []
        while segment >= 0:
            chain.append((starts[segment], self.lengths[segment]))
            segment = self.parents[segment]
        return chain[::-1]


def tree_layout(lengths: list[int], parents: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(allowed: tokens x tokens, positions: tokens) for segments of `lengths`; `parents[i]` is -1 for a root."""
    starts = [0, *itertools.accumulate(lengths)]
    allowed = torch.zeros(starts[-1], starts[-1], dtype=torch.bool)
    positions = torch.empty(starts[-1], dtype=torch.long)
    for s, n in enumerate(lengths):
        rows = slice(starts[s], starts[s] + n)
        allowed[rows, rows] = torch.ones(n, n, dtype=torch.bool).tril()
        depth, a = 0, parents[s]
        while a >= 0:
            allowed[rows, starts[a]: starts[a] + lengths[a]] = True
            depth += lengths[a]
            a = parents[a]
        positions[rows] = depth + torch.arange(n)
    return allowed, positions


def tree_masks(model, allowed: torch.Tensor, q_positions: torch.Tensor, k_positions: torch.Tensor,
               device) -> torch.Tensor | dict[str, torch.Tensor]:
    """4D masks for the queries (rows of `allowed`) over the keys; a dict by layer type if the model has several."""
    config = model.config
    layer_types = set(getattr(config, "layer_types", None) or [])

    def build(window: int | None) -> torch.Tensor:
        mask = allowed
        if window is not None:
            mask = mask & ((q_positions[:, None] - k_positions[None, :]) < window)
        return mask[None, None].to(device)

    if not layer_types:
        return build(None)
    return {lt: build(config.sliding_window if "sliding" in lt else None) for lt in layer_types}
