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

Block attention is hand-written because dense masked attention wastes most of a
batch: with 8 requests laid end to end, every new token is scored against all 8
cached prompts and 7 of them are masked away. On models that take transformers'
attention interface (Gemma 3), `enable_block_attention` makes the attention accept
query blocks, and a forward given `blocks` runs one sdpa call per request over only
the keys that request may see (the engine decides, per forward, whether to pass
them); a forward without blocks is plain sdpa. docs/speed.md has the figures.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

BLOCK_ATTENTION = "taskrouter_blocks"


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


def tree_layout(lengths: list[int], parents: list[int], first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(allowed: query tokens x all tokens, positions: all tokens) for segments of `lengths`, `parents[i]`
    -1 for a root; the queries are the tokens of segments `first:` (the ones a forward computes)."""
    starts = [0, *itertools.accumulate(lengths)]
    allowed = torch.zeros(starts[-1] - starts[first], starts[-1], dtype=torch.bool)
    positions = torch.empty(starts[-1], dtype=torch.long)
    for s, n in enumerate(lengths):
        depth, a = 0, parents[s]
        while a >= 0:
            if s >= first:
                allowed[starts[s] - starts[first]: starts[s + 1] - starts[first], starts[a]: starts[a + 1]] = True
            depth += lengths[a]
            a = parents[a]
        positions[starts[s]: starts[s + 1]] = depth + torch.arange(n)
        if s >= first:
            rows = slice(starts[s] - starts[first], starts[s + 1] - starts[first])
            allowed[rows, starts[s]: starts[s + 1]] = torch.ones(n, n, dtype=torch.bool).tril()
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


def tree_inputs(model, lengths: list[int], parents: list[int], cached: int, blocks: bool = False) -> dict:
    """Decoder keyword arguments for the tokens of segments `cached:` on top of a cache holding the
    segments before: their masks and positions, and with `blocks` (a model set up by
    `enable_block_attention`) their query blocks."""
    past = sum(lengths[:cached])
    allowed, positions = tree_layout(lengths, parents, first=cached)
    device = model.device
    inputs = {"attention_mask": tree_masks(model, allowed, positions[past:], positions, device),
              "position_ids": positions[None, past:].to(device)}
    if blocks:
        inputs["blocks"] = [(rows.to(device), cols.to(device)) for rows, cols in query_blocks(lengths, parents, cached)]
    return inputs


def query_blocks(lengths: list[int], parents: list[int], cached: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(query rows, key columns) per group of new segments that share their nearest cached ancestor:
    rows count from the first new token, columns from the cache's first token. A query's visible
    keys always lie within its block's columns."""
    starts = [0, *itertools.accumulate(lengths)]
    groups: dict[int, list[int]] = {}
    for s in range(cached, len(lengths)):
        owner = s
        while owner >= cached and parents[owner] >= 0:
            owner = parents[owner]
        groups.setdefault(owner, []).append(s)
    layout, blocks = Layout(lengths, parents), []
    for owner, members in groups.items():
        rows = [t for s in members for t in range(starts[s], starts[s + 1])]
        prefix = [t for start, n in layout.spans(owner) for t in range(start, start + n)] if owner < cached else []
        blocks.append((torch.tensor(rows) - starts[cached], torch.tensor(prefix + rows)))
    return blocks


def block_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, blocks=None, **kwargs) -> tuple[torch.Tensor, None]:
    """sdpa, block by block when the call carries `blocks` (see `query_blocks`), else as usual."""
    if not blocks or len(blocks) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], value.shape[-1])
    for rows, cols in blocks:
        mask = attention_mask[:, :, rows][..., cols]
        out[:, rows] = sdpa_attention_forward(module, query[:, :, rows], key[:, :, cols], value[:, :, cols], mask,
                                              **kwargs)[0]
    return out, None


def supports_block_attention(model) -> bool:
    """Whether the model's attention goes through transformers' attention interface (Gemma 3 does)."""
    return bool(getattr(model, "_supports_attention_backend", False))


def enable_block_attention(model) -> None:
    """Make the model's attention `block_attention` (sdpa unless a forward passes `blocks`)."""
    AttentionInterface.register(BLOCK_ATTENTION, block_attention)
    AttentionMaskInterface.register(BLOCK_ATTENTION, sdpa_mask)
    model.set_attn_implementation(BLOCK_ATTENTION)
