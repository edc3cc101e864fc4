"""Hosted (OpenAI-compatible) eval configs against a scripted loopback server: prompt text, constraint
detection, reading replies, retries, errors, usage and cost, and one report beside an in-process config.

The scripted server only checks what this code sends and reads; the real llama.cpp server is in
tests/test_eval_llamacpp.py.
"""
import json
import time

import pytest

from taskrouter.cli import main
from taskrouter.evaluation.configs import parse_inline
from taskrouter.evaluation.hosted import HostedRouter, chat_messages, gbnf, read_answer, usage_summary
from taskrouter.prompts import build_prompt
from taskrouter.schema import Message, Task, parse_request
from taskrouter.training.chat_client import ChatClient, ChatError
from records import TASKS, conversation
from scripted_chat import ScriptedChat

NAMES = [t["name"] for t in TASKS] + ["none"]


@pytest.fixture
def scripted():
    servers = []

    def start(answer):
        servers.append(ScriptedChat(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def completion(text: str, prompt_tokens: int = 100, completion_tokens: int = 5):
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}


def grammar_server(body):
    """A llama.cpp-like server: honours `grammar` (answers its first name), refuses json_schema with 422."""
    if body.get("response_format", {}).get("type") == "json_schema":
        return 422, {"detail": "response_format.type: Input should be 'text' or 'json_object'"}
    if "grammar" in body:
        first = body["grammar"].split("answer ::= ")[1].split(" | ")[0].strip('"\n')
        return completion(first)
    return completion("Hello! How can I help?")


def schema_server(body):
    """An OpenAI-like server: refuses unknown `grammar` with 400, honours json_schema with its first enum value."""
    if "grammar" in body:
        return 400, {"error": {"message": "Unrecognized request argument supplied: grammar"}}
    if "response_format" in body:
        enum = body["response_format"]["json_schema"]["schema"]["properties"]["task"]["enum"]
        return completion(json.dumps({"task": enum[0]}))
    return completion("Hello!")


def request(current=None, text="Please write a recap of the meeting with ACME."):
    return parse_request({"messages": [{"role": "user", "content": text}], "tasks": TASKS, "current_task": current})


def hosted(url: str, **fields) -> "HostedRouter":
    spec = ",".join(f"{k}={v}" for k, v in {"kind": "openai", "base_url": url, "model": "m", **fields}.items())
    router = HostedRouter(parse_inline("h:" + spec))
    router.client.backoff = 0.01
    return router


@pytest.mark.parametrize("strategy", ["zero_shot", "few_shot_cot", "react", "adapter"])
def test_chat_messages_carry_the_in_process_prompt_text_unchanged(strategy):
    prompt = build_prompt(strategy, [Task(**t) for t in TASKS],
                          [Message(role="user", content="Recap the  ACME call"),
                           Message(role="assistant", content="Ok"),
                           Message(role="user", content="Thanks, that's all")], "meeting_recap")
    messages = chat_messages(prompt)
    assert messages == [{"role": "user", "content": "".join(prompt.segments)}]
    assert "- none: no task fits\nConversation:\nUser: Recap the ACME call\n" in messages[0]["content"]


def test_read_answer_follows_the_study_rule():
    assert read_answer("meeting_recap", "zero_shot", NAMES, None) == "meeting_recap"
    assert read_answer(" Task: follow_up_email\nmore", "zero_shot", NAMES, None) == "follow_up_email"
    assert read_answer("`none`.", "zero_shot", NAMES, None) == "none"
    assert read_answer("**meeting_recap**", "zero_shot", NAMES, None) is None  # the study's rule, not a lenient one
    assert read_answer("The user wants a recap.", "zero_shot", NAMES, None) is None
    assert read_answer("", "adapter", NAMES, None) is None
    assert read_answer(" The user asks for a quote.\nTask: prepare_a_quote", "few_shot_cot", NAMES, "grammar") \
        == "prepare_a_quote"
    assert read_answer("A quote.\nAction: answer\nTask: prepare_a_quote", "react", NAMES, None) == "prepare_a_quote"
    assert read_answer("prepare_a_quote", "few_shot_cot", NAMES, None) is None  # no answer line after reasoning
    assert read_answer('{"task": "meeting_recap"}', "zero_shot", NAMES, "json_schema") == "meeting_recap"
    assert read_answer('{"task": "write_a_poem"}', "zero_shot", NAMES, "json_schema") is None
    assert read_answer('{"task": "meeting', "zero_shot", NAMES, "json_schema") is None  # cut by max_tokens


def test_a_grammar_reply_is_read_exactly():  # the study's free-text rule would strip a name's closing quote
    names = ['say "hi"', "ask.", "none"]
    assert read_answer(' say "hi"', "zero_shot", names, "grammar") == 'say "hi"'
    assert read_answer("ask.", "adapter", names, "grammar") == "ask."
    assert read_answer('Greets.\nAction: answer\nTask: say "hi"', "react", names, "grammar") == 'say "hi"'
    assert read_answer("say", "zero_shot", names, "grammar") is None  # cut short by max_tokens


def test_grammar_escapes_names_and_bounds_the_reasoning_line():
    names = ['say "hi"', "back\\slash", "none"]
    direct = gbnf("zero_shot", names)
    assert direct == 'root ::= " "? answer\nanswer ::= "say \\"hi\\"" | "back\\\\slash" | "none"\n'
    assert gbnf("react", names).startswith('root ::= [^\\n]{1,192} "\\nAction: answer\\nTask: " answer\n')


def test_auto_detects_grammar_and_reads_grammar_answers(scripted):
    server = scripted(grammar_server)
    router = hosted(server.url)
    answer = router.route(request())
    assert (answer.task, answer.valid, answer.event) == ("meeting_recap", True, "start")
    assert answer.hosted == {"constraint": "grammar", "retries": 0, "prompt_tokens": 100, "completion_tokens": 5}
    probes, routed = server.requests[:-1], server.requests[-1]["body"]
    assert len(probes) == 1 and "taskrouter_probe" in probes[0]["body"]["grammar"]  # grammar is tried first
    assert routed["temperature"] == 0 and routed["model"] == "m" and routed["max_tokens"] == 64
    assert routed["grammar"] == gbnf("zero_shot", NAMES)
    assert routed["messages"][0]["content"].endswith("Current task: none\nTask:")
    router.route(request())
    assert len(server.requests) == 3  # detected once


def test_auto_falls_back_to_json_schema_then_to_free_text(scripted):
    server = scripted(schema_server)
    answer = hosted(server.url, strategy="few_shot_cot").route(request())
    assert answer.hosted["constraint"] == "json_schema" and answer.task == "meeting_recap"
    schema = server.requests[-1]["body"]["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]) == ["reasoning", "task"] and schema["properties"]["task"]["enum"] == NAMES
    assert server.requests[-1]["body"]["max_tokens"] == 192
    ignoring = scripted(lambda body: completion("Hello! Sure."))
    router = hosted(ignoring.url)
    answer = router.route(request())
    assert (answer.task, answer.valid, answer.hosted["constraint"]) == ("none", False, "none")
    assert len(ignoring.requests) == 3  # two probes, then free text without constraint fields
    assert ignoring.requests[-1]["body"]["max_tokens"] == 16  # as many tokens as in-process free decoding
    assert "grammar" not in ignoring.requests[-1]["body"] and "response_format" not in ignoring.requests[-1]["body"]


def test_a_constraint_refused_with_500_is_not_retried(scripted, capsys):
    def refusing(body):  # llama-cpp-python answers an unknown response_format type with 500
        if "response_format" in body:
            return 500, {"error": {"message": "Input should be 'text' or 'json_object'"}}
        return completion("Hi there")

    server = scripted(refusing)
    router = hosted(server.url)
    router.client.backoff = 5.0  # a retried 500 would take this long
    started = time.monotonic()
    assert router.constraint() is None and time.monotonic() - started < 4
    assert len(server.requests) == 2
    assert "config h: the endpoint refused json_schema (HTTP 500)" in capsys.readouterr().err


def test_free_decoding_never_probes_and_extra_body_overrides(scripted):
    server = scripted(lambda body: completion("Task: prepare_a_quote"))
    router = HostedRouter(parse_inline(f"h:kind=openai,base_url={server.url},model=m,decoding=free"))
    router.config = router.config.model_copy(update={"extra_body": {"max_tokens": None, "max_completion_tokens": 99,
                                                                    "seed": 1}})
    answer = router.route(request("meeting_recap"))
    assert (answer.task, answer.event, answer.hosted["constraint"]) == ("prepare_a_quote", "switch", "none")
    body = server.requests[0]["body"]
    assert len(server.requests) == 1 and "max_tokens" not in body and body["max_completion_tokens"] == 99
    assert body["seed"] == 1


def test_rate_limits_are_retried_after_retry_after_and_counted(scripted):
    calls = []

    def limited(body):
        calls.append(time.monotonic())
        if len(calls) <= 2:
            return 429, {"error": {"message": "rate limited"}}, {"Retry-After": "0.3"}
        return completion("meeting_recap")

    server = scripted(limited)
    answer = hosted(server.url, constraint="grammar").route(request())
    assert answer.task == "meeting_recap" and answer.hosted["retries"] == 2
    assert calls[1] - calls[0] >= 0.3 and calls[2] - calls[1] >= 0.3  # waited as asked, not the 0.01 s backoff
    down = ChatClient(scripted(lambda body: (503, {"error": "busy"})).url, max_retries=1, backoff=0.01)
    with pytest.raises(ChatError, match="gave up after 1 retries: HTTP 503"):
        down.chat({"messages": []})


def test_refused_request_stops_the_run_with_the_config_named(scripted):
    server = scripted(lambda body: (401, {"error": {"message": "Incorrect API key"}}))
    with pytest.raises(RuntimeError, match="config h: .*HTTP 401.*Incorrect API key"):
        hosted(server.url, constraint="json_schema").route(request())
    filtered = scripted(lambda body: (400, {"error": {"code": "content_filter", "message": "filtered"}}))
    answer = hosted(filtered.url, constraint="json_schema").route(request())  # a filtered prompt: an invalid output
    assert (answer.task, answer.valid) == ("none", False)


def test_api_key_comes_from_the_named_variable(scripted, monkeypatch):
    server = scripted(grammar_server)
    with pytest.raises(ValueError, match="config h: api_key_env H22_TEST_KEY is not set"):
        hosted(server.url, api_key_env="H22_TEST_KEY")
    monkeypatch.setenv("H22_TEST_KEY", "sk-test")
    hosted(server.url, api_key_env="H22_TEST_KEY", constraint="grammar").route(request())
    assert server.requests[-1]["auth"] == "Bearer sk-test"


def test_config_fields_are_checked_per_kind():
    for spec, message in [("h:kind=openai,model=m", "field 'base_url': an openai config needs"),
                          ("h:kind=openai,base_url=http://x/v1", "field 'model': an openai config needs"),
                          ("h:kind=openai,base_url=http://x/v1,model=m,adapter=a", "field 'adapter': not a field"),
                          ("h:base_url=http://x/v1", "field 'base_url': not a field of a kind llm config"),
                          ("h:kind=openai,base_url=http://x/v1,model=m,price_input=1", "field 'price_output': give"),
                          ("h:kind=openai,base_url=http://x/v1,model=m,constraint=regex", "field 'constraint'")]:
        with pytest.raises(ValueError, match=message):
            parse_inline(spec)
    config = parse_inline("h:kind=openai,base_url=http://x/v1,model=m,price_input=0.5,price_output=1.5,api_key_env=K")
    assert "price_input" not in config.definition() and "api_key_env" not in config.definition()
    assert "base_url" not in parse_inline("l:strategy=react").definition()  # in-process definitions are unchanged


def test_usage_summary_and_cost_per_thousand_turns():
    config = parse_inline("h:kind=openai,base_url=http://x/v1,model=m,price_input=0.5,price_output=2")
    rows = [{"hosted": {"constraint": "grammar", "retries": 1, "prompt_tokens": 600, "completion_tokens": 4}},
            {"hosted": {"constraint": "grammar", "retries": 0, "prompt_tokens": 400, "completion_tokens": 6}}]
    summary = usage_summary(rows, config)
    # 1,000 turns of 500 prompt and 5 completion tokens: 0.5 M x 0.5 + 0.005 M x 2 = 0.26
    assert summary["cost_per_1000_turns"] == pytest.approx(0.26)
    assert summary["constraint"] == {"grammar": 2} and summary["retries"] == 1
    rows.append({"hosted": {"constraint": "none"}})  # a server that reports no usage: no made-up cost
    assert usage_summary(rows, config)["cost_per_1000_turns"] is None
    assert usage_summary(rows[:2], config.model_copy(update={"price_input": None, "price_output": None})
                         )["cost_per_1000_turns"] is None


def test_one_report_puts_in_process_and_hosted_rows_side_by_side(tiny_dir, scripted, tmp_path, capsys):
    bench = tmp_path / "mini.jsonl"
    convs = [conversation("c1", [("Write a recap of the ACME meeting.", "meeting_recap"),
                                 ("Thanks, that's all.", None)]),
             conversation("c2", [("Send a follow-up email to Dana.", "follow_up_email")])]
    bench.write_text("".join(json.dumps(c) + "\n" for c in convs))
    server = scripted(grammar_server)  # always answers meeting_recap
    configs = tmp_path / "configs.yaml"
    configs.write_text(f"configs:\n  hosted:\n    kind: openai\n    base_url: {server.url}\n    model: m\n"
                       "    price_input: 0.5\n    price_output: 2.0\n")
    out = tmp_path / "run"
    main(["eval", "--bench", str(bench), "--configs", str(configs), "--config", f"tiny:model={tiny_dir}",
          "--config", "hosted", "--out", str(out)])
    assert "6 turns routed" in capsys.readouterr().out
    preds = [json.loads(x) for x in (out / "predictions-hosted-mini.jsonl").read_text().splitlines()]
    assert [p["task"] for p in preds] == ["meeting_recap", "meeting_recap", "meeting_recap"]
    assert [p["event"] for p in preds] == ["start", "continue", "start"]
    assert all(p["hosted"]["constraint"] == "grammar" and p["latency_ms"] > 0 for p in preds)
    results = json.loads((out / "metrics.json").read_text())["results"]["mini"]
    assert results["hosted"]["task_accuracy"] == pytest.approx(1 / 3) and results["hosted"]["invalid"] == 0
    assert results["hosted"]["hosted"]["cost_per_1000_turns"] == pytest.approx(0.06)  # 100 in, 5 out a turn
    assert "hosted" not in results["tiny"]
    report = (out / "report.md").read_text()
    assert "| tiny | 3 |" in report and "| hosted | 3 | 0.333 |" in report
    assert "| hosted | grammar | 0 | 100.0 | 5.0 | 0.0600 |" in report
    assert "openai configs through their own endpoints" in report


def test_tune_refuses_a_hosted_config(tmp_path):
    with pytest.raises(SystemExit, match="--config h: --tune sets an adapter's none bias"):
        main(["eval", "--tune", "--bench", str(tmp_path / "train.jsonl"),
              "--config", "h:kind=openai,base_url=http://127.0.0.1:9/v1,model=m"])
