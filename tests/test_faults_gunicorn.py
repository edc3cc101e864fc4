"""gunicorn with the tiny model: a killed worker fails its client fast and is replaced; SIGTERM drains.

The server runs the project's gunicorn_conf.py plus a hook (test only) that makes a
request whose last message contains SLOW take 3 s, and records each worker's pid.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

CONF = Path(__file__).resolve().parents[1] / "serving" / "gunicorn_conf.py"
HOOK = f'''
exec(open({str(CONF)!r}).read())

def post_worker_init(worker):
    import os, time
    from taskrouter.router import Router
    real = Router.route
    def route(self, request):
        if "SLOW" in request.messages[-1].content:
            time.sleep(3)
        return real(self, request)
    Router.route = route
    with open(os.path.join(os.environ["TEST_PID_DIR"], str(worker.pid)), "w"):
        pass
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ping_ok(url: str) -> bool:
    try:
        return requests.get(f"{url}/ping", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn")
    (tmp / "conf.py").write_text(HOOK)
    pids = tmp / "pids"
    pids.mkdir()
    port = free_port()
    env = dict(os.environ, TASKROUTER_MODEL_DIR=str(tiny_dir), TEST_PID_DIR=str(pids), TASKROUTER_THREADS="1",
               TASKROUTER_GRACEFUL_TIMEOUT="20", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(tmp / "conf.py"), "--bind", f"127.0.0.1:{port}",
                             "taskrouter.serving.app:app_from_env()"], env=env,
                            stdout=open(tmp / "log.txt", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ping_ok(url), 120, "the first worker to load the model")
        yield {"url": url, "proc": proc, "pids": pids, "log": tmp / "log.txt"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def worker_pids(pids: Path) -> list[int]:
    return sorted(int(p.name) for p in pids.iterdir())


def slow_payload(request_payload):
    return dict(request_payload, messages=[{"role": "user", "content": "SLOW please recap the meeting"}])


def test_killed_worker_fails_its_client_fast_and_is_replaced(server, request_payload):
    url, pids = server["url"], server["pids"]
    assert requests.post(f"{url}/invocations", json=request_payload, timeout=30).status_code == 200
    (victim,) = worker_pids(pids)
    outcome: dict = {}

    def client():
        try:
            outcome["status"] = requests.post(f"{url}/invocations", json=slow_payload(request_payload), timeout=60).status_code
        except requests.ConnectionError as exc:
            outcome["error"] = type(exc).__name__
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(1.0)  # the request is inside the 3 s model call
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    thread.join(30)
    assert not thread.is_alive()
    assert "error" in outcome or outcome.get("status", 200) >= 500, outcome  # an error, never a silent success
    assert outcome["ended"] - killed < 2.0  # and at once, not after a client timeout
    new = wait_for(lambda: [p for p in worker_pids(pids) if p != victim], 60, "the master to start a new worker")
    assert new and new[0] != victim
    wait_for(lambda: ping_ok(url), 120, "the new worker to load the model")
    res = requests.post(f"{url}/invocations", json=request_payload, timeout=30)
    assert res.status_code == 200 and res.json()["task"] in {"meeting_recap", "follow_up_email", "prepare_a_quote", "none"}


def test_sigterm_drains_in_flight_requests(server, request_payload):
    url, proc = server["url"], server["proc"]
    outcome: dict = {}

    def client():
        res = requests.post(f"{url}/invocations", json=slow_payload(request_payload), timeout=60)
        outcome["status"], outcome["task"] = res.status_code, res.json().get("task")

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    thread.join(30)
    assert outcome.get("status") == 200 and outcome["task"], outcome  # the in-flight request completed
    assert proc.wait(30) == 0
    with pytest.raises(requests.ConnectionError):  # and nothing listens any more
        requests.get(f"{url}/ping", timeout=2)
