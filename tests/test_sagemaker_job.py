"""The training job's source archive runs `taskrouter train` on its own, and the CLI names a command that cannot load."""
import io
import subprocess
import sys
import tarfile

from taskrouter import cli
from taskrouter.training.sagemaker_job import source_archive

# A fresh interpreter as in the training container: the archive first, then this environment's site-packages
# without running their .pth files (-S), so this checkout's editable install cannot fill in a missing module.
RUN_CLI = ("import sys; sys.path[:0] = [sys.argv[1]]; sys.path += sys.argv[2].split(':'); import taskrouter; "
           "assert taskrouter.__file__.startswith(sys.argv[1]), taskrouter.__file__; "
           "from taskrouter.cli import main; main(sys.argv[3:])")
SITE = ":".join(p for p in sys.path if p.endswith("site-packages"))


def run_cli(root, *args):
    return subprocess.run([sys.executable, "-I", "-S", "-c", RUN_CLI, str(root), SITE, *args],
                          capture_output=True, text=True, timeout=300)


def unpacked(tmp_path, embedded: bool = False):
    with tarfile.open(fileobj=io.BytesIO(source_archive(embedded))) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path


def test_the_source_archive_runs_train_in_a_fresh_interpreter(tmp_path):
    root = unpacked(tmp_path)
    proc = run_cli(root, "train", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--data" in proc.stdout and "--sagemaker" in proc.stdout
    requirements = (root / "requirements.txt").read_text().split()
    assert "--no-index" not in requirements and {"peft", "bitsandbytes", "pydantic", "tqdm"} <= set(requirements)
    entry = (root / "train_entry.py").read_text()
    assert 'main(["train", *json.loads(os.environ["SM_HP_TRAIN_ARGS"])])' in entry


def test_a_command_whose_module_fails_to_import_is_named(tmp_path):
    root = unpacked(tmp_path)
    (root / "taskrouter" / "training" / "records.py").unlink()  # what the job's hand-written file list once left out
    proc = run_cli(root, "train", "--help")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: taskrouter train is unavailable: importing taskrouter.training.train failed "
        "(ModuleNotFoundError: No module named 'taskrouter.training.records')")


def test_a_feature_absent_from_the_install_says_so(monkeypatch):
    import pytest

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, ("ghost", "taskrouter.ghost.cli", "not shipped here")])
    with pytest.raises(SystemExit, match=r"taskrouter ghost: not part of this install \(taskrouter.ghost.cli is missing\)"):
        cli.main(["ghost"])
