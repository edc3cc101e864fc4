"""Container-fidelity harness: an artifact served by the SageMaker image's own model server, on CPU, on loopback.

What is the real thing here: a virtual environment with the image's Python packages
(images.IMAGE_PACKAGES: transformers, peft, accelerate, multi-model-server, the toolkit; torch is this
machine's CPU wheel of the running torch version), the artifact unpacked as the container's
/opt/ml/model, its code/requirements.txt installed by the toolkit at start as in the container (with no
package index, as in a VPC without egress), the deploy's container environment, and the model server
started as the image's entrypoint starts it (`serve`: sagemaker_huggingface_inference_toolkit.serving.main,
which writes the model server's config and runs multi-model-server with its Java frontend).

What differs, each on purpose: SAGEMAKER_BASE_DIR points the toolkit at a temporary folder instead of
/opt/ml; the model server's config file is written there instead of /etc (container_entry.py); the
MMS_INFERENCE_ADDRESS / MMS_MANAGEMENT_ADDRESS variables (the image enables env config) bind 127.0.0.1
on free ports instead of 0.0.0.0:8080; TMPDIR/TEMP are private, so the model server's pid file is too;
TOOLKIT_SHIM stands in for the toolkit commit the image installs, which is not on PyPI.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .archive import MANIFEST_NAME
from .images import IMAGE_PACKAGES

ENTRY = Path(__file__).with_name("container_entry.py")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taskrouter"
MODEL_NAME = "model"  # the toolkit registers the artifact under this name (sagemaker_inference DEFAULT_MMS_MODEL_NAME)

# The image installs the toolkit from git commit f0c3eb2 (aws/sagemaker-huggingface-inference-toolkit PR #141,
# "Update dependencies for transformers v5": TensorFlow removed). PyPI's 2.6.0 still imports
# `is_tf_available` from transformers.file_utils, which transformers 5 no longer has, so its every worker dies
# at import. This one-line edit of the installed 2.6.0 stands in for that commit and nothing else: TensorFlow is
# never available, torch is detected through transformers.utils as before.
TOOLKIT_SHIM = (
    "sagemaker_huggingface_inference_toolkit/transformers_utils.py",
    "from transformers.file_utils import is_tf_available, is_torch_available\n",
    "from transformers.utils import is_torch_available  # taskrouter harness shim: toolkit f0c3eb2 (no TensorFlow)\n"
    "\n\ndef is_tf_available():\n    return False\n",
)


class HarnessError(Exception):
    """The harness could not run the artifact; the message says why (with the server log's tail when it has one)."""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str

    def json(self):
        return json.loads(self.body)


def _torch_pin() -> str:
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"  # this machine's wheel: never a multi-GB CUDA download


def image_requirements() -> list[str]:
    """What the harness venv installs: the running torch, then the image's packages at the image's versions."""
    packages = [f"{name}=={version}" for name, version in IMAGE_PACKAGES.items()]
    return [_torch_pin(), *[p.replace("transformers==", "transformers[sentencepiece]==") for p in packages]]


def venv_path() -> Path:
    """The cached venv for this image's versions, this interpreter and the shim (rebuilt when any changes)."""
    key = hashlib.sha256(json.dumps([image_requirements(), sys.version, TOOLKIT_SHIM]).encode()).hexdigest()[:12]
    return CACHE / f"image-venv-{key}"


def _run(command: list[str], what: str, **kwargs) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()][-3:]
        raise HarnessError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")


def ensure_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise HarnessError("no Java runtime on PATH: multi-model-server's frontend is Java "
                           "(apt-get install -y openjdk-17-jre-headless)")
    return java


def ensure_venv(say: Callable[[str], None] = lambda _: None) -> Path:
    """The image's Python packages in a venv of their own (created once, a few minutes; then cached)."""
    ensure_java()
    venv = venv_path()
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    say(f"creating the image's environment in {venv} (once; a few minutes)")
    _run([sys.executable, "-m", "venv", str(venv)], "python -m venv")
    requirements = image_requirements()
    _run([str(python), "-m", "pip", "install", "--quiet", requirements[0]], f"pip install {requirements[0]}")
    _run([str(python), "-m", "pip", "install", "--quiet", *requirements[1:]], "pip install the image's packages")
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    relative, old, new = TOOLKIT_SHIM
    source = site / relative
    text = source.read_text()
    if old not in text:
        raise HarnessError(f"{source}: the line the toolkit shim replaces is not there; check TOOLKIT_SHIM")
    source.write_text(text.replace(old, new))
    (venv / ".complete").write_text("\n".join(requirements) + "\n")
    return venv


def free_port(taken: int = 0) -> int:
    """A free loopback port below 32767: multi-model-server refuses larger port numbers (it checks them against
    a Java short), and the kernel's ephemeral ports start above that."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        if port == taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise HarnessError("no free loopback port between 20000 and 32000")


def _request(url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 120) -> Response:
    req = urllib.request.Request(url, body, headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return Response(res.status, res.read(), res.headers.get("Content-Type", ""))
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read(), exc.headers.get("Content-Type", ""))


class ContainerServer:
    """The artifact under the image's model server; a context manager that starts it and stops it.

    `env` adds container environment (as `package deploy --env`); `workers` sets
    SAGEMAKER_MODEL_SERVER_WORKERS as deploy does.
    """

    def __init__(self, archive: Path, env: dict[str, str] | None = None, workers: int = 1,
                 startup_timeout: float = 600, say: Callable[[str], None] = lambda _: None):
        self.archive, self.extra, self.workers = Path(archive), dict(env or {}), workers
        self.startup_timeout, self.say = startup_timeout, say
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.port = self.management_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "container.log"

    def log_tail(self, lines: int = 25) -> str:
        if self.root is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def environment(self, venv: Path) -> dict[str, str]:
        """The container's environment: deploy's model environment, the toolkit's base path, loopback addresses."""
        from .deploy import container_env

        manifest = json.loads((self.root / "ml" / "model" / MANIFEST_NAME).read_text())
        inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        tmp = self.root / "tmp"
        return {
            **inherited,
            **container_env(manifest, "us-east-1", {"SAGEMAKER_MODEL_SERVER_WORKERS": str(self.workers),
                                                    **self.extra}),
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",  # as the image sets them
            "SAGEMAKER_BASE_DIR": str(self.root / "ml"),
            "TASKROUTER_HARNESS_MMS_CONFIG": str(self.root / "etc" / "sagemaker-mms.properties"),
            "MMS_INFERENCE_ADDRESS": self.url,
            "MMS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{self.management_port}",
            "TMPDIR": str(tmp), "TEMP": str(tmp),
            "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",  # no network: only what the artifact brings
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }

    def start(self) -> "ContainerServer":
        from .verify import unpack

        venv = ensure_venv(self.say)
        self.root = Path(tempfile.mkdtemp(prefix="taskrouter-container-"))
        for sub in ("ml", "etc", "tmp"):
            (self.root / sub).mkdir()
        unpack(self.archive, self.root / "ml" / "model")
        self.port = free_port()
        self.management_port = free_port(taken=self.port)
        env = self.environment(venv)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(venv / "bin" / "python"), str(ENTRY), "serve"], cwd=self.root, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.say(f"model server starting on {self.url} (log {self.log})")
        self._wait_ready()
        return self

    def _workers_ready(self) -> bool:
        try:
            described = _request(f"http://127.0.0.1:{self.management_port}/models/{MODEL_NAME}", timeout=5)
        except OSError:
            return False
        if described.status != 200:
            return False
        info = described.json()
        workers = (info[0] if isinstance(info, list) else info).get("workers", [])
        return len(workers) >= self.workers and all(w.get("status") == "READY" for w in workers)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise HarnessError(f"the container exited (status {self.proc.returncode}) before serving:\n"
                                   f"{self.log_tail()}")
            if self._workers_ready():
                ping = self.ping()
                if ping.status == 200 and ping.json().get("status") == "Healthy":
                    return
            if time.monotonic() > deadline:
                raise HarnessError(f"no READY worker after {self.startup_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(1)

    def ping(self) -> Response:
        return _request(f"{self.url}/ping", timeout=10)

    def invoke(self, body: bytes | str, content_type: str = "application/json", accept: str = "application/json",
               timeout: float = 120) -> Response:
        """POST /invocations as SageMaker's runtime does."""
        data = body.encode() if isinstance(body, str) else body
        return _request(f"{self.url}/invocations", data, {"Content-Type": content_type, "Accept": accept}, timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the launcher's session: toolkit, Java frontend, workers
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:  # the Java frontend and workers may outlive the launcher in its process group
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "ContainerServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def bench(archive: Path, workers: int, clients: int, requests: int, env: dict[str, str] | None = None) -> dict:
    """Route `requests` next-turn requests from `clients` threads at once through the model server with `workers`
    workers; returns requests/s and latency percentiles (the model server hands each worker one request at a time)."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from .verify import SMOKE_TASKS

    def body(i: int) -> str:
        messages = [{"role": "user", "content": f"Conversation {i % clients}: write a recap of the meeting."},
                    {"role": "assistant", "content": "Done."},
                    {"role": "user", "content": f"Now send the follow-up email number {i}."}]
        return json.dumps({"messages": messages, "tasks": SMOKE_TASKS, "current_task": "meeting_recap"})

    with ContainerServer(archive, env=env, workers=workers) as server:
        for i in range(clients):  # warm every conversation's prefix once
            server.invoke(body(i))

        def timed(i: int) -> float:
            started = time.perf_counter()
            response = server.invoke(body(i))
            if response.status != 200:
                raise HarnessError(f"request {i}: {response.status} {response.body[:200]!r}")
            return (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = sorted(pool.map(timed, range(clients, clients + requests)))
        seconds = time.perf_counter() - started
    return {"workers": workers, "clients": clients, "requests": requests, "req_per_s": round(requests / seconds, 2),
            "p50_ms": round(statistics.median(latencies)), "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))])}


def main(argv: list[str] | None = None) -> None:
    """`python -m taskrouter.packaging.harness --prepare` creates the image's venv (CI does, before the tests);
    `--bench model.tar.gz` measures throughput under the model server."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m taskrouter.packaging.harness", description=main.__doc__)
    parser.add_argument("--prepare", action="store_true", help="create (or reuse) the cached venv and print its path")
    parser.add_argument("--bench", type=Path, metavar="ARCHIVE", help="measure requests/s of this model.tar.gz")
    parser.add_argument("--workers", type=int, default=1, help="--bench: SAGEMAKER_MODEL_SERVER_WORKERS (default 1)")
    parser.add_argument("--clients", type=int, default=4, help="--bench: concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=32, help="--bench: timed requests (default 32)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="--bench: container env")
    args = parser.parse_args(argv)
    if not args.prepare and not args.bench:
        parser.error("nothing to do: pass --prepare or --bench ARCHIVE")
    try:
        if args.prepare:
            print(ensure_venv(lambda line: print(line, file=sys.stderr)))
        if args.bench:
            env = dict(item.split("=", 1) for item in args.env)
            print(json.dumps(bench(args.bench, args.workers, args.clients, args.requests, env)))
    except (HarnessError, ValueError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
