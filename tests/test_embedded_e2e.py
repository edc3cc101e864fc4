"""The real embedded default (Gemma 3 270M from the PyPI GGUF), served by gunicorn, routed over HTTP."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as res:
            return res.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_embedded_default_routes_over_http(request_payload):
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen([str(bin_dir / "taskrouter"), "serve", "--port", str(port), "--host", "127.0.0.1"],
                            env={**os.environ, "TASKROUTER_THREADS": "2"})
    try:
        deadline = time.time() + 600  # first use converts the GGUF (~90 s)
        while _get(f"http://127.0.0.1:{port}/ping") != 200:
            assert proc.poll() is None, "server exited"
            assert time.time() < deadline, "model never became ready"
            time.sleep(1)
        payload = {**request_payload, "top_k": 4}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as res:
            answer = json.loads(res.read())
        assert answer["model"] == "gemma-3-270m"
        assert answer["task"] in {"meeting_recap", "follow_up_email", "prepare_a_quote", "none"}
        assert len(answer["candidates"]) == 4 and abs(sum(c["p"] for c in answer["candidates"]) - 1) < 1e-3
        bad = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=b'{"messages": []}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(bad, timeout=30)
        assert info.value.code == 400 and "messages" in json.loads(info.value.read())["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
