"""Average LoRA adapters into one: a model soup of runs that share a starting point.

Warm starts from the same weights stay close to each other, so the mean of their
weights is a model in its own right; the default adapter is such a mean, and it
routes better than each of its runs alone (README, fine-tuning section). The mean
is exact: stacking the adapters' A matrices, and their B matrices divided by N,
gives a rank-(sum of ranks) LoRA whose B @ A is the mean of the adapters' B @ A,
so peft and the server load it like any adapter.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from taskrouter.loading import MANIFEST, read_manifest

from .train import adapter_weights_file

CONFIG = "adapter_config.json"
SAME = ("base_model", "prompt_format", "quantization")  # manifest fields every adapter must share
PROVENANCE = ("train_command", "training_data", "training", "init_adapter", "average_of", "none_bias")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", action="append", required=True, metavar="DIR",
                        help="adapter folder (peft weights + router.json); repeat, at least twice. They must share "
                             "base model, prompt format, quantization, target modules and LoRA scaling (alpha / r)")
    parser.add_argument("--out", required=True, help="output folder, e.g. model_artifacts/adapters/NAME "
                                                     "(it may be one of the --adapter folders: all are read first)")
    parser.add_argument("--name", help="adapter name in the manifest (default: the --out folder name)")
    parser.add_argument("--history-tokens", type=int,
                        help="conversation tokens the server keeps (default: the first adapter's)")


@dataclass(frozen=True)
class Adapter:
    """One saved adapter: its folder, peft config, router.json, LoRA weights and their file's sha256."""

    folder: Path
    config: dict
    manifest: dict
    weights: dict[str, torch.Tensor]
    sha256: str


def read_adapter(folder: Path) -> Adapter:
    """An adapter folder as `taskrouter train` writes it; an error naming it when a file is missing."""
    from safetensors.torch import load

    data = adapter_weights_file(folder, "--adapter").read_bytes()  # read once: weights and their digest
    if not (folder / CONFIG).exists():
        raise ValueError(f"--adapter {folder}: no {CONFIG} there")
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError as exc:
        raise ValueError(f"--adapter: {exc}") from None
    return Adapter(folder, json.loads((folder / CONFIG).read_text()), manifest, load(data),
                   hashlib.sha256(data).hexdigest())


def check_compatible(first: Adapter, other: Adapter) -> None:
    """Adapters average only if they change the same matrices of the same base, at the same scale."""
    for field in SAME:
        if other.manifest.get(field) != first.manifest.get(field):
            raise ValueError(f"--adapter {other.folder}: {field} {other.manifest.get(field)!r} differs from "
                             f"{first.folder}'s {first.manifest.get(field)!r}")
    if set(other.config["target_modules"]) != set(first.config["target_modules"]) \
            or other.weights.keys() != first.weights.keys():
        raise ValueError(f"--adapter {other.folder}: adapts other modules than {first.folder}")
    if other.config["lora_alpha"] * first.config["r"] != first.config["lora_alpha"] * other.config["r"]:
        raise ValueError(f"--adapter {other.folder}: LoRA scaling alpha/r = {other.config['lora_alpha']}/"
                         f"{other.config['r']} differs from {first.folder}'s {first.config['lora_alpha']}/"
                         f"{first.config['r']}")


def average(folders: list[Path], out: Path, name: str | None = None, history_tokens: int | None = None) -> dict:
    """Write the exact mean of the adapters in `folders` to `out`; returns its manifest (no none bias yet)."""
    from safetensors.torch import save_file

    if len(folders) < 2:
        raise ValueError("--adapter: give at least two adapters to average")
    adapters = [read_adapter(Path(f)) for f in folders]
    first, n = adapters[0], len(adapters)
    for other in adapters[1:]:
        check_compatible(first, other)
    # A stacks along the rank (rows), B along its columns, scaled by 1/N: B_mean @ A_stack = mean(B_i @ A_i)
    mean = {key: torch.cat([a.weights[key] for a in adapters], dim=0) if ".lora_A." in key
            else torch.cat([(a.weights[key].float() / n).to(a.weights[key].dtype) for a in adapters], dim=1)
            for key in first.weights}
    rank = sum(a.config["r"] for a in adapters)
    alpha = sum(a.config["lora_alpha"] for a in adapters)  # alpha / rank stays every adapter's scaling
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "adapter_model.safetensors.partial"  # replaced whole, so an --adapter folder is never half-written
    save_file({k: v.contiguous() for k, v in mean.items()}, str(weights), metadata={"format": "pt"})
    weights.replace(out / "adapter_model.safetensors")
    _write_json(out / CONFIG, {**first.config, "r": rank, "lora_alpha": alpha})
    history = history_tokens or first.manifest.get("hyper_parameters", {}).get("history_tokens")
    manifest = {
        "name": name or out.name,
        **{field: first.manifest.get(field) for field in SAME},
        "hyper_parameters": {"rank": rank, "alpha": alpha, "target_modules": first.config["target_modules"],
                             "history_tokens": history},
        "average_of": [{"path": str(a.folder), "weights_sha256": a.sha256,
                        **{k: a.manifest.get(k) for k in PROVENANCE}} for a in adapters],
        "average_command": shlex.join(["taskrouter", "average", *[w for f in folders for w in ("--adapter", str(f))],
                                       "--out", str(out), *(["--history-tokens", str(history)] if history else [])]),
    }
    _write_json(out / MANIFEST, manifest)
    return manifest


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def run(args: argparse.Namespace) -> None:
    """`taskrouter average`: write the averaged adapter, then say how to tune its none bias."""
    try:
        manifest = average([Path(a) for a in args.adapter], Path(args.out), args.name, args.history_tokens)
    except (ValueError, OSError) as exc:
        sys.exit(f"error: {exc}")
    print(f"{args.out}: mean of {len(args.adapter)} adapters, LoRA rank {manifest['hyper_parameters']['rank']}; "
          "its none bias is not set yet: tune it on held-out turns with `taskrouter eval --tune`")
