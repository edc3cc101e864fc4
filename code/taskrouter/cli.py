"""`taskrouter` command line: each subcommand lives in the module of its feature.

Feature packages outside the core (serving, evaluation, training, packaging) are absent
from a SageMaker artifact's code/, so a command whose module is not there is left out; a
command whose module is there but fails to import is listed, and says why when run.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys

# (subcommand, module, help); a module provides add_arguments(parser) and run(args)
COMMANDS = [
    ("serve", "taskrouter.serving.cli", "serve the router over HTTP (gunicorn + Flask, SageMaker routes)"),
    ("route", "taskrouter.cli", "route one conversation from the command line"),
    ("bench", "taskrouter.evaluation.bench", "measure latency and throughput on the embedded default"),
    ("eval", "taskrouter.evaluation.cli", "evaluate configs on router-bench files: metrics, report, plots"),
    ("data", "taskrouter.training.data_cli", "generate synthetic conversations, review and export them"),
    ("train", "taskrouter.training.train", "train a LoRA / QLoRA adapter on router-bench data"),
    ("average", "taskrouter.training.average", "average LoRA adapters into one (a model soup of warm starts)"),
    ("package", "taskrouter.packaging.cli", "build, verify and deploy the SageMaker model.tar.gz"),
    ("loadtest", "taskrouter.serving.loadtest", "run Locust headless against a running server"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", required=True, help="JSON file: a list of {name, description}")
    parser.add_argument("--conversation", required=True, help="JSON file: a list of {role, content} messages")
    parser.add_argument("--current-task", help="the task the client considers active")
    parser.add_argument("--strategy", choices=["zero_shot", "few_shot_cot", "react", "adapter"])
    parser.add_argument("--decoding", choices=["constrained", "free"], default="constrained")
    parser.add_argument("--model-dir", help="an unpacked artifact (default: the embedded model)")
    parser.add_argument("--adapter", help="adapter name (default: the model's default adapter)")
    parser.add_argument("--top-k", type=int, default=3)


def run(args: argparse.Namespace) -> None:
    """`taskrouter route`: one request through the same handler as the server."""
    from . import handler
    from .schema import RequestError

    def read(path: str, what: str):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as exc:
            sys.exit(f"--{what} {path}: {exc}")

    tasks, messages = read(args.tasks, "tasks"), read(args.conversation, "conversation")
    payload = {"messages": messages.get("messages", messages) if isinstance(messages, dict) else messages,
               "tasks": tasks.get("tasks", tasks) if isinstance(tasks, dict) else tasks,
               "current_task": args.current_task, "decoding": args.decoding, "top_k": args.top_k}
    payload.update({k: v for k, v in (("strategy", args.strategy), ("adapter", args.adapter)) if v})
    try:
        request = handler.input_fn(json.dumps(payload), "application/json")
    except RequestError as exc:
        sys.exit(f"error: {exc.message}")
    router = handler.model_fn(args.model_dir)
    try:
        print(handler.output_fn(handler.predict_fn(request, router), "application/json"))
    except RequestError as exc:
        sys.exit(f"error: {exc.message}")


def _unavailable(name: str, module_name: str, exc: Exception):
    """The `run` of a command whose module failed to import: one line naming the command, module and cause."""
    def run(_args: argparse.Namespace) -> None:
        sys.exit(f"error: taskrouter {name} is unavailable: importing {module_name} failed "
                 f"({type(exc).__name__}: {exc})")
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskrouter", description="Self-hosted LLM task router.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            try:
                shipped = importlib.util.find_spec(module_name) is not None
            except ImportError:  # its package is absent
                shipped = False
            if not shipped:
                continue  # feature not shipped in this install (e.g. inside a SageMaker artifact)
            command = sub.add_parser(name, help=f"{help_text} (unavailable: {exc})", add_help=False)
            command.set_defaults(run=_unavailable(name, module_name, exc), any_arguments=True)
            continue
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "any_arguments", False):  # an unavailable command says why, whatever follows it
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.run(args)


if __name__ == "__main__":
    main()
