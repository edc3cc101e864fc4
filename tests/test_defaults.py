"""Every default routes with the adapter that ships for its base; the shipped files are found through the
import system (as in an installed wheel); the library's one-call API."""
from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from taskrouter import resources
from taskrouter.evaluation.benchfile import load_bench
from taskrouter.loading import load_model, read_manifest, shipped_adapters
from taskrouter.router import Router
from taskrouter.schema import RequestError
from tiny import build_adapter

MEETING = {"messages": [{"role": "user", "content": "Please write a recap of the meeting with ACME."}],
           "tasks": [{"name": "meeting_recap", "description": "Write a recap of a meeting"},
                     {"name": "follow_up_email", "description": "Write a follow-up email"}]}


@pytest.fixture(scope="module")
def tiny_artifact(tiny_dir, tmp_path_factory):
    """An unpacked artifact of the tiny model: base at the top, its adapter under adapters/."""
    root = tmp_path_factory.mktemp("artifact") / "model"
    shutil.copytree(tiny_dir, root)
    build_adapter(tiny_dir, root / "adapters" / "tiny-router")
    return root


def test_the_embedded_default_ships_its_adapter():
    found = shipped_adapters(None)
    assert list(found) == ["gemma3-270m-router"]  # falcon7b-qlora ships a manifest but no weights
    assert read_manifest(found["gemma3-270m-router"])["base_model"] == "gemma-3-270m"


def test_load_model_brings_the_shipped_adapter_unless_told_otherwise(tiny_artifact):
    assert list(load_model(str(tiny_artifact)).adapters) == ["tiny-router"]
    assert Router(load_model(str(tiny_artifact))).default_adapter == "tiny-router"
    assert load_model(str(tiny_artifact), {}).adapters == {}


def test_a_base_without_an_adapter_says_so(tiny_dir, caplog):
    with caplog.at_level("WARNING", logger="taskrouter"):
        load_model(str(tiny_dir))
    assert "without an adapter" in caplog.text


def test_from_pretrained_takes_a_folder_or_a_tarball_and_routes_plain_dicts(tiny_artifact, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(tiny_artifact.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(tiny_artifact)), recursive=False)
    from_folder, from_archive = Router.from_pretrained(tiny_artifact), Router.from_pretrained(archive)
    for router in (from_folder, from_archive):
        answer = router.route(messages=MEETING["messages"], tasks=MEETING["tasks"], current_task=None)
        assert answer.adapter == "tiny-router" and answer.task in {"meeting_recap", "follow_up_email", "none"}
    assert from_archive.route(MEETING).candidates == from_folder.route(**MEETING).candidates
    with pytest.raises(RequestError, match="current_task"):
        from_folder.route(**MEETING, current_task="not_listed")


def test_shipped_files_are_package_resources():
    assert (resources.adapters_dir() / "gemma3-270m-router" / "adapter_model.safetensors").is_file()
    assert "HttpUser" in resources.locustfile().read_text()
    code = resources.artifact_code_dir()
    assert "model_fn" in (code / "inference.py").read_text() and (code / "requirements.txt").is_file()
    sample = load_bench(str(resources.sample_bench()), None, 0)
    assert sample.total == 16 and len({json.dumps(c["tasks"]) for c in sample.conversations}) > 1

