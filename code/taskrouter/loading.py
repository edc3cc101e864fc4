"""Load the base model (local directory, hub id, or the embedded default) and its LoRA adapters.

On CUDA the base is loaded in 4-bit NF4 with bitsandbytes (the QLoRA setting); on CPU
`dtype="auto"` is bfloat16 where the CPU multiplies it natively (AMX or AVX512-BF16) and
float32 elsewhere (`hardware.cpu_dtype`). A single adapter on an unquantised base is merged
into the weights (`merged.MergedAdapter`) unless `merge_lora=False`.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .embedded import EMBEDDED_NAME, ensure_embedded
from .hardware import cpu_dtype
from .merged import MergedAdapter

MANIFEST = "router.json"
DEFAULT_ADAPTERS_DIR = Path(__file__).resolve().parents[2] / "model_artifacts" / "adapters"


@dataclass
class LoadedModel:
    """A base model, its tokenizer and the adapters loaded on it (by name)."""

    model: torch.nn.Module  # the transformers model (with LoRA layers injected when adapters exist)
    tokenizer: object
    name: str
    device: torch.device
    quantization: str
    adapters: dict[str, dict] = field(default_factory=dict)  # name -> router.json manifest
    peft: object | None = None  # the PeftModel, to switch adapters
    merged: MergedAdapter | None = None  # the adapter folded into the weights, when one serves alone

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def use_adapter(self, name: str | None):
        """Context manager that makes `name` (or no adapter) active for the next forward passes."""
        if self.peft is None:
            return contextlib.nullcontext()
        folded = self.merged is not None and name == self.merged.adapter
        if self.merged is not None:
            self.merged.activate(folded)
        if name is None or folded:  # the LoRA path off: base weights, or the merged ones
            return self.peft.disable_adapter()
        self.peft.set_adapter(name)
        return contextlib.nullcontext()


def read_manifest(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"adapter {adapter_dir} has no {MANIFEST} manifest")
    return json.loads(path.read_text())


def resolve_base(source: str | None) -> tuple[str, str]:
    """(path or hub id to load, display name) for a base model source."""
    if source in (None, "", "embedded", EMBEDDED_NAME):
        return str(ensure_embedded()), EMBEDDED_NAME
    if Path(source).is_dir():
        if not (Path(source) / "config.json").exists():
            raise FileNotFoundError(f"{source} has no config.json: not a model directory")
        return source, Path(source).name
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"{source} is not a local directory and HF_HUB_OFFLINE=1 forbids the hub")
    return source, source


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`dtype` by name, or for "auto" bfloat16 on CUDA and on CPUs with native bf16, else float32."""
    if dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype: {dtype!r} is not a torch dtype (auto, float32, bfloat16, float16)")
        return getattr(torch, dtype)
    return torch.bfloat16 if device.type == "cuda" else cpu_dtype()


def load_base(source: str | None, dtype: str = "auto", quantize: str = "auto"):
    """(model, tokenizer, name, device, quantization): NF4 on CUDA unless `quantize="none"`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, name = resolve_base(source)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict = {"dtype": pick_dtype(dtype, device), "attn_implementation": "sdpa"}
    quantization = "none"
    if quantize == "nf4" or (quantize == "auto" and device.type == "cuda"):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0} if device.type == "cuda" else {"": "cpu"}
        quantization = "nf4"
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quantization == "none":
        model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, name, device, quantization


def load_model(
    source: str | None = None,
    adapters: dict[str, Path] | None = None,
    dtype: str = "auto",
    quantize: str = "auto",
    merge_lora: bool = True,
) -> LoadedModel:
    """Load a base model and every adapter in `adapters` (name -> directory) with peft; a single
    adapter on an unquantised base is merged into the weights when `merge_lora`."""
    model, tokenizer, name, device, quantization = load_base(source, dtype, quantize)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, name=name, device=device, quantization=quantization)
    for adapter_name, adapter_dir in (adapters or {}).items():
        manifest = read_manifest(adapter_dir)
        from peft import PeftModel

        if loaded.peft is None:
            loaded.peft = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name)
            loaded.model = loaded.peft.get_base_model()
        else:
            loaded.peft.load_adapter(str(adapter_dir), adapter_name=adapter_name)
        loaded.peft.eval()
        loaded.adapters[adapter_name] = manifest
    if merge_lora and len(loaded.adapters) == 1 and quantization == "none":
        loaded.merged = MergedAdapter(loaded.peft, next(iter(loaded.adapters)))
    return loaded


def find_adapters(root: Path | str | None, names: list[str] | None = None) -> dict[str, Path]:
    """Adapters (name -> dir) under `root` that hold weights and a manifest; `names` filters them."""
    root = Path(root or DEFAULT_ADAPTERS_DIR)
    found = {}
    for d in sorted(root.glob("*")) if root.is_dir() else []:
        if (d / MANIFEST).exists() and (d / "adapter_config.json").exists():
            found[d.name] = d
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise FileNotFoundError(f"adapter(s) {', '.join(missing)} not found under {root}")
        found = {n: found[n] for n in names}
    return found
