"""One LoRA adapter folded into the base weights, switchable without arithmetic.

When a single adapter serves, its unmerged rank-r matmuls are pure overhead (docs/speed.md has
the measured cost). peft's own merge/unmerge adds and subtracts the delta in place, which drifts
in bfloat16 with every switch; here each adapted linear layer keeps two weight tensors, the base
one and base + delta computed in float32, and switching swaps which one the layer holds.
"""
from __future__ import annotations

import torch


class MergedAdapter:
    """The base and merged weights of every linear layer `adapter` adapts, in the peft model."""

    def __init__(self, peft_model, adapter: str):
        from peft.tuners.lora import LoraLayer

        self.adapter = adapter
        self._pairs: list[tuple[torch.nn.Module, torch.nn.Parameter, torch.nn.Parameter]] = []
        with torch.no_grad():
            for module in peft_model.modules():
                if isinstance(module, LoraLayer) and adapter in module.lora_A:
                    base = module.get_base_layer()
                    weight = base.weight
                    delta = module.get_delta_weight(adapter).to(torch.float32)
                    merged = torch.nn.Parameter((weight.float() + delta).to(weight.dtype), requires_grad=False)
                    self._pairs.append((base, weight, merged))
        self.active = False

    def activate(self, merged: bool) -> None:
        """Give every adapted layer its merged weights (True) or its base weights (False)."""
        if merged != self.active:
            for base, weight, merged_weight in self._pairs:
                base.weight = merged_weight if merged else weight
            self.active = merged
