"""Train a LoRA adapter for the `adapter` prompt format on router-bench conversations.

One example per labelled user turn, balanced over start / continue / switch /
end / none and augmented, grouped in packs that share a task list (see
training/examples.py); the prompt is built by the router's own prompt code, the
loss covers only the answer tokens, and a pack trains in one forward pass. On CUDA
the base is loaded in 4-bit NF4 (QLoRA, paged AdamW from bitsandbytes); on CPU
LoRA trains on a float32 base. Checkpoints are written as training goes and
`--resume` continues from the latest. The result is a peft adapter plus the
`router.json` manifest the server reads (base model, prompt format, data,
hyper-parameters, dev accuracy, and the command that produced it).

The default adapter of the embedded model is the mean (`taskrouter average`) of
runs like `taskrouter train --base embedded --data data/sgd/train.jsonl
--data data/clinc150/train.jsonl --out model_artifacts/adapters/my-router
--time-budget 40`; every run's exact command is in that folder's router.json.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import random
import shlex
import shutil
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from taskrouter.embedded import EMBEDDED_NAME
from taskrouter.loading import MANIFEST, load_base
from taskrouter.prompts import ADAPTER_FORMATS
from taskrouter.scorer import softcap
from taskrouter.treeattention import tree_inputs

from .examples import DEFAULT_BALANCE, EVENTS, IGNORE, Augment, Pack, file_source, sample_packs, source_of, summarize
from .model_card import write_model_card
from .records import parse_shares

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="embedded",
                        help="base model: 'embedded' (the embedded gemma-3-270m), a local directory or a hub id")
    parser.add_argument("--data", action="append", required=True, metavar="FILE",
                        help="router-bench JSONL training file (repeatable); never a dev/val/test split")
    parser.add_argument("--closed-loop", action="append", default=[], metavar="PREDICTIONS",
                        help="predictions of `taskrouter eval` (closed loop) on --data conversations (repeatable): "
                             "the ones the router got wrong are also trained with the current tasks it sent, "
                             "so it learns to recover from its own mistakes (DAgger; training/closed_loop.py)")
    parser.add_argument("--out", required=True, help="output directory, e.g. model_artifacts/adapters/NAME")
    parser.add_argument("--name", help="adapter name in the manifest (default: the --out folder name)")
    parser.add_argument("--max-examples", type=int, default=2000, help="training examples (turns) to sample")
    parser.add_argument("--history-tokens", type=int, default=96,
                        help="conversation tokens a prompt keeps after the task list: the oldest messages are "
                             "dropped beyond it, never the newest (the server keeps the same budget)")
    parser.add_argument("--init-adapter", metavar="DIR",
                        help="start from this adapter's weights (same --rank and --target-modules) instead of zero")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the sampled examples")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (warm-up then cosine decay)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--alpha", type=int, help="LoRA alpha (default: 2 x rank)")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    parser.add_argument("--target-modules", default="all-linear",
                        help="comma-separated module names to adapt (e.g. query_key_value for Falcon), "
                             "or 'all-linear' (every linear layer but the LM head)")
    parser.add_argument("--grad-accum", type=int, default=8,
                        help="examples per optimizer step (whole packs: a step closes once this many are seen)")
    parser.add_argument("--balance", default=",".join(f"{k}={v}" for k, v in DEFAULT_BALANCE.items()),
                        help="event weights of the sampled turns, e.g. start=0.2,continue=0.25,...")
    parser.add_argument("--prompt-format", default="adapter", choices=ADAPTER_FORMATS,
                        help="how the prompt lists the tasks: 'adapter' (- name: description) or 'adapter-v2' "
                             "(- description => name); the server reads it from router.json")
    parser.add_argument("--mix", default="", metavar="SOURCE=W,...",
                        help="relative weights of the data sources, e.g. roles/train=3,sgd_x/train=2 (a source is a "
                             "--data file's folder/stem, rewordings train_v1..v4 together; unnamed sources weigh 1)")
    parser.add_argument("--augment", default="", metavar="NAME=P,...",
                        help="augmentation probabilities to change, of: " + ", ".join(f"{f.name} ({f.default})"
                        for f in fields(Augment)) + "; see training/examples.py")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling, augmentation and LoRA init")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a CPU shared with other jobs)")
    parser.add_argument("--save-every", type=int, default=20, help="optimizer steps between checkpoints")
    parser.add_argument("--checkpoint-dir", help=f"where checkpoints go (default: OUT/{CHECKPOINTS})")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--time-budget", type=float, metavar="MIN",
                        help="stop cleanly after MIN minutes of training (counted over resumes) and save "
                             "what was learnt; the learning-rate schedule follows the clock too")
    parser.add_argument("--dev", action="append", default=[], metavar="FILE",
                        help="held-out router-bench file for the quick dev accuracy in the manifest (repeatable)")
    parser.add_argument("--dev-turns", type=int, default=100, help="dev turns to route, split over the --dev files")
    from .sagemaker_job import add_sagemaker_arguments

    add_sagemaker_arguments(parser)


def parse_balance(text: str) -> dict[str, float]:
    """`start=0.2,continue=0.25` -> sampling weights per event."""
    return parse_shares(text, EVENTS, "--balance", "event")


def parse_mix(text: str, data: list[str]) -> dict[str, float]:
    """`roles/train=3,sgd_x/train=2` -> source weights; a source no --data file provides is an error."""
    sources = sorted({source_of({"source": file_source(p)}) for p in data})
    return parse_shares(text, sources, "--mix", "source") if text else {}


def parse_augment(text: str) -> Augment:
    """`swap_verbs=0.3,wrong_current=0.1` -> the default augmentation with those probabilities."""
    names = [f.name for f in fields(Augment)]
    given = parse_shares(text, names, "--augment", "augmentation", need_positive=False) if text else {}
    for name, p in given.items():
        if p > 1:
            raise ValueError(f"--augment: {name}={p} is not a probability (0 to 1)")
    return replace(Augment(), **given)


def command_line(args: argparse.Namespace) -> str:
    """The `taskrouter train` command that reproduces this run (every training option spelled out)."""
    parts = ["taskrouter", "train", "--base", args.base]
    for path in args.data:
        parts += ["--data", path]
    for path in args.closed_loop:
        parts += ["--closed-loop", path]
    parts += ["--out", args.out]
    if args.init_adapter:
        parts += ["--init-adapter", args.init_adapter]
    for option in ("max_examples", "history_tokens", "epochs", "lr", "rank", "alpha", "dropout", "target_modules",
                   "grad_accum", "balance", "seed"):
        parts += ["--" + option.replace("_", "-"), str(getattr(args, option))]
    if args.augment:
        parts += ["--augment", args.augment]
    if args.mix:
        parts += ["--mix", args.mix]
    if args.prompt_format != "adapter":
        parts += ["--prompt-format", args.prompt_format]
    if args.time_budget is not None:
        parts += ["--time-budget", str(args.time_budget)]
    for path in args.dev:
        parts += ["--dev", path]
    if args.dev:
        parts += ["--dev-turns", str(args.dev_turns)]
    return shlex.join(parts)


def base_name_of(source: str, loaded_name: str) -> str:
    """The base model name the manifest records (what the server compares with)."""
    if loaded_name == EMBEDDED_NAME:
        return EMBEDDED_NAME
    marker = Path(source) / "taskrouter.json"
    return json.loads(marker.read_text())["base_model"] if marker.exists() else loaded_name


def load_trainable(args: argparse.Namespace):
    """(peft model, tokenizer, base name, quantization): NF4 + k-bit preparation on CUDA, float32 on CPU."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model, tokenizer, name, device, quantization = load_base(args.base)
    if quantization == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    targets = args.target_modules if args.target_modules == "all-linear" else \
        [m.strip() for m in args.target_modules.split(",") if m.strip()]
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise ValueError(f"--target-modules {args.target_modules!r}: {exc}") from None
    if args.init_adapter:
        load_weights(peft_model, Path(args.init_adapter), "--init-adapter")
    peft_model.train()
    return peft_model, tokenizer, base_name_of(args.base, name), quantization, device


def pack_loss(model, pack: Pack, device: torch.device) -> torch.Tensor:
    """-log p(answer) summed over the pack's examples, in one forward pass (tree attention over the shared head).

    Each answer's loss is summed over its tokens, as the constrained scorer multiplies their
    probabilities (a mean per token would weigh the two-token ` none` above long names and teach
    a bias toward none). The LM head runs only at the positions that predict an answer token.
    """
    inputs = tree_inputs(model, [len(pack.head)] + [len(e.ids) for e in pack.examples],
                         [-1] + [0] * len(pack.examples), cached=0)  # every example continues the head
    ids = torch.tensor([pack.head + [i for e in pack.examples for i in e.ids]], device=device)
    labels = torch.tensor([IGNORE] * len(pack.head) + [t for e in pack.examples for t in e.labels], device=device)
    hidden = model.get_decoder()(input_ids=ids, **inputs).last_hidden_state[0]
    targets = (labels != IGNORE).nonzero()[:, 0]  # an answer token's predictor is the token before it, same branch
    logits = softcap(model, model.get_output_embeddings()(hidden[targets - 1]).float())
    return F.cross_entropy(logits, labels[targets], reduction="sum")


def make_optimizer(model, lr: float, quantization: str) -> torch.optim.Optimizer:
    """Paged AdamW (bitsandbytes) for QLoRA on CUDA, torch AdamW otherwise."""
    params = [p for p in model.parameters() if p.requires_grad]
    if quantization == "nf4":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW(params, lr=lr, weight_decay=0.0)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def lr_factor(progress: float, warmup: float = 0.05) -> float:
    """Linear warm-up then cosine decay to 10%, over training progress in [0, 1]."""
    if progress < warmup:
        return max(progress / warmup, 0.05)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def fingerprint(args: argparse.Namespace) -> str:
    """Identifies the example stream, so a resume never mixes two different runs."""
    # newer options join the key only when set, so checkpoints written before they existed still resume
    key = [args.base, args.data, args.max_examples, args.history_tokens, args.epochs, args.balance, args.seed,
           args.rank, args.target_modules, args.init_adapter] + ([args.augment] if args.augment else []) \
        + ([args.closed_loop] if args.closed_loop else []) + ([args.mix] if args.mix else []) \
        + ([args.prompt_format] if args.prompt_format != "adapter" else [])
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def save_checkpoint(model, optimizer, root: Path, state: dict) -> Path:
    """Write adapter + optimizer + progress under root/step-N; keep only the latest few."""
    path = root / f"step-{state['step']:06d}"
    partial = path.with_name(path.name + ".partial")
    model.save_pretrained(partial, save_embedding_layers=False)
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    (partial / "state.json").write_text(json.dumps(state))
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)
    for old in sorted(root.glob("step-*[0-9]"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)
    return path


def latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step-*[0-9]") if (p / "state.json").exists())
    return done[-1] if done else None


def adapter_weights_file(path: Path, option: str) -> Path:
    """The LoRA weights file of a saved adapter folder; an error naming `option` when there is none."""
    if not path.is_dir():
        raise ValueError(f"{option} {path}: not a directory")
    file = path / "adapter_model.safetensors"
    if not file.exists():
        raise ValueError(f"{option} {path}: no adapter_model.safetensors there")
    return file


def load_weights(model, path: Path, option: str) -> None:
    """Load a saved adapter's LoRA weights into `model`; every LoRA matrix must be there, with its shape."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = adapter_weights_file(path, option)
    try:
        result = set_peft_model_state_dict(model, load_file(str(file)))
    except RuntimeError as exc:  # a shape mismatch: another rank or base
        raise ValueError(f"{option} {path}: its weights do not fit this LoRA set-up ({exc})") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ValueError(f"{option} {path}: {len(missing)} LoRA weights missing (e.g. {missing[0]}): "
                         "another --target-modules?")


def init_provenance(path: str | None) -> dict | None:
    """Where a warm start came from: the starting adapter's own provenance (its command, data and training, its
    warm start, or the runs it is the mean of), from its manifest."""
    from .average import PROVENANCE

    if not path:
        return None
    manifest = Path(path) / MANIFEST
    earlier = json.loads(manifest.read_text()) if manifest.exists() else {}
    return {"path": path, **{key: earlier.get(key) for key in (*PROVENANCE, "average_command")}}


def load_checkpoint(model, optimizer, path: Path, expected: str) -> dict:
    state = json.loads((path / "state.json").read_text())
    if state["fingerprint"] != expected:
        raise ValueError(f"--resume: checkpoint {path} was written by a run with other data or options")
    load_weights(model, path, "--resume")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    return state


def prepare_packs(args: argparse.Namespace, tokenizer) -> list[Pack]:
    """The sampled packs, repeated over the epochs (same sample each epoch)."""
    packs = sample_packs(tokenizer, args.data, args.max_examples, parse_balance(args.balance), args.seed,
                         args.history_tokens, parse_augment(args.augment), args.closed_loop,
                         parse_mix(args.mix, args.data), args.prompt_format)
    return [p for _ in range(args.epochs) for p in packs]


def train(args: argparse.Namespace) -> dict:
    """Run the training loop; returns the manifest it wrote."""
    torch.manual_seed(args.seed)
    out = Path(args.out)
    args.alpha = args.alpha or 2 * args.rank
    checkpoints = Path(args.checkpoint_dir or out / CHECKPOINTS)
    init = init_provenance(args.init_adapter)  # read first: --out may be the same folder
    model, tokenizer, base_name, quantization, device = load_trainable(args)
    packs = prepare_packs(args, tokenizer)
    n_examples = sum(len(p.examples) for p in packs)
    optimizer = make_optimizer(model, args.lr, quantization)
    params = [p for p in model.parameters() if p.requires_grad]
    key = fingerprint(args)
    state = {"fingerprint": key, "step": 0, "done": 0, "packs": 0, "loss": None, "seconds": 0.0}
    if args.resume and (path := latest_checkpoint(checkpoints)):
        state = load_checkpoint(model, optimizer, path, key)
        print(f"resuming from {path} ({state['done']} of {n_examples} examples done)", flush=True)
    budget = args.time_budget * 60 if args.time_budget is not None else None
    started, earlier = time.monotonic(), state["seconds"]  # the budget counts the training time of every resume
    stopped_early, pending = False, 0
    total_steps = max(1, math.ceil(n_examples / args.grad_accum))
    bar = tqdm(total=n_examples, initial=state["done"], desc="train", unit="ex", dynamic_ncols=True)
    for pack in packs[state["packs"]:]:
        loss = pack_loss(model, pack, device)
        loss.backward()  # summed over the pack; the step averages over every example it saw
        mean = loss.item() / len(pack.examples)
        state["loss"] = mean if state["loss"] is None else 0.95 * state["loss"] + 0.05 * mean
        state["done"] += len(pack.examples)
        state["packs"] += 1
        pending += len(pack.examples)
        elapsed = state["seconds"] = earlier + time.monotonic() - started
        out_of_time = budget is not None and elapsed >= budget
        if pending >= args.grad_accum or state["packs"] == len(packs) or out_of_time:
            progress = state["step"] / total_steps
            if budget is not None:  # a time budget also drives the schedule, so a stopped run has cooled down
                progress = max(progress, elapsed / budget if budget else 1.0)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * lr_factor(progress)
            for p in params:
                if p.grad is not None:
                    p.grad /= pending
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            pending = 0
            if state["step"] % args.save_every == 0 or out_of_time:
                save_checkpoint(model, optimizer, checkpoints, state)
        bar.update(len(pack.examples))
        bar.set_postfix(loss=f"{state['loss']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        if out_of_time:
            stopped_early = True
            break
    bar.close()
    save_adapter(model, out, base_name)
    del model, optimizer
    gc.collect()
    training = {"device": device.type, "examples_seen": state["done"], "optimizer_steps": state["step"],
                "final_loss_ema": round(state["loss"], 4) if state["loss"] is not None else None,
                "train_seconds": round(state["seconds"], 1), "stopped_by_time_budget": stopped_early}
    print(f"trained {state['done']} examples in {state['seconds']:.0f} s, loss {training['final_loss_ema']}",
          flush=True)
    manifest = {
        "name": args.name or out.name,
        "base_model": base_name,
        "prompt_format": args.prompt_format,
        "quantization": quantization,
        "training_data": {"files": args.data, "closed_loop": args.closed_loop,
                          "examples": summarize(packs[: state["packs"]])},
        "hyper_parameters": {"rank": args.rank, "alpha": args.alpha, "dropout": args.dropout,
                             "target_modules": args.target_modules, "lr": args.lr, "epochs": args.epochs,
                             "grad_accum": args.grad_accum, "batch_size": 1, "history_tokens": args.history_tokens,
                             "max_examples": args.max_examples, "balance": parse_balance(args.balance),
                             "seed": args.seed, "optimizer": "paged_adamw" if quantization == "nf4" else "adamw",
                             "schedule": "5% warm-up, cosine to 10%", "augment": asdict(parse_augment(args.augment)),
                             "mix": parse_mix(args.mix, args.data)},
        "init_adapter": init,
        "training": training,
        "dev_metrics": None,
        "train_command": command_line(args),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    write_model_card(out, manifest)
    if args.dev:  # the router reads the manifest, so the dev check runs on the saved adapter
        manifest["dev_metrics"] = dev_metrics(args.base, out, manifest["name"], args.dev, args.dev_turns)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        write_model_card(out, manifest)
    return manifest


def save_adapter(model, out: Path, base_name: str) -> None:
    """The peft adapter, its LoRA weights stored in bfloat16 (half the size; loaded into the base's dtype)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(torch.bfloat16)
    for config in model.peft_config.values():
        config.base_model_name_or_path = base_name
    model.save_pretrained(out, save_embedding_layers=False)  # its generic README.md is replaced by our model card


def dev_metrics(base: str, adapter_dir: Path, name: str, files: list[str], n_turns: int) -> dict:
    """Quick open-loop dev accuracy (gold current task) of the saved adapter through the serving Router."""
    from taskrouter.evaluation.benchfile import open_text
    from taskrouter.loading import load_model
    from taskrouter.router import Router
    from taskrouter.schema import NONE, parse_request

    router = Router(load_model(base, {name: adapter_dir}), default_adapter=name)
    rng = random.Random(1)
    results: dict[str, dict] = {}
    per_file = max(1, n_turns // len(files))
    for path in files:
        with open_text(path) as f:  # .jsonl or .jsonl.gz, as --data
            records = [json.loads(line) for line in f if line.strip()]
        rng.shuffle(records)
        right = events_right = seen = 0
        with tqdm(total=per_file, desc=f"dev {Path(path).parent.name}", unit="turn") as bar:
            for record in records:
                previous = None
                for label in sorted(record["labels"], key=lambda lab: lab["turn"]):
                    if seen == per_file:
                        break
                    request = parse_request({"tasks": record["tasks"], "messages": record["messages"][: label["turn"] + 1],
                                             "current_task": previous, "strategy": "adapter"})
                    answer = router.route(request)
                    right += answer.task == (label["task"] or NONE)
                    events_right += answer.event == label["event"]
                    previous, seen = label["task"], seen + 1
                    bar.update(1)
                if seen == per_file:
                    break
        results[str(path)] = {"turns": seen, "task_accuracy": round(right / max(seen, 1), 4),
                              "event_accuracy": round(events_right / max(seen, 1), 4)}
    return {"mode": "open loop: gold previous task as current_task", "files": results}


def run(args: argparse.Namespace) -> None:
    """`taskrouter train`: local training, or a SageMaker training job with --sagemaker."""
    try:
        parse_balance(args.balance)
        parse_augment(args.augment)
        parse_mix(args.mix, args.data)
        for path in args.data + args.closed_loop + args.dev:
            if not Path(path).is_file():
                raise ValueError(f"--data/--closed-loop/--dev: {path} is not a file")
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.sagemaker:
            from .sagemaker_job import launch

            launch(args)
            return
        train(args)
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
