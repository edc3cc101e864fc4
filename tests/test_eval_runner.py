"""`taskrouter eval` end to end on the tiny model: files, resumability, closed loop vs teacher forcing, remote modes."""
import argparse
import io
import json
import shlex
import threading

import pytest

from taskrouter.cli import main
from taskrouter.evaluation.backends import HttpRouter, RouterPool, SageMakerRouter
from taskrouter.evaluation.benchfile import load_bench
from taskrouter.evaluation.cli import add_arguments, command_line
from taskrouter.evaluation.configs import EvalConfig, parse_inline, read_configs, resolve_configs
from taskrouter.evaluation.runner import PREDICTION_KEYS, read_predictions, route_conversation, run_all
from taskrouter.schema import Candidate, RouteAnswer
from records import conversation


CONVERSATIONS = [
    conversation("c1", [("Write a recap of the ACME meeting.", "meeting_recap"), ("Thanks, that's all.", None)]),
    conversation("c2", [("Send a follow-up email to Dana.", "follow_up_email"),
                        ("Actually, prepare a quote for her first.", "prepare_a_quote")]),
    conversation("c3", [("What's the weather in Lyon?", None)]),
]


@pytest.fixture
def bench_file(tmp_path):
    path = tmp_path / "mini.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    return path


def test_eval_end_to_end_then_resume(tiny_dir, bench_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["eval", "--bench", str(bench_file), "--config", f"tiny:model={tiny_dir}",
            "--config", f"tiny-free:model={tiny_dir},decoding=free", "--out", str(out)]
    main(argv)
    assert "10 turns routed" in capsys.readouterr().out
    for name in ("tiny", "tiny-free"):
        lines = [json.loads(x) for x in (out / f"predictions-{name}-mini.jsonl").read_text().splitlines()]
        assert [(p["id"], p["turn"]) for p in lines] == [("c1", 0), ("c1", 2), ("c2", 0), ("c2", 2), ("c3", 0)]
        assert all(tuple(p) == PREDICTION_KEYS for p in lines)
        gold = {(c["id"], lab["turn"]): lab["task"] for c in CONVERSATIONS for lab in c["labels"]}
        assert all(p["gold"] == gold[(p["id"], p["turn"])] for p in lines)
        if name == "tiny":  # constrained: the answer is the most probable candidate, with its probability
            assert all(p["candidates"][0][0] == (p["task"] or "none") for p in lines)
            assert all(abs(p["candidates"][0][1] - p["confidence"]) <= 1e-4 for p in lines)
        assert all(p["task"] in {None, "meeting_recap", "follow_up_email", "prepare_a_quote"} for p in lines)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["results"]["mini"]["tiny"]["turns"] == 5 and metrics["results"]["mini"]["tiny"]["invalid"] == 0
    report = (out / "report.md").read_text()
    assert "| tiny |" in report and "| tiny-free |" in report and "## mini" in report
    assert "Best config per measure: task accuracy:" in report
    for png in ("latency.png", "invalid.png", "points-tiny-mini.png", "tasks-tiny-free-mini.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    before = {p.name: p.read_text() for p in out.glob("predictions-*")}

    def no_router(self, config):
        raise AssertionError("a resumed run must not route anything")

    monkeypatch.setattr(RouterPool, "get", no_router)
    main(argv)
    assert "0 turns routed" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in out.glob("predictions-*")} == before
    with pytest.raises(SystemExit, match="config 'tiny' changed"):
        main(["eval", "--bench", str(bench_file), "--config", f"tiny:model={tiny_dir},strategy=react", "--out", str(out)])


def test_interrupted_run_recomputes_only_the_partial_conversation(tmp_path):
    conversations = CONVERSATIONS
    path = tmp_path / "p.jsonl"
    full = [{"id": "c1", "turn": 0}, {"id": "c1", "turn": 2}, {"id": "c2", "turn": 0}]
    path.write_text("".join(json.dumps(p) + "\n" for p in full) + '{"id": "c2", "tu')
    done = read_predictions(path, conversations)
    assert list(done) == ["c1"]
    assert len(path.read_text().splitlines()) == 2


class ScriptedRouter:
    """Answers a fixed task sequence and records the current_task of every request."""

    def __init__(self, answers):
        self.answers, self.seen = list(answers), []

    def route(self, request):
        self.seen.append(request.current_task)
        task = self.answers.pop(0)
        return RouteAnswer(task=task, event="none", confidence=1.0, candidates=[Candidate(task=task, p=1.0)],
                           model="m", adapter=None, strategy="zero_shot")


def test_closed_loop_sends_own_previous_answer_teacher_forcing_the_gold():
    conv = conversation("x", [("recap please", "meeting_recap"), ("now a quote", "prepare_a_quote"),
                              ("and the email", "follow_up_email")])
    config = EvalConfig(name="c")
    closed = ScriptedRouter(["follow_up_email", "none", "meeting_recap"])
    preds = route_conversation(closed, conv, config)
    assert closed.seen == [None, "follow_up_email", None]
    assert [p["event"] for p in preds] == ["start", "end", "start"]
    forced = ScriptedRouter(["follow_up_email", "none", "meeting_recap"])
    preds = route_conversation(forced, conv, config, teacher_forcing=True)
    assert forced.seen == [None, "meeting_recap", "prepare_a_quote"]
    assert [p["event"] for p in preds] == ["start", "end", "switch"]


def test_an_answer_outside_the_list_is_invalid_none():
    conv = conversation("x", [("recap please", "meeting_recap")])
    preds = route_conversation(ScriptedRouter(["book_flight"]), conv, EvalConfig(name="c"))
    assert preds[0]["task"] is None and preds[0]["valid"] is False


def test_shipped_configs_and_inline_configs():
    configs = read_configs()
    assert {"base-zero-shot", "base-zero-shot-free", "base-few-shot-cot", "base-react", "adapter", "embedding"} <= set(configs)
    assert configs["base-zero-shot-free"].decoding == "free" and configs["embedding"].kind == "embedding"
    assert parse_inline("x:strategy=react,adapter=none").definition()["strategy"] == "react"
    with pytest.raises(ValueError, match="field 'decoding'"):
        parse_inline("x:decoding=greedy")
    with pytest.raises(ValueError, match="unknown config"):
        resolve_configs(["nope"], configs)


def test_http_endpoint_mode_matches_in_process(tiny_dir, tiny_router, bench_file, tmp_path):
    from werkzeug.serving import make_server

    from taskrouter.serving.app import create_app

    server = make_server("127.0.0.1", 0, create_app(str(tiny_dir), load_async=False), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        bench = load_bench(str(bench_file))
        config = EvalConfig(name="tiny", model=str(tiny_dir))
        remote = run_all([bench], [config], tmp_path / "remote", RouterPool([config], HttpRouter(
            f"http://127.0.0.1:{server.server_port}")), remote="http", progress=False)
    finally:
        server.shutdown()
    local = [route_conversation(tiny_router, conv, config) for conv in bench.conversations]
    tasks = lambda preds: [(p["id"], p["turn"], p["task"], p["event"]) for p in preds]  # noqa: E731
    assert tasks(remote["predictions"][("tiny", "mini")]) == tasks([p for conv in local for p in conv])


def test_sagemaker_endpoint_mode_with_stubber():
    import boto3
    from botocore.response import StreamingBody
    from botocore.stub import ANY, Stubber

    client = boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    answer = {"task": "meeting_recap", "event": "start", "confidence": 0.9,
              "candidates": [{"task": "meeting_recap", "p": 0.9}], "model": "m", "adapter": None,
              "strategy": "zero_shot", "latency_ms": 5.0}
    body = json.dumps(answer).encode()
    with Stubber(client) as stub:
        stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(body), len(body)),
                                              "ContentType": "application/json"},
                          {"EndpointName": "router-ep", "ContentType": "application/json",
                           "Accept": "application/json", "Body": ANY})
        preds = route_conversation(SageMakerRouter("router-ep", client=client),
                                   conversation("s", [("recap", "meeting_recap")]), EvalConfig(name="c"))
        stub.assert_no_pending_responses()
    assert preds[0]["task"] == "meeting_recap" and preds[0]["event"] == "start" and preds[0]["valid"]


def test_missing_adapter_or_model_fails_before_any_work(tiny_dir, bench_file, tmp_path):
    base = ["eval", "--bench", str(bench_file), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match=r"config a: adapter\(s\) nope not found"):
        main(base + ["--config", f"a:model={tiny_dir},adapter=nope,strategy=adapter"])
    with pytest.raises(SystemExit, match="config m: model '/no/such' is not a directory"):
        main(base + ["--config", "m:model=/no/such"])
    assert not list((tmp_path / "o").glob("predictions-*"))


def test_parallel_conversations_give_the_same_predictions(tiny_dir, bench_file, tmp_path):
    bench = load_bench(str(bench_file))
    config = EvalConfig(name="tiny", model=str(tiny_dir))
    one = run_all([bench], [config], tmp_path / "one", RouterPool([config]), progress=False)
    pool = RouterPool([config])
    three = run_all([bench], [config], tmp_path / "three", pool, progress=False, parallel=3)
    tasks = lambda preds: [(p["id"], p["turn"], p["task"], p["event"]) for p in preds]  # noqa: E731
    assert tasks(three["predictions"][("tiny", "mini")]) == tasks(one["predictions"][("tiny", "mini")])
    assert pool.get(config).batcher.items == 5  # every turn went through the router's batcher
    assert (tmp_path / "one" / "predictions-tiny-mini.jsonl").read_text().count("\n") == 5
    with pytest.raises(ValueError, match="--parallel 0"):
        run_all([bench], [config], tmp_path / "zero", pool, progress=False, parallel=0)


def test_the_report_command_reproduces_the_run_and_names_parallelism():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--bench", "b.jsonl@20", "--config", "adapter", "--parallel", "8", "--out", "runs/x"]
    line = command_line(parser.parse_args(argv))
    assert line == "taskrouter eval --bench b.jsonl@20 --config adapter --sample-seed 0 --parallel 8 --out runs/x"
    assert parser.parse_args(shlex.split(line)[2:]) == parser.parse_args(argv)
    assert "--parallel" not in command_line(parser.parse_args(["--bench", "b.jsonl", "--config", "adapter"]))


def test_a_retrained_adapter_is_not_mixed_with_predictions_of_the_old_one(tmp_path):
    adapters = tmp_path / "adapters"
    (adapters / "mine").mkdir(parents=True)
    weights = adapters / "mine" / "adapter_model.safetensors"
    config = EvalConfig(name="mine", adapter="mine", adapters_dir=str(adapters), strategy="adapter")
    weights.write_bytes(b"first training")
    run_all([], [config], tmp_path / "run", pool=None, progress=False)
    run_all([], [config], tmp_path / "run", pool=None, progress=False)  # same weights: resumable
    weights.write_bytes(b"second training")
    with pytest.raises(ValueError, match="config 'mine' changed"):
        run_all([], [config], tmp_path / "run", pool=None, progress=False)


def test_the_report_splits_accuracy_by_trained_names_and_pairs_same_dialogues(tiny_dir, bench_file, tmp_path):
    from tiny import build_adapter

    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps(conversation("t", [("recap", "meeting_recap")],
                                             [{"name": "meeting_recap", "description": "Recap"}])) + "\n")
    adapter = build_adapter(tiny_dir, tmp_path / "adapters" / "mine")
    manifest = json.loads((adapter / "router.json").read_text())
    manifest["train_command"] = f"taskrouter train --data {train} --out x"
    (adapter / "router.json").write_text(json.dumps(manifest))
    shuffled = tmp_path / "shuffled.jsonl"  # the same dialogues, the task list in another order
    shuffled.write_text("".join(json.dumps({**c, "tasks": c["tasks"][::-1]}) + "\n" for c in CONVERSATIONS))
    out = tmp_path / "run"
    main(["eval", "--bench", str(bench_file), "--bench", str(shuffled), "--out", str(out), "--config",
          f"a:model={tiny_dir},adapter=mine,adapters_dir={tmp_path / 'adapters'},strategy=adapter"])
    metrics = json.loads((out / "metrics.json").read_text())
    names = metrics["results"]["mini"]["a"]["names"]
    assert names["seen"]["turns"] == 1 and names["unseen"]["turns"] == 2  # meeting_recap vs the two others
    assert metrics["trained_names"] == {"files": [str(train)], "names": 1, "missing_files": []}
    pair = metrics["same_dialogues"]["mini vs shuffled"]["a"]
    assert pair["turns"] == 5 and 0.0 <= pair["changed"] <= 1.0
    report = (out / "report.md").read_text()
    assert "acc, unseen name" in report and "| mini | shuffled | a | 5 |" in report


def test_every_config_loads_before_any_conversation_is_routed(bench_file, tmp_path):
    """A config that fails to load (the embedding baseline without its extra) must fail the run before the
    configs before it spend minutes routing predictions that would then be thrown away."""
    first = ScriptedRouter(["none"] * 10)

    class Pool:
        def get(self, config):
            if config.kind == "embedding":
                raise RuntimeError("the embedding baseline needs sentence_transformers")
            return first

    configs = [EvalConfig(name="adapter"), EvalConfig(name="embedding", kind="embedding")]
    with pytest.raises(RuntimeError, match="sentence_transformers"):
        run_all([load_bench(str(bench_file), None, 0)], configs, tmp_path / "run", Pool(), progress=False)
    assert first.seen == []
    assert not list((tmp_path / "run").glob("predictions-*"))


def test_two_runs_of_one_adapter_name_are_each_evaluated_with_their_own_weights(tiny_dir, tmp_path):
    """Comparing a retrained adapter with the shipped one: the same name in two folders, each config its own."""
    from tiny import build_adapter

    configs = []
    for run in ("old", "new"):
        folder = build_adapter(tiny_dir, tmp_path / run / "router")
        manifest = json.loads((folder / "router.json").read_text())
        (folder / "router.json").write_text(json.dumps({**manifest, "run": run}))
        configs.append(EvalConfig(name=run, model=str(tiny_dir), adapter="router", adapters_dir=str(folder.parent),
                                  strategy="adapter"))
    pool = RouterPool(configs)
    assert [pool.get(c).loaded.adapters["router"]["run"] for c in configs] == ["old", "new"]
    shared = [EvalConfig(name=n, model=str(tiny_dir), adapter="router", adapters_dir=str(tmp_path / "old"))
              for n in ("a", "b")]
    pool = RouterPool(shared)
    assert pool.get(shared[0]) is pool.get(shared[1])  # one folder: one router, loaded once
