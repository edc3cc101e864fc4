"""Linear layers on CPU through oneDNN, each weight reordered into oneDNN's layout once.

torch's eager `linear` re-lays the weight out for its kernel on every call: MKL's sgemm in
float32, oneDNN's AMX / AVX512-BF16 kernels in bfloat16. At the router's shapes (tens to a few
hundred rows against 640-2048-wide weights) that is a measurable share of the matmul; oneDNN's
`_linear_pointwise` on a weight reordered once skips it (docs/speed.md has the measurement).
Hand-written because torch applies this packing only inside `torch.compile` with freezing, and
the router runs eagerly.

A weight is packed the first time its layer computes with it, so a layer whose weight is swapped
(`merged.MergedAdapter` switching between base and merged weights) packs the other tensor once
and then keeps both; only the tensors actually served cost memory.
"""
from __future__ import annotations

import torch

from .hardware import CpuFeatures

ROWS_HINT = 128  # the row count oneDNN lays the weight out for; the router's passes are 16-256 rows


def available() -> bool:
    """Whether this torch has oneDNN and its two linear ops (older builds keep torch's own matmul)."""
    ops = all(hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise"))
    return torch.backends.mkldnn.is_available() and ops


def can_pack(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a model in `dtype` on `device` runs on CPU in float32, or in bfloat16 where the CPU multiplies
    it natively (elsewhere oneDNN would emulate it), and this torch can pack its weights."""
    native = dtype == torch.float32 or (dtype == torch.bfloat16 and CpuFeatures.detect().native_bf16)
    return native and device.type == "cpu" and available()


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` ([out, in]) reordered into oneDNN's layout for `linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`torch.nn.functional.linear` on a weight made by `pack`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinears:
    """The decoder's linear layers (LoRA's own excepted) computing with packed copies of their weights."""

    def __init__(self, decoder: torch.nn.Module):
        self._packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (weight, its copy)
        self.layers = [module for name, module in decoder.named_modules()
                       if type(module) is torch.nn.Linear and ".lora_" not in name]
        for layer in self.layers:
            layer.forward = self._forward_of(layer)

    def _forward_of(self, layer: torch.nn.Linear):
        def forward(x: torch.Tensor) -> torch.Tensor:
            return linear(x, self.packed(layer.weight), layer.bias)
        return forward

    def packed(self, weight: torch.Tensor) -> torch.Tensor:
        """The oneDNN copy of `weight`, made on first use (the entry holds `weight`, so its id stays its own)."""
        entry = self._packed.get(id(weight))
        if entry is None:
            entry = self._packed[id(weight)] = (weight, pack(weight))
        return entry[1]
