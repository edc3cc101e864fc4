"""Operations of the Flask app in process: settings, /metrics, contract statuses, chunked bodies, agent shapes."""
import io
import json
import os
from pathlib import Path

import pytest

from taskrouter import handler, settings
from taskrouter.serving.app import create_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client(tiny_dir):
    return create_app(str(tiny_dir), load_async=False).test_client()


def test_settings_doc_is_generated_from_the_object():
    doc = (ROOT / "docs" / "settings.md").read_text()
    assert settings.markdown() in doc, "regenerate the table: python -m taskrouter.settings"
    for name in settings.Settings.model_fields:
        assert f"`TASKROUTER_{name.upper()}`" in doc


@pytest.mark.parametrize("name, value, needle", [
    ("TASKROUTER_THREADS", "two", "TASKROUTER_THREADS='two'"),
    ("TASKROUTER_PORT", "99999", "TASKROUTER_PORT='99999'"),
    ("TASKROUTER_DTYPE", "int3", "TASKROUTER_DTYPE='int3'"),
    ("TASKROUTER_LOG_BODIES", "maybe", "TASKROUTER_LOG_BODIES='maybe'"),
])
def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch, name, value, needle):
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError) as info:
        settings.load()
    assert str(info.value).startswith(needle) and "\n" not in str(info.value)


def test_the_api_key_is_never_shown(monkeypatch):
    monkeypatch.setenv("TASKROUTER_API_KEY", "hunter2-secret")
    config = settings.load()
    assert config.api_key.get_secret_value() == "hunter2-secret"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config)


@pytest.fixture(autouse=True)
def serve_env(monkeypatch):
    """`serve` writes its flags into os.environ (for gunicorn): restore them after each test."""
    for name in ("TASKROUTER_HOST", "TASKROUTER_PORT", "TASKROUTER_WORKERS", "TASKROUTER_MODEL_DIR", "MALLOC_ARENA_MAX",
                 "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.setenv(name, "")  # recorded as it was, so undone after the test
        monkeypatch.delenv(name)


def _serve_error(argv, capsys) -> str:
    """What `serve ARGV` prints as it exits (argparse errors go to stderr, ours are the exit message)."""
    from taskrouter.serving.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code != 0
    return (info.value.code if isinstance(info.value.code, str) else "") + capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--model-dir", "/missing/model"], "--model-dir /missing/model: no such file or folder"),
    (["--dev", "--port", "99999"], "--port 99999: must be between 1 and 65535"),
    (["--workers", "two"], "--workers 'two': not a whole number"),
])
def test_serve_refuses_bad_flags_in_one_line(argv, needle, capsys):
    assert needle in _serve_error(argv, capsys)


def test_serve_refuses_an_empty_model_dir_and_a_bad_setting(tmp_path, capsys, monkeypatch):
    assert "no model there" in _serve_error(["--model-dir", str(tmp_path)], capsys)
    monkeypatch.setenv("TASKROUTER_THREADS", "two")
    assert "serve: TASKROUTER_THREADS='two'" in _serve_error([], capsys)


def test_serve_warns_when_open_to_the_network_without_a_key(monkeypatch, capsys):
    from taskrouter.serving import cli

    served = []
    monkeypatch.setattr("taskrouter.serving.app.create_app", lambda *a, **k: type("App", (), {
        "run": lambda self, **kw: served.append(kw)})())
    cli.main(["--dev", "--host", "0.0.0.0", "--port", "8099"])
    assert served == [{"host": "0.0.0.0", "port": 8099, "threaded": True}]
    assert (os.environ["MALLOC_ARENA_MAX"], os.environ["MALLOC_MMAP_THRESHOLD_"]) == ("2", "131072")
    assert "without TASKROUTER_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("TASKROUTER_API_KEY", "k")
    cli.main(["--dev", "--host", "0.0.0.0", "--port", "8099"])
    assert "without TASKROUTER_API_KEY" not in capsys.readouterr().err


def test_serve_binds_loopback_unless_told():
    assert settings.load().host == "127.0.0.1"
    conf = {}
    exec((ROOT / "serving" / "gunicorn_conf.py").read_text(), conf)
    assert conf["bind"] == "127.0.0.1:8080"


def test_metrics_are_prometheus_text(client, request_payload):
    from prometheus_client.parser import text_string_to_metric_families

    assert client.post("/invocations", json=request_payload).status_code == 200
    assert client.post("/invocations", json={"messages": []}).status_code == 400
    res = client.get("/metrics")
    assert res.status_code == 200 and res.mimetype == "text/plain"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(res.get_data(as_text=True)) for s in family.samples}
    assert samples[("taskrouter_requests_total", (("route", "/invocations"), ("status", "200")))] >= 1
    assert samples[("taskrouter_requests_total", (("route", "/invocations"), ("status", "400")))] >= 1
    assert samples[("taskrouter_request_seconds_count", ())] >= 2
    assert samples[("taskrouter_batches_total", ())] >= 1
    assert samples[("taskrouter_batched_requests_total", ())] >= samples[("taskrouter_batches_total", ())]
    assert samples[("taskrouter_prefix_cache_lookups_total", (("result", "miss"),))] >= 1
    assert samples[("taskrouter_prefix_cache_bytes", ())] > 0
    assert samples[("taskrouter_queue_depth", ())] == 0
    assert samples[("process_resident_memory_bytes", ())] > 0


def test_metrics_need_the_key_when_one_is_set(tiny_dir, monkeypatch):
    monkeypatch.setenv("TASKROUTER_API_KEY", "k")
    keyed = create_app(str(tiny_dir), load_async=False).test_client()
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200


def test_not_acceptable_is_answered_before_the_model_runs(tiny_dir, request_payload, monkeypatch):
    calls = []
    monkeypatch.setattr(handler, "predict_fn", lambda data, model: calls.append(data))
    app = create_app(str(tiny_dir), load_async=False).test_client()
    res = app.post("/invocations", json=request_payload, headers={"Accept": "text/html"})
    assert res.status_code == 406 and res.json["error"]["code"] == "not_acceptable" and calls == []


def test_405_names_the_allowed_methods(client):
    res = client.get("/invocations")
    assert res.status_code == 405 and "POST" in res.headers["Allow"]


def _chunked(client, body: bytes):
    """POST `body` as a chunked request would reach the app: no Content-Length, input terminated."""
    return client.post("/invocations", input_stream=io.BytesIO(body), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})


def test_a_chunked_body_over_the_limit_is_413_not_cut(client, request_payload):
    padded = json.dumps(dict(request_payload, pad="x" * (3 * 2**20))).encode()
    res = _chunked(client, padded)
    assert res.status_code == 413 and res.json["error"]["code"] == "too_large"
    assert _chunked(client, json.dumps(request_payload).encode()).status_code == 200


def test_openai_request_over_http_says_what_it_ignored(client, request_payload):
    tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"]}}
             for t in request_payload.pop("tasks")]
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "recap the ACME meeting"}]}]
    res = client.post("/invocations", json={"messages": messages, "tools": tools})
    assert res.status_code == 200, res.json
    assert res.json["ignored"] == ["messages[0] (system)"]
    assert res.json["task"] in {t["function"]["name"] for t in tools} | {"none"}


def test_current_task_none_is_accepted_over_http(client, request_payload):
    res = client.post("/invocations", json=dict(request_payload, current_task="none"))
    assert res.status_code == 200 and res.json["event"] in {"start", "none"}


def test_gunicorn_conf_refuses_a_bad_setting_in_one_line(monkeypatch):
    monkeypatch.setenv("TASKROUTER_WORKERS", "0")
    with pytest.raises(SystemExit, match=r"^taskrouter: TASKROUTER_WORKERS='0': Input should be greater than"):
        exec((ROOT / "serving" / "gunicorn_conf.py").read_text(), {})
