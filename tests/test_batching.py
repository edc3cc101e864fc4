"""Micro-batching: concurrent requests share one forward pass and get exactly the answers they get alone."""
import threading
import time

import pytest

from taskrouter.batching import MicroBatcher
from taskrouter.loading import load_model
from taskrouter.router import Router
from taskrouter.schema import RequestError, parse_request


def _concurrently(fn, items: list) -> list:
    """Call fn on every item from its own thread, all released at once; results (or exceptions) in order."""
    results: list = [None] * len(items)
    barrier = threading.Barrier(len(items))

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(items[i])
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_batches_form_and_each_caller_gets_its_own_result_or_error():
    sizes = []

    def run(items):
        sizes.append(len(items))
        time.sleep(0.05)
        return [ValueError(f"bad {i}") if i % 5 == 0 else i * 10 for i in items]

    batcher = MicroBatcher(run, max_batch=4, window_s=0.05)
    results = _concurrently(batcher.submit, list(range(1, 11)))
    assert [r if not isinstance(r, Exception) else str(r) for r in results] == \
        [10, 20, 30, 40, "bad 5", 60, 70, 80, 90, "bad 10"]
    assert max(sizes) == 4 and sum(sizes) == 10 and len(sizes) < 10  # really batched, never above the cap


def test_a_failing_batch_fails_its_callers_only():
    calls = []

    def run(items):
        calls.append(list(items))
        if "boom" in items:
            raise RuntimeError("model call failed")
        return list(items)

    batcher = MicroBatcher(run, max_batch=1, window_s=0)
    results = _concurrently(batcher.submit, ["a", "boom", "b"])
    assert results[0] == "a" and results[2] == "b" and isinstance(results[1], RuntimeError)
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(run, max_batch=0)


def _payloads(request_payload: dict) -> list[dict]:
    base = request_payload
    longer = {**base, "messages": base["messages"] + [
        {"role": "assistant", "content": "Here is the recap of the ACME meeting."},
        {"role": "user", "content": "Good, now prepare a price quote for 40 seats."}], "current_task": "meeting_recap"}
    other_list = {**base, "tasks": base["tasks"][:2] + [{"name": "book_a_flight", "description": "Book a flight"}]}
    shared = {**base, "tasks": [{"name": n} for n in ("reserve_car", "reserve_hotel", "reserve_restaurant", "ride")]}
    shared_longer = {**longer, "tasks": shared["tasks"], "current_task": "reserve_hotel"}
    return [base, longer, other_list, shared, shared_longer, {**longer, "strategy": "few_shot_cot"},
            {**base, "decoding": "free"}, {**base, "adapter": "missing"}]


def test_a_batch_answers_exactly_as_one_request_at_a_time(tiny_dir, request_payload):
    payloads = _payloads(request_payload)
    alone = Router(load_model(str(tiny_dir)), max_batch=1, batch_window_ms=0)
    alone.route(parse_request(payloads[0]))  # warm prefix: the batch below mixes cached and cold prompts
    expected = []
    for p in payloads:
        try:
            expected.append(alone.route(parse_request(p)))
        except RequestError as exc:
            expected.append(exc)
    batched = Router(load_model(str(tiny_dir)), max_batch=8, batch_window_ms=300)
    assert batched.engine.attention == "blocks"  # one sdpa call per request
    batched.route(parse_request(payloads[0]))
    before = batched.batcher.batches
    got = _concurrently(lambda p: batched.route(parse_request(p)), payloads)
    assert batched.batcher.batches - before <= 2  # the seven valid requests share (nearly) one batch
    tries = [batched._trie([t["name"] for t in p["tasks"]] + ["none"]) for p in payloads]
    assert sum(bool(t.internal) for t in tries) >= 2  # names sharing tokens: their tries go through the model too
    for a, b in zip(expected, got):
        if isinstance(a, RequestError):
            assert isinstance(b, RequestError) and b.status == 404  # refused before batching, alone
            continue
        assert (b.task, b.event, b.strategy, b.raw) == (a.task, a.event, a.strategy, a.raw)
        for x, y in zip(a.candidates, b.candidates):
            assert x.task == y.task and x.p == pytest.approx(y.p, abs=1e-4)


def test_a_request_whose_names_tokenize_alike_is_refused_alone_and_its_batch_answers(tiny_dir, request_payload):
    router = Router(load_model(str(tiny_dir)), max_batch=8, batch_window_ms=300)
    poisoned = {**request_payload, "tasks": [{"name": "a b"}, {"name": "a\u2581b"}]}
    payloads = [request_payload] * 3 + [poisoned] + [request_payload] * 3
    expected = router.route(parse_request(request_payload))
    got = _concurrently(lambda p: router.route(parse_request(p)), payloads)
    refused = got.pop(3)
    assert isinstance(refused, RequestError) and refused.status == 400 and refused.message.startswith("tasks:")
    assert all(not isinstance(a, Exception) and a.task == expected.task for a in got)


def test_a_fault_inside_a_batch_fails_only_the_request_that_caused_it(tiny_dir, request_payload, monkeypatch):
    from taskrouter import engine

    real = engine.name_distribution

    def fragile(model, trie, hidden):
        if "poison" in trie.names:
            raise RuntimeError("poisoned trie")
        return real(model, trie, hidden)

    monkeypatch.setattr(engine, "name_distribution", fragile)
    router = Router(load_model(str(tiny_dir)), max_batch=8, batch_window_ms=300)
    poisoned = {**request_payload, "tasks": request_payload["tasks"] + [{"name": "poison"}]}
    expected = router.route(parse_request(request_payload))
    before = router.batcher.batches
    got = _concurrently(lambda p: router.route(parse_request(p)), [request_payload] * 3 + [poisoned] * 2)
    assert router.batcher.batches - before <= 2  # they did share a batch
    assert all(isinstance(a, RuntimeError) for a in got[3:])
    for answer in got[:3]:
        assert answer.task == expected.task
        assert [c.p for c in answer.candidates] == pytest.approx([c.p for c in expected.candidates], abs=1e-4)
