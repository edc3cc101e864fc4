import json

import pytest

from taskrouter import handler
from taskrouter.schema import RequestError
from taskrouter.serving.app import create_app


@pytest.fixture(scope="module")
def client(tiny_dir):
    app = create_app(str(tiny_dir), load_async=False)
    return app.test_client()


def test_handler_contract_round_trip(tiny_dir, request_payload):
    router = handler.model_fn(str(tiny_dir))
    data = handler.input_fn(json.dumps(request_payload), "application/json")
    body = json.loads(handler.output_fn(handler.predict_fn(data, router), "application/json"))
    assert body["task"] in {"meeting_recap", "follow_up_email", "prepare_a_quote", "none"}
    assert set(body) >= {"task", "event", "confidence", "candidates", "model", "adapter", "strategy", "latency_ms"}
    assert body["model"] == tiny_dir.name


@pytest.mark.parametrize("raw, content_type, status, code", [
    (b"{not json", "application/json", 400, "invalid_json"),
    (b"\xff\xfe", "application/json", 400, "invalid_json"),
    (b"{}", "text/csv", 415, "unsupported_media_type"),
    (b"[]", "application/json", 400, "invalid_request"),
])
def test_input_fn_rejects_bad_bodies(raw, content_type, status, code):
    with pytest.raises(RequestError) as info:
        handler.input_fn(raw, content_type)
    assert (info.value.status, info.value.code) == (status, code)


def test_output_fn_refuses_other_accept_types(tiny_router, request_payload):
    answer = tiny_router.route(handler.input_fn(json.dumps(request_payload)))
    with pytest.raises(RequestError) as info:
        handler.output_fn(answer, "text/csv")
    assert info.value.status == 406


def test_ping_and_invocations(client, request_payload):
    assert client.get("/ping").status_code == 200
    res = client.post("/invocations", json=request_payload)
    assert res.status_code == 200
    assert res.json["task"] in {"meeting_recap", "follow_up_email", "prepare_a_quote", "none"}


@pytest.mark.parametrize("body, status, needle", [
    ({"messages": [], "tasks": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "tasks": [{"name": "none"}]}, 400, "tasks[0].name"),
    ({"messages": [{"role": "user", "content": "x"}], "tasks": [], "current_task": "gone"}, 400, "current_task"),
    ({"messages": [{"role": "user", "content": "x"}], "tasks": [], "adapter": "missing"}, 404, "adapter"),
])
def test_errors_are_json_4xx_naming_the_field(client, body, status, needle):
    res = client.post("/invocations", json=body)
    assert res.status_code == status
    assert needle in res.json["error"]["message"] and res.json["error"]["code"]


def test_oversized_body_and_unknown_routes(client):
    res = client.post("/invocations", data=b"x" * (2 * 1024 * 1024), content_type="application/json")
    assert res.status_code == 413 and res.json["error"]["code"] == "too_large"
    assert client.get("/nope").status_code == 404 and client.get("/nope").json["error"]
    assert client.get("/invocations").status_code == 405


def test_ping_is_503_while_loading_then_200(tiny_dir, monkeypatch):
    import threading

    release = threading.Event()
    real = handler.model_fn
    monkeypatch.setattr(handler, "model_fn", lambda d: (release.wait(30), real(d))[1])
    client = create_app(str(tiny_dir)).test_client()
    assert client.get("/ping").status_code == 503
    assert client.post("/invocations", json={}).status_code == 503
    release.set()
    for _ in range(100):
        if client.get("/ping").status_code == 200:
            break
        threading.Event().wait(0.1)
    assert client.get("/ping").status_code == 200


def test_ping_reports_a_load_failure(tmp_path):
    (tmp_path / "config.json").write_text("{broken")
    client = create_app(str(tmp_path), load_async=False).test_client()
    res = client.get("/ping")
    assert res.status_code == 500 and res.json["status"] == "failed" and res.json["error"]


def test_route_cli_prints_the_answer(tiny_dir, tmp_path, capsys, request_payload):
    from taskrouter.cli import main

    (tmp_path / "tasks.json").write_text(json.dumps(request_payload["tasks"]))
    (tmp_path / "conv.json").write_text(json.dumps(request_payload["messages"]))
    main(["route", "--tasks", str(tmp_path / "tasks.json"), "--conversation", str(tmp_path / "conv.json"),
          "--model-dir", str(tiny_dir), "--top-k", "2"])
    out = json.loads(capsys.readouterr().out)
    assert len(out["candidates"]) == 2 and out["event"] in {"start", "none"}


def test_route_cli_names_a_bad_field(tiny_dir, tmp_path, request_payload):
    from taskrouter.cli import main

    (tmp_path / "tasks.json").write_text(json.dumps([{"name": "none"}]))
    (tmp_path / "conv.json").write_text(json.dumps(request_payload["messages"]))
    with pytest.raises(SystemExit) as info:
        main(["route", "--tasks", str(tmp_path / "tasks.json"), "--conversation", str(tmp_path / "conv.json"),
              "--model-dir", str(tiny_dir)])
    assert "tasks[0].name" in str(info.value)


def test_artifact_is_unpacked_once_per_content(tmp_path, monkeypatch):
    import tarfile

    from taskrouter.artifacts import unpack_artifact

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "config.json").write_text("{}")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "config.json", arcname="config.json")
    first = unpack_artifact(str(archive))
    assert (tmp_path / "tmp").joinpath(first).joinpath("config.json").exists()
    assert unpack_artifact(str(archive)) == first
    assert len(list((tmp_path / "tmp").iterdir())) == 1  # no second copy, no leftovers
    (tmp_path / "junk.tar.gz").write_text("not a tarball")
    with pytest.raises(ValueError, match="junk.tar.gz: neither a folder nor a model.tar.gz"):
        unpack_artifact(str(tmp_path / "junk.tar.gz"))
