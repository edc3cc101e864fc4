"""Overload, deadlines, API key, private logs and internal errors of the Flask app (in process, tiny model)."""
import json
import logging
import threading
import time

import pytest

from taskrouter import handler
from taskrouter.serving.admission import Admission, DeadlineExceeded, Overloaded
from taskrouter.serving.app import create_app
from taskrouter.serving.logs import JsonFormatter

SECRET = "SECRET-PINEAPPLE-42"


def test_admission_is_fifo_bounded_and_drops_expired_waiters():
    adm = Admission(max_queue=2, deadline_ms=300)
    order, hold = [], threading.Event()

    def worker(name):
        try:
            with adm.slot():
                order.append(name)
                if name == "a":
                    hold.wait(5)
        except DeadlineExceeded:
            order.append(f"{name}:expired")

    threads = [threading.Thread(target=worker, args=(n,)) for n in "abc"]
    for t in threads:
        t.start()
        time.sleep(0.05)
    with pytest.raises(Overloaded) as info:  # a runs, b and c wait: the queue (2) is full
        with adm.slot():
            pass
    assert info.value.status == 503 and info.value.retry_after >= 1
    time.sleep(0.4)  # b and c pass their deadline while a still runs
    hold.set()
    for t in threads:
        t.join(5)
    assert order == ["a", "b:expired", "c:expired"]
    assert (adm.stats.admitted, adm.stats.rejected, adm.stats.expired) == (1, 1, 2)
    with adm.slot():  # the slot was handed back: a new request runs at once
        pass


@pytest.fixture
def blocking(monkeypatch):
    """predict_fn waits for `release` and counts its calls: a model call that takes as long as the test wants."""
    release, calls = threading.Event(), []
    real = handler.predict_fn

    def slow(data, model):
        calls.append(data.messages[-1].content)
        release.wait(10)
        return real(data, model)

    monkeypatch.setattr(handler, "predict_fn", slow)
    return release, calls


def _post_in_thread(client, payload, results, key):
    def go():
        results[key] = client.post("/invocations", json=payload)
    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_full_queue_answers_503_with_retry_after(tiny_dir, request_payload, blocking):
    release, calls = blocking
    client = create_app(str(tiny_dir), load_async=False, admission=Admission(max_queue=1, deadline_ms=30_000)).test_client()
    results: dict = {}
    first = _post_in_thread(client, request_payload, results, "first")
    while not calls:
        time.sleep(0.01)
    second = _post_in_thread(client, request_payload, results, "second")
    time.sleep(0.2)
    started = time.perf_counter()
    res = client.post("/invocations", json=request_payload)
    assert time.perf_counter() - started < 1.0  # refused at once, not queued
    assert res.status_code == 503 and res.json["error"]["code"] == "overloaded"
    assert int(res.headers["Retry-After"]) >= 1
    release.set()
    first.join(10), second.join(10)
    assert results["first"].status_code == 200 and results["second"].status_code == 200


def test_request_past_its_deadline_is_dropped_before_compute(tiny_dir, request_payload, blocking):
    release, calls = blocking
    client = create_app(str(tiny_dir), load_async=False, admission=Admission(max_queue=4, deadline_ms=300)).test_client()
    results: dict = {}
    first = _post_in_thread(client, request_payload, results, "first")
    while not calls:
        time.sleep(0.01)
    late = dict(request_payload, messages=[{"role": "user", "content": "late request"}])
    started = time.perf_counter()
    res = client.post("/invocations", json=late)
    assert 0.25 < time.perf_counter() - started < 2.0
    assert res.status_code == 504 and res.json["error"]["code"] == "deadline_exceeded"
    release.set()
    first.join(10)
    assert results["first"].status_code == 200
    assert calls == [request_payload["messages"][-1]["content"]]  # the late request never reached the model


def test_api_key_guards_invocations_but_not_ping(tiny_dir, request_payload, monkeypatch):
    monkeypatch.setenv("TASKROUTER_API_KEY", "s3cret-key")
    client = create_app(str(tiny_dir), load_async=False).test_client()
    assert client.get("/ping").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cret-ke"}, {"Authorization": "s3cret-key"}):
        res = client.post("/invocations", json=request_payload, headers=headers)
        assert res.status_code == 401 and res.json["error"]["code"] == "unauthorized", headers
    for headers in ({"Authorization": "Bearer s3cret-key"}, {"Authorization": "bearer s3cret-key"}, {"X-API-Key": "s3cret-key"}):
        assert client.post("/invocations", json=request_payload, headers=headers).status_code == 200


def test_api_key_comparison_is_constant_time(tiny_dir, monkeypatch):
    import hmac

    seen = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    monkeypatch.setenv("TASKROUTER_API_KEY", "k")
    client = create_app(str(tiny_dir), load_async=False).test_client()
    assert client.post("/invocations", json={}, headers={"X-API-Key": "x"}).status_code == 401
    assert seen == [(b"x", b"k")]


@pytest.mark.parametrize("log_bodies", [False, True])
def test_logs_hold_no_message_text_unless_asked(tiny_dir, request_payload, monkeypatch, caplog, log_bodies):
    if log_bodies:
        monkeypatch.setenv("TASKROUTER_LOG_BODIES", "1")
    client = create_app(str(tiny_dir), load_async=False).test_client()
    payload = dict(request_payload, messages=[{"role": "user", "content": f"my card is {SECRET}"}])
    bad = dict(payload, current_task=SECRET)  # a 400 whose field value is secret too
    with caplog.at_level(logging.DEBUG):
        assert client.post("/invocations", json=payload).status_code == 200
        assert client.post("/invocations", json=bad).status_code == 400
    records = [r for r in caplog.records if r.name.startswith("taskrouter")]
    lines = [JsonFormatter().format(r) for r in records]
    invocations = [json.loads(line) for line in lines if json.loads(line)["message"] == "invocation"]
    assert [i["status"] for i in invocations] == [200, 400]
    assert invocations[0]["messages"] == 1 and invocations[0]["tasks"] == 3 and "task" in invocations[0]
    assert any(SECRET in line for line in lines) is log_bodies


def test_internal_error_is_json_500_without_the_exception_text(tiny_dir, request_payload, monkeypatch, caplog):
    def boom(data, model):
        raise RuntimeError(f"failed on {data.messages[-1].content}")

    monkeypatch.setattr(handler, "predict_fn", boom)
    client = create_app(str(tiny_dir), load_async=False).test_client()
    payload = dict(request_payload, messages=[{"role": "user", "content": SECRET}])
    with caplog.at_level(logging.DEBUG):
        res = client.post("/invocations", json=payload)
    assert res.status_code == 500 and res.json["error"]["code"] == "internal_error"
    assert SECRET not in res.get_data(as_text=True)
    assert "RuntimeError" in caplog.text and SECRET not in caplog.text


def test_openapi_describes_the_request_and_answer(tiny_dir):
    doc = create_app(str(tiny_dir), load_async=False).test_client().get("/openapi.json").json
    post = doc["paths"]["/invocations"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RouteRequest")
    schemas = doc["components"]["schemas"]
    assert schemas["RouteRequest"]["required"] == ["messages"]
    assert schemas["RouteRequest"]["anyOf"] == [{"required": ["tasks"]}, {"required": ["tools"]}]
    assert "task" in schemas["RouteAnswer"]["properties"] and {"503", "504", "401"} <= set(post["responses"])
