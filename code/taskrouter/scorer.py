"""Grammar-constrained choice of one name from a dynamic list, by exact scoring.

Hand-written because it is what makes the router both correct and fast: the
allowed answers form a trie of token ids; the engine feeds every trie node up to
the last branching point to the model in the same forward pass as the prompt's new
tokens (tree attention: a node sees its prompt and its own ancestors), and only
the LM-head rows of each node's allowed children are computed, never the 262k-row
vocabulary. The result is the exact distribution constrained decoding would give,
over every name at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .prompts import answer_text, encode_text


@dataclass
class NameTrie:
    """Token-id trie of the allowed answers; node 0 is the root (the answer lead)."""

    names: list[str]
    tokens: list[int] = field(default_factory=list)  # token of node i (root: -1)
    parent: list[int] = field(default_factory=list)
    leaf_of: dict[int, int] = field(default_factory=dict)  # node -> name index

    @classmethod
    def build(cls, tokenizer, names: list[str]) -> "NameTrie":
        """The trie of `names` (special-token strings in a name stay text). Raises `ValueError` naming a
        name whose tokens equal, or start, another's: constrained decoding could not tell them apart."""
        trie = cls(names=names, tokens=[-1], parent=[-1])
        children: dict[tuple[int, int], int] = {}
        for index, name in enumerate(names):
            node = 0
            ids = encode_text(tokenizer, answer_text(name))
            for tok in ids:
                if node in trie.leaf_of:
                    break
                key = (node, tok)
                if key not in children:
                    children[key] = len(trie.tokens)
                    trie.tokens.append(tok)
                    trie.parent.append(node)
                node = children[key]
            if node in trie.leaf_of or any(p == node for p in trie.parent):
                raise ValueError(f"tasks: the name {name!r} reads as the same tokens as another listed name, "
                                 "or as their start; rename one of them")
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


def name_distribution(model, trie: NameTrie, hidden: dict[int, torch.Tensor]) -> torch.Tensor:
    """Constrained-decoding probabilities of the names (in `trie.names` order) from the final hidden
    states of the root (the answer lead) and of the internal nodes; the LM-head rows in float32."""
    head = model.get_output_embeddings()
    edge_logp = torch.zeros(len(trie.tokens))  # forced steps (an only child) keep log p = 0
    branching = trie.branching
    edges = [e for e in range(1, len(trie.tokens)) if trie.parent[e] in branching]
    if edges:
        parents = torch.tensor([trie.parent[e] for e in edges])
        rows = head.weight[torch.tensor([trie.tokens[e] for e in edges], device=head.weight.device)].float()
        states = torch.stack([hidden[trie.parent[e]] for e in edges]).float()
        logits = (states * rows).sum(-1)
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
