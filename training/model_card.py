"""A Hugging Face style model card (README.md with YAML metadata) for an adapter, written from its router.json.

`taskrouter train` and `taskrouter average` write it beside the weights, so an adapter folder
says what it is where the hub and peft look for it: base model, library, licence, data, the
command that made it, its dev metrics and none bias. The adapter is a derivative of its base's
weights, so it carries the base's licence (the Gemma Terms of Use for Gemma).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from taskrouter.embedded import EMBEDDED_NAME

CARD = "README.md"
# bases the project knows by their hub id and licence; any other base is named as its manifest names it
BASES = {EMBEDDED_NAME: ("google/gemma-3-270m", "gemma", "https://ai.google.dev/gemma/terms"),
         "tiiuae/falcon-7b": ("tiiuae/falcon-7b", "apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0")}
# training files the hub knows, by the folder name of their router-bench conversion
DATASETS = {"sgd": "google-research-datasets/schema_guided_dstc8", "clinc150": "clinc/clinc_oos"}


def _files(manifest: dict) -> list[str]:
    """Every training data file of the adapter, and of the runs it averages or started from."""
    files = list((manifest.get("training_data") or {}).get("files") or [])
    for run in manifest.get("average_of") or []:
        files += _files(run)
    if manifest.get("init_adapter"):
        files += _files(manifest["init_adapter"])
    return list(dict.fromkeys(files))


def metadata(manifest: dict) -> dict:
    """The card's YAML header: what the hub indexes."""
    base, licence, _ = BASES.get(manifest.get("base_model"), (manifest.get("base_model"), "other", None))
    datasets = sorted({DATASETS[Path(f).parent.name] for f in _files(manifest) if Path(f).parent.name in DATASETS})
    return {"base_model": base, "library_name": "peft", "license": licence,
            "tags": ["lora", "taskrouter", "task-routing"], **({"datasets": datasets} if datasets else {})}


def render(manifest: dict) -> str:
    """README.md text for an adapter manifest (router.json)."""
    meta = metadata(manifest)
    name, base = manifest.get("name", "adapter"), manifest.get("base_model")
    _, _, terms = BASES.get(base, (None, None, None))
    hyper = manifest.get("hyper_parameters") or {}
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
        f"# {name}", "",
        f"A LoRA adapter of `{meta['base_model']}` for taskrouter, a self-hosted task router: given a "
        "conversation and a list of tasks (names and descriptions sent with each request), it picks the task the "
        "user is doing now, or `none`, under constrained scoring over the listed names (prompt format "
        f"`{manifest.get('prompt_format')}`, {hyper.get('history_tokens')} conversation tokens after the task list).",
        "",
        "## Licence", "",
        f"The adapter is derived from `{meta['base_model']}` and is distributed under its licence "
        f"(`{meta['license']}`{f', {terms}' if terms else ''}); taskrouter's code is Apache-2.0.", "",
        "## How it was made", "",
    ]
    if manifest.get("average_of"):
        lines += [f"The exact mean of {len(manifest['average_of'])} runs (`taskrouter average`, LoRA rank "
                  f"{hyper.get('rank')}):", "", "```bash", manifest.get("average_command", ""), "```", "",
                  "The runs it averages:", ""]
        lines += [f"- `{run.get('train_command')}`" for run in manifest["average_of"]]
        lines.append("")
    else:
        lines += ["```bash", manifest.get("train_command", ""), "```", ""]
        if manifest.get("training"):
            lines += [f"Training: `{json.dumps(manifest['training'])}`.", ""]
    files = _files(manifest)
    if files:
        lines += ["Data (router-bench JSONL files, docs/data-format.md; paths as they were where it was trained):",
                  ""] + [f"- `{f}`" for f in files] + [""]
    lines += ["## Metrics", ""]
    dev = (manifest.get("dev_metrics") or {}).get("files") or {}
    if dev:
        lines += [f"Quick dev check ({manifest['dev_metrics']['mode']}):", "", "| file | turns | task accuracy |",
                  "|---|---:|---:|"]
        lines += [f"| `{f}` | {m['turns']} | {m['task_accuracy']:.3f} |" for f, m in dev.items()]
        lines.append("")
    bias = manifest.get("none_bias")
    if bias:
        data = ", ".join(f"`{d['file']}`" for d in bias.get("data", []))
        lines += [f"None bias {bias['value']:+.1f} (a log-odds offset of `none`, applied by the router), tuned with "
                  f"`taskrouter eval --tune` on {bias['turns']} turns of {data}: task accuracy "
                  f"{bias['task_accuracy_without']:.3f} -> {bias['task_accuracy']:.3f} ({bias['mode']}).", ""]
    else:
        lines += ["None bias: not tuned yet (`taskrouter eval --tune --config NAME:adapter=...` sets it).", ""]
    study = manifest.get("evaluation")
    if study:
        lines += [f"Closed-loop evaluation (`{study['command']}`):", "",
                  "| bench | turns | task accuracy | none P / R | start / end / switch F1 |", "|---|---:|---:|---|---|"]
        lines += [f"| {b} | {r['turns']} | {r['task_accuracy']:.3f} | {r['none']} | {r['f1']} |"
                  for b, r in study["results"].items()]
        lines.append("")
    if not dev and not bias and not study:
        lines += ["No metrics recorded: evaluate it with `taskrouter eval`.", ""]
    lines += ["## Use", "", "```python", "from taskrouter import Router",
              f'router = Router.from_pretrained(adapters={{"{name}": "path/to/{name}"}})'
              if base == EMBEDDED_NAME else f'router = Router.from_pretrained("{base}", {{"{name}": "path/to/{name}"}})',
              "```", ""]
    return "\n".join(lines)


def write_model_card(folder: Path, manifest: dict) -> Path:
    """Write (or rewrite) the adapter folder's README.md from its manifest."""
    path = Path(folder) / CARD
    path.write_text(render(manifest), encoding="utf-8")
    return path
