"""Average LoRA adapters into one: a model soup of runs that share a starting point.

Warm starts from the same weights stay close to each other, so the mean of their
weights is a model in its own right; the default adapter is such a mean, and it
routes better than each of its runs alone (docs/routing-quality.md). The mean is
exact: peft's `add_weighted_adapter(combination_type="cat")` stacks the runs' A
matrices (each scaled by its weight and its own alpha / r) and their B matrices,
a rank-(sum of ranks) LoRA whose B @ A is the mean of the runs' weight changes, so
peft and the server load it like any adapter.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from taskrouter.embedded import EMBEDDED_NAME

from .model_card import write_model_card

CONFIG = "adapter_config.json"
SAME = ("base_model", "prompt_format", "quantization")  # manifest fields every adapter must share
PROVENANCE = ("train_command", "training_data", "training", "init_adapter", "average_of", "none_bias")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", action="append", required=True, metavar="DIR",
                        help="adapter folder (peft weights + router.json); repeat, at least twice. They must share "
                             "base model, prompt format and quantization")
    parser.add_argument("--out", required=True, help="output folder, e.g. model_artifacts/adapters/NAME "
                                                     "(it may be one of the --adapter folders: all are read first)")
    parser.add_argument("--name", help="adapter name in the manifest (default: the --out folder name)")
    parser.add_argument("--history-tokens", type=int,
                        help="conversation tokens the server keeps (default: the first adapter's)")
    parser.add_argument("--base", help="the adapters' base model (default: the embedded model for its adapters, "
                                       "else the folder their adapter_config.json names)")


@dataclass(frozen=True)
class Adapter:
    """One saved adapter: its folder, peft config, router.json and its weights file's sha256."""

    folder: Path
    config: dict
    manifest: dict
    sha256: str


def read_adapter(folder: Path) -> Adapter:
    """An adapter folder as `taskrouter train` writes it; an error naming it when a file is missing."""
    from taskrouter.loading import read_manifest

    from .train import adapter_weights_file

    weights = adapter_weights_file(folder, "--adapter")
    if not (folder / CONFIG).exists():
        raise ValueError(f"--adapter {folder}: no {CONFIG} there")
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError as exc:
        raise ValueError(f"--adapter: {exc}") from None
    return Adapter(folder, json.loads((folder / CONFIG).read_text()), manifest,
                   hashlib.sha256(weights.read_bytes()).hexdigest())


def check_compatible(first: Adapter, other: Adapter) -> None:
    """Adapters average only if they were trained for the same base, prompt format and quantization."""
    for field in SAME:
        if other.manifest.get(field) != first.manifest.get(field):
            raise ValueError(f"--adapter {other.folder}: {field} {other.manifest.get(field)!r} differs from "
                             f"{first.folder}'s {first.manifest.get(field)!r}")


def stored_dtype(adapter: Adapter):
    """The dtype of an adapter's saved LoRA weights."""
    from safetensors import safe_open

    from .train import adapter_weights_file

    with safe_open(str(adapter_weights_file(adapter.folder, "--adapter")), "pt") as weights:
        return weights.get_tensor(next(iter(weights.keys()))).dtype


def base_of(first: Adapter, base: str | None) -> str:
    """The base model to load the adapters on: --base, the embedded model, or the folder peft recorded."""
    if base:
        return base
    if first.manifest.get("base_model") == EMBEDDED_NAME:
        return "embedded"
    recorded = first.config.get("base_model_name_or_path")
    if recorded and Path(recorded).is_dir():
        return recorded
    raise ValueError(f"--base: give the base model of these adapters (router.json names "
                     f"{first.manifest.get('base_model')!r}, adapter_config.json {recorded!r})")


def average(folders: list[Path], out: Path, name: str | None = None, history_tokens: int | None = None,
            base: str | None = None) -> dict:
    """Write the exact mean of the adapters in `folders` to `out`; returns its manifest (no none bias yet)."""
    from peft import PeftModel

    from taskrouter.loading import MANIFEST, load_base

    if len(folders) < 2:
        raise ValueError("--adapter: give at least two adapters to average")
    adapters = [read_adapter(Path(f)) for f in folders]
    first, n = adapters[0], len(adapters)
    for other in adapters[1:]:
        check_compatible(first, other)
    runs = [f"run{i}" for i in range(n)]
    model = PeftModel.from_pretrained(load_base(base_of(first, base), quantize="none")[0], str(first.folder),
                                      adapter_name=runs[0])
    for run, adapter in zip(runs[1:], adapters[1:]):
        model.load_adapter(str(adapter.folder), adapter_name=run)
    model.add_weighted_adapter(runs, [1.0 / n] * n, adapter_name="mean", combination_type="cat")
    dtype = stored_dtype(first)  # the mean is stored as the runs were (bfloat16 from taskrouter train)
    for param_name, param in model.named_parameters():
        if ".mean." in param_name:
            param.data = param.data.to(dtype)
    model.peft_config["mean"].base_model_name_or_path = first.config.get("base_model_name_or_path")
    mean_config = model.peft_config["mean"]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as staging:  # each file replaced whole: an --adapter may be --out
        model.save_pretrained(staging, selected_adapters=["mean"])
        for produced in (Path(staging) / "mean").iterdir():
            if produced.name != "README.md":
                shutil.move(str(produced), out / produced.name)
    history = history_tokens or first.manifest.get("hyper_parameters", {}).get("history_tokens")
    manifest = {
        "name": name or out.name,
        **{field: first.manifest.get(field) for field in SAME},
        "hyper_parameters": {"rank": mean_config.r, "alpha": mean_config.lora_alpha,
                             "target_modules": sorted(mean_config.target_modules), "history_tokens": history},
        "average_of": [{"path": str(a.folder), "weights_sha256": a.sha256,
                        **{k: a.manifest.get(k) for k in PROVENANCE}} for a in adapters],
        "average_command": shlex.join(["taskrouter", "average", *[w for f in folders for w in ("--adapter", str(f))],
                                       "--out", str(out), *(["--history-tokens", str(history)] if history else []),
                                       *(["--base", base] if base else [])]),
    }
    _write_json(out / MANIFEST, manifest)
    write_model_card(out, manifest)
    return manifest


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def run(args: argparse.Namespace) -> None:
    """`taskrouter average`: write the averaged adapter, then say how to tune its none bias."""
    try:
        manifest = average([Path(a) for a in args.adapter], Path(args.out), args.name, args.history_tokens, args.base)
    except (ValueError, OSError) as exc:
        sys.exit(f"error: {exc}")
    print(f"{args.out}: mean of {len(args.adapter)} adapters, LoRA rank {manifest['hyper_parameters']['rank']}; "
          "its none bias is not set yet: tune it on held-out turns with `taskrouter eval --tune`")
