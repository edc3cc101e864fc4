"""The wheels an artifact brings for what the SageMaker image lacks (code/wheels/), so its start-up install needs no network.

code/requirements.txt names every package pinned; those the image already holds at that version
(images.IMAGE_PACKAGES) are left out, the rest are downloaded once with pip for the image's Python
(and for this interpreter, which the harness runs) into a cache, then copied into each artifact.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .images import IMAGE_PACKAGES, IMAGE_PYTHON

REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
# Ubuntu 22.04 has glibc 2.35: wheels for it carry one of these tags (pip download matches them literally)
IMAGE_PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taskrouter" / "wheels"


class WheelsError(Exception):
    """The wheels could not be gathered; the message says why and what to do."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(requirements: Path) -> dict[str, str]:
    """{canonical name: version} of the `name==version` lines of a requirements file."""
    pins = {}
    for line in requirements.read_text().splitlines():
        match = REQUIREMENT.match(line.strip())
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def to_bundle(requirements: Path) -> list[str]:
    """`name==version` of each pinned package the image does not already hold at that version."""
    image = {canonical(k): v for k, v in IMAGE_PACKAGES.items()}
    return [f"{name}=={version}" for name, version in sorted(pinned(requirements).items())
            if image.get(name) != version]


def _download(specs: list[str], dest: Path, target_args: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--dest", str(dest), *target_args, *specs]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or ["pip download failed"]
        raise WheelsError(f"cannot download the wheels code/requirements.txt needs ({errors[0]}); "
                          f"run the build once with access to PyPI (they are cached in {CACHE})")


def gather(requirements: Path, cache: Path = CACHE) -> Path:
    """A folder with the wheels of `to_bundle(requirements)` for the image's Python and this one (cached)."""
    specs = to_bundle(requirements)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256("\n".join([*specs, IMAGE_PYTHON, here, *IMAGE_PLATFORMS]).encode()).hexdigest()[:16]
    folder = cache / key
    if (folder / ".complete").exists():
        return folder
    partial = cache / f".{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if specs:
        platforms = [arg for tag in IMAGE_PLATFORMS for arg in ("--platform", tag)]
        _download(specs, partial, ["--python-version", IMAGE_PYTHON, "--implementation", "cp", *platforms])
        if here != IMAGE_PYTHON:  # the harness installs them into this interpreter's version
            _download(specs, partial, [])
    (partial / ".complete").write_text("\n".join(specs) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def bundle(code_dir: Path, cache: Path = CACHE) -> list[str]:
    """Copy the wheels into `code_dir/wheels/`; returns their file names."""
    source = gather(code_dir / "requirements.txt", cache)
    target = code_dir / "wheels"
    target.mkdir(exist_ok=True)
    names = sorted(p.name for p in source.glob("*.whl"))
    for name in names:
        shutil.copy2(source / name, target / name)
    return names
