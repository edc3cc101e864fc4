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
        (lambda p: p["messages"].__setitem__(0, {"role": "robot", "content": "x"}), "messages[0].role"),
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


def test_limits_from_settings(monkeypatch):
    from taskrouter import settings

    monkeypatch.setenv("TASKROUTER_MAX_TASKS", "7")
    assert Limits.from_settings(settings.load()).max_tasks == 7


def test_not_an_object():
    assert _err([1, 2]).code == "invalid_request"


def test_valid_request_parses(request_payload):
    request_payload.update(current_task="follow_up_email", top_k=2, strategy="react")
    req = parse_request(request_payload)
    assert req.task_names == ["meeting_recap", "follow_up_email", "prepare_a_quote"]
    assert req.current_task == "follow_up_email" and req.top_k == 2
    assert parse_request(dict(request_payload, top_k=2.0)).top_k == 2  # JSON Schema's integer includes 2.0
    assert _err(dict(request_payload, top_k=2.5)).message.startswith("top_k:")


@pytest.mark.parametrize("prev, task, event", [
    (None, None, "none"), (None, "a", "start"), ("a", "a", "continue"), ("a", "b", "switch"), ("a", None, "end")])
def test_event_table(prev, task, event):
    assert event_for(prev, task) == event


@pytest.mark.parametrize("name", ["\u200b", "none\u200b", "\uff4e\uff4f\uff4e\uff45", "\ufeffNone", "no\u00adne"])
def test_reserved_and_blank_names_are_judged_after_normalisation(request_payload, name):
    request_payload["tasks"].append({"name": name})
    err = _err(request_payload)
    assert err.status == 400 and err.message.startswith("tasks[3].name:"), err.message


def test_names_equal_after_normalisation_are_duplicates(request_payload):
    request_payload["tasks"].append({"name": "meeting\u200b_recap"})
    assert _err(request_payload).message.startswith("tasks:")
    request_payload["tasks"][-1] = {"name": "\uff4d\uff45\uff45\uff54\uff49\uff4e\uff47_recap"}  # fullwidth
    assert _err(request_payload).message.startswith("tasks:")


def test_current_task_none_means_no_current_task(request_payload):
    assert parse_request(dict(request_payload, current_task="none")).current_task is None


def test_current_task_matches_a_listed_name_after_normalisation(request_payload):
    req = parse_request(dict(request_payload, current_task="meeting_recap\u200b"))
    assert req.current_task == "meeting_recap"


def test_openai_messages_read_user_and_assistant_text_and_say_what_was_ignored(request_payload):
    request_payload["messages"] = [
        {"role": "system", "content": "You are a helpful sales agent."},
        {"role": "user", "content": [{"type": "text", "text": "Recap the ACME meeting"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "crm", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"deal\": 42}"},
        {"role": "assistant", "content": [{"type": "text", "text": "Here is the recap."}]},
        {"role": "user", "content": "now a follow-up email", "name": "dana"},
    ]
    req = parse_request(request_payload)
    assert [(m.role, m.content) for m in req.messages] == [
        ("user", "Recap the ACME meeting"), ("assistant", "Here is the recap."), ("user", "now a follow-up email")]
    assert req.ignored == ["messages[0] (system)", "messages[1].content[1] (image_url)",
                           "messages[2] (assistant tool call)", "messages[3] (tool)"]


def test_openai_tools_are_tasks(request_payload):
    tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                               "parameters": {"type": "object", "properties": {}}}}
             for t in request_payload.pop("tasks")]
    req = parse_request(dict(request_payload, tools=tools, current_task="follow_up_email"))
    assert req.task_names == ["meeting_recap", "follow_up_email", "prepare_a_quote"]
    assert req.tasks[0].description == tools[0]["function"]["description"] and req.current_task == "follow_up_email"
    assert "tools[0].function.parameters" in req.ignored
    assert _err(dict(request_payload, tools=tools, tasks=[])).message.startswith("tools:")
    tools.append({"type": "function", "function": {"name": "none"}})
    assert _err(dict(request_payload, tools=tools)).message.startswith("tools[3].function.name:")


@pytest.mark.parametrize("message, field", [
    ({"role": "user", "content": [{"type": "text"}]}, "messages[0].content[0]: text"),
    ({"role": "user"}, "messages[0].content"),
    ({"role": "robot", "content": "x"}, "messages[0].role"),
])
def test_malformed_openai_messages_name_their_field(request_payload, message, field):
    request_payload["messages"] = [message]
    assert _err(request_payload).message.startswith(field), _err(request_payload).message


@pytest.mark.parametrize("tools", [[[None, None]], [None], ["x"], [{"function": ["x"]}]])
def test_malformed_tools_are_400(request_payload, tools):
    request_payload.pop("tasks")
    assert _err(dict(request_payload, tools=tools)).status == 400
