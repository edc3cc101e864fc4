"""`taskrouter bench train`: seconds per training example, packed vs one forward per example.

Both sides train the same sampled examples (forward + backward of the answer loss
on a fresh LoRA): once as packs that share their task-list head in one forward
pass, once with every example as its own forward pass, so the ratio is the gain
of packing and nothing else.
"""
from __future__ import annotations

import argparse
import time

import torch

from .examples import DEFAULT_BALANCE, Pack, sample_packs
from .train import load_trainable, pack_loss


def _seconds(model, packs: list[Pack], device) -> float:
    start = time.perf_counter()
    for pack in packs:
        pack_loss(model, pack, device).backward()
        model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure(base: str, data: list[str], n_examples: int, history_tokens: int) -> dict:
    """Training seconds per example with packs and without, on the same `n_examples` examples."""
    setup = argparse.Namespace(base=base, rank=8, alpha=16, dropout=0.05, target_modules="all-linear",
                               init_adapter=None)
    model, tokenizer, name, _, device = load_trainable(setup)
    packs = sample_packs(tokenizer, data, n_examples, DEFAULT_BALANCE, 0, history_tokens)
    singles = [Pack(p.head, [e]) for p in packs for e in p.examples]
    _seconds(model, packs[:1], device)  # warm-up: allocator, kernels
    packed, apart = _seconds(model, packs, device), _seconds(model, singles, device)
    tokens = sum(len(p.head) + sum(len(e.ids) for e in p.examples) for p in packs)
    return {"model": name, "examples": len(singles), "packs": len(packs), "threads": torch.get_num_threads(),
            "tokens_packed": tokens, "tokens_apart": sum(len(p.head) + len(p.examples[0].ids) for p in singles),
            "packed_s_per_example": packed / len(singles), "apart_s_per_example": apart / len(singles),
            "speedup": apart / packed}


def report(figures: dict) -> None:
    print(f"taskrouter bench train — {figures['model']}, {figures['examples']} examples in {figures['packs']} packs, "
          f"{figures['threads']} threads (forward + backward, LoRA r8 all-linear)")
    print(f"  one forward per example  {figures['apart_s_per_example']:.3f} s/example  ({figures['tokens_apart']} tokens)")
    print(f"  packs (shared task list) {figures['packed_s_per_example']:.3f} s/example  ({figures['tokens_packed']} tokens)")
    print(f"  speed-up                 {figures['speedup']:.2f}x")
