"""`taskrouter data generate` against a fake OpenAI-compatible server: rejects, retries, resume."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from taskrouter.training import data_cli
from taskrouter.training.generate import generate, plan_for
from taskrouter.training.records import BenchRecord
from taskrouter.training.teacher import FatalTeacherError, LocalTeacher, OpenAITeacher
from scripted_chat import ScriptedChat

TASKS = [
    {"name": "meeting_recap", "description": "Write a recap of a meeting"},
    {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"},
    {"name": "prepare_a_quote", "description": "Prepare a price quote"},
]


def good_reply(prompt: str, marker: str = "ok") -> dict:
    """A conversation that follows the PLAN line of the teacher prompt, labelled correctly."""
    phases = json.loads(re.search(r"PLAN: (.*)", prompt).group(1))["tasks_in_order"]
    turns = max(int(re.search(r"exactly (\d+) user messages", prompt).group(1)), len(phases))
    tasks = [phases[0]] * (turns - len(phases) + 1) + phases[1:]
    messages, labels, previous = [], [], None
    for k, task in enumerate(tasks):
        if k:
            messages.append({"role": "assistant", "content": f"assistant reply {k} ({marker})"})
        labels.append({"turn": len(messages), "task": task,
                       "event": "none" if previous is None and task is None else
                       "start" if previous is None else "end" if task is None else
                       "continue" if task == previous else "switch"})
        messages.append({"role": "user", "content": f"user message {k} about {task} ({marker})"})
        previous = task
    return {"messages": messages, "labels": labels}


def malformed(kind: str, prompt: str) -> str:
    reply = good_reply(prompt, marker="MALFORMED")
    if kind == "bad_json":
        return "Sure! Here it is: {\"messages\": [MALFORMED"
    if kind == "wrong_roles":
        reply["messages"][0]["role"] = "system"
    elif kind == "unknown_task":
        reply["labels"][0]["task"] = "fly_to_mars"
    elif kind == "inconsistent":
        reply["labels"][0]["event"] = "continue"
    elif kind == "last_not_user":
        reply["messages"].append({"role": "assistant", "content": "MALFORMED trailing answer"})
    elif kind == "fence":
        return "Here you go:\n```json\n" + json.dumps(good_reply(prompt, marker="fenced")) + "\n```\nEnjoy!"
    return json.dumps(reply)


class FakeTeacher(ScriptedChat):
    """A /v1/chat/completions server; `script` lists what to answer, then all good."""

    def __init__(self, script: list = ()):
        self.script = list(script)
        super().__init__(self._answer)

    def _answer(self, body: dict) -> tuple:
        with self.lock:
            step = self.script.pop(0) if self.script else "good"
        prompt = body["messages"][-1]["content"]
        if step == "slow":
            time.sleep(1.0)
            step = "good"
        if isinstance(step, int):
            return step, {"error": {"message": f"status {step}"}}
        content = json.dumps(good_reply(prompt, f"seed {body['seed']}")) if step == "good" else malformed(step, prompt)
        return 200, {"choices": [{"message": {"role": "assistant", "content": content}}]}


@pytest.fixture
def fake():
    servers = []

    def start(script=()):
        servers.append(FakeTeacher(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def teacher_for(server: FakeTeacher, **kw) -> OpenAITeacher:
    return OpenAITeacher(server.url, "fake-model", backoff=0.01, **({"timeout": 5.0} | kw))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rejects_are_counted_never_written_and_retries_happen(fake, tmp_path):
    server = fake(["slow", 429, "good", "bad_json", 500, "wrong_roles", "good",
                   "unknown_task", "inconsistent", "last_not_user", "fence"])
    out = tmp_path / "synth.jsonl"
    summary = generate(TASKS, teacher_for(server, timeout=0.5), out, 4, max_attempts=3, progress=False)

    assert summary.written == 4 and summary.existing == 0
    assert summary.retries == 3  # timeout, 429, 500
    assert dict(summary.rejected) == {"bad_json": 1, "bad_roles": 1, "unknown_task": 1,
                                      "inconsistent_events": 1, "last_not_user": 1}
    records = lines(out)
    # slot 2 used its 3 attempts on malformed replies: it is skipped, never written
    assert [r["id"] for r in records] == ["synth-00000", "synth-00001", "synth-00003", "synth-00004"]
    assert "MALFORMED" not in out.read_text()
    assert "fenced" in out.read_text()
    for index, record in zip((0, 1, 3, 4), records):
        BenchRecord.model_validate(record)
        phases = plan_for(index, 0, TASKS).phases
        sequence = [label["task"] for label in record["labels"]]
        assert sequence[0] == phases[0] and sequence[-1] == phases[-1]
        assert record["source"] == "synthetic/fake-model" and record["tasks"] == TASKS
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert server.requests[0]["body"]["model"] == "fake-model"


def test_resume_continues_without_duplicates(fake, tmp_path):
    server, out = fake(), tmp_path / "synth.jsonl"
    generate(TASKS, teacher_for(server), out, 3, seed=7, progress=False)
    first = out.read_text()
    with open(out, "a") as f:
        f.write('{"id": "synth-0000')  # a crash in the middle of a write
    sent = len(server.requests)

    summary = generate(TASKS, teacher_for(server), out, 5, seed=7, progress=False)
    assert summary.existing == 3 and summary.written == 2 and summary.dropped == 1
    assert len(server.requests) - sent == 2
    text = out.read_text()
    assert text.startswith(first)
    ids = [r["id"] for r in lines(out)]
    assert ids == [f"synth-{i:05d}" for i in range(5)]

    again = generate(TASKS, teacher_for(server), out, 5, seed=7, progress=False)
    assert again.written == 0 and len(server.requests) - sent == 2 and out.read_text() == text


def test_same_seed_same_prompts(fake, tmp_path):
    server = fake()
    generate(TASKS, teacher_for(server), tmp_path / "a.jsonl", 3, seed=3, progress=False)
    generate(TASKS, teacher_for(server), tmp_path / "b.jsonl", 3, seed=3, progress=False)
    bodies = [r["body"] for r in server.requests]
    assert bodies[:3] == bodies[3:]
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_persistent_server_errors_stop_the_run(fake, tmp_path):
    server, out = fake([500] * 100), tmp_path / "synth.jsonl"
    summary = generate(TASKS, teacher_for(server, max_retries=2), out, 5, max_attempts=1, max_rejects=2,
                       progress=False)
    assert summary.written == 0 and summary.rejected["teacher_error"] == 3
    assert summary.retries == 6 and summary.stopped
    assert out.read_text() == ""


def test_cli_summary_api_key_and_fatal_errors(fake, tmp_path, monkeypatch, capsys):
    server = fake([429, "bad_json"])
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps({"tasks": TASKS}))
    out = tmp_path / "synth.jsonl"
    monkeypatch.setenv("MY_TEACHER_KEY", "sekret")
    data_cli.main(["generate", "--tasks", str(tasks), "--n", "3", "--teacher", server.url, "--model", "m",
                   "--api-key-env", "MY_TEACHER_KEY", "--out", str(out), "--backoff", "0.01", "--workers", "2"])
    printed = capsys.readouterr().out
    assert "written: 3" in printed and "bad_json: 1" in printed and "retries: 1" in printed
    assert all(r["auth"] == "Bearer sekret" for r in server.requests)
    assert len({r["id"] for r in lines(out)}) == 3

    sent = len(server.requests)
    data_cli.main(["generate", "--tasks", str(tasks), "--teacher", server.url, "--out", str(out), "--show-prompt"])
    assert "PLAN: " in capsys.readouterr().out and len(server.requests) == sent
    data_cli.main(["generate", "--tasks", str(tasks), "--teacher", server.url, "--out", str(out), "--show-prompt",
                   "--mix", "switch=1"])
    assert "moves on to task" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--mix: unknown situation 'swich'"):
        data_cli.main(["generate", "--tasks", str(tasks), "--teacher", server.url, "--out", str(out),
                       "--mix", "swich=1"])
    with pytest.raises(SystemExit, match="--model: required"):
        data_cli.main(["generate", "--tasks", str(tasks), "--teacher", server.url, "--out", str(out)])
    bad_tasks = tmp_path / "bad.json"
    bad_tasks.write_text(json.dumps([{"name": "none", "description": "x"}]))
    with pytest.raises(SystemExit, match=r"--tasks .*\[0\]\.name"):
        data_cli.main(["generate", "--tasks", str(bad_tasks), "--teacher", server.url, "--model", "m",
                       "--out", str(out)])
    denied = fake([401])
    with pytest.raises(FatalTeacherError, match="HTTP 401"):
        teacher_for(denied).complete([{"role": "user", "content": "hi"}], seed=0)


def test_local_transformers_teacher(tiny_dir, tmp_path):
    teacher = LocalTeacher(str(tiny_dir), max_new_tokens=8)
    reply = teacher.complete([{"role": "user", "content": "Write a conversation."}], seed=1)
    assert isinstance(reply, str)
    teacher.tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                                       "{% if add_generation_prompt %}assistant:{% endif %}")
    assert isinstance(teacher.complete([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Hi"}], seed=2), str)
    summary = generate(TASKS, teacher, tmp_path / "local.jsonl", 2, max_attempts=1, max_rejects=1, progress=False)
    assert summary.written == 0 and summary.rejected["bad_json"] == 2 and summary.stopped


class RepeatingTeacher:
    """A teacher stub that writes the same text for the same plan: its repeats must be rejected."""

    name, retries = "repeater", 0

    def complete(self, messages: list[dict], seed: int) -> str:
        return json.dumps(good_reply(messages[-1]["content"], "same"))


def test_repeated_conversations_are_rejected(tmp_path):
    out = tmp_path / "synth.jsonl"
    summary = generate(TASKS[:1], RepeatingTeacher(), out, 6, max_attempts=1, max_rejects=100, progress=False)
    assert summary.written == 6 and summary.rejected["duplicate"] >= 1
    texts = [json.dumps(r["messages"]) for r in lines(out)]
    assert len(set(texts)) == 6
