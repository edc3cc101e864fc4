"""Deploy a model.tar.gz to a SageMaker real-time endpoint with boto3; invoke and delete it.

Names derive from the archive's sha256 (model and endpoint config `ENDPOINT-<sha12>`),
so redeploying the same archive is a no-op and a new one is a rolling `update_endpoint`.
Auto scaling is Application Auto Scaling target tracking on
SageMakerVariantInvocationsPerInstance for the endpoint's single variant.
AWS failures surface as `DeployError` with a one-line message.
"""
from __future__ import annotations

import json
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from taskrouter.heap import MALLOC

from .archive import MANIFEST_NAME, sha256_file

VERIFIED = "verified.json"  # written beside the archive by `package verify`: its sha256 and the answers it got
VARIANT = "AllTraffic"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$")
TRANSITIONAL = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}


class DeployError(Exception):
    """An AWS operation that cannot proceed; the message is one line naming the cause."""


@dataclass
class Scaling:
    """Target tracking on invocations per instance, between min and max instances."""

    min_instances: int = 1
    max_instances: int = 1
    target_invocations: float = 100.0  # per instance per minute

    def validate(self) -> None:
        if self.min_instances < 1:
            raise DeployError("--min-instances must be at least 1 for a real-time endpoint")
        if self.max_instances < self.min_instances:
            raise DeployError(f"--max-instances {self.max_instances} is below --min-instances {self.min_instances}")
        if self.target_invocations <= 0:
            raise DeployError("--target-invocations must be positive (invocations per instance per minute)")


@dataclass
class Aws:
    """A boto3 session for one region and its clients, created on first use."""

    session: boto3.session.Session
    clients: dict = field(default_factory=dict)

    @property
    def region(self) -> str:
        return self.session.region_name

    def client(self, service: str):
        if service not in self.clients:
            self.clients[service] = self.session.client(service)
        return self.clients[service]


def connect(region: str | None = None) -> Aws:
    session = boto3.session.Session(region_name=region)
    if not session.region_name:
        raise DeployError("no AWS region: pass --region or set AWS_DEFAULT_REGION")
    return Aws(session)


@contextmanager
def aws_errors() -> Iterator[None]:
    """Turn botocore exceptions into one-line DeployErrors."""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise DeployError("no AWS credentials found: configure them (aws configure, AWS_PROFILE, "
                          "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an instance role)") from None
    except ClientError as exc:
        error, op = exc.response.get("Error", {}), exc.operation_name
        message = error.get("Message") or str(exc)
        message = message if len(message) <= 400 else message[:400] + "..."
        hint = " (check --role: SageMaker must be able to assume it)" if "role" in message.lower() else ""
        raise DeployError(f"{op}: {error.get('Code', 'error')}: {message}{hint}") from None
    except BotoCoreError as exc:
        raise DeployError(f"AWS: {exc}") from None


def _exists(call: Callable, **kwargs) -> dict | None:
    """The description, or None when SageMaker says the resource does not exist."""
    try:
        return call(**kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("ValidationException", "ValidationError") and \
                "Could not find" in exc.response["Error"].get("Message", ""):
            return None
        raise


def check_role(aws: Aws, role_arn: str) -> None:
    """The role ARN is well-formed and the role exists (when IAM lets us look)."""
    match = ROLE_ARN.match(role_arn or "")
    if not match:
        raise DeployError(f"--role {role_arn!r}: not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
    try:
        aws.client("iam").get_role(RoleName=match.group(1))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code == "NoSuchEntity":
            raise DeployError(f"--role {role_arn}: no such IAM role") from None
        if code not in ("AccessDenied", "AccessDeniedException"):  # no iam:GetRole: SageMaker will tell
            raise


def read_manifest(archive: Path) -> dict:
    """The artifact manifest from beside the archive, else from inside it."""
    beside = archive.with_name(MANIFEST_NAME)
    if beside.exists():
        return json.loads(beside.read_text())
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name == MANIFEST_NAME:
                return json.load(tar.extractfile(member))
    raise DeployError(f"--artifact {archive}: no {MANIFEST_NAME}; build it with `package build`")


def archive_digest(archive: Path) -> str:
    """The archive's sha256 from its .sha256 file when current, else computed."""
    sidecar = archive.with_name(archive.name + ".sha256")
    if sidecar.exists() and sidecar.stat().st_mtime >= archive.stat().st_mtime:
        return sidecar.read_text().split()[0]
    return sha256_file(archive)


def upload(aws: Aws, archive: Path, bucket: str, key: str, digest: str,
           progress: Callable[[int], Callable[[int], None]] | None = None) -> str:
    """Upload the archive to s3://bucket/key unless an object with the same sha256 is already there."""
    s3 = aws.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("404", "NoSuchBucket"):
            raise DeployError(f"--bucket {bucket}: no such bucket (create it: aws s3 mb s3://{bucket} "
                              f"--region {aws.region})") from None
        if code in ("301", "PermanentRedirect", "400"):
            raise DeployError(f"--bucket {bucket}: not in {aws.region}; SageMaker needs the bucket in the "
                              f"endpoint's region") from None
        if code in ("403", "AccessDenied"):
            raise DeployError(f"--bucket {bucket}: access denied to these credentials") from None
        raise
    uri = f"s3://{bucket}/{key}"
    try:
        if s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256") == digest:
            return uri
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
            raise
    s3.upload_file(str(archive), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}},
                   Callback=progress(archive.stat().st_size) if progress else None)
    return uri


def current_scaling(aws: Aws, endpoint: str) -> Scaling | None:
    """The endpoint variant's registered auto scaling, if any."""
    scaling = aws.client("application-autoscaling")
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource],
                                                ScalableDimension=DIMENSION)["ScalableTargets"]
    if not targets:
        return None
    policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource,
                                                 ScalableDimension=DIMENSION)["ScalingPolicies"]
    values = [p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] for p in policies
              if p.get("PolicyType") == "TargetTrackingScaling"]
    return Scaling(targets[0]["MinCapacity"], targets[0]["MaxCapacity"], values[0] if values else 100.0)


def apply_scaling(aws: Aws, endpoint: str, scaling: Scaling) -> None:
    """Register the variant as a scalable target and track invocations per instance."""
    client = aws.client("application-autoscaling")
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    client.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=DIMENSION,
                                    MinCapacity=scaling.min_instances, MaxCapacity=scaling.max_instances)
    client.put_scaling_policy(
        PolicyName=f"{endpoint}-invocations", ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension=DIMENSION, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(scaling.target_invocations),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60,
        })


def remove_scaling(aws: Aws, endpoint: str) -> None:
    """Deregister the variant (its policies go with it); required before an update that changes the instance type."""
    if current_scaling(aws, endpoint) is not None:
        aws.client("application-autoscaling").deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=f"endpoint/{endpoint}/variant/{VARIANT}",
            ScalableDimension=DIMENSION)


def wait_in_service(aws: Aws, endpoint: str, config: str, poll_seconds: float = 15, timeout: float = 3600,
                    on_status: Callable[[str], None] | None = None) -> dict:
    """Poll until the endpoint is InService on `config`; Failed (or a rolled-back update) raises with the reason."""
    sm = aws.client("sagemaker")
    deadline = time.monotonic() + timeout
    while True:
        desc = sm.describe_endpoint(EndpointName=endpoint)
        status = desc["EndpointStatus"]
        if on_status:
            on_status(status)
        if status == "InService":
            if desc.get("EndpointConfigName") != config:
                raise DeployError(f"endpoint {endpoint}: the update was rolled back: "
                                  f"{desc.get('FailureReason', 'no reason given')}")
            return desc
        if status not in TRANSITIONAL:
            raise DeployError(f"endpoint {endpoint} is {status}: {desc.get('FailureReason', 'no reason given')}")
        if time.monotonic() > deadline:
            raise DeployError(f"endpoint {endpoint} still {status} after {timeout:.0f} s; "
                              f"check the CloudWatch logs of /aws/sagemaker/Endpoints/{endpoint}")
        time.sleep(poll_seconds)


@dataclass
class DeployPlan:
    archive: Path
    endpoint: str
    role: str
    bucket: str
    instance_type: str = "ml.g5.xlarge"
    image_uri: str | None = None
    prefix: str = "taskrouter"
    scaling: Scaling | None = None
    env: dict[str, str] = field(default_factory=dict)


def container_env(manifest: dict, region: str, extra: dict[str, str]) -> dict[str, str]:
    """Environment of the model container: the toolkit's script mode plus taskrouter settings."""
    env = {
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": region,
        "HF_HUB_OFFLINE": "1",  # everything is in the artifact: the container never calls the hub
        # glibc's malloc as `serve` sets it, so the RSS stays flat (taskrouter/heap.py)
        **{name: str(value) for name, (_, value) in MALLOC.items()},
    }
    adapter = default_adapter(manifest)
    if adapter:
        env["TASKROUTER_DEFAULT_ADAPTER"] = adapter
    return {**env, **extra}


def default_adapter(manifest: dict) -> str | None:
    """The adapter the endpoint uses when a request names none: the artifact's namesake, else its first."""
    adapters = sorted(manifest.get("adapters", {}))
    if not adapters:
        return None
    return manifest["name"] if manifest.get("name") in adapters else adapters[0]


def recorded_answers(archive: Path, digest: str) -> list[dict] | None:
    """The answers `package verify` recorded for this very archive (verified.json beside it), if any."""
    record = archive.with_name(VERIFIED)
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    return data["answers"] if data.get("sha256") == digest else None


def check_endpoint(aws: Aws, endpoint: str, manifest: dict, expected: list[dict] | None) -> dict:
    """Invoke the endpoint once with the first turn of verify's smoke conversation; the answer must name one of its
    tasks, come from the artifact's base and default adapter and, when `package verify` recorded an answer for this
    archive, choose the same task. Raises DeployError saying what came back."""
    from .verify import SMOKE_TASKS, smoke_requests

    request = smoke_requests(default_adapter(manifest))[0]
    body = invoke(aws, endpoint, json.dumps(request).encode())
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    wrong = None
    if not isinstance(answer, dict):
        wrong = f"not a JSON answer: {body[:200]!r}"
    elif answer.get("task") not in {t["name"] for t in SMOKE_TASKS} | {"none"}:
        wrong = f"task {answer.get('task')!r} is not one of the request's"
    elif manifest.get("base_model") and answer.get("model") != manifest["base_model"]:
        wrong = f"model {answer.get('model')!r}, not the artifact's base {manifest['base_model']!r}"
    elif request.get("adapter") and answer.get("adapter") != request["adapter"]:
        wrong = f"adapter {answer.get('adapter')!r}, not {request['adapter']!r}"
    elif expected and answer.get("task") != expected[0].get("task"):
        wrong = f"task {answer.get('task')!r}, but package verify got {expected[0].get('task')!r} for this archive"
    if wrong:
        raise DeployError(f"endpoint {endpoint} is InService but answered the smoke request wrongly ({wrong}); "
                          f"it is serving that now: deploy the previous artifact or package delete it")
    return answer


def deploy(aws: Aws, plan: DeployPlan, wait: bool = True, poll_seconds: float = 15, timeout: float = 3600,
           upload_progress=None, on_status: Callable[[str], None] | None = None) -> dict:
    """Upload, create model + endpoint config, create or update the endpoint, wait, apply auto scaling."""
    from .images import image_uri

    if not ENDPOINT_NAME.match(plan.endpoint):
        raise DeployError(f"--endpoint-name {plan.endpoint!r}: 1-63 letters, digits and hyphens")
    if not plan.archive.is_file():
        raise DeployError(f"--artifact {plan.archive}: no such file")
    if plan.scaling:
        plan.scaling.validate()
    try:
        image = plan.image_uri or image_uri(aws.region, plan.instance_type)
    except ValueError as exc:
        raise DeployError(str(exc)) from None
    manifest = read_manifest(plan.archive)
    digest = archive_digest(plan.archive)
    name = f"{plan.endpoint[:50]}-{digest[:12]}"
    sm = aws.client("sagemaker")
    with aws_errors():
        check_role(aws, plan.role)
        model_data = upload(aws, plan.archive, plan.bucket, f"{plan.prefix}/{plan.endpoint}/{digest[:12]}/model.tar.gz",
                            digest, upload_progress)
        if _exists(sm.describe_model, ModelName=name) is None:
            sm.create_model(ModelName=name, ExecutionRoleArn=plan.role, PrimaryContainer={
                "Image": image, "ModelDataUrl": model_data,
                "Environment": container_env(manifest, aws.region, plan.env)})
        if _exists(sm.describe_endpoint_config, EndpointConfigName=name) is None:
            sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
                "VariantName": VARIANT, "ModelName": name, "InstanceType": plan.instance_type,
                "InitialInstanceCount": plan.scaling.min_instances if plan.scaling else 1,
                "ContainerStartupHealthCheckTimeoutInSeconds": 900, "ModelDataDownloadTimeoutInSeconds": 1800}])
        existing = _exists(sm.describe_endpoint, EndpointName=plan.endpoint)
        previous, scaling, retype = None, plan.scaling, False
        if existing is None:
            sm.create_endpoint(EndpointName=plan.endpoint, EndpointConfigName=name)
        elif existing["EndpointConfigName"] != name:
            if existing["EndpointStatus"] == "Failed":
                raise DeployError(f"endpoint {plan.endpoint} is Failed ({existing.get('FailureReason', 'no reason')})"
                                  f" and cannot be updated: package delete --endpoint-name {plan.endpoint}, then deploy")
            if existing["EndpointStatus"] in TRANSITIONAL:
                raise DeployError(f"endpoint {plan.endpoint} is {existing['EndpointStatus']}: "
                                  f"wait for it to settle, then deploy again")
            previous = existing["EndpointConfigName"]
            scaling = scaling or current_scaling(aws, plan.endpoint)
            retype = scaling is not None and instance_type(aws, previous) != plan.instance_type
            if retype and not wait:
                raise DeployError("--no-wait: this update changes the instance type of an auto-scaled endpoint, which "
                                  "needs its scaling deregistered until the update ends; drop --no-wait")
            if retype:  # SageMaker refuses an instance type change on a registered variant
                remove_scaling(aws, plan.endpoint)
            sm.update_endpoint(EndpointName=plan.endpoint, EndpointConfigName=name)
        if not wait:
            return {"EndpointName": plan.endpoint, "EndpointConfigName": name, "ModelDataUrl": model_data,
                    "Image": image}
        try:
            desc = wait_in_service(aws, plan.endpoint, name, poll_seconds, timeout, on_status)
            answer = check_endpoint(aws, plan.endpoint, manifest, recorded_answers(plan.archive, digest))
        finally:  # rolled back, timed out, failed or served: the endpoint keeps its auto scaling
            if scaling and (retype or plan.scaling):
                restore_scaling(aws, plan.endpoint, scaling)
        if previous:
            delete_config_and_models(aws, previous, keep={name})
    return {**desc, "ModelDataUrl": model_data, "Image": image, "Answer": answer}


def instance_type(aws: Aws, config: str) -> str | None:
    desc = _exists(aws.client("sagemaker").describe_endpoint_config, EndpointConfigName=config)
    return desc["ProductionVariants"][0]["InstanceType"] if desc else None


def restore_scaling(aws: Aws, endpoint: str, scaling: Scaling) -> None:
    """Register auto scaling again; when another error is already on its way, only say that this failed too."""
    import sys

    try:
        apply_scaling(aws, endpoint, scaling)
    except ClientError as exc:
        if sys.exc_info()[0] is None:
            raise
        print(f"warning: auto scaling of {endpoint} could not be registered again ({exc}); once the endpoint is "
              f"InService run: package deploy again, or aws application-autoscaling register-scalable-target",
              file=sys.stderr)


def delete_config_and_models(aws: Aws, config: str, keep: set[str] = frozenset()) -> list[str]:
    """Delete an endpoint config and the models of its variants (except `keep`); returns what was deleted."""
    sm = aws.client("sagemaker")
    desc = _exists(sm.describe_endpoint_config, EndpointConfigName=config)
    if desc is None:
        return []
    sm.delete_endpoint_config(EndpointConfigName=config)
    deleted = [f"endpoint config {config}"]
    for model in sorted({v["ModelName"] for v in desc["ProductionVariants"]} - set(keep)):
        if _exists(sm.describe_model, ModelName=model) is not None:
            sm.delete_model(ModelName=model)
            deleted.append(f"model {model}")
    return deleted


def delete(aws: Aws, endpoint: str) -> list[str]:
    """Delete the endpoint, its auto scaling, its endpoint config and its model."""
    sm = aws.client("sagemaker")
    with aws_errors():
        desc = _exists(sm.describe_endpoint, EndpointName=endpoint)
        if desc is None:
            raise DeployError(f"--endpoint-name {endpoint}: no such endpoint in {aws.region}")
        remove_scaling(aws, endpoint)
        sm.delete_endpoint(EndpointName=endpoint)
        return [f"endpoint {endpoint}"] + delete_config_and_models(aws, desc["EndpointConfigName"])


def invoke(aws: Aws, endpoint: str, body: bytes) -> str:
    """POST one JSON request to the endpoint; returns the answer's body. A 4xx/5xx of the model reaches boto3 as
    ModelError (HTTP 424) carrying the container's status and body, which the error names."""
    with aws_errors():
        try:
            response = aws.client("sagemaker-runtime").invoke_endpoint(
                EndpointName=endpoint, ContentType="application/json", Accept="application/json", Body=body)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ModelError":
                raise
            raise DeployError(f"endpoint {endpoint} answered {exc.response.get('OriginalStatusCode', '?')}: "
                              f"{exc.response.get('OriginalMessage', exc.response['Error'].get('Message'))}") from None
        return response["Body"].read().decode("utf-8")
