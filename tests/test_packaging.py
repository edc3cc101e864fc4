"""End to end: build a model.tar.gz for the tiny model + a tiny LoRA adapter, verify it, serve it, deploy it to moto."""
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from taskrouter.packaging import build as build_mod
from taskrouter.packaging.archive import sha256_file
from taskrouter.packaging.build import BuildError, build
from taskrouter.packaging.cli import main
from taskrouter.packaging.verify import VerifyError, verify

ADAPTER = "tiny-lora"


def make_adapter(base_dir: Path, out: Path, base_model: str, weights: bool = True, **manifest) -> Path:
    """A LoRA adapter on q_proj/v_proj of `base_dir`, with a router.json naming `base_model`."""
    if weights:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config).save_pretrained(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "router.json").write_text(json.dumps({"base_model": base_model, "quantization": "none", **manifest}))
    return out


@pytest.fixture(scope="module")
def adapters_dir(tiny_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_adapter(tiny_dir, root / ADAPTER, tiny_dir.name)
    return root


@pytest.fixture(scope="module")
def artifact(tiny_dir, adapters_dir, tmp_path_factory):
    return build([ADAPTER], tmp_path_factory.mktemp("dist"), base=str(tiny_dir), adapters_dir=adapters_dir)


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_layout_is_what_the_sagemaker_toolkit_expects(artifact, tiny_dir):
    entries = members(artifact.archive)
    names = set(entries)
    assert {"config.json", "model.safetensors", "tokenizer.json", "taskrouter.json", "taskrouter-manifest.json",
            f"adapters/{ADAPTER}/adapter_config.json", f"adapters/{ADAPTER}/adapter_model.safetensors",
            f"adapters/{ADAPTER}/router.json", "code/inference.py", "code/requirements.txt",
            "code/taskrouter/handler.py", "code/taskrouter/router.py"} <= names
    assert "MANIFEST.json" not in names  # multi-model-server would take it for a legacy model archive
    wheels = {n.split("/")[-1].split("-")[0] for n in names if n.startswith("code/wheels/")}
    assert {"bitsandbytes", "pydantic", "pydantic_core"} <= wheels  # installed at start without a package index
    assert any(n.startswith("code/wheels/pydantic_core-") and "cp312" in n for n in names)  # the image's Python
    assert not any("__pycache__" in n or n.endswith(".pyc") or n.startswith(("/", "./")) for n in names)
    assert not any(n.startswith("code/taskrouter/serving") for n in names)  # only the code/ folder ships
    assert list(entries) == sorted(entries)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in entries.values()} == {(0, 0, 0, "", "")}
    with tarfile.open(artifact.archive) as tar:
        info = json.load(tar.extractfile("taskrouter.json"))
        manifest = json.load(tar.extractfile("taskrouter-manifest.json"))
        config = json.load(tar.extractfile("config.json"))
        weights = tar.extractfile("model.safetensors").read()
    assert info == {"base_model": tiny_dir.name, "quantization": "bf16"}
    assert config["dtype"] == "bfloat16" and weights
    assert set(manifest["files"]) == names - {"taskrouter-manifest.json"}
    assert manifest["adapters"][ADAPTER]["base_model"] == tiny_dir.name
    with open(artifact.archive, "rb") as f:
        assert f.read(8)[4:8] == b"\0\0\0\0"  # gzip header mtime
    assert artifact.archive.with_name("taskrouter-manifest.json").exists()
    assert artifact.sha256 == sha256_file(artifact.archive)


def test_build_is_reproducible(artifact, tiny_dir, adapters_dir, tmp_path):
    again = build([ADAPTER], tmp_path, base=str(tiny_dir), adapters_dir=adapters_dir)
    assert again.sha256 == artifact.sha256
    assert again.archive.read_bytes() == artifact.archive.read_bytes()


def test_build_cli_prints_size_and_checksums(tiny_dir, adapters_dir, tmp_path, capsys):
    main(["build", "--adapter", ADAPTER, "--adapters-dir", str(adapters_dir), "--base", str(tiny_dir),
          "--out", str(tmp_path), "--quantize", "bf16"])
    out = capsys.readouterr().out
    archive = tmp_path / ADAPTER / "model.tar.gz"
    assert f"sha256 {sha256_file(archive)}" in out and "MiB" in out  # the bundled wheels make it tens of MiB
    assert "  code/inference.py" in out and len(out.split("\n")[0].split()[0]) == 64


def test_refuses_an_adapter_for_another_base(tiny_dir, tmp_path, capsys):
    make_adapter(tiny_dir, tmp_path / "other", "some-other-base")
    with pytest.raises(BuildError, match="other was trained for base 'some-other-base'"):
        build(["other"], tmp_path / "dist", base=str(tiny_dir), adapters_dir=tmp_path)
    assert not (tmp_path / "dist").exists()


def test_adapter_without_weights_and_offline_base_are_clear_errors(tiny_dir, tmp_path, monkeypatch):
    make_adapter(tiny_dir, tmp_path / "falcon7b-qlora", "tiiuae/falcon-7b", weights=False, quantization="nf4")
    with pytest.raises(SystemExit) as info:
        main(["build", "--adapter", "falcon7b-qlora", "--adapters-dir", str(tmp_path), "--out", str(tmp_path / "d")])
    assert "falcon7b-qlora" in str(info.value) and "no trained weights" in str(info.value)
    with pytest.raises(SystemExit, match="no .*router.json.*adapters under .*falcon7b-qlora"):
        main(["build", "--adapter", "missing", "--adapters-dir", str(tmp_path), "--out", str(tmp_path / "d")])
    # weights present, but the hub base is neither cached nor downloadable offline
    make_adapter(tiny_dir, tmp_path / "falcon-lora", "tiiuae/falcon-7b")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SystemExit, match=r"--base tiiuae/falcon-7b: not available offline \(HF_HUB_OFFLINE=1\)"):
        main(["build", "--adapter", "falcon-lora", "--adapters-dir", str(tmp_path), "--out", str(tmp_path / "d")])


def test_default_quantization_follows_the_adapter_manifests():
    qlora = build_mod.Adapter("a", Path("."), {"quantization": "nf4"})
    lora = build_mod.Adapter("b", Path("."), {"quantization": "none"})
    assert build_mod.default_quantization([qlora]) == "nf4"
    assert build_mod.default_quantization([qlora, lora]) == "bf16"
    assert build_mod.default_quantization([]) == "bf16"


def test_nf4_artifact_loads_and_routes_on_cpu(tiny_dir, adapters_dir, tmp_path, request_payload):
    pytest.importorskip("bitsandbytes")
    from taskrouter import handler
    from taskrouter.packaging.verify import unpack

    result = build([ADAPTER], tmp_path, base=str(tiny_dir), adapters_dir=adapters_dir, quantize="nf4")
    unpack(result.archive, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert json.loads((tmp_path / "model" / "taskrouter.json").read_text())["quantization"] == "nf4"
    with pytest.raises(BuildError, match="already quantized"):  # an unpacked NF4 artifact is no base to build from
        build([], tmp_path / "again", base=str(tmp_path / "model"), quantize="bf16")
    router = handler.model_fn(str(tmp_path / "model"))
    assert type(router.loaded.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    answer = json.loads(handler.output_fn(handler.predict_fn(
        handler.input_fn(json.dumps({**request_payload, "adapter": ADAPTER})), router)))
    assert answer["adapter"] == ADAPTER and answer["task"] in {t["name"] for t in request_payload["tasks"]} | {"none"}


def test_verify_runs_the_handler_in_a_fresh_process(artifact, tiny_dir, capsys, monkeypatch):
    monkeypatch.setenv("TASKROUTER_THREADS", "1")  # the child inherits it: no thread contention on a busy CI box
    main(["verify", str(artifact.archive), "--no-container"])
    lines = capsys.readouterr().out.strip().splitlines()
    answers = [json.loads(line) for line in lines[:-1]]
    assert len(answers) == 3  # the smoke conversation, turn by turn
    assert all(a["adapter"] == ADAPTER and a["model"] == tiny_dir.name and a["strategy"] == "adapter" for a in answers)
    assert lines[-1].startswith("ok (here): model_fn")
    library = lines[-1].rsplit("library ", 1)[1]  # the artifact's code/, not the checkout's
    assert "taskrouter-verify-" in library and library.endswith("model/code/taskrouter/__init__.py")


def repack(src: Path, dst: Path, change) -> Path:
    """Copy an archive, letting `change(name, data)` rewrite (or drop, with None) its members."""
    with tarfile.open(src) as tin, gzip.open(dst, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tout:
        for member in tin.getmembers():
            data = change(member.name, tin.extractfile(member).read())
            if data is not None:
                member.size = len(data)
                tout.addfile(member, io.BytesIO(data))
    return dst


def test_verify_fails_on_a_broken_artifact(artifact, tmp_path):
    tampered = repack(artifact.archive, tmp_path / "tampered.tar.gz",
                      lambda n, d: d + b"\n# changed\n" if n == "code/taskrouter/router.py" else d)
    with pytest.raises(VerifyError, match="files differ from taskrouter-manifest.json: checksum code/taskrouter/router.py"):
        verify(tampered, container=False)

    def break_handler(name, data):
        if name == "code/inference.py":
            return b"raise RuntimeError('broken handler')\n"
        if name == "taskrouter-manifest.json":
            manifest = json.loads(data)
            manifest["files"]["code/inference.py"]["sha256"] = hashlib.sha256(
                b"raise RuntimeError('broken handler')\n").hexdigest()
            return json.dumps(manifest).encode()
        return data

    broken = repack(artifact.archive, tmp_path / "broken.tar.gz", break_handler)
    with pytest.raises(SystemExit) as info:
        main(["verify", str(broken), "--no-container"])
    assert "the handler failed (exit 1): RuntimeError: broken handler" in str(info.value)
    with pytest.raises(SystemExit, match="no such file"):
        main(["verify", str(tmp_path / "missing.tar.gz")])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_the_artifact_over_http(artifact, request_payload, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([shutil.which("taskrouter"), "serve", "--model-dir", str(artifact.archive),
                                 "--port", str(port), "--host", "127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "TASKROUTER_THREADS": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as res:
                    if res.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.5)
        body = json.dumps({**request_payload, "adapter": ADAPTER}).encode()
        req = urllib.request.Request(f"{base}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as res:
            answer = json.load(res)
        assert answer["adapter"] == ADAPTER and answer["strategy"] == "adapter"
        assert answer["task"] in {t["name"] for t in request_payload["tasks"]} | {"none"}
    finally:
        proc.terminate()
        proc.wait(30)
        unpacked = re.search(r"unpacking \S+ into (\S+)", log.read_text())
        if unpacked:  # serve unpacks the tarball into a fresh temporary directory
            shutil.rmtree(unpacked.group(1), ignore_errors=True)


def test_deploy_the_artifact_to_moto(artifact, tiny_dir, monkeypatch, capsys):
    from moto import mock_aws

    with mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="models")
        role = boto3.client("iam", region_name="us-east-1").create_role(
            RoleName="sm", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        answer = {"task": "meeting_recap", "event": "start", "confidence": 0.9, "model": tiny_dir.name,
                  "adapter": ADAPTER, "candidates": [{"task": "meeting_recap", "p": 0.9}, {"task": "none", "p": 0.1}]}
        import requests  # moto's endpoint answers deploy's smoke request with this

        requests.post("http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results", json={
            "region": "us-east-1", "results": [{"Body": json.dumps(answer), "ContentType": "application/json"}]})
        main(["deploy", "--artifact", str(artifact.archive), "--endpoint-name", "tiny", "--role", role,
              "--bucket", "models", "--region", "us-east-1", "--poll-seconds", "0",
              "--instance-type", "ml.g4dn.xlarge",  # moto's instance type list predates ml.g5
              "--min-instances", "1", "--max-instances", "3"])
        out = capsys.readouterr().out
        assert "endpoint tiny: InService" in out and "auto scaling: 1-3 instances" in out
        assert f"smoke request answered: task meeting_recap (start, confidence 0.900), model {tiny_dir.name}" in out
        sm = boto3.client("sagemaker", region_name="us-east-1")
        model = sm.describe_model(ModelName=f"tiny-{artifact.sha256[:12]}")["PrimaryContainer"]
        assert model["ModelDataUrl"] == f"s3://models/taskrouter/tiny/{artifact.sha256[:12]}/model.tar.gz"
        assert model["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
        assert model["Environment"]["TASKROUTER_DEFAULT_ADAPTER"] == ADAPTER
        uploaded = boto3.client("s3", region_name="us-east-1").get_object(
            Bucket="models", Key=f"taskrouter/tiny/{artifact.sha256[:12]}/model.tar.gz")["Body"].read()
        assert uploaded == artifact.archive.read_bytes()
        main(["delete", "--endpoint-name", "tiny", "--region", "us-east-1"])
        assert "deleted endpoint tiny" in capsys.readouterr().out
        assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
