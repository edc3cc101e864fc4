"""Check a model.tar.gz the way SageMaker will use it: unpack, check checksums, route a conversation through the
handler in a fresh process here, then through the SageMaker image's own model server (the harness), and compare."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .archive import MANIFEST_NAME, sha256_file, verify_files
from .deploy import VERIFIED, default_adapter

SMOKE_SCRIPT = Path(__file__).with_name("smoke.py")
SMOKE_TASKS = [
    {"name": "meeting_recap", "description": "Write a recap of a meeting"},
    {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"},
    {"name": "prepare_a_quote", "description": "Prepare a price quote"},
]
SMOKE_TURNS = ["Please write a recap of the meeting with ACME.", "Now send them a follow-up email.",
               "And prepare a quote for 40 seats."]
P_TOLERANCE = 1e-3  # the container's torch/transformers differ from this environment's: same answer, not same bits


class VerifyError(Exception):
    """The artifact is broken; the message says how."""


@dataclass
class VerifyResult:
    answers: list[dict]  # the container's answers (this environment's with container=False)
    timings: dict  # model_fn_s and request_ms here; container_start_s and container_request_ms
    library: str


def unpack(archive: Path, target: Path) -> None:
    """Extract like the container does (`tar -xzf` into /opt/ml/model); refuses unsafe paths."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise VerifyError(f"{archive}: cannot unpack ({exc})") from None


def smoke_requests(adapter: str | None) -> list[dict]:
    """One conversation, turn by turn, over `adapter` (None: the endpoint's default): every turn after the first
    runs on the cached prefix of the one before."""
    requests, messages = [], []
    for turn, text in enumerate(SMOKE_TURNS):
        if messages:
            messages = messages + [{"role": "assistant", "content": "Done."}]
        messages = messages + [{"role": "user", "content": text}]
        request = {"messages": messages, "tasks": SMOKE_TASKS, "top_k": 3,
                   "current_task": SMOKE_TASKS[turn - 1]["name"] if turn else None}
        if adapter:
            request["adapter"] = adapter
        requests.append(request)
    return requests


def check_layout(model_dir: Path) -> dict:
    """The files the handler and the toolkit need; returns taskrouter.json."""
    needed = ["config.json", "taskrouter.json", MANIFEST_NAME, "code/inference.py", "code/requirements.txt",
              "code/taskrouter/handler.py"]
    missing = [n for n in needed if not (model_dir / n).exists()]
    if missing:
        raise VerifyError(f"artifact lacks {', '.join(missing)} at its top level")
    if (model_dir / "MANIFEST.json").exists():
        raise VerifyError("a top-level MANIFEST.json makes multi-model-server read the artifact as a legacy model "
                          "archive, and the endpoint never starts: rebuild it with `package build`")
    problems = verify_files(model_dir)
    if problems:
        raise VerifyError(f"files differ from {MANIFEST_NAME}: {', '.join(problems[:5])}")
    return json.loads((model_dir / "taskrouter.json").read_text())


def run_smoke(model_dir: Path, requests: list[dict], timeout: float = 900) -> VerifyResult:
    """model_fn, then input_fn -> predict_fn -> output_fn for each request, in a fresh isolated Python process."""
    requests_file, result_file = model_dir.parent / "requests.json", model_dir.parent / "result.json"
    requests_file.write_text(json.dumps(requests))
    try:
        proc = subprocess.run([sys.executable, "-I", str(SMOKE_SCRIPT), str(model_dir), str(requests_file),
                               str(result_file)], capture_output=True, text=True, timeout=timeout,
                              cwd=model_dir.parent)
    except subprocess.TimeoutExpired:
        raise VerifyError(f"the handler did not answer within {timeout:.0f} s") from None
    if proc.returncode != 0 or not result_file.exists():
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
        raise VerifyError(f"the handler failed (exit {proc.returncode}): {tail[0]}")
    result = json.loads(result_file.read_text())
    return VerifyResult(result["answers"], result["timings"], result["library"])


def run_container(archive: Path, requests: list[dict], timeout: float = 900,
                  say: Callable[[str], None] = lambda _: None) -> tuple[list[dict], dict]:
    """The same requests through the image's model server (packaging/harness.py), plus one malformed body that must
    get the contract's 400 error; returns the answers and timings."""
    from .harness import ContainerServer, HarnessError

    started = time.perf_counter()
    try:
        with ContainerServer(archive, startup_timeout=timeout, say=say) as server:
            timings = {"container_start_s": round(time.perf_counter() - started, 1), "container_request_ms": []}
            answers = []
            for i, request in enumerate(requests):
                started = time.perf_counter()
                response = server.invoke(json.dumps(request), timeout=timeout)
                timings["container_request_ms"].append(round((time.perf_counter() - started) * 1000, 1))
                if response.status != 200:
                    raise VerifyError(f"the model server answered request {i + 1} with {response.status}: "
                                      f"{response.body[:300].decode(errors='replace')}\n{server.log_tail(10)}")
                answers.append(response.json())
            bad = server.invoke(b"{not json")
            code = (bad.json().get("error") or {}).get("code") if bad.body.startswith(b"{") else None
            if bad.status != 400 or code != "invalid_json":
                raise VerifyError(f"a malformed body got {bad.status} {bad.body[:200]!r} from the model server, "
                                  f"not 400 invalid_json")
    except HarnessError as exc:
        raise VerifyError(f"the SageMaker model server could not run the artifact: {exc}") from None
    return answers, timings


def same_answer(a: dict, b: dict) -> bool:
    """Same task, event and candidates, probabilities within P_TOLERANCE."""
    if (a.get("task"), a.get("event")) != (b.get("task"), b.get("event")):
        return False
    ca, cb = a.get("candidates") or [], b.get("candidates") or []
    return [c["task"] for c in ca] == [c["task"] for c in cb] and \
        all(abs(x["p"] - y["p"]) <= P_TOLERANCE for x, y in zip(ca, cb))


def _brief(answer: dict) -> str:
    return f"{answer.get('task')} ({answer.get('event')}, " + \
        ", ".join(f"{c['task']} {c['p']:.4f}" for c in answer.get("candidates") or []) + ")"


def verify(archive: Path, requests: list[dict] | None = None, timeout: float = 900, container: bool = True,
           say: Callable[[str], None] = lambda _: None) -> VerifyResult:
    """Unpack `archive`, route `requests` (default: a 3-turn conversation) through it here and, with `container`,
    through the image's model server; the answers must agree. Raises VerifyError."""
    archive = Path(archive)
    if not archive.is_file():
        raise VerifyError(f"{archive}: no such file")
    with tempfile.TemporaryDirectory(prefix="taskrouter-verify-") as tmp:
        model_dir = Path(tmp) / "model"
        unpack(archive, model_dir)
        info = check_layout(model_dir)
        requests = requests or smoke_requests(default_adapter(json.loads((model_dir / MANIFEST_NAME).read_text())))
        say("routing the requests through the handler in a fresh process")
        result = run_smoke(model_dir, requests, timeout)
        if not result.library.startswith(str(model_dir / "code")):
            raise VerifyError(f"the handler imported taskrouter from {result.library}, not from the artifact's code/")
    for request, answer in zip(requests, result.answers):
        names = {t["name"] for t in request["tasks"]} | {"none"}
        if answer.get("task") not in names:
            raise VerifyError(f"answer task {answer.get('task')!r} is not one of the request's tasks")
        if answer.get("model") != info["base_model"]:
            raise VerifyError(f"answer model {answer.get('model')!r} is not the artifact's base {info['base_model']!r}")
        if request.get("adapter") and answer.get("adapter") != request["adapter"]:
            raise VerifyError(f"answer adapter {answer.get('adapter')!r} is not the requested {request['adapter']!r}")
    if container:
        say("routing them through the SageMaker image's model server")
        answers, timings = run_container(archive, requests, timeout, say)
        for i, (here, there) in enumerate(zip(result.answers, answers)):
            if not same_answer(here, there):
                raise VerifyError(f"request {i + 1}: the SageMaker model server answered {_brief(there)}, this "
                                  f"environment {_brief(here)}")
        result = VerifyResult(answers, {**result.timings, **timings}, result.library)
        record = {"sha256": sha256_file(archive), "requests": requests, "answers": answers}
        try:  # package deploy compares the endpoint's first answer with this one
            archive.with_name(VERIFIED).write_text(json.dumps(record, indent=2) + "\n")
        except OSError:
            pass
    return result
