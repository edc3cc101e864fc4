import pytest

from taskrouter.events import event_for
from taskrouter.schema import Limits, RequestError, parse_request


def _err(payload, limits=None) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(payload, limits)
    return info.value


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda p: p.update(messages=[]), "messages"),
        (lambda p: p["messages"].append({"role": "assistant", "content": "ok"}), "messages"),
        (lambda p: p["messages"].__setitem__(0, {"role": "system", "content": "x"}), "messages[0].role"),
        (lambda p: p["messages"].__setitem__(0, {"role": "user", "content": 3}), "messages[0].content"),
        (lambda p: p["tasks"].append({"name": "meeting_recap"}), "tasks"),
        (lambda p: p["tasks"].append({"name": "none"}), "tasks[3].name"),
        (lambda p: p["tasks"].append({"name": "NONE "}), "tasks[3].name"),
        (lambda p: p["tasks"].append({"name": ""}), "tasks[3].name"),
        (lambda p: p["tasks"].append({"name": "  "}), "tasks[3].name"),
        (lambda p: p.update(current_task="unknown_task"), "current_task"),
        (lambda p: p.update(strategy="magic"), "strategy"),
        (lambda p: p.update(top_k=0), "top_k"),
        (lambda p: p.update(top_k="3"), "top_k"),
        (lambda p: p.update(extra_field=1), "extra_field"),
        (lambda p: p.pop("tasks"), "tasks"),
    ],
)
def test_each_violation_names_its_field(request_payload, mutate, field):
    mutate(request_payload)
    err = _err(request_payload)
    assert err.status == 400 and err.code == "invalid_field"
    assert err.message.startswith(field + ":"), err.message


def test_limits_answer_413_naming_the_field(request_payload):
    limits = Limits(max_messages=2, max_tasks=2, max_text_bytes=100)
    err = _err(request_payload, limits)
    assert err.status == 413 and err.message.startswith("tasks:")
    request_payload["tasks"] = request_payload["tasks"][:2]
    request_payload["messages"][0]["content"] = "é" * 60
    assert _err(request_payload, limits).message.startswith("messages:")
    request_payload["messages"] = [{"role": "user", "content": "hi"}] * 3
    assert _err(request_payload, limits).message.startswith("messages:")


def test_limits_from_env(monkeypatch):
    monkeypatch.setenv("TASKROUTER_MAX_TASKS", "7")
    assert Limits.from_env().max_tasks == 7


def test_not_an_object():
    assert _err([1, 2]).code == "invalid_request"


def test_valid_request_parses(request_payload):
    request_payload.update(current_task="follow_up_email", top_k=2, strategy="react")
    req = parse_request(request_payload)
    assert req.task_names == ["meeting_recap", "follow_up_email", "prepare_a_quote"]
    assert req.current_task == "follow_up_email" and req.top_k == 2


@pytest.mark.parametrize("prev, task, event", [
    (None, None, "none"), (None, "a", "start"), ("a", "a", "continue"), ("a", "b", "switch"), ("a", None, "end")])
def test_event_table(prev, task, event):
    assert event_for(prev, task) == event
