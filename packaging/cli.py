"""Build, verify and deploy the SageMaker model.tar.gz (also the `package` console script).

  package build --adapter NAME [--base PATH|HUB_ID|embedded] [--quantize nf4|bf16] --out dist/
  package verify dist/NAME/model.tar.gz
  package deploy --artifact dist/NAME/model.tar.gz --endpoint-name NAME --role ARN --bucket BUCKET
  package invoke --endpoint-name NAME --request req.json
  package delete --endpoint-name NAME
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskrouter.resources import adapters_dir

from .archive import MANIFEST_NAME


def _bytes_bar(desc: str):
    """A progress(total) factory for a tqdm bar in bytes, on stderr."""
    def start(total: int):
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr,
                   leave=False)
        return bar.update
    return start


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def add_build(sub) -> None:
    p = sub.add_parser("build", help="write dist/NAME/model.tar.gz (base + adapters + code/)",
                       description="Assemble the SageMaker artifact: base weights (NF4 or bf16) and tokenizer at the "
                                   "top level, taskrouter.json, adapters/NAME/, code/ (inference.py, requirements.txt, "
                                   "the taskrouter library, wheels/ of what the image lacks) and taskrouter-manifest.json "
                                   "with sha256 checksums. Reproducible: the same inputs give the same archive checksum.")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME",
                   help="adapter under --adapters-dir to include (repeatable; the first names the artifact)")
    p.add_argument("--base", help="base model: a local directory, a Hugging Face hub id (must be cached when "
                                  "HF_HUB_OFFLINE=1) or 'embedded' (default: the base named in the adapters' router.json)")
    p.add_argument("--quantize", choices=["nf4", "bf16"],
                   help="base weights format (default: nf4 when every adapter was trained on an NF4 base, "
                        "as QLoRA adapters are; else bf16)")
    p.add_argument("--adapters-dir", type=Path, default=adapters_dir(), help="where adapters live "
                                                                                   "(default: model_artifacts/adapters)")
    p.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist/)")
    p.add_argument("--name", help="artifact name, i.e. the folder under --out (default: the first adapter)")
    p.add_argument("--compress-level", type=int, default=1, choices=range(0, 10), metavar="0-9",
                   help="gzip level (default 1: weights barely compress further; Gemma 270M bf16 is 395 MiB at "
                        "level 1 and 389 MiB at level 6, for twice the time)")
    p.add_argument("--quiet", action="store_true", help="print only the summary, not every file's checksum")


def run_build(args: argparse.Namespace) -> None:
    from .build import BuildError, build

    if not args.adapter and not args.base:
        sys.exit("error: pass --adapter NAME (or --base to package a bare base model)")
    try:
        result = build(args.adapter, args.out, base=args.base, quantize=args.quantize, adapters_dir=args.adapters_dir,
                       name=args.name, compresslevel=args.compress_level, progress=_bytes_bar("archiving"))
    except BuildError as exc:
        sys.exit(f"error: {exc}")
    files = result.manifest["files"]
    if not args.quiet:
        for rel, info in files.items():
            print(f"{info['sha256']}  {info['size']:>12}  {rel}")
    print(f"{result.archive}: {_size(result.size)} ({len(files)} files, {_size(sum(f['size'] for f in files.values()))} "
          f"unpacked), base {result.manifest['base_model']} {result.manifest['quantization']}, "
          f"adapters: {', '.join(result.manifest['adapters']) or 'none'}")
    print(f"sha256 {result.sha256}  built in {result.seconds:.1f} s (weights {result.phases['weights']:.1f} s, "
          f"archive {result.phases['archive']:.1f} s); manifest: {result.archive.with_name(MANIFEST_NAME)}")


def add_verify(sub) -> None:
    p = sub.add_parser("verify", help="route a conversation through the artifact, here and under SageMaker's model server",
                       description="Unpack model.tar.gz into a temporary directory and check its files against "
                                   "taskrouter-manifest.json; route a 3-turn conversation through its code/inference.py "
                                   "in a fresh isolated Python process (the artifact's code/ first on sys.path); then "
                                   "through the SageMaker Hugging Face image's own model server (multi-model-server and "
                                   "the inference toolkit at the image's versions, in a cached venv; needs Java), on "
                                   "127.0.0.1, with code/requirements.txt installed without a package index as at "
                                   "container start. The answers must agree and a malformed body must get 400. "
                                   "Exit status 1 on any failure.")
    p.add_argument("artifact", type=Path, help="dist/NAME/model.tar.gz")
    p.add_argument("--request", type=Path, help="JSON request, or a list of requests sent in order, instead of the "
                                               "3-turn smoke conversation over the artifact's first adapter")
    p.add_argument("--no-container", action="store_true",
                   help="skip the model-server run (for an artifact served on-prem by taskrouter serve)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the handler (default 900)")


def run_verify(args: argparse.Namespace) -> None:
    from .verify import VerifyError, verify

    try:
        request = json.loads(args.request.read_text()) if args.request else None
    except (OSError, ValueError) as exc:
        sys.exit(f"error: --request {args.request}: {exc}")
    if request is not None and not isinstance(request, list):
        request = [request]
    try:
        result = verify(args.artifact, request, args.timeout, container=not args.no_container,
                        say=lambda line: print(line, file=sys.stderr))
    except VerifyError as exc:
        sys.exit(f"error: {args.artifact}: {exc}")
    for answer in result.answers:
        print(json.dumps(answer))
    t = result.timings
    where = "here and under the SageMaker model server" if "container_start_s" in t else "here"
    line = (f"ok ({where}): model_fn {t['model_fn_s']:.1f} s, requests "
            f"{', '.join(f'{ms:.0f}' for ms in t['request_ms'])} ms")
    if "container_start_s" in t:
        line += (f"; model server ready in {t['container_start_s']:.0f} s, requests "
                 f"{', '.join(f'{ms:.0f}' for ms in t['container_request_ms'])} ms")
    print(f"{line}; task {result.answers[-1]['task']}, adapter {result.answers[-1].get('adapter')}; "
          f"library {result.library}")


def _aws_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-name", required=True, help="SageMaker endpoint name")
    p.add_argument("--region", help="AWS region (default: the AWS config / AWS_DEFAULT_REGION)")


def add_deploy(sub) -> None:
    p = sub.add_parser("deploy", help="upload to S3 and create or update a SageMaker endpoint",
                       description="Upload the artifact to s3://BUCKET/PREFIX/ENDPOINT/<sha12>/model.tar.gz, create the "
                                   "model (Hugging Face PyTorch inference DLC for the region, script mode "
                                   "SAGEMAKER_PROGRAM=inference.py) and endpoint config, create the endpoint or update it "
                                   "when it exists, wait until InService, invoke it once with the smoke request of "
                                   "`package verify` (the answer must be valid and, when verify recorded one for this "
                                   "archive, choose the same task), and register Application Auto Scaling (target "
                                   "tracking on invocations per instance), again whatever the outcome of an update.")
    p.add_argument("--artifact", type=Path, required=True, help="dist/NAME/model.tar.gz")
    _aws_arguments(p)
    p.add_argument("--role", required=True, help="IAM role ARN SageMaker assumes (S3 read on the bucket, ECR pull, logs)")
    p.add_argument("--bucket", required=True, help="S3 bucket for the artifact (must exist, in the region)")
    p.add_argument("--prefix", default="taskrouter", help="S3 key prefix (default: taskrouter)")
    p.add_argument("--instance-type", default="ml.g5.xlarge", help="instance type (default ml.g5.xlarge: 1 A10G GPU)")
    p.add_argument("--image-uri", help="container image (default: the Hugging Face PyTorch inference DLC of the region; "
                                       "table in packaging/images.py)")
    p.add_argument("--min-instances", type=int, help="auto scaling: minimum instances (also the initial count)")
    p.add_argument("--max-instances", type=int, help="auto scaling: maximum instances")
    p.add_argument("--target-invocations", type=float, default=100.0,
                   help="auto scaling: target invocations per instance per minute (default 100)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra container environment, e.g. TASKROUTER_CACHE_MB=1024 (repeatable)")
    p.add_argument("--no-wait", action="store_true", help="return once the endpoint is being created or updated")
    p.add_argument("--poll-seconds", type=float, default=15, help="status polling interval (default 15)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for InService (default 3600)")


def run_deploy(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .deploy import DeployError, DeployPlan, Scaling, connect, deploy

    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"error: --env {item!r}: expected KEY=VALUE")
        env[key] = value
    scaling = None
    if args.min_instances is not None or args.max_instances is not None:
        low = args.min_instances if args.min_instances is not None else 1
        scaling = Scaling(low, args.max_instances if args.max_instances is not None else low, args.target_invocations)
    if scaling and args.no_wait:
        sys.exit("error: --no-wait: auto scaling (--min/--max-instances) needs the endpoint InService; drop one")
    plan = DeployPlan(args.artifact, args.endpoint_name, args.role, args.bucket, args.instance_type, args.image_uri,
                      args.prefix, scaling, env)
    bar = tqdm(desc=f"endpoint {args.endpoint_name}", bar_format="{desc}: {postfix} [{elapsed}]", file=sys.stderr,
               leave=False)
    try:
        desc = deploy(connect(args.region), plan, wait=not args.no_wait, poll_seconds=args.poll_seconds,
                      timeout=args.timeout, upload_progress=_bytes_bar("uploading"), on_status=bar.set_postfix_str)
    except DeployError as exc:
        sys.exit(f"error: {exc}")
    finally:
        bar.close()
    status = desc.get("EndpointStatus", "creating (not waited for)")
    print(f"endpoint {args.endpoint_name}: {status}; config {desc['EndpointConfigName']}; "
          f"model data {desc['ModelDataUrl']}; image {desc['Image']}")
    if desc.get("Answer"):
        answer = desc["Answer"]
        print(f"smoke request answered: task {answer['task']} ({answer.get('event')}, confidence "
              f"{answer.get('confidence', 0):.3f}), model {answer.get('model')}, adapter {answer.get('adapter')}")
    if scaling:
        print(f"auto scaling: {scaling.min_instances}-{scaling.max_instances} instances, target "
              f"{scaling.target_invocations:g} invocations/instance/minute")


def add_invoke(sub) -> None:
    p = sub.add_parser("invoke", help="send one JSON request to an endpoint and print the answer")
    _aws_arguments(p)
    p.add_argument("--request", type=Path, required=True, help="JSON request file (the /invocations body)")


def run_invoke(args: argparse.Namespace) -> None:
    from .deploy import DeployError, connect, invoke

    try:
        body = args.request.read_bytes()
        json.loads(body)
    except (OSError, ValueError) as exc:
        sys.exit(f"error: --request {args.request}: {exc}")
    try:
        print(invoke(connect(args.region), args.endpoint_name, body))
    except DeployError as exc:
        sys.exit(f"error: {exc}")


def add_delete(sub) -> None:
    p = sub.add_parser("delete", help="delete an endpoint, its endpoint config, model and auto scaling")
    _aws_arguments(p)


def run_delete(args: argparse.Namespace) -> None:
    from .deploy import DeployError, connect, delete

    try:
        for item in delete(connect(args.region), args.endpoint_name):
            print(f"deleted {item}")
    except DeployError as exc:
        sys.exit(f"error: {exc}")


ACTIONS = {"build": (add_build, run_build), "verify": (add_verify, run_verify), "deploy": (add_deploy, run_deploy),
           "invoke": (add_invoke, run_invoke), "delete": (add_delete, run_delete)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for add, _ in ACTIONS.values():
        add(sub)


def run(args: argparse.Namespace) -> None:
    ACTIONS[args.action][1](args)


def main(argv: list[str] | None = None) -> None:
    """The `package` console script."""
    parser = argparse.ArgumentParser(prog="package", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))
