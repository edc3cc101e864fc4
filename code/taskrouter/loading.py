"""Load the base model (the embedded default, an artifact or model folder, a hub id) and its LoRA adapters.

Unless told otherwise, a base comes with the adapters that ship for it (the package's own for the
embedded default, an artifact's `adapters/`), so every entry point routes as the server does.
On CUDA the base is loaded in 4-bit NF4 with bitsandbytes (the QLoRA setting); on CPU
`dtype="auto"` is bfloat16 where the CPU multiplies it natively (AMX or AVX512-BF16) and
float32 elsewhere (`hardware.cpu_dtype`). A single adapter on an unquantised base is merged
into the weights (`merged.MergedAdapter`) unless `merge_lora=False`, and on CPU the linear layers
compute through oneDNN on weights packed once (`packed.PackedLinears`) unless `pack_weights=False`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .artifacts import base_name_of
from .embedded import EMBEDDED_NAME, ensure_embedded
from .hardware import cpu_dtype
from .merged import MergedAdapter
from .packed import PackedLinears, can_pack
from .resources import adapters_dir

log = logging.getLogger("taskrouter")
MANIFEST = "router.json"
DEFAULT_ADAPTERS_DIR = adapters_dir()


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
    lora: str | None = None  # the adapter whose LoRA layers are on (peft's state, kept by use_adapter)
    merged: MergedAdapter | None = None  # the adapter folded into the weights, when one serves alone
    packed: PackedLinears | None = None  # on CPU: the linear layers on oneDNN-packed weights (packed.can_pack)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def use_adapter(self, name: str | None) -> None:
        """Make `name` (or no adapter) the one the next forward passes compute with, until the next call.

        A call that changes nothing does nothing: peft's own switches (and its `disable_adapter` context)
        walk every module of the model, which cost more per request than the LoRA arithmetic they skip."""
        if self.peft is None:
            return
        folded = self.merged is not None and name == self.merged.adapter
        if self.merged is not None:
            self.merged.activate(folded)
        lora = None if folded else name  # the adapter whose unmerged LoRA path computes; None: that path off
        if lora == self.lora:
            return
        if lora is None:
            self.peft.base_model.disable_adapter_layers()
        else:
            if self.lora is None:
                self.peft.base_model.enable_adapter_layers()
            self.peft.set_adapter(lora)
        self.lora = lora


def read_manifest(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"adapter {adapter_dir} has no {MANIFEST} manifest")
    return json.loads(path.read_text())


def is_embedded(source: str | Path | None) -> bool:
    return source in (None, "", "embedded", EMBEDDED_NAME)


def resolve_base(source: str | None) -> tuple[str, str]:
    """(path or hub id to load, display name) for a base model source."""
    if is_embedded(source):
        return str(ensure_embedded()), EMBEDDED_NAME
    if Path(source).is_dir():
        if not (Path(source) / "config.json").exists():
            raise FileNotFoundError(f"{source} has no config.json: not a model directory")
        return source, base_name_of(Path(source))
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


@contextlib.contextmanager
def plain_linears():
    """While it is open, Falcon builds plain nn.Linear layers instead of FalconLinear.

    transformers' bitsandbytes integration swaps only modules whose type is exactly nn.Linear,
    so Falcon's FalconLinear (an nn.Linear subclass with the same arithmetic) would stay bf16 in a
    model whose config says NF4: a 7B base would take ~14 GB instead of ~4 GB.
    """
    from transformers.models.falcon import modeling_falcon

    original = modeling_falcon.FalconLinear
    modeling_falcon.FalconLinear = torch.nn.Linear
    try:
        yield
    finally:
        modeling_falcon.FalconLinear = original


def load_base(source: str | None, dtype: str = "auto", quantize: str = "auto", gpu: int | None = None):
    """(model, tokenizer, name, device, quantization): NF4 on CUDA unless `quantize="none"`; on GPU `gpu`
    (default the first) when there is one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, name = resolve_base(source)
    device = torch.device("cuda", gpu or 0) if torch.cuda.is_available() else torch.device("cpu")
    kwargs: dict = {"dtype": pick_dtype(dtype, device), "attn_implementation": "sdpa"}
    quantization = "none"
    if quantize == "nf4" or (quantize == "auto" and device.type == "cuda"):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": device.index if device.type == "cuda" else "cpu"}
        quantization = "nf4"
    config = Path(path) / "config.json"
    if config.exists() and "quantization_config" in json.loads(config.read_text()):
        quantization = "nf4"  # an NF4 artifact: its weights are 4-bit already, on any device
    if quantization == "nf4":  # the 4-bit layers compute in bf16, whatever `dtype` asks: so do the norms
        kwargs["dtype"] = torch.bfloat16  # (Falcon's LayerNorm refuses bf16 input with float32 weights)
    with plain_linears() if quantization == "nf4" else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quantization == "none":
        model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, name, device, quantization


def shipped_adapters(source: str | Path | None, names: list[str] | None = None) -> dict[str, Path]:
    """The adapters that ship for a base (name -> folder): the package's own for the embedded default,
    `adapters/` of an artifact or model folder, none for a hub id; `names` picks some of them."""
    if is_embedded(source):
        return adapters_for(EMBEDDED_NAME, DEFAULT_ADAPTERS_DIR, names)
    if Path(source).is_dir():
        return adapters_for(base_name_of(Path(source)), Path(source) / "adapters", names)
    if names:
        raise FileNotFoundError(f"adapter(s) {', '.join(names)}: a hub model ({source}) ships with none")
    return {}


def load_model(
    source: str | None = None,
    adapters: dict[str, Path] | None = None,
    dtype: str = "auto",
    quantize: str = "auto",
    gpu: int | None = None,
    merge_lora: bool = True,
    pack_weights: bool = True,
) -> LoadedModel:
    """Load a base model and its adapters with peft: `adapters` (name -> folder), by default those
    that ship for the base (`shipped_adapters`); `{}` for the bare base. A single adapter on an
    unquantised base is merged into the weights when `merge_lora`; on CPU the linear layers compute on
    oneDNN-packed weights when `pack_weights` and `packed.can_pack` allows the dtype."""
    adapters = shipped_adapters(source) if adapters is None else adapters
    model, tokenizer, name, device, quantization = load_base(source, dtype, quantize, gpu)
    if not adapters:  # said at start: the bare base routes far worse than its adapter
        log.warning("taskrouter: %s loaded without an adapter: requests route with the bare base model", name)
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
        loaded.lora = loaded.peft.active_adapter  # peft turns the first adapter loaded on
    if merge_lora and len(loaded.adapters) == 1 and quantization == "none":
        loaded.merged = MergedAdapter(loaded.peft, next(iter(loaded.adapters)))
    if pack_weights and quantization == "none" and can_pack(loaded.dtype, loaded.device):
        loaded.packed = PackedLinears(loaded.model.get_decoder())
    return loaded


def adapters_for(base_name: str, root: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Adapters under `root` trained for `base_name`; an explicitly named mismatch is an error."""
    chosen = {}
    for name, path in find_adapters(root, names).items():
        base = read_manifest(path).get("base_model")
        if base == base_name:
            chosen[name] = path
        elif names:
            raise ValueError(f"adapter {name} was trained for {base!r}, not for the base {base_name!r}")
        else:
            log.info("skipping adapter %s: trained for %s, not %s", name, base, base_name)
    return chosen


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
