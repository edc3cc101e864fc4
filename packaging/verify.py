"""Check a model.tar.gz the way SageMaker will use it: unpack, check checksums, run the handler in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .archive import MANIFEST_NAME, verify_files

SMOKE_SCRIPT = Path(__file__).with_name("smoke.py")
SMOKE_TASKS = [
    {"name": "meeting_recap", "description": "Write a recap of a meeting"},
    {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"},
    {"name": "prepare_a_quote", "description": "Prepare a price quote"},
]


class VerifyError(Exception):
    """The artifact is broken; the message says how."""


@dataclass
class VerifyResult:
    answer: dict
    timings: dict
    library: str


def unpack(archive: Path, target: Path) -> None:
    """Extract like the container does (`tar -xzf` into /opt/ml/model); refuses unsafe paths."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise VerifyError(f"{archive}: cannot unpack ({exc})") from None


def smoke_request(model_dir: Path) -> dict:
    """A request that exercises the artifact's first adapter (or the bare base)."""
    adapters = sorted(p.name for p in (model_dir / "adapters").glob("*") if p.is_dir())
    request = {"messages": [{"role": "user", "content": "Please write a recap of the meeting with ACME."}],
               "tasks": SMOKE_TASKS, "top_k": 3}
    if adapters:
        request["adapter"] = adapters[0]
    return request


def check_layout(model_dir: Path) -> dict:
    """The files the handler and the toolkit need; returns taskrouter.json."""
    needed = ["config.json", "taskrouter.json", MANIFEST_NAME, "code/inference.py", "code/requirements.txt",
              "code/taskrouter/handler.py"]
    missing = [n for n in needed if not (model_dir / n).exists()]
    if missing:
        raise VerifyError(f"artifact lacks {', '.join(missing)} at its top level")
    problems = verify_files(model_dir)
    if problems:
        raise VerifyError(f"files differ from {MANIFEST_NAME}: {', '.join(problems[:5])}")
    return json.loads((model_dir / "taskrouter.json").read_text())


def run_smoke(model_dir: Path, request: dict, timeout: float = 900) -> VerifyResult:
    """model_fn -> input_fn -> predict_fn -> output_fn in a fresh, isolated Python process."""
    request_file, result_file = model_dir.parent / "request.json", model_dir.parent / "result.json"
    request_file.write_text(json.dumps(request))
    try:
        proc = subprocess.run([sys.executable, "-I", str(SMOKE_SCRIPT), str(model_dir), str(request_file),
                               str(result_file)], capture_output=True, text=True, timeout=timeout,
                              cwd=model_dir.parent)
    except subprocess.TimeoutExpired:
        raise VerifyError(f"the handler did not answer within {timeout:.0f} s") from None
    if proc.returncode != 0 or not result_file.exists():
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
        raise VerifyError(f"the handler failed (exit {proc.returncode}): {tail[0]}")
    result = json.loads(result_file.read_text())
    return VerifyResult(result["answer"], result["timings"], result["library"])


def verify(archive: Path, request: dict | None = None, timeout: float = 900) -> VerifyResult:
    """Unpack `archive` into a temporary directory and route one request through it; raises VerifyError."""
    archive = Path(archive)
    if not archive.is_file():
        raise VerifyError(f"{archive}: no such file")
    with tempfile.TemporaryDirectory(prefix="taskrouter-verify-") as tmp:
        model_dir = Path(tmp) / "model"
        unpack(archive, model_dir)
        info = check_layout(model_dir)
        request = request or smoke_request(model_dir)
        result = run_smoke(model_dir, request, timeout)
        if not result.library.startswith(str(model_dir / "code")):
            raise VerifyError(f"the handler imported taskrouter from {result.library}, not from the artifact's code/")
    names = {t["name"] for t in request["tasks"]} | {"none"}
    answer = result.answer
    if answer.get("task") not in names:
        raise VerifyError(f"answer task {answer.get('task')!r} is not one of the request's tasks")
    if answer.get("model") != info["base_model"]:
        raise VerifyError(f"answer model {answer.get('model')!r} is not the artifact's base {info['base_model']!r}")
    if request.get("adapter") and answer.get("adapter") != request["adapter"]:
        raise VerifyError(f"answer adapter {answer.get('adapter')!r} is not the requested {request['adapter']!r}")
    return result
