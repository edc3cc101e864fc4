"""Evaluate router configs on router-bench files: predictions, metrics.json, report.md and plots.

Every config (model + adapter + strategy + decoding, named in evaluation/configs.yaml
or given inline as NAME:key=value,...) runs over every benchmark. Requests are
closed-loop by default (current_task = the router's own previous answer);
--teacher-forcing sends the gold previous task instead. A run is resumable: the
conversations already in DIR/predictions-<config>-<bench>.jsonl are not recomputed.
With --endpoint or --sagemaker-endpoint the LLM configs are answered by a running
server or a SageMaker endpoint (strategy, adapter and decoding are sent with each
request; the config's model is whatever the server runs). `kind: openai` configs always go to their own
OpenAI-compatible endpoint (evaluation/hosted.py), on the same prompts, so open and hosted models share one report.

--tune grid-searches each --config's none decision on the --bench files (never a
dev/val or test split) instead of evaluating: the embedding baseline's cosine threshold
(written to evaluation/embedding_threshold.json) or an adapter's none bias (written
to its router.json, where the server reads it).

Example (without --bench: the 16-conversation sample bench shipped with taskrouter):
  taskrouter eval --bench evaluation/benchmarks/sales.jsonl --bench data/clinc150/val.jsonl@2000 \\
      --config base-zero-shot --config embedding --out runs/eval
  taskrouter eval --bench evaluation/benchmarks/sales.jsonl --config adapter --config gpt-4o-mini --out runs/hosted
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from taskrouter.resources import sample_bench

from .benchfile import load_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--bench", action="append", metavar="FILE[@N]",
                        help="router-bench JSONL file (repeatable); FILE@N samples N conversations of this file "
                             "(default: the sample bench shipped with taskrouter; --tune needs its own)")
    parser.add_argument("--config", action="append", metavar="NAME", default=[],
                        help="config name from --configs, or inline NAME:key=value,... (repeatable)")
    parser.add_argument("--configs", default=str(Path(__file__).with_name("configs.yaml")), metavar="FILE.yaml",
                        help="YAML file of named configs (default: evaluation/configs.yaml)")
    parser.add_argument("--out", metavar="DIR", help="output directory (predictions, metrics.json, report.md, PNGs)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="conversations per benchmark: the first N of a seeded shuffle (default: all)")
    parser.add_argument("--sample-seed", type=int, default=0, metavar="S", help="seed of the sampling (default 0)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="conversations routed at once (default 1). In-process they share micro-batches; "
                             "latency is then measured under that load")
    parser.add_argument("--teacher-forcing", action="store_true",
                        help="current_task = the gold previous task instead of the router's previous answer")
    remote = parser.add_mutually_exclusive_group()
    remote.add_argument("--endpoint", metavar="URL", help="POST requests to a running server (http://host:port)")
    remote.add_argument("--sagemaker-endpoint", metavar="NAME", help="invoke a SageMaker endpoint through boto3")
    parser.add_argument("--region", help="AWS region for --sagemaker-endpoint (default: boto3's)")
    parser.add_argument("--tune", action="store_true",
                        help="tune each config's none decision on the --bench files instead of evaluating: "
                             "the embedding threshold, or an adapter config's none bias (in its router.json)")
    parser.add_argument("--threshold-file", default=None, metavar="FILE",
                        help="where --tune writes the embedding threshold (default evaluation/embedding_threshold.json)")


def _tune(args: argparse.Namespace) -> None:
    from .backends import RouterPool, adapters_root
    from .configs import read_configs, resolve_configs
    from .embedding import THRESHOLD_FILE, EmbeddingRouter, minilm_encoder, save_threshold, tune_threshold
    from .tuning import save_none_bias, tune_none_bias

    if not args.config:
        raise ValueError("--tune needs --config: the embedding baseline or an adapter config (e.g. --config adapter)")
    if not args.bench:
        raise ValueError("--tune needs --bench: labelled training-side conversations (never dev, val or test)")
    if args.endpoint or args.sagemaker_endpoint:
        raise ValueError("--tune runs the adapter in process and writes its router.json; it cannot tune an endpoint")
    configs = resolve_configs(args.config, read_configs(args.configs))
    for config in configs:
        tunable = config.adapter and config.strategy == "adapter" and config.decoding == "constrained"
        if config.kind != "embedding" and not tunable:
            raise ValueError(f"--config {config.name}: --tune sets an adapter's none bias; the config needs an "
                             "adapter, strategy adapter and constrained decoding")
    benches = [load_bench(spec, args.limit, args.sample_seed) for spec in args.bench]
    for bench in benches:
        if bench.path.name.removesuffix(".jsonl") in {"dev", "val", "valid", "validation", "test"}:
            raise ValueError(f"--bench {bench.path}: tune on training-side data; dev/val are for reporting, "
                             "test is held out")
    conversations = [c for b in benches for c in b.conversations]
    data = [{"file": str(b.path), "conversations": len(b.conversations), "of": b.total, "limit": b.limit,
             "sample_seed": b.seed} for b in benches]
    pool = RouterPool(configs)
    for config in configs:
        if config.kind == "embedding":
            threshold, accuracy, turns = tune_threshold(EmbeddingRouter(minilm_encoder(), 0.0), conversations)
            path = Path(args.threshold_file) if args.threshold_file else THRESHOLD_FILE
            save_threshold(path, threshold, accuracy, turns, data)
            print(f"{config.name}: threshold {threshold:.2f} (task accuracy {accuracy:.3f} on {turns} turns) -> {path}")
            continue
        result = tune_none_bias(pool.get(config), config.adapter, conversations)
        adapter_dir = adapters_root(config) / config.adapter
        save_none_bias(adapter_dir, result, data)
        print(f"{config.name}: none bias {result['value']:+.1f} (teacher-forced task accuracy "
              f"{result['task_accuracy_without']:.3f} -> {result['task_accuracy']:.3f} on {result['turns']} turns) "
              f"-> {adapter_dir / 'router.json'}")


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, for the report."""
    words = ["taskrouter", "eval"]
    for spec in args.bench:
        words += ["--bench", spec]
    for spec in args.config:
        words += ["--config", spec]
    left_out = {"--configs": Path(args.configs) == Path(__file__).with_name("configs.yaml"),
                "--sample-seed": not args.limit and not any("@" in Path(b).name for b in args.bench),
                "--parallel": args.parallel == 1}  # latency depends on it: named whenever it is not 1
    for flag, value in (("--configs", args.configs), ("--limit", args.limit), ("--sample-seed", args.sample_seed),
                        ("--endpoint", args.endpoint), ("--sagemaker-endpoint", args.sagemaker_endpoint),
                        ("--region", args.region), ("--parallel", args.parallel), ("--out", args.out)):
        if value is not None and not left_out.get(flag, False):
            words += [flag, str(value)]
    if args.teacher_forcing:
        words.append("--teacher-forcing")
    return " ".join(shlex.quote(w) for w in words)


def run(args: argparse.Namespace) -> None:
    """`taskrouter eval`: run, score and report (or tune the configs' none decisions)."""
    try:
        if args.tune:
            _tune(args)
            return
        _evaluate(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        sys.exit(f"error: {exc}")


def _evaluate(args: argparse.Namespace) -> None:
    from .backends import RouterPool, adapter_manifest, describe_remote, remote_router
    from .configs import read_configs, resolve_configs
    from .report import write_report
    from .runner import run_all
    from .seen import seen_names, training_files_of

    if not args.out:
        raise ValueError("--out DIR is required")
    if not args.config:
        raise ValueError("--config is required (e.g. --config base-zero-shot)")
    args.bench = args.bench or [str(sample_bench())]
    from .embedding import read_threshold

    configs = resolve_configs(args.config, read_configs(args.configs))
    configs = [c.model_copy(update={"threshold": read_threshold()}) if c.kind == "embedding" and c.threshold is None
               else c for c in configs]  # the tuned threshold is part of what the predictions depend on
    benches = [load_bench(spec, args.limit, args.sample_seed) for spec in args.bench]
    names = [b.name for b in benches]
    if len(set(names)) != len(names):
        raise ValueError(f"--bench: two files share the benchmark name in {names}")
    remote = describe_remote(args.endpoint, args.sagemaker_endpoint)
    pool = RouterPool(configs, remote_router(args.endpoint, args.sagemaker_endpoint, args.region))
    out = Path(args.out)
    result = run_all(benches, configs, out, pool, teacher_forcing=args.teacher_forcing, remote=remote,
                     parallel=args.parallel)
    mode = ("teacher forcing" if args.teacher_forcing else "closed loop") + (f", {remote}" if remote else ", in-process")
    if any(c.kind == "openai" for c in configs):
        mode += "; openai configs through their own endpoints"
    manifests = [m for m in map(adapter_manifest, configs) if m is not None]
    seen, missing = seen_names(manifests) if manifests else (None, [])
    write_report(out, benches, configs, result["predictions"], command_line(args), mode, seen,
                 training_files_of(manifests), missing)
    print(f"{result['computed_turns']} turns routed; report: {out / 'report.md'}")
