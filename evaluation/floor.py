"""What the arithmetic allows: FLOPs per computed token and the matmul rates this machine reaches.

A request's floor is the FLOPs of the tokens it computed (the decoder's linear layers, the
attention over its context, the unmerged LoRA when one runs) divided by the rate one kernel
reaches on the model's own linear shapes at that many rows. `taskrouter bench latency` divides
every latency by it, so figures from different machines read the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from taskrouter import packed

KERNELS = ("float32", "float32-packed", "bfloat16", "bfloat16-packed", "int8")  # -packed: oneDNN, taskrouter/packed.py


@dataclass(frozen=True)
class ModelCost:
    """FLOPs of one computed token: `linear` + `lora` (0 when merged or absent) + `attention_per_key` x keys seen."""

    linear: float
    lora: float
    attention_per_key: float
    window: int | None  # sliding-window layers see at most this many keys
    sliding_share: float  # share of the layers that slide
    shapes: tuple[tuple[int, int], ...]  # (in, out) of the decoder's distinct linear layers

    def flops(self, tokens: int, context: int) -> float:
        """FLOPs of computing `tokens` new tokens whose keys reach `context` tokens at the end."""
        keys = tokens * max(1, context - tokens // 2)  # the mean key count over the new tokens
        if self.window:
            windowed = tokens * min(self.window, max(1, context - tokens // 2))
            keys = (1 - self.sliding_share) * keys + self.sliding_share * windowed
        return tokens * (self.linear + self.lora) + self.attention_per_key * keys


def model_cost(model, lora_active: bool) -> ModelCost:
    """The cost of one token of `model`'s decoder, read from its linear layers and config."""
    linear = lora = 0.0
    shapes: set[tuple[int, int]] = set()
    for name, module in model.get_decoder().named_modules():
        if isinstance(module, torch.nn.Linear):
            flops = 2.0 * module.in_features * module.out_features
            if ".lora_" in name:
                lora += flops
            else:
                linear += flops
                shapes.add((module.in_features, module.out_features))
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layer_types = list(getattr(config, "layer_types", None) or [])
    sliding = sum("sliding" in t for t in layer_types) / len(layer_types) if layer_types else 0.0
    return ModelCost(linear=linear, lora=lora if lora_active else 0.0,
                     attention_per_key=4.0 * config.num_hidden_layers * heads * head_dim,
                     window=getattr(config, "sliding_window", None) if sliding else None, sliding_share=sliding,
                     shapes=tuple(sorted(shapes)))


def _seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` runs: a floor is the best the kernel reaches, not its typical time."""
    fn()  # warm-up: packing, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rate(kernel: str, shapes: tuple[tuple[int, int], ...], rows: int, repeats: int = 10) -> float | None:
    """FLOP/s of one pass over the model's linear shapes at `rows` rows with `kernel`, on this machine's
    current threads; None where torch has no such kernel here (int8 needs `torch._int_mm`)."""
    rows = max(rows, 17)  # torch._int_mm wants more than 16 rows; the float kernels do not care
    generator = torch.Generator().manual_seed(0)
    if kernel == "int8":
        xs = [torch.randint(-127, 127, (rows, i), dtype=torch.int8, generator=generator) for i, _ in shapes]
        ws = [torch.randint(-127, 127, (i, o), dtype=torch.int8, generator=generator) for i, o in shapes]

        def run():
            for x, w in zip(xs, ws):
                torch._int_mm(x, w)
        try:
            run()
        except (RuntimeError, AttributeError):
            return None
    elif kernel.endswith("-packed"):
        dtype = getattr(torch, kernel.removesuffix("-packed"))
        if not packed.can_pack(dtype, torch.device("cpu")):
            return None
        xs = [torch.randn(rows, i, generator=generator).to(dtype) for i, _ in shapes]
        ws = [packed.pack(torch.randn(o, i, generator=generator).to(dtype)) for i, o in shapes]

        def run():
            for x, w in zip(xs, ws):
                packed.linear(x, w)
    else:
        dtype = getattr(torch, kernel)
        xs = [torch.randn(rows, i, generator=generator).to(dtype) for i, _ in shapes]
        ws = [torch.randn(o, i, generator=generator).to(dtype) for i, o in shapes]

        def run():
            for x, w in zip(xs, ws):
                torch.nn.functional.linear(x, w)
    flops = sum(2.0 * rows * i * o for i, o in shapes)
    with torch.inference_mode():
        return flops / _seconds(run, repeats)
