"""The artifact under the SageMaker image's own model server (packaging/harness.py) answers as the local server does.

The harness is a venv with the image's versions (transformers 5.5.3, peft, accelerate, multi-model-server 1.1.11
with its Java frontend, the inference toolkit), the artifact unpacked as /opt/ml/model, code/requirements.txt
installed without a package index, and the model server started as the image's entrypoint does, on loopback.
.ci/run prepares the venv (`python -m taskrouter.packaging.harness --prepare`); without Java these tests skip,
except on CI.
"""
import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from records import TASKS, conversation
from tiny import build_adapter
from taskrouter.packaging.build import build
from taskrouter.packaging.harness import ContainerServer, HarnessError
from taskrouter.packaging.verify import same_answer, unpack

if shutil.which("java") is None and os.environ.get("CI") != "true":
    pytest.skip("no Java runtime: the model server's frontend needs one (apt-get install openjdk-17-jre-headless)",
                allow_module_level=True)

ADAPTER = "tiny-lora"
CONVERSATIONS = [
    conversation("recap-then-email", [("Please write a recap of the meeting with ACME.", "meeting_recap"),
                                      ("Add the action items too.", "meeting_recap"),
                                      ("Now send a follow-up email to the prospect.", "follow_up_email"),
                                      ("Thanks, that's all.", None)]),
    conversation("quote", [("Prepare a price quote for 40 seats.", "prepare_a_quote"),
                           ("Make it 50 seats instead.", "prepare_a_quote")]),
    conversation("chat", [("Hello there!", None), ("Send a follow-up email to the prospect.", "follow_up_email")]),
]


@pytest.fixture(scope="module")
def artifact(tiny_dir, tmp_path_factory):
    adapters = tmp_path_factory.mktemp("adapters")
    build_adapter(tiny_dir, adapters / ADAPTER)
    return build([ADAPTER], tmp_path_factory.mktemp("dist"), base=str(tiny_dir), adapters_dir=adapters)


@pytest.fixture(scope="class")
def container(artifact):
    """One model server for the tests of a class, stopped before the next test starts its own (a container runs
    one: the toolkit refuses to attach to a second multi-model-server on the host)."""
    with ContainerServer(artifact.archive, env={"TASKROUTER_THREADS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def local(artifact, tmp_path_factory):
    """The local server (the Flask mirror `taskrouter serve` runs) on the same artifact, in this environment."""
    from taskrouter.serving.app import create_app

    model_dir = tmp_path_factory.mktemp("local") / "model"
    unpack(artifact.archive, model_dir)
    return create_app(str(model_dir), load_async=False).test_client()


def closed_loop(post, record: dict, adapter: str = ADAPTER) -> list[dict]:
    """Route a conversation turn by turn, each request's current_task being the previous answer (as a client does)."""
    answers, current = [], None
    for label in record["labels"]:
        request = {"messages": record["messages"][:label["turn"] + 1], "tasks": record["tasks"], "top_k": 3,
                   "adapter": adapter, "current_task": current}
        status, answer = post(json.dumps(request))
        assert status == 200, answer
        answers.append(answer)
        current = None if answer["task"] == "none" else answer["task"]
    return answers


LONG_TASKS = [{"name": f"task_{i}", "description": " ".join(["a long description of this task"] * 8)}
              for i in range(60)]
BAD = [  # (body, content type, accept): each gets the README's status and {"error": ...} body
    (b"{not json", "application/json", "application/json"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "tasks": TASKS}), "text/plain", "application/json"),
    (json.dumps({"tasks": TASKS}), "application/json", "application/json"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "tasks": TASKS, "adapter": "nope"}),
     "application/json", "application/json"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "tasks": LONG_TASKS}), "application/json",
     "application/json"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "tasks": TASKS}), "application/json", "text/csv"),
]


class TestOneModelServer:
    """Health, answers and errors of one running model server."""

    def test_model_server_is_healthy_on_loopback(self, container):
        ping = container.ping()
        assert ping.status == 200 and ping.json() == {"status": "Healthy"}
        assert container.url.startswith("http://127.0.0.1:")

    def test_answers_equal_the_local_servers_request_after_request(self, container, local):
        def via_container(body):
            response = container.invoke(body)
            return response.status, response.json()

        def via_local(body):
            response = local.post("/invocations", data=body, content_type="application/json")
            return response.status_code, response.get_json()

        for record in CONVERSATIONS:  # several requests in a row: later turns run on the prefix cache
            there, here = closed_loop(via_container, record), closed_loop(via_local, record)
            for turn, (a, b) in enumerate(zip(there, here)):
                assert same_answer(a, b), (record["id"], turn, a, b)
                assert (a["model"], a["adapter"], a["strategy"]) == (b["model"], b["adapter"], b["strategy"])

    def test_bad_input_gets_the_contracts_status_and_body(self, container, local):
        statuses = []
        for body, content_type, accept in BAD:
            there = container.invoke(body, content_type, accept)
            here = local.post("/invocations", data=body, content_type=content_type, headers={"Accept": accept})
            assert there.status == here.status_code, (body[:80], there.body[:300], here.get_data()[:300])
            assert json.loads(there.body) == here.get_json()
            assert set(json.loads(there.body)) == {"error"}
            statuses.append(there.status)
        assert statuses == [400, 415, 400, 404, 413, 406]


def with_legacy_manifest(src: Path, dst: Path) -> Path:
    """The artifact plus a top-level MANIFEST.json, as `package build` used to write it."""
    with tarfile.open(src) as tin, gzip.open(dst, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tout:
        for member in tin.getmembers():
            tout.addfile(member, tin.extractfile(member))
        data = json.dumps({"files": {}}).encode()
        info = tarfile.TarInfo("MANIFEST.json")
        info.size = len(data)
        tout.addfile(info, io.BytesIO(data))
    return dst


def test_a_top_level_manifest_json_never_serves(artifact, tmp_path):
    legacy = with_legacy_manifest(artifact.archive, tmp_path / "legacy.tar.gz")
    with pytest.raises(HarnessError, match="exited|no READY worker"):
        with ContainerServer(legacy, startup_timeout=120):
            pass


def with_changed_file(src: Path, dst: Path, name: str, change) -> Path:
    """The artifact with one file rewritten by `change(text)` and its manifest entry updated to match."""
    import hashlib

    with tarfile.open(src) as tin:
        files = {m.name: tin.extractfile(m).read() for m in tin.getmembers()}
    changed = change(files[name].decode()).encode()
    assert changed != files[name], f"the change left {name} as it was"  # a no-op would test nothing
    files[name] = changed
    manifest = json.loads(files["taskrouter-manifest.json"])
    manifest["files"][name] = {"sha256": hashlib.sha256(files[name]).hexdigest(), "size": len(files[name])}
    files["taskrouter-manifest.json"] = json.dumps(manifest).encode()
    with gzip.open(dst, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tout:
        for member_name, data in files.items():
            info = tarfile.TarInfo(member_name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    return dst


def test_verify_passes_a_good_artifact_and_records_its_answers(artifact, capsys, monkeypatch):
    from taskrouter.packaging.cli import main

    monkeypatch.setenv("TASKROUTER_THREADS", "1")
    main(["verify", str(artifact.archive)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("ok (here and under the SageMaker model server): model_fn")
    record = json.loads(artifact.archive.with_name("verified.json").read_text())
    assert record["sha256"] == artifact.sha256 and record["answers"] == [json.loads(line) for line in lines[:-1]]


def test_verify_catches_a_router_that_loses_its_cache_on_the_images_transformers(artifact, tmp_path, monkeypatch):
    """The KV cache handed over as `cache=` (transformers >= 5.24 only): right here, wrong from turn 2 on 5.5.3."""
    from taskrouter.packaging.verify import VerifyError, verify

    monkeypatch.setenv("TASKROUTER_THREADS", "1")
    broken = with_changed_file(artifact.archive, tmp_path / "model.tar.gz", "code/taskrouter/engine.py",
                               lambda text: text.replace("return {_cache_keyword(type(decoder)): cache}",
                                                         'return {"cache": cache}'))
    with pytest.raises(VerifyError, match=r"request [23]: the SageMaker model server answered .*, this environment"):
        verify(broken)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # builds the 455 MiB artifact and loads Gemma 270M twice: past 600 s on a loaded CPU
def test_embedded_model_answers_equal_the_local_servers(tmp_path_factory):
    """The shipped artifact (embedded Gemma 3 270M + gemma3-270m-router) under the model server, turn after turn."""
    from taskrouter.serving.app import create_app

    result = build(["gemma3-270m-router"], tmp_path_factory.mktemp("dist"))
    model_dir = tmp_path_factory.mktemp("local") / "model"
    unpack(result.archive, model_dir)
    record = CONVERSATIONS[0]
    app = create_app(str(model_dir), load_async=False).test_client()

    def post_local(body):
        response = app.post("/invocations", data=body, content_type="application/json")
        return response.status_code, response.get_json()

    def post_container(body):
        response = server.invoke(body)
        return response.status, response.json()

    here = closed_loop(post_local, record, "gemma3-270m-router")
    with ContainerServer(result.archive, env={"TASKROUTER_THREADS": "1"}) as server:
        there = closed_loop(post_container, record, "gemma3-270m-router")
    for turn, (a, b) in enumerate(zip(there, here)):
        assert same_answer(a, b), (turn, a, b)
