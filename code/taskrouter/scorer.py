"""Grammar-constrained choice of one name from a dynamic list, by exact scoring.

Hand-written because it is what makes the router both correct and fast: the
allowed answers form a trie of token ids; every trie node up to the last branching
point is fed to the model in ONE forward pass on top of the prompt's KV cache (tree
attention: a node sees its prompt and its own ancestors; a whole batch of requests'
tries goes in the same pass), and only the LM-head rows of each node's allowed
children are computed, never the 262k-row vocabulary. The result is the exact
distribution constrained decoding would give, over every name at once.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch

from .prompts import answer_text
from .treeattention import Layout, tree_inputs


@functools.cache
def _cache_keyword(decoder_type: type) -> str:
    return "cache" if "cache" in inspect.signature(decoder_type.forward).parameters else "past_key_values"


def cache_kwargs(decoder: torch.nn.Module, cache) -> dict:
    """The decoder's KV-cache keyword with `cache`: `cache` from transformers 5.24 on, `past_key_values` before
    (5.5.3, in the SageMaker image), where an unknown `cache=` is swallowed by **kwargs and the cache stays empty."""
    return {_cache_keyword(type(decoder)): cache}


@dataclass
class NameTrie:
    """Token-id trie of the allowed answers; node 0 is the root (the answer lead)."""

    names: list[str]
    tokens: list[int] = field(default_factory=list)  # token of node i (root: -1)
    parent: list[int] = field(default_factory=list)
    leaf_of: dict[int, int] = field(default_factory=dict)  # node -> name index

    @classmethod
    def build(cls, tokenizer, names: list[str]) -> "NameTrie":
        trie = cls(names=names, tokens=[-1], parent=[-1])
        children: dict[tuple[int, int], int] = {}
        for index, name in enumerate(names):
            node = 0
            ids = tokenizer.encode(answer_text(name), add_special_tokens=False)
            for tok in ids:
                key = (node, tok)
                if key not in children:
                    children[key] = len(trie.tokens)
                    trie.tokens.append(tok)
                    trie.parent.append(node)
                node = children[key]
            if node in trie.leaf_of or any(p == node for p in trie.parent):
                raise ValueError(f"task name {name!r} is not a distinct token sequence")
            trie.leaf_of[node] = index
        return trie

    @property
    def branching(self) -> set[int]:
        """Nodes with several children: the only places where constrained decoding has a choice."""
        seen: set[int] = set()
        return {p for p in self.parent[1:] if p in seen or seen.add(p)}

    @property
    def internal(self) -> list[int]:
        """Non-root nodes the model must see: branching nodes and their ancestors.

        Past the last branching node a name is forced (one allowed token per step, probability 1),
        so its remaining tokens are never computed: with names that differ in their first token,
        the whole choice costs no forward pass beyond the prompt.
        """
        needed: set[int] = set()
        for node in self.branching:
            while node > 0 and node not in needed:
                needed.add(node)
                node = self.parent[node]
        return sorted(needed)  # a parent's index is always smaller than its children's


def softcap(model, logits: torch.Tensor) -> torch.Tensor:
    """The model's final-logit soft-capping (Gemma), applied to logits computed from some LM-head rows."""
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@dataclass(frozen=True)
class Anchor:
    """Where one request's answer starts: its trie, the layout segment ending with its answer lead,
    and the final-norm hidden state at that lead's last token."""

    trie: NameTrie
    segment: int
    hidden: torch.Tensor


@torch.inference_mode()
def score_names(model, cache, layout: Layout, anchors: list[Anchor]) -> list[torch.Tensor]:
    """Probabilities of each anchor's names (in `trie.names` order) under constrained decoding.

    `cache` holds the tokens `layout` describes (one prompt, or a batch of prompts laid end to
    end). The internal nodes of every trie go through the model in ONE forward pass, each node
    seeing its own prompt and its ancestors; the cache is cropped back afterwards.
    """
    lengths, parents, ids, slots = list(layout.lengths), list(layout.parents), [], []
    for anchor in anchors:
        slot: dict[int, int] = {}
        for n in anchor.trie.internal:  # parents come first: a node's parent is its anchor or a slotted node
            slot[n] = len(lengths)
            parents.append(slot.get(anchor.trie.parent[n], anchor.segment))
            lengths.append(1)
            ids.append(anchor.trie.tokens[n])
        slots.append(slot)
    hidden_of: list[torch.Tensor] = []
    if ids:
        inputs = tree_inputs(model, lengths, parents, cached=len(layout.lengths))
        decoder = model.get_decoder()
        out = decoder(input_ids=torch.tensor([ids], device=model.device), use_cache=True, **cache_kwargs(decoder, cache),
                      **inputs)
        cache.crop(-len(ids))
        hidden_of = list(out.last_hidden_state[0])
    first = len(layout.lengths)
    return [_distribution(model, a.trie, {0: a.hidden.reshape(-1), **{n: hidden_of[i - first] for n, i in slot.items()}})
            for a, slot in zip(anchors, slots)]


def _distribution(model, trie: NameTrie, hidden: dict[int, torch.Tensor]) -> torch.Tensor:
    """Constrained-decoding probabilities of the names from the hidden states of the root and internal nodes."""
    head = model.get_output_embeddings()
    edge_logp = torch.zeros(len(trie.tokens))  # forced steps (an only child) keep log p = 0
    branching = trie.branching
    edges = [e for e in range(1, len(trie.tokens)) if trie.parent[e] in branching]
    if edges:
        parents = torch.tensor([trie.parent[e] for e in edges])
        rows = head.weight[torch.tensor([trie.tokens[e] for e in edges], device=head.weight.device)]
        states = torch.stack([hidden[trie.parent[e]] for e in edges]).to(rows.dtype)
        logits = (states * rows).sum(-1).float()
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[[trie.tokens[e] for e in edges]].float()
        logits = softcap(model, logits)
        # log-softmax among siblings: the constrained distribution at each branching node
        logits = logits.cpu()
        group_max = torch.full((len(trie.tokens),), -torch.inf).scatter_reduce(0, parents, logits, "amax")
        exp = torch.exp(logits - group_max[parents])
        group_sum = torch.zeros(len(trie.tokens)).scatter_add(0, parents, exp)
        edge_logp[edges] = logits - group_max[parents] - torch.log(group_sum[parents])
    logp = torch.zeros(len(trie.names))
    for leaf, index in trie.leaf_of.items():
        total, node = 0.0, leaf
        while node > 0:
            total += edge_logp[node]
            node = trie.parent[node]
        logp[index] = total
    return torch.softmax(logp, dim=0)
