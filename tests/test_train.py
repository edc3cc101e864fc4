"""`taskrouter train` on tiny models: loss falls, the adapter loads and routes, resume, Falcon, SageMaker via moto."""
import io
import json
import shlex
import tarfile
from pathlib import Path

import boto3
import pytest
import torch

from taskrouter.cli import main, parse_args
from taskrouter.loading import load_model
from taskrouter.router import Router
from taskrouter.schema import parse_request
from taskrouter.training.examples import Plan, Query, encode_pack
from taskrouter.training.train import pack_loss

ROOT = Path(__file__).resolve().parents[1]
TASKS = [{"name": "meeting_recap", "description": "Write a recap of a meeting"},
         {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"}]
MESSAGES = [{"role": "user", "content": "Please write a recap of the meeting with ACME."}]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """One single-turn conversation: every example repeats the same answer."""
    path = tmp_path_factory.mktemp("data") / "one.jsonl"
    path.write_text(json.dumps({"id": "c1", "tasks": TASKS, "messages": MESSAGES,
                                "labels": [{"turn": 0, "task": "follow_up_email", "event": "start"}]}) + "\n")
    return path


def predictions(folder: Path) -> Path:
    """A closed-loop `taskrouter eval` predictions file on the `data` conversation."""
    path = folder / "predictions-adapter-one.jsonl"
    path.write_text(json.dumps({"id": "c1", "turn": 0, "task": "meeting_recap", "event": "start", "latency_ms": 1.0,
                                "valid": True}) + "\n")
    return path


def train(*argv) -> dict:
    main(["train", *map(str, argv), "--threads", "1"])
    out = Path(argv[argv.index("--out") + 1])
    return json.loads((out / "router.json").read_text())


def loss_on(model_dir: Path, adapter_dir: Path | None) -> float:
    loaded = load_model(str(model_dir), {"a": adapter_dir} if adapter_dir else None)
    pack = encode_pack(loaded.tokenizer, Plan(tuple(TASKS), (Query(tuple(MESSAGES), None, "follow_up_email", "x"),)), 1024)
    with torch.no_grad():
        return pack_loss(loaded.model, pack, loaded.device).item()


def route(model_dir: Path, adapter_dir: Path) -> dict:
    router = Router(load_model(str(model_dir), {"a": adapter_dir}))
    answer = router.route(parse_request({"messages": MESSAGES, "tasks": TASKS, "strategy": "adapter"}))
    return answer.model_dump()


def test_three_steps_reduce_the_loss_and_write_a_loadable_adapter(tiny_dir, data, tmp_path):
    import gzip

    out = tmp_path / "adapters" / "tiny-router"
    dev = tmp_path / "dev.jsonl.gz"  # read as --data is: plain or gzipped
    dev.write_bytes(gzip.compress(Path(data).read_bytes()))
    manifest = train("--base", tiny_dir, "--data", data, "--out", out, "--max-examples", 3, "--grad-accum", 1,
                     "--lr", 0.02, "--dev", dev, "--dev-turns", 1, "--augment", "wrong_current=0.5",
                     "--closed-loop", predictions(tmp_path))
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert manifest["name"] == "tiny-router" and manifest["base_model"] == "tiny-gemma3"
    assert manifest["prompt_format"] == "adapter" and manifest["quantization"] == "none"
    assert manifest["training"]["optimizer_steps"] == 3
    assert manifest["training_data"]["examples"]["by_event"] == {"start": 3}
    assert manifest["dev_metrics"]["files"][str(dev)]["turns"] == 1
    card = (out / "README.md").read_text()  # the model card, not peft's generic one
    assert card.startswith("---\nbase_model: tiny-gemma3\nlibrary_name: peft\n")
    assert manifest["train_command"] in card and f"| `{dev}` | 1 |" in card
    again = parse_args(shlex.split(manifest["train_command"])[1:])
    assert again.rank == 8 and again.augment == "wrong_current=0.5"
    assert again.closed_loop == manifest["training_data"]["closed_loop"] == [str(predictions(tmp_path))]
    assert manifest["hyper_parameters"]["augment"]["wrong_current"] == 0.5
    assert manifest["hyper_parameters"]["augment"]["rename"] == 0.2  # what is not named keeps its default
    assert loss_on(tiny_dir, out) < loss_on(tiny_dir, None) - 0.1
    answer = route(tiny_dir, out)
    assert answer["adapter"] == "a" and answer["strategy"] == "adapter" and answer["task"] in {"meeting_recap",
                                                                                               "follow_up_email", "none"}


def test_the_prompt_format_is_trained_recorded_and_replayed(tiny_dir, data, tmp_path):
    from taskrouter.training.examples import sample_packs

    out = tmp_path / "v2"
    manifest = train("--base", tiny_dir, "--data", data, "--out", out, "--max-examples", 1, "--prompt-format",
                     "adapter-v2")
    assert manifest["prompt_format"] == "adapter-v2"
    assert parse_args(shlex.split(manifest["train_command"])[1:]).prompt_format == "adapter-v2"
    tokenizer = load_model(str(tiny_dir)).tokenizer
    packs = sample_packs(tokenizer, [str(data)], 1, {"start": 1}, 0, 96, prompt_format="adapter-v2")
    head = tokenizer.decode(packs[0].head)
    assert " => " in head and "- no task fits => none" in head
    with pytest.raises(SystemExit):
        train("--base", tiny_dir, "--data", data, "--out", tmp_path / "x", "--prompt-format", "v9")


def test_resume_continues_from_the_latest_checkpoint(tiny_dir, data, tmp_path, capsys):
    out, checkpoints = tmp_path / "resumed", tmp_path / "ckpt"
    common = ["--base", tiny_dir, "--data", data, "--out", out, "--max-examples", 4, "--grad-accum", 1,
              "--save-every", 1, "--checkpoint-dir", checkpoints]
    stopped = train(*common, "--time-budget", 0)  # out of time after the first example: saves and stops
    assert stopped["training"]["stopped_by_time_budget"] and stopped["training"]["examples_seen"] == 1
    assert (checkpoints / "step-000001" / "state.json").exists()
    resumed = train(*common, "--resume")
    assert "resuming from" in capsys.readouterr().out
    assert resumed["training"]["examples_seen"] == 4 and resumed["training"]["optimizer_steps"] == 4
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000003", "step-000004"]  # only the latest kept
    with pytest.raises(SystemExit, match="other data or options"):
        train(*common[:-6], "--max-examples", 5, "--grad-accum", 1, "--save-every", 1, "--checkpoint-dir",
              checkpoints, "--resume")


def test_init_adapter_starts_from_its_weights_and_records_where_they_came_from(tiny_dir, data, tmp_path):
    first = tmp_path / "first"
    earlier = train("--base", tiny_dir, "--data", data, "--out", first, "--max-examples", 3, "--grad-accum", 1,
                    "--lr", 0.02)
    warm = train("--base", tiny_dir, "--data", data, "--out", tmp_path / "warm", "--max-examples", 1,
                 "--init-adapter", first, "--lr", 0)  # no update: the weights are exactly the starting adapter's
    assert loss_on(tiny_dir, tmp_path / "warm") == pytest.approx(loss_on(tiny_dir, first), abs=1e-5)
    assert warm["init_adapter"]["train_command"] == earlier["train_command"]
    assert "--init-adapter" in warm["train_command"]
    with pytest.raises(SystemExit, match="--init-adapter .*do not fit"):
        train("--base", tiny_dir, "--data", data, "--out", tmp_path / "x", "--init-adapter", first, "--rank", 4)


def test_falcon_lora_on_query_key_value_trains_and_serves(tiny_falcon_dir, data, tmp_path):
    out = tmp_path / "falcon-adapter"
    manifest = train("--base", tiny_falcon_dir, "--data", data, "--out", out, "--max-examples", 2, "--grad-accum", 1,
                     "--target-modules", "query_key_value")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == ["query_key_value"]
    assert manifest["base_model"] == "tiny-falcon"
    answer = route(tiny_falcon_dir, out)
    assert answer["strategy"] == "adapter" and answer["valid"]


def test_bad_target_modules_and_balance_are_named(tiny_dir, data, tmp_path):
    with pytest.raises(SystemExit, match="--target-modules"):
        train("--base", tiny_dir, "--data", data, "--out", tmp_path / "x", "--target-modules", "no_such_layer")
    with pytest.raises(SystemExit, match="--balance: unknown event 'begin'"):
        train("--base", tiny_dir, "--data", data, "--out", tmp_path / "x", "--balance", "begin=1")
    with pytest.raises(SystemExit, match="--augment: unknown augmentation 'flip'"):
        train("--base", tiny_dir, "--data", data, "--out", tmp_path / "x", "--augment", "flip=0.5")
    with pytest.raises(SystemExit, match="--augment: rename=2.0 is not a probability"):
        train("--base", tiny_dir, "--data", data, "--out", tmp_path / "x", "--augment", "rename=2")
    with pytest.raises(SystemExit, match="--closed-loop.*no-such.jsonl is not a file"):
        train("--base", tiny_dir, "--data", data, "--out", tmp_path / "x", "--closed-loop", tmp_path / "no-such.jsonl")


def test_falcon7b_manifest_holds_the_gpu_command():
    folder = ROOT / "model_artifacts" / "adapters" / "falcon7b-qlora"
    manifest = json.loads((folder / "router.json").read_text())
    assert manifest["base_model"] == "tiiuae/falcon-7b" and manifest["quantization"] == "nf4"
    args = parse_args(shlex.split(manifest["train_command"])[1:])
    assert args.base == "tiiuae/falcon-7b" and args.target_modules == "query_key_value"
    assert Path(args.out).name == "falcon7b-qlora"
    assert manifest["train_command"] in (folder / "README.md").read_text()


@pytest.fixture
def aws(monkeypatch):
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SAGEMAKER_ROLE", raising=False)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="taskrouter-train")
        yield


def test_sagemaker_launches_the_same_training_as_a_job(aws, data, tmp_path, capsys):
    main(["train", "--base", "tiiuae/falcon-7b", "--data", str(data), "--closed-loop", str(predictions(tmp_path)),
          "--out", "model_artifacts/adapters/falcon7b-qlora",
          "--target-modules", "query_key_value", "--rank", "16", "--sagemaker", "--sagemaker-bucket", "taskrouter-train",
          "--sagemaker-role", "arn:aws:iam::123456789012:role/SageMakerTraining"])
    sagemaker = boto3.client("sagemaker")
    [summary] = sagemaker.list_training_jobs()["TrainingJobSummaries"]
    job = sagemaker.describe_training_job(TrainingJobName=summary["TrainingJobName"])
    assert job["AlgorithmSpecification"]["TrainingImage"].startswith(
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:")
    assert job["RoleArn"].endswith("role/SageMakerTraining")
    args = json.loads(job["HyperParameters"]["train_args"])
    assert args[:4] == ["--base", "tiiuae/falcon-7b", "--data", "/opt/ml/input/data/train/one.jsonl"]
    assert args[args.index("--target-modules") + 1] == "query_key_value" and "--resume" in args
    assert args[args.index("--closed-loop") + 1] == "/opt/ml/input/data/closedloop/predictions-adapter-one.jsonl"
    assert json.loads(job["HyperParameters"]["sagemaker_program"]) == "train_entry.py"
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="taskrouter-train")["Contents"]]
    assert any(k.endswith("/train/one.jsonl") for k in keys) and any(k.endswith("sourcedir.tar.gz") for k in keys)
    assert any(k.endswith("/closedloop/predictions-adapter-one.jsonl") for k in keys)
    assert summary["TrainingJobName"] in capsys.readouterr().out
    [source] = [k for k in keys if k.endswith("sourcedir.tar.gz")]
    body = boto3.client("s3").get_object(Bucket="taskrouter-train", Key=source)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = tar.getnames()
    assert {"train_entry.py", "requirements.txt", "taskrouter/prompts.py", "taskrouter/training/train.py",
            "taskrouter/training/closed_loop.py"} <= set(names)


def test_sagemaker_warm_start_ships_the_starting_adapter_as_a_channel(aws, data, tmp_path):
    start = tmp_path / "start"
    start.mkdir()
    (start / "adapter_model.safetensors").write_bytes(b"weights")
    (start / "router.json").write_text("{}")
    main(["train", "--data", str(data), "--out", "model_artifacts/adapters/next", "--init-adapter", str(start),
          "--sagemaker", "--sagemaker-bucket", "taskrouter-train", "--sagemaker-role", "arn:aws:iam::123456789012:role/R"])
    sagemaker = boto3.client("sagemaker")
    [summary] = sagemaker.list_training_jobs()["TrainingJobSummaries"]
    job = sagemaker.describe_training_job(TrainingJobName=summary["TrainingJobName"])
    args = json.loads(job["HyperParameters"]["train_args"])
    assert args[args.index("--init-adapter") + 1] == "/opt/ml/input/data/init"
    assert "init" in {c["ChannelName"] for c in job["InputDataConfig"]}
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="taskrouter-train")["Contents"]]
    assert any(k.endswith("/init/adapter_model.safetensors") for k in keys)
    with pytest.raises(SystemExit, match="--init-adapter .*no adapter_model.safetensors"):
        main(["train", "--data", str(data), "--out", "x", "--init-adapter", str(tmp_path), "--sagemaker",
              "--sagemaker-bucket", "taskrouter-train", "--sagemaker-role", "arn:aws:iam::123456789012:role/R"])


def test_sagemaker_without_role_or_bucket_says_what_is_missing(aws, data, capsys):
    common = ["train", "--data", str(data), "--out", "x", "--sagemaker"]
    with pytest.raises(SystemExit) as missing_role:
        main([*common, "--sagemaker-bucket", "taskrouter-train"])
    assert "--sagemaker-role" in str(missing_role.value.code)
    with pytest.raises(SystemExit) as missing_bucket:
        main([*common, "--sagemaker-role", "arn:aws:iam::123456789012:role/R", "--sagemaker-bucket", "no-such-bucket"])
    assert "no-such-bucket" in str(missing_bucket.value.code) or "NoSuchBucket" in str(missing_bucket.value.code)
    assert "Traceback" not in capsys.readouterr().err
