"""`taskrouter serve` / `serve`: start gunicorn (or Flask's dev server) on an artifact or the embedded default."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", help="an unpacked artifact or a model.tar.gz (default: the embedded Gemma 3 270M "
                                            "with the adapters in model_artifacts/adapters)")
    parser.add_argument("--adapter", action="append", help="adapter name to load (repeatable; default: all that fit the base)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080, as SageMaker)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers, each with its own model copy (default 1)")
    parser.add_argument("--dev", action="store_true", help="Flask's own single-process server instead of gunicorn")


def run(args: argparse.Namespace) -> None:
    from taskrouter.artifacts import unpack_artifact

    try:
        model_dir = str(unpack_artifact(args.model_dir)) if args.model_dir else None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--model-dir {exc}") from None
    env = {"TASKROUTER_PORT": str(args.port), "TASKROUTER_WORKERS": str(args.workers)}
    if model_dir:
        env["TASKROUTER_MODEL_DIR"] = model_dir
    if args.adapter:
        env["TASKROUTER_ADAPTERS"] = ",".join(args.adapter)
        env.setdefault("TASKROUTER_DEFAULT_ADAPTER", args.adapter[0])
    os.environ.update(env)
    if args.dev:
        from .app import create_app

        create_app(model_dir).run(host=args.host, port=args.port, threaded=True)
        return
    conf = Path(__file__).with_name("gunicorn_conf.py")
    # gunicorn runs on this interpreter: a `gunicorn` script found on PATH may belong to another Python
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(conf), "--bind", f"{args.host}:{args.port}",
                              "taskrouter.serving.app:app_from_env()"])


def main(argv: list[str] | None = None) -> None:
    """The `serve` console script (the SageMaker container's name for the command)."""
    parser = argparse.ArgumentParser(prog="serve", description=__doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))
