"""A wheel carries everything a user runs: installed into a new venv and used from another folder, it finds
the shipped adapter, eval configs and sample bench, the locustfile and the artifact's inference.py."""
from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys, taskrouter, taskrouter.resources as r
from taskrouter.loading import shipped_adapters
print(json.dumps({"package": taskrouter.__file__, "version": taskrouter.__version__,
                  "adapters": {k: str(v) for k, v in shipped_adapters(None).items()},
                  "files": [str(p) for p in (r.locustfile(), r.sample_bench(), r.artifact_code_dir() / "inference.py",
                                             r.artifact_code_dir() / "requirements.txt")]}))
"""


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_finds_its_shipped_files(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)], check=True)
    wheel = next(dist.glob("taskrouter-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("taskrouter/model_artifacts/adapters/gemma3-270m-router/adapter_model.safetensors",
                    "taskrouter/model_artifacts/adapters/gemma3-270m-router/README.md",
                    "taskrouter/evaluation/configs.yaml", "taskrouter/evaluation/embedding_threshold.json",
                    "taskrouter/evaluation/benchmarks/sample.jsonl", "taskrouter/artifact_code/inference.py",
                    "taskrouter/artifact_code/requirements.txt", "taskrouter/loadtest/locustfile.py",
                    "taskrouter/training/review_page.html"):
        assert shipped in names, shipped
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    # the dependencies come from the interpreter running the tests (often a venv itself, whose packages a new
    # venv's system_site_packages does not see): its site folders as plain .pth paths, so its .pth files
    # (this checkout's editable install among them) are not run and the wheel's taskrouter is the one found
    new_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (Path(new_site) / "test-deps.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([str(python), "-c", PROBE], cwd=elsewhere, capture_output=True, text=True, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    site = str(env_dir)
    assert found["package"].startswith(site) and list(found["adapters"]) == ["gemma3-270m-router"]
    assert all(path.startswith(site) and Path(path).exists() for path in [*found["adapters"].values(),
                                                                         *found["files"]])
