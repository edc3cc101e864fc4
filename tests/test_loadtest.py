"""`taskrouter loadtest` and the Locust replay scenario: options, loopback guard, summary, and a real short run."""
import argparse
import csv
import json
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from taskrouter.resources import locustfile, sample_bench
from taskrouter.serving import loadtest

CONVERSATION = {
    "id": "t-1", "source": "test",
    "tasks": [{"name": "meeting_recap", "description": "Write a recap of a meeting"},
              {"name": "follow_up_email", "description": "Write a follow-up email"}],
    "messages": [{"role": "user", "content": "Recap my meeting with ACME"},
                 {"role": "assistant", "content": "Sure, which meeting?"},
                 {"role": "user", "content": "Tuesday's. Then draft a follow-up email."},
                 {"role": "assistant", "content": "Done."}],
    "labels": [{"turn": 0, "task": "meeting_recap", "event": "start"},
               {"turn": 2, "task": "follow_up_email", "event": "switch"}],
}


@pytest.mark.parametrize("text, seconds", [("60s", 60), ("90", 90), ("5m", 300), ("1h", 3600), ("1m30s", 90)])
def test_duration_parsing(text, seconds):
    assert loadtest.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0s", "2h", "-5s", "1.5m"])
def test_bad_durations_are_refused_by_name(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--duration"):
        loadtest.parse_duration(text)


def _parse(argv):
    parser = argparse.ArgumentParser()
    loadtest.add_arguments(parser)
    return parser.parse_args(argv)


def test_users_are_bounded(capsys):
    assert _parse(["--users", "16"]).users == 16
    for bad in ("0", str(loadtest.MAX_USERS + 1)):
        with pytest.raises(SystemExit):
            _parse(["--users", bad])
    assert "--users" in capsys.readouterr().err


def test_only_loopback_hosts_unless_allowed(tmp_path):
    assert loadtest.is_loopback("http://127.0.0.1:8080") and loadtest.is_loopback("http://localhost:8080")
    assert loadtest.is_loopback("http://[::1]:8080")
    assert not loadtest.is_loopback("http://10.1.2.3:8080")
    args = _parse(["--host", "http://10.1.2.3:8080", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--allow-remote"):
        loadtest.run(args)


def test_summary_reads_the_aggregated_row(tmp_path):
    stats = tmp_path / "locust_stats.csv"
    header = "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Requests/s,50%,95%,99%"
    stats.write_text(header + "\nPOST,/invocations,40,1,120,130.5,4.2,120,300,450\n,Aggregated,40,1,120,130.5,4.2,120,300,450\n")
    summary = loadtest.summarise(stats)
    assert summary == {"requests": 40, "failures": 1, "rps": 4.2, "p50_ms": 120, "p95_ms": 300, "p99_ms": 450,
                       "mean_ms": 130.5}
    line = loadtest.format_summary(summary, 16, 60)
    assert "4.20 req/s" in line and "p95 300 ms" in line and "failures 1" in line


def test_the_sampler_reads_the_server_once_more_when_stopped():
    """The last memory row is the server as the load ended, not up to --sample-every seconds before."""
    from taskrouter.serving import memory

    answered = {"n": 0}

    def metrics_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f'taskrouter_requests_total{{route="/invocations",status="200"}} {answered["n"]}\n'.encode()]

    server = make_server("127.0.0.1", 0, metrics_app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sampler = memory.Sampler(f"http://127.0.0.1:{server.port}", every_s=3600)
        sampler.start()
        while not sampler.rows:
            threading.Event().wait(0.01)
        answered["n"] = 7
        sampler.stop()
    finally:
        server.shutdown()
    assert [row["requests"] for row in sampler.rows] == [0, 7]


def test_a_real_short_run_against_the_tiny_model(tiny_dir, tmp_path, capsys, monkeypatch):
    """Locust runs in its own process (it monkey-patches with gevent): never import the locustfile here."""
    from taskrouter.serving.app import create_app

    monkeypatch.setenv("TASKROUTER_THREADS", "1")
    bench = tmp_path / "bench.jsonl"
    no_user_turn = dict(CONVERSATION, id="t-2", messages=[{"role": "assistant", "content": "hi"}])
    bench.write_text(json.dumps(CONVERSATION) + "\n\n" + json.dumps(no_user_turn) + "\n")
    server = make_server("127.0.0.1", 0, create_app(str(tiny_dir), load_async=False), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "out"
        loadtest.run(_parse(["--users", "2", "--duration", "4s", "--host", f"http://127.0.0.1:{server.port}",
                             "--bench", str(bench), "--out", str(out), "--distinct", "--sample-every", "1"]))
    finally:
        server.shutdown()
    printed = capsys.readouterr().out
    assert "req/s" in printed and "p95" in printed and "failures 0" in printed, printed
    assert (out / "report.html").stat().st_size > 0
    summary = loadtest.summarise(out / "locust_stats.csv")
    assert summary["requests"] >= 2 and summary["failures"] == 0
    assert "memory: RSS" in printed and "0 answered 5xx" in printed, printed
    rows = list(csv.DictReader(open(out / "memory.csv")))
    assert len(rows) >= 3 and all(float(r["rss_mb"]) > 0 for r in rows)
    assert float(rows[-1]["requests"]) >= summary["requests"] - 2  # the server counted what locust sent


def test_distinct_replays_are_new_conversations_with_the_same_tasks():
    """The locustfile's helper, imported without locust's gevent patching (it lives in a plain function)."""
    import ast

    source = locustfile().read_text()
    tree = ast.parse(source)
    helper = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "distinct_copy")
    namespace = {"random": __import__("random")}
    exec(compile(ast.Module([helper], []), "locustfile", "exec"), namespace)
    copies = [namespace["distinct_copy"](CONVERSATION, n) for n in range(20)]
    assert len({c["messages"][0]["content"] for c in copies}) == 20
    assert len({tuple(t["name"] for t in c["tasks"]) for c in copies}) == 2  # both orders of two tasks
    assert all(sorted(t["name"] for t in c["tasks"]) == sorted(t["name"] for t in CONVERSATION["tasks"]) for c in copies)
    assert CONVERSATION["messages"][0]["content"] == "Recap my meeting with ACME"  # the original is untouched


def test_the_default_bench_ships_with_the_package():
    assert Path(_parse([]).bench) == sample_bench() and sample_bench().is_file()


def test_without_locust_it_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "locust" else real(name, *a))
    with pytest.raises(SystemExit, match=r"needs locust: pip install 'taskrouter\[loadtest\]'"):
        loadtest.run(_parse([]))
