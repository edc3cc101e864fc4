"""`package deploy / invoke / delete` against moto, including the error paths (no real AWS)."""
import json
from pathlib import Path

import boto3
import pytest
import requests
from botocore.awsrequest import AWSResponse
from moto import mock_aws

from taskrouter.packaging import deploy as dep
from taskrouter.packaging.archive import file_manifest, write_archive, write_manifest
from taskrouter.packaging.cli import main
from taskrouter.packaging.images import image_uri

REGION = "eu-west-1"
INSTANCE = "ml.g4dn.xlarge"  # moto's instance type list predates ml.g5 (the real default)


def fake_archive(root: Path, content: str) -> Path:
    """A small model.tar.gz with a manifest naming a base and an adapter (deploy never looks at the weights)."""
    stage = root / f"stage-{content}"
    (stage / "code").mkdir(parents=True)
    (stage / "code" / "inference.py").write_text(f"# {content}\n")
    write_manifest(stage, file_manifest(stage, {"name": "demo", "base_model": "tiny", "adapters": {"demo": {}}}))
    out = root / content / "model.tar.gz"
    write_archive(stage, out)
    return out


SMOKE_ANSWER = {"task": "meeting_recap", "event": "start", "confidence": 0.9, "model": "tiny", "adapter": "demo",
                "candidates": [{"task": "meeting_recap", "p": 0.9}, {"task": "none", "p": 0.1}]}


def endpoint_answers(*bodies) -> None:
    """Queue what moto's endpoint answers to the next distinct requests (a repeated request gets the same one)."""
    requests.post("http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results", json={
        "region": REGION, "results": [{"Body": json.dumps(b), "ContentType": "application/json"} for b in bodies]})


@pytest.fixture
def aws(monkeypatch):
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket="models", CreateBucketConfiguration={"LocationConstraint": REGION})
        connection = dep.connect(REGION)
        monkeypatch.setattr(dep, "connect", lambda region=None: connection)  # the CLI gets the hooked clients
        endpoint_answers(SMOKE_ANSWER)  # the answer deploy's smoke request gets
        yield connection


@pytest.fixture
def role(aws) -> str:
    return aws.client("iam").create_role(RoleName="sagemaker-exec", AssumeRolePolicyDocument="{}")["Role"]["Arn"]


def plan(archive: Path, role: str, **kw) -> dep.DeployPlan:
    return dep.DeployPlan(archive, "router", role, "models", **{"instance_type": INSTANCE, **kw})


def emulate_update_endpoint(aws: dep.Aws, new_config_sticks: bool = True) -> list:
    """moto has no UpdateEndpoint: emulate it (or a rolled-back one) with delete + create."""
    sm, calls = aws.client("sagemaker"), []

    def update(params, **_):
        body = json.loads(params["body"])
        calls.append(body)
        old = sm.describe_endpoint(EndpointName=body["EndpointName"])["EndpointConfigName"]
        sm.delete_endpoint(EndpointName=body["EndpointName"])
        arn = sm.create_endpoint(EndpointName=body["EndpointName"],
                                 EndpointConfigName=body["EndpointConfigName"] if new_config_sticks else old)
        return AWSResponse("https://sagemaker", 200, {}, None), {"EndpointArn": arn["EndpointArn"]}

    sm.meta.events.register("before-call.sagemaker.UpdateEndpoint", update)
    return calls


def test_image_uri_table():
    assert image_uri("us-east-1") == ("763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:"
                                      "2.6.0-transformers5.5.3-gpu-py312-cu124-ubuntu22.04")
    assert image_uri("eu-south-1", "ml.m5.xlarge").startswith("692866216735.dkr.ecr.eu-south-1.amazonaws.com/")
    assert "-cpu-py312" in image_uri("eu-south-1", "ml.m5.xlarge")
    assert ".amazonaws.com.cn/" in image_uri("cn-north-1")
    with pytest.raises(ValueError, match="--region mars-1.*--image-uri"):
        image_uri("mars-1")


def test_deploy_creates_model_config_endpoint_and_scaling(aws, role, tmp_path):
    archive = fake_archive(tmp_path, "v1")
    desc = dep.deploy(aws, plan(archive, role, scaling=dep.Scaling(2, 4, 50), env={"TASKROUTER_CACHE_MB": "256"}),
                      poll_seconds=0)
    sm, digest = aws.client("sagemaker"), dep.archive_digest(archive)
    name = f"router-{digest[:12]}"
    assert desc["EndpointStatus"] == "InService" and desc["EndpointConfigName"] == name
    container = sm.describe_model(ModelName=name)["PrimaryContainer"]
    assert container["Image"] == image_uri(REGION, INSTANCE)
    assert container["ModelDataUrl"] == f"s3://models/taskrouter/router/{digest[:12]}/model.tar.gz"
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["Environment"]["TASKROUTER_DEFAULT_ADAPTER"] == "demo"
    assert container["Environment"]["TASKROUTER_CACHE_MB"] == "256"
    assert container["Environment"]["MALLOC_ARENA_MAX"] == "2"
    assert container["Environment"]["MALLOC_MMAP_THRESHOLD_"] == "131072"
    variant = sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == (INSTANCE, 2)
    head = aws.client("s3").head_object(Bucket="models", Key=f"taskrouter/router/{digest[:12]}/model.tar.gz")
    assert head["Metadata"]["sha256"] == digest
    scaling = aws.client("application-autoscaling")
    target = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == \
        ("endpoint/router/variant/AllTraffic", 2, 4)
    policy = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling" and config["TargetValue"] == 50
    assert config["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"


def test_redeploy_is_a_noop_and_a_new_artifact_updates_in_place(aws, role, tmp_path):
    first, second = fake_archive(tmp_path, "v1"), fake_archive(tmp_path, "v2")
    calls = emulate_update_endpoint(aws)
    dep.deploy(aws, plan(first, role, scaling=dep.Scaling(1, 3, 80)), poll_seconds=0)
    dep.deploy(aws, plan(first, role), poll_seconds=0)
    assert calls == []
    desc = dep.deploy(aws, plan(second, role), poll_seconds=0)  # no --min/--max: keeps the registered scaling
    new = f"router-{dep.archive_digest(second)[:12]}"
    assert len(calls) == 1 and desc["EndpointConfigName"] == new
    sm = aws.client("sagemaker")
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == [new]
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == [new]
    assert dep.current_scaling(aws, "router") == dep.Scaling(1, 3, 80.0)


def test_a_rolled_back_update_is_an_error_and_keeps_auto_scaling(aws, role, tmp_path):
    emulate_update_endpoint(aws, new_config_sticks=False)
    dep.deploy(aws, plan(fake_archive(tmp_path, "v1"), role, scaling=dep.Scaling(1, 3, 80)), poll_seconds=0)
    with pytest.raises(dep.DeployError, match="the update was rolled back"):
        dep.deploy(aws, plan(fake_archive(tmp_path, "v2"), role, instance_type="ml.m5.xlarge"), poll_seconds=0)
    assert dep.current_scaling(aws, "router") == dep.Scaling(1, 3, 80.0)  # deregistered for the retype, back again


def test_a_timed_out_update_keeps_auto_scaling(aws, role, tmp_path, monkeypatch):
    emulate_update_endpoint(aws)
    dep.deploy(aws, plan(fake_archive(tmp_path, "v1"), role, scaling=dep.Scaling(2, 5, 60)), poll_seconds=0)
    second = fake_archive(tmp_path, "v2")
    new = f"router-{dep.archive_digest(second)[:12]}"

    def updating(parsed, **_):  # the update never ends
        if parsed.get("EndpointConfigName") == new:
            parsed.update(EndpointStatus="Updating")

    aws.client("sagemaker").meta.events.register("after-call.sagemaker.DescribeEndpoint", updating)
    with pytest.raises(dep.DeployError, match="still Updating after 0 s"):
        dep.deploy(aws, plan(second, role, instance_type="ml.m5.xlarge"), poll_seconds=0, timeout=0)
    assert dep.current_scaling(aws, "router") == dep.Scaling(2, 5, 60.0)


def test_no_wait_refuses_an_update_that_would_leave_scaling_deregistered(aws, role, tmp_path):
    emulate_update_endpoint(aws)
    dep.deploy(aws, plan(fake_archive(tmp_path, "v1"), role, scaling=dep.Scaling(1, 2)), poll_seconds=0)
    second = fake_archive(tmp_path, "v2")
    with pytest.raises(dep.DeployError, match="--no-wait: this update changes the instance type"):
        dep.deploy(aws, plan(second, role, instance_type="ml.m5.xlarge"), wait=False)
    desc = dep.deploy(aws, plan(second, role), wait=False)  # same type: scaling stays on
    assert desc["EndpointConfigName"] == f"router-{dep.archive_digest(second)[:12]}"
    assert dep.current_scaling(aws, "router") == dep.Scaling(1, 2, 100.0)


@pytest.mark.parametrize("answer, message", [
    ({**SMOKE_ANSWER, "task": "launch_rockets"}, "task 'launch_rockets' is not one of the request's"),
    ({**SMOKE_ANSWER, "model": "gpt-2"}, "model 'gpt-2', not the artifact's base 'tiny'"),
    ({**SMOKE_ANSWER, "adapter": None}, "adapter None, not 'demo'"),
])
def test_deploy_fails_loudly_when_the_endpoint_answers_wrongly(tmp_path, answer, message, monkeypatch):
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket="models", CreateBucketConfiguration={"LocationConstraint": REGION})
        connection = dep.connect(REGION)
        monkeypatch.setattr(dep, "connect", lambda region=None: connection)
        endpoint_answers(answer)
        role = connection.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        with pytest.raises(SystemExit) as info:
            main(["deploy", "--artifact", str(fake_archive(tmp_path, "v1")), "--endpoint-name", "router", "--role",
                  role, "--bucket", "models", "--instance-type", INSTANCE, "--poll-seconds", "0",
                  "--min-instances", "1", "--max-instances", "2"])
        assert message in str(info.value) and "is InService but answered the smoke request wrongly" in str(info.value)
        assert dep.current_scaling(connection, "router") == dep.Scaling(1, 2, 100.0)


def test_deploy_compares_with_the_answer_package_verify_recorded(aws, role, tmp_path):
    archive = fake_archive(tmp_path, "v1")
    archive.with_name(dep.VERIFIED).write_text(json.dumps({"sha256": dep.archive_digest(archive),
                                                           "answers": [{**SMOKE_ANSWER, "task": "prepare_a_quote"}]}))
    with pytest.raises(dep.DeployError, match="task 'meeting_recap', but package verify got 'prepare_a_quote'"):
        dep.deploy(aws, plan(archive, role), poll_seconds=0)


def test_a_failed_endpoint_gives_its_failure_reason(aws, role, tmp_path, capsys):
    def failed(parsed, **_):
        parsed.update(EndpointStatus="Failed", FailureReason="CannotStartContainerError: check the container logs")

    aws.client("sagemaker").meta.events.register("after-call.sagemaker.DescribeEndpoint", failed)
    archive = fake_archive(tmp_path, "v1")
    with pytest.raises(SystemExit) as info:
        main(["deploy", "--artifact", str(archive), "--endpoint-name", "router", "--role", role, "--bucket", "models",
              "--instance-type", INSTANCE, "--poll-seconds", "0"])
    assert str(info.value) == "error: endpoint router is Failed: CannotStartContainerError: check the container logs"
    with pytest.raises(dep.DeployError, match="is Failed .* cannot be updated: package delete --endpoint-name router"):
        dep.deploy(aws, plan(fake_archive(tmp_path, "v2"), role), poll_seconds=0)


@pytest.mark.parametrize("change, message", [
    ({"--bucket": "nope"}, "--bucket nope: no such bucket (create it: aws s3 mb s3://nope --region eu-west-1)"),
    ({"--role": "admin"}, "--role 'admin': not an IAM role ARN"),
    ({"--role": "arn:aws:iam::123456789012:role/ghost"}, "--role arn:aws:iam::123456789012:role/ghost: no such IAM role"),
    ({"--endpoint-name": "bad_name!"}, "--endpoint-name 'bad_name!': 1-63 letters, digits and hyphens"),
    ({"--max-instances": "0", "--min-instances": "2"}, "--max-instances 0 is below --min-instances 2"),
    ({"--artifact": "missing.tar.gz"}, "--artifact missing.tar.gz: no such file"),
    ({"--min-instances": "1", "--no-wait": None}, "--no-wait: auto scaling"),
])
def test_deploy_errors_are_one_line(aws, role, tmp_path, change, message):
    args = {"--artifact": str(fake_archive(tmp_path, "v1")), "--endpoint-name": "router", "--role": role,
            "--bucket": "models", "--instance-type": INSTANCE, "--poll-seconds": "0", **change}
    with pytest.raises(SystemExit) as info:
        main(["deploy", *[x for kv in args.items() for x in kv if x is not None]])
    assert str(info.value).startswith(f"error: {message}") and "\n" not in str(info.value)
    assert aws.client("sagemaker").list_endpoints()["Endpoints"] == []


def test_missing_credentials_and_region(tmp_path, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION",
                "AWS_REGION", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    archive = fake_archive(tmp_path, "v1")
    base = ["deploy", "--artifact", str(archive), "--endpoint-name", "router", "--role",
            "arn:aws:iam::123456789012:role/sm", "--bucket", "models"]
    with pytest.raises(SystemExit, match="^error: no AWS region: pass --region or set AWS_DEFAULT_REGION$"):
        main(base)
    with pytest.raises(SystemExit, match="^error: no AWS credentials found"):
        main(base + ["--region", REGION])
    with pytest.raises(SystemExit, match="^error: no AWS credentials found"):
        main(["delete", "--endpoint-name", "router", "--region", REGION])


def test_invoke_and_delete(aws, role, tmp_path, capsys):
    dep.deploy(aws, plan(fake_archive(tmp_path, "v1"), role, scaling=dep.Scaling(1, 2)), poll_seconds=0)
    answer = {"task": "meeting_recap", "event": "start", "adapter": "demo"}
    endpoint_answers(answer)
    (tmp_path / "req.json").write_text(json.dumps({"messages": [{"role": "user", "content": "recap please"}],
                                                   "tasks": [{"name": "meeting_recap"}]}))
    main(["invoke", "--endpoint-name", "router", "--request", str(tmp_path / "req.json"), "--region", REGION])
    assert json.loads(capsys.readouterr().out) == answer
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(SystemExit, match="--request .*bad.json"):
        main(["invoke", "--endpoint-name", "router", "--request", str(tmp_path / "bad.json")])

    main(["delete", "--endpoint-name", "router"])
    deleted = capsys.readouterr().out.splitlines()
    assert deleted[0] == "deleted endpoint router" and len(deleted) == 3
    sm = aws.client("sagemaker")
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == [] and dep.current_scaling(aws, "router") is None
    with pytest.raises(SystemExit, match="^error: --endpoint-name router: no such endpoint in eu-west-1$"):
        main(["delete", "--endpoint-name", "router"])


def test_invoke_names_the_models_status_and_body(aws, role, tmp_path):
    dep.deploy(aws, plan(fake_archive(tmp_path, "v1"), role), poll_seconds=0)
    body = json.dumps({"error": {"code": "unsupported_media_type", "message": "content type 'text/plain'"}})

    def model_error(**_):  # what the runtime sends for a container's 415: ModelError (HTTP 424)
        return AWSResponse("https://runtime.sagemaker", 424, {}, None), {
            "Error": {"Code": "ModelError", "Message": "Received client error (415) from primary"},
            "OriginalStatusCode": 415, "OriginalMessage": body}

    aws.client("sagemaker-runtime").meta.events.register("before-call.sagemaker-runtime.InvokeEndpoint", model_error)
    (tmp_path / "req.json").write_text(json.dumps({"messages": [], "tasks": []}))
    with pytest.raises(SystemExit) as info:
        main(["invoke", "--endpoint-name", "router", "--request", str(tmp_path / "req.json")])
    assert str(info.value) == f"error: endpoint router answered 415: {body}"
