"""What this CPU computes fast, by feature detection: it picks the dtype the model runs in on CPU.

bfloat16 only where the CPU has native bf16 matrix instructions (AMX tiles or AVX512-BF16) and
torch dispatches AVX-512 kernels; without them bf16 is emulated and several times slower than
float32. docs/speed.md has the measurements behind this rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _has(feature: str) -> bool:
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)  # torch's cpuinfo probes (private, hence guarded)
    return bool(probe and probe())


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU features that decide the matmul path."""

    capability: str  # torch's kernel dispatch level: AVX512, AVX2, DEFAULT (ATEN_CPU_CAPABILITY can lower it)
    amx: bool  # AMX tiles (bf16 and int8 matrix units)
    avx512_bf16: bool
    vnni: bool  # int8 dot products

    @classmethod
    def detect(cls) -> "CpuFeatures":
        return cls(torch.backends.cpu.get_cpu_capability(), _has("amx_tile"), _has("avx512_bf16"), _has("vnni"))

    @property
    def native_bf16(self) -> bool:
        return self.capability == "AVX512" and (self.amx or self.avx512_bf16)

    def describe(self) -> str:
        flags = [name for name, on in (("amx", self.amx), ("avx512_bf16", self.avx512_bf16), ("vnni", self.vnni)) if on]
        return f"{self.capability} ({', '.join(flags) or 'no bf16/int8 matrix units'})"


def cpu_dtype(features: CpuFeatures | None = None) -> torch.dtype:
    """bfloat16 where the CPU multiplies it natively, float32 elsewhere."""
    features = features or CpuFeatures.detect()
    return torch.bfloat16 if features.native_bf16 else torch.float32
