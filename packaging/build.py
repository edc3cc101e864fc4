"""Assemble the SageMaker model.tar.gz: base weights, taskrouter.json, adapters/, code/, taskrouter-manifest.json.

Layout (no top-level folder, as the Hugging Face inference toolkit unpacks it into
/opt/ml/model): config.json + model.safetensors + tokenizer files at the top,
`taskrouter.json` ({"base_model", "quantization"}, read by the handler's model_fn),
`adapters/NAME/` (peft files + router.json), `code/` (inference.py, requirements.txt,
wheels/ of what the image lacks, the taskrouter library) and `taskrouter-manifest.json`
(sha256 of every other file).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from taskrouter.embedded import EMBEDDED_NAME
from taskrouter.loading import DEFAULT_ADAPTERS_DIR, MANIFEST, plain_linears
from taskrouter.resources import PACKAGE, artifact_code_dir

from .archive import MANIFEST_NAME, file_manifest, write_archive, write_manifest
from .wheels import WheelsError, bundle

# folders an installed wheel keeps inside the taskrouter package that are no part of the artifact's library
NOT_IN_ARTIFACT = ("serving", "evaluation", "training", "packaging", "model_artifacts", "loadtest", "artifact_code")
QUANTIZATIONS = ("nf4", "bf16")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", MANIFEST, "README.md")
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_GLOBS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                   "chat_template*")


class BuildError(Exception):
    """A build that cannot proceed, with a one-line reason naming the option at fault."""


@dataclass
class Adapter:
    name: str
    path: Path
    manifest: dict

    @property
    def base_model(self) -> str | None:
        return self.manifest.get("base_model")


@dataclass
class BuildResult:
    archive: Path
    sha256: str
    size: int
    manifest: dict
    seconds: float
    phases: dict[str, float]  # seconds spent writing the base weights and compressing the archive


def read_adapter(adapters_dir: Path, name: str) -> Adapter:
    """The adapter `name` with its manifest; it must hold trained weights."""
    path = adapters_dir / name
    if not (path / MANIFEST).exists():
        known = sorted(d.name for d in adapters_dir.glob("*") if (d / MANIFEST).exists()) if adapters_dir.is_dir() else []
        raise BuildError(f"--adapter {name}: no {path / MANIFEST} (adapters under {adapters_dir}: "
                         f"{', '.join(known) or 'none'})")
    manifest = json.loads((path / MANIFEST).read_text())
    if not (path / "adapter_config.json").exists() or not any((path / w).exists() for w in WEIGHT_FILES):
        how = "with the train_command in its router.json" if manifest.get("train_command") else "with taskrouter train"
        raise BuildError(f"--adapter {name}: {path} has a manifest but no trained weights "
                         f"(adapter_config.json + adapter_model.safetensors); train it first {how} "
                         f"(base {manifest.get('base_model')!r}, quantization {manifest.get('quantization')!r})")
    return Adapter(name, path, manifest)


def base_name(source: str, trained_for: set[str] = frozenset()) -> str:
    """The name adapters' router.json use for a base: the embedded name, a directory's taskrouter.json, the hub id
    of a hub-cache snapshot folder, the hub id among `trained_for` whose last part is the folder's name, or the hub id."""
    if source in ("embedded", EMBEDDED_NAME):
        return EMBEDDED_NAME
    path = Path(source)
    if not path.is_dir():
        return source
    info = path / "taskrouter.json"
    if info.exists():
        return json.loads(info.read_text())["base_model"]
    resolved = path.resolve()
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        return resolved.parent.parent.name.removeprefix("models--").replace("--", "/")
    named = sorted(b for b in trained_for if b.rsplit("/", 1)[-1] == resolved.name)
    return named[0] if len(named) == 1 else resolved.name


def local_base(source: str) -> Path:
    """A local directory holding the base's config, weights and tokenizer (downloaded from the hub if allowed)."""
    if source in ("embedded", EMBEDDED_NAME):
        from taskrouter.embedded import ensure_embedded

        return ensure_embedded()
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise BuildError(f"--base {source}: no config.json, not a model directory")
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise BuildError(f"--base {source}: not a model directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                              "*.jinja", "tokenizer*"]))
    except Exception as exc:  # offline, no network, unknown or gated repo: all end the build the same way
        offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise BuildError(f"--base {source}: not available offline{offline} and not downloadable "
                         f"({type(exc).__name__}); download it first (huggingface-cli download {source}) "
                         f"or pass a local directory") from None


def default_quantization(adapters: list[Adapter]) -> str:
    """nf4 when every adapter was trained on an NF4 base (QLoRA), else bf16."""
    if adapters and all(a.manifest.get("quantization") == "nf4" for a in adapters):
        return "nf4"
    return "bf16"


def write_base(source_dir: Path, stage: Path, quantization: str) -> None:
    """Save the base model in bf16 or NF4 (bitsandbytes) into `stage`, plus its tokenizer files."""
    import torch
    from transformers import AutoModelForCausalLM

    if "quantization_config" in json.loads((source_dir / "config.json").read_text()):
        raise BuildError(f"--base {source_dir}: already quantized; pass the unquantized original")
    kwargs: dict = {"dtype": torch.bfloat16}
    if quantization == "nf4":
        try:
            from transformers import BitsAndBytesConfig

            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise BuildError(f"--quantize nf4 needs bitsandbytes ({exc}); install it or pass --quantize bf16") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    try:
        with plain_linears():
            model = AutoModelForCausalLM.from_pretrained(source_dir, **kwargs)
    except (RuntimeError, ValueError) as exc:
        if quantization != "nf4":
            raise
        raise BuildError(f"--quantize nf4: bitsandbytes cannot quantize on this machine "
                         f"({str(exc).splitlines()[0]}); pass --quantize bf16") from None
    model.save_pretrained(stage)
    for pattern in TOKENIZER_GLOBS:
        for path in sorted(source_dir.glob(pattern)):
            shutil.copy2(path, stage / path.name)
    if not any(stage.glob("tokenizer*")):
        raise BuildError(f"--base {source_dir}: no tokenizer files next to the weights")


def copy_code(stage: Path) -> None:
    """code/ = the artifact's files (inference.py, requirements.txt) and the core taskrouter library, without
    caches, from a checkout's code/ folder or from an installed wheel alike, plus code/wheels/ with what
    requirements.txt needs beyond the image."""
    caches = ("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(artifact_code_dir(), stage / "code", ignore=shutil.ignore_patterns(*caches, "taskrouter", "wheels"))
    shutil.copytree(PACKAGE, stage / "code" / "taskrouter", ignore=shutil.ignore_patterns(*caches, *NOT_IN_ARTIFACT))
    try:
        bundle(stage / "code")
    except WheelsError as exc:
        raise BuildError(str(exc)) from None


def build(
    adapter_names: list[str],
    out: Path,
    base: str | None = None,
    quantize: str | None = None,
    adapters_dir: Path = DEFAULT_ADAPTERS_DIR,
    name: str | None = None,
    compresslevel: int = 1,
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> BuildResult:
    """Build `out/NAME/model.tar.gz` (NAME: `name`, else the first adapter, else the base) and its manifest beside it.

    `progress(total_bytes)` returns the callback that archiving calls with each chunk's size.
    """
    started = time.perf_counter()
    adapters = [read_adapter(Path(adapters_dir), n) for n in adapter_names]
    if base is None:
        bases = sorted({a.base_model or "" for a in adapters})
        if len(bases) > 1:
            raise BuildError(f"--adapter: the adapters were trained for different bases ({', '.join(bases)}); "
                             f"build one artifact per base")
        base = bases[0] if bases else "embedded"
        base = "embedded" if base == EMBEDDED_NAME else base
    wanted = base_name(base, {a.base_model for a in adapters if a.base_model})
    for adapter in adapters:
        if adapter.base_model != wanted:
            raise BuildError(f"--adapter {adapter.name} was trained for base {adapter.base_model!r}, "
                             f"but the base is {wanted!r}")
    quantization = quantize or default_quantization(adapters)
    if quantization not in QUANTIZATIONS:
        raise BuildError(f"--quantize {quantization}: choose one of {', '.join(QUANTIZATIONS)}")
    source_dir = local_base(base)
    artifact_name = name or (adapters[0].name if adapters else wanted.replace("/", "--"))
    target = Path(out) / artifact_name
    target.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=target))
    try:
        phase = time.perf_counter()
        write_base(source_dir, stage, quantization)
        phases = {"weights": time.perf_counter() - phase}
        (stage / "taskrouter.json").write_text(json.dumps({"base_model": wanted, "quantization": quantization},
                                                          indent=2, sort_keys=True) + "\n")
        for adapter in adapters:
            (stage / "adapters" / adapter.name).mkdir(parents=True)
            for file in ADAPTER_FILES:
                if (adapter.path / file).exists():
                    shutil.copy2(adapter.path / file, stage / "adapters" / adapter.name / file)
        copy_code(stage)
        manifest = file_manifest(stage, {
            "name": artifact_name, "base_model": wanted, "quantization": quantization,
            "adapters": {a.name: a.manifest for a in adapters}, "taskrouter_version": version("taskrouter"),
        })
        write_manifest(stage, manifest)
        archive = target / "model.tar.gz"
        phase = time.perf_counter()
        digest = write_archive(stage, archive, compresslevel, progress(sum(f["size"] for f in manifest["files"].values()))
                               if progress else None)
        phases["archive"] = time.perf_counter() - phase
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (target / "model.tar.gz.sha256").write_text(f"{digest}  model.tar.gz\n")
    return BuildResult(archive, digest, archive.stat().st_size, manifest, time.perf_counter() - started, phases)
