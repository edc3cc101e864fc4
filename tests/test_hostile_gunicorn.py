"""Hostile traffic against the real gunicorn server with its default admission (tiny model, loopback).

Slow clients (more than there are threads) must not lock others out, a burst beyond the
queue gets 503 + Retry-After at once, chunked bodies are bounded, and the logs hold JSON
request lines with no query strings or malformed request text. A request whose last
message contains SLOW takes 3 s in the model slot (the hook of test_faults_gunicorn).
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from test_faults_gunicorn import HOOK, free_port, ping_ok, wait_for

from taskrouter import settings

READ_TIMEOUT_S = 4


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "conf.py").write_text(HOOK)
    (tmp / "pids").mkdir()
    port = free_port()
    env = dict(os.environ, TASKROUTER_MODEL_DIR=str(tiny_dir), TEST_PID_DIR=str(tmp / "pids"),
               TASKROUTER_THREADS="1", TASKROUTER_READ_TIMEOUT_S=str(READ_TIMEOUT_S), HF_HUB_OFFLINE="1",
               TASKROUTER_API_KEY="", TASKROUTER_PORT=str(port))
    env.pop("TASKROUTER_API_KEY")
    log = tmp / "log.txt"
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(tmp / "conf.py"), "taskrouter.serving.app:app_from_env()"],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ping_ok(url), 120, "the worker to load the model")
        yield {"url": url, "port": port, "log": log}
    finally:
        proc.terminate()
        proc.wait(30)


def _slow_connection(port: int, body_never_ends: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    if body_never_ends:  # whole headers, then a body that never reaches its Content-Length
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"messages\": ")
    return sock


def test_more_slow_clients_than_threads_lock_nobody_out(server, request_payload):
    threads = settings.load().server_threads
    socks = [_slow_connection(server["port"], body_never_ends=i % 2 == 1) for i in range(threads + 16)]
    stop = threading.Event()

    def trickle():  # one header byte a second on every other connection (slowloris)
        line = b"GET /ping HTTP/1.1\r\nHost: x\r\n"
        for i in range(len(line)):
            for sock in socks[::2]:
                try:
                    sock.send(line[i:i + 1])
                except OSError:
                    pass
            if stop.wait(1.0):
                return

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        time.sleep(1.5)  # every slow connection has started its request
        started = time.monotonic()
        assert requests.get(f"{server['url']}/ping", timeout=5).status_code == 200
        res = requests.post(f"{server['url']}/invocations", json=request_payload, timeout=10)
        assert res.status_code == 200 and res.json()["task"]
        assert time.monotonic() - started < 5
        time.sleep(READ_TIMEOUT_S + 2)  # past the read timeout every slow connection is answered 408 and closed
        for sock in socks:
            sock.settimeout(2)
            answer = sock.recv(200)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        stop.set()
        trickler.join(5)
        for sock in socks:
            sock.close()


def test_a_burst_beyond_the_queue_gets_503_at_once(server, request_payload):
    """Defaults: 16 computed at once + 32 queued; 120 at once: the rest are refused, fast. (On a slow machine
    the first 16 may finish, 3 s in, before the last of the 120 arrive: one round of slack.)"""
    config = settings.load()
    admitted = config.admitted_at_once + config.max_queue
    slow = dict(request_payload, messages=[{"role": "user", "content": "SLOW recap the meeting"}])
    together = threading.Barrier(120)

    def call(_):
        together.wait(30)
        started = time.monotonic()
        res = requests.post(f"{server['url']}/invocations", json=slow, timeout=60)
        return res.status_code, res.headers.get("Retry-After"), time.monotonic() - started

    with ThreadPoolExecutor(120) as pool:
        results = list(pool.map(call, range(120)))
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503, 504}, statuses
    refused = [(retry, seconds) for status, retry, seconds in results if status == 503]
    assert len(refused) >= 120 - admitted - config.admitted_at_once, statuses
    assert all(retry and int(retry) >= 1 for retry, _ in refused)
    assert max(seconds for _, seconds in refused) < 3.0  # refused at once, not after waiting
    # nobody waits past the deadline (measured from arrival) plus the one model call it may be in
    assert max(seconds for _, _, seconds in results) < config.deadline_ms / 1000 + 3 + 2


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def _chunks(body: bytes, size: int = 65536) -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


CHUNKED = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
          b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"


def test_chunked_bodies_are_bounded_and_framed(server, request_payload):
    big = json.dumps(dict(request_payload, pad="x" * (3 * 2**20))).encode()
    assert _raw(server["port"], CHUNKED + _chunks(big)).startswith(b"HTTP/1.1 413")
    assert _raw(server["port"], CHUNKED + _chunks(json.dumps(request_payload).encode())).startswith(b"HTTP/1.1 200")
    answer = _raw(server["port"], CHUNKED + b"zz\r\n{}\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_logs_are_json_without_query_strings_or_bad_request_text(server, request_payload):
    url, secret = server["url"], "QUERY-SECRET-1234"
    assert requests.post(f"{url}/invocations?api_key={secret}", json=request_payload, timeout=30).status_code == 200
    _raw(server["port"], f"GET /?key={secret} HTTP/1.1 junk\r\n\r\n".encode())
    time.sleep(1.0)
    text = server["log"].read_text()
    assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["message"] == "model loaded" and line["seconds"] >= 0 for line in lines)
    invocation = [line for line in lines if line["message"] == "invocation" and line["status"] == 200]
    assert invocation and invocation[-1]["tasks"] == 3 and invocation[-1]["task"]
    assert any(line["message"] == "access" and line["path"] == "/invocations" for line in lines)
    assert any("request text withheld" in line["message"] for line in lines)
