"""`taskrouter` command line: each subcommand lives in the module of its feature.

Only the chosen subcommand's module is imported (several import torch, which takes seconds), so
`taskrouter --help` and `--version` answer at once. Modules outside the core (serving, evaluation,
training, packaging) are absent from a SageMaker artifact's code/: choosing one there says so, and
a command whose module is there but fails to import says why.
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
    parser.add_argument("--tasks", required=True,
                        help='JSON file: a list of {"name", "description"} (or {"tasks": [...]})')
    parser.add_argument("--conversation", required=True,
                        help='JSON file: a list of {"role", "content"} messages ending with the user\'s '
                             '(or {"messages": [...]})')
    parser.add_argument("--current-task", help="the task the client considers active (default: none)")
    parser.add_argument("--strategy", choices=["zero_shot", "few_shot_cot", "react", "adapter"],
                        help="prompt strategy (default: adapter when an adapter is loaded, else zero_shot)")
    parser.add_argument("--decoding", choices=["constrained", "free"], default="constrained",
                        help="constrained: the answer is always a listed name or none (default); free: parse "
                             "unconstrained text, as the evaluation's free-decoding configs do")
    parser.add_argument("--model-dir", help="an unpacked artifact (default: the embedded model with its shipped "
                                            "adapter)")
    parser.add_argument("--adapter", help="adapter name, or none for the bare base (default: the model's default "
                                          "adapter)")
    parser.add_argument("--top-k", type=int, default=3, help="candidates listed in the answer (default 3)")


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


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the arguments of the subcommand named in `argv` only (the others are listed)."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="taskrouter", description="Self-hosted LLM task router: which task of "
                                     "a dynamic list the user is doing now, or none. `taskrouter COMMAND --help` "
                                     "explains each command.")
    parser.add_argument("--version", action="version", version=f"taskrouter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((word for word in argv if not word.startswith("-")), None)
    for name, module_name, help_text in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name != chosen:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            try:
                shipped = importlib.util.find_spec(module_name) is not None
            except ImportError:  # its package is absent
                shipped = False
            if not shipped:
                sys.exit(f"taskrouter {name}: not part of this install ({module_name} is missing)")
            sys.exit(f"error: taskrouter {name} is unavailable: importing {module_name} failed "
                     f"({type(exc).__name__}: {exc})")
        command.description = (module.__doc__ or help_text).strip()
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser(argv).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.run(args)


if __name__ == "__main__":
    main()
