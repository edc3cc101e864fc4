"""`taskrouter serve` / `serve`: start gunicorn (or Flask's dev server) on an artifact or the embedded default."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from taskrouter import settings
from taskrouter.artifacts import unpack_artifact
from taskrouter.heap import MALLOC, libc

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _bounded(flag: str, low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{flag} {value}: must be between {low} and {high}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", help="an unpacked artifact or a model.tar.gz (default: the embedded Gemma 3 270M "
                                            "with the shipped adapters)")
    parser.add_argument("--adapter", action="append", help="adapter name to load (repeatable; default: all that fit the base)")
    parser.add_argument("--port", type=_bounded("--port", 1, 65535), help="port to listen on (default 8080, as "
                                                                           "SageMaker; TASKROUTER_PORT)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for every "
                                       "interface, then set TASKROUTER_API_KEY)")
    parser.add_argument("--workers", type=_bounded("--workers", 1, 64),
                        help="gunicorn workers, each with its own model copy (default 1)")
    parser.add_argument("--dev", action="store_true", help="Flask's own single-process server instead of gunicorn")


def tune_malloc() -> None:
    """glibc's malloc set as `heap.MALLOC` says, for this process (when glibc is there) and for the gunicorn
    it execs; a variable the user set wins."""
    mallopt = getattr(libc(), "mallopt", None)
    for name, (parameter, value) in MALLOC.items():
        os.environ.setdefault(name, str(value))
        if mallopt is not None:
            mallopt(parameter, int(os.environ[name]))


def run(args: argparse.Namespace) -> None:
    env = {name: str(value) for name, value in (("TASKROUTER_PORT", args.port), ("TASKROUTER_HOST", args.host),
                                                 ("TASKROUTER_WORKERS", args.workers)) if value is not None}
    if args.adapter:
        env["TASKROUTER_ADAPTERS"] = ",".join(args.adapter)
        env.setdefault("TASKROUTER_DEFAULT_ADAPTER", args.adapter[0])
    os.environ.update(env)
    try:
        config = settings.load()
    except settings.SettingsError as exc:
        raise SystemExit(f"serve: {exc}") from None
    model_dir = args.model_dir or config.model_dir
    if model_dir:
        try:
            model_dir = os.environ["TASKROUTER_MODEL_DIR"] = str(unpack_artifact(model_dir))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--model-dir {exc}") from None
    tune_malloc()
    if config.host not in LOOPBACK and config.api_key is None:
        print(f"serve: warning: listening on {config.host} without TASKROUTER_API_KEY: anyone who reaches this "
              "port can call the router", file=sys.stderr)
    if args.dev:
        from .app import create_app
        from .logs import configure

        configure(config.log_level)
        create_app(model_dir, config=config).run(host=config.host, port=config.port, threaded=True)
        return
    conf = Path(__file__).with_name("gunicorn_conf.py")  # gunicorn of this interpreter, beside taskrouter
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(conf), "taskrouter.serving.app:app_from_env()"])


def main(argv: list[str] | None = None) -> None:
    """The `serve` console script (the SageMaker container's name for the command)."""
    parser = argparse.ArgumentParser(prog="serve", description=__doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))
