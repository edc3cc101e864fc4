"""What answers the evaluation's requests: an in-process Router, a running server, a SageMaker endpoint,
the embedding baseline, or an OpenAI-compatible chat endpoint (`kind: openai`, evaluation/hosted.py).
All expose `route(RouteRequest) -> RouteAnswer`, like `Router`.

In-process, one Router is loaded per distinct base model, with every adapter the
chosen configs need, and reused across configs (each request names its adapter;
base configs run with the adapters disabled). Models load lazily: a fully
resumed run loads nothing.
"""
from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

from taskrouter.schema import RouteAnswer, RouteRequest

from .configs import EvalConfig

RETRIES = 5


class RouterLike(Protocol):
    def route(self, request: RouteRequest) -> RouteAnswer: ...


def _payload(request: RouteRequest) -> bytes:
    return request.model_dump_json(exclude_none=True).encode("utf-8")


class HttpRouter:
    """POSTs each request to a running server's /invocations (e.g. `taskrouter serve`)."""

    def __init__(self, url: str, timeout: float = 120.0):
        url = url.rstrip("/")
        self.url = url if url.endswith("/invocations") else url + "/invocations"
        self.timeout = timeout

    def route(self, request: RouteRequest) -> RouteAnswer:
        req = urllib.request.Request(self.url, data=_payload(request), method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        for attempt in range(RETRIES):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as res:
                    return RouteAnswer.model_validate_json(res.read())
            except urllib.error.HTTPError as exc:
                body = exc.read().decode("utf-8", "replace")
                if exc.code != 503 or attempt == RETRIES - 1:  # 503: still loading; anything else is final
                    raise RuntimeError(f"--endpoint {self.url}: HTTP {exc.code}: {body}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                if attempt == RETRIES - 1:
                    raise RuntimeError(f"--endpoint {self.url}: {exc}") from None
            time.sleep(2 ** attempt)
        raise AssertionError("unreachable")


class SageMakerRouter:
    """Invokes a SageMaker endpoint through boto3 sagemaker-runtime with the same JSON request."""

    def __init__(self, endpoint_name: str, region: str | None = None, client=None):
        import boto3

        self.endpoint_name = endpoint_name
        self.client = client or boto3.client("sagemaker-runtime", region_name=region)

    def route(self, request: RouteRequest) -> RouteAnswer:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            res = self.client.invoke_endpoint(EndpointName=self.endpoint_name, ContentType="application/json",
                                              Accept="application/json", Body=_payload(request))
        except (BotoCoreError, ClientError) as exc:
            raise RuntimeError(f"--sagemaker-endpoint {self.endpoint_name}: {exc}") from None
        return RouteAnswer.model_validate_json(res["Body"].read())


def adapters_root(config: EvalConfig) -> Path:
    """Where a config's adapter lives: its adapters_dir, else <model dir>/adapters, else model_artifacts/adapters."""
    from taskrouter.loading import DEFAULT_ADAPTERS_DIR

    if config.adapters_dir:
        return Path(config.adapters_dir)
    if config.model != "embedded" and (Path(config.model) / "adapters").is_dir():
        return Path(config.model) / "adapters"
    return DEFAULT_ADAPTERS_DIR


def adapter_folder(config: EvalConfig) -> Path | None:
    """The local folder of a config's adapter, or None for a base-model or embedding config."""
    if config.kind != "llm" or not config.adapter or config.adapter == "none":
        return None
    return adapters_root(config) / config.adapter


def adapter_manifest(config: EvalConfig) -> dict | None:
    """The router.json of a config's adapter when it is on this machine."""
    from taskrouter.loading import MANIFEST, read_manifest

    folder = adapter_folder(config)
    return read_manifest(folder) if folder is not None and (folder / MANIFEST).exists() else None


def adapter_state(config: EvalConfig) -> dict:
    """What of a config's adapter decides its predictions: a short sha256 of its weights (retraining
    changes them) and its tuned none bias, if any."""
    folder = adapter_folder(config)
    if folder is None:
        return {}
    weights = folder / "adapter_model.safetensors"
    state = {"adapter_weights": hashlib.sha256(weights.read_bytes()).hexdigest()[:16]} if weights.exists() else {}
    bias = (adapter_manifest(config) or {}).get("none_bias")
    return {**state, **({"none_bias": bias["value"]} if bias else {})}


class RouterPool:
    """Hands each config its router: one in-process Router per base model, or the remote client."""

    def __init__(self, configs: list[EvalConfig], remote: RouterLike | None = None):
        self.configs = configs
        self.remote = remote
        self._routers: dict[str, RouterLike] = {}
        for config in configs:  # no request yet: a missing API key fails before any work
            if config.kind == "openai":
                from .hosted import HostedRouter

                self._routers[f"openai|{config.name}"] = HostedRouter(config)
        if remote is None:  # fail before any work when a model or adapter is missing
            for config in configs:
                if config.kind == "llm" and config.model != "embedded" and not Path(config.model).is_dir():
                    raise FileNotFoundError(f"config {config.name}: model {config.model!r} is not a directory")
                self._adapters_for(config.model, self._group(config))

    def _group(self, config: EvalConfig) -> str:
        """"" for the router a model's configs share; the adapter's folder when another config names a
        different adapter by the same name (two runs of one adapter compared): it gets a router of its own."""
        folder = adapter_folder(config)
        clash = folder is not None and any(c.kind == "llm" and c.model == config.model and c.adapter == config.adapter
                                           and adapter_folder(c) != folder for c in self.configs)
        return str(folder) if clash else ""

    def _adapters_for(self, model: str, group: str) -> dict[str, Path]:
        from taskrouter.loading import find_adapters

        adapters: dict[str, Path] = {}
        for config in self.configs:
            if config.kind == "llm" and config.model == model and config.adapter and self._group(config) == group:
                try:
                    adapters.update(find_adapters(adapters_root(config), [config.adapter]))
                except FileNotFoundError as exc:
                    raise FileNotFoundError(f"config {config.name}: {exc}") from None
        return adapters

    def get(self, config: EvalConfig) -> RouterLike:
        """The router for `config`, loading it on first use."""
        if config.kind == "embedding":
            key = f"embedding|{config.threshold}"
            if key not in self._routers:
                from .embedding import EmbeddingRouter, minilm_encoder, read_threshold

                threshold = config.threshold if config.threshold is not None else read_threshold()
                self._routers[key] = EmbeddingRouter(minilm_encoder(), threshold)
            return self._routers[key]
        if config.kind == "openai":
            return self._routers[f"openai|{config.name}"]
        if self.remote is not None:
            return self.remote
        key = f"{config.model}|{self._group(config)}"
        if key not in self._routers:
            import torch

            from taskrouter import settings
            from taskrouter.loading import load_model
            from taskrouter.router import Router

            torch.set_num_threads(settings.get().torch_threads)
            source = None if config.model == "embedded" else config.model
            router = Router(load_model(source, self._adapters_for(config.model, self._group(config)),
                                       dtype=settings.get().dtype, merge_lora=settings.get().merge_lora,
                                       pack_weights=settings.get().pack_weights),
                            history_slack=settings.get().history_slack, pad_rows=settings.get().pad_rows)
            self._routers[key] = router
        return self._routers[key]


def describe_remote(endpoint: str | None, sagemaker_endpoint: str | None) -> str | None:
    """How the run reached its LLM configs, for the report."""
    if endpoint:
        return f"HTTP endpoint {endpoint}"
    if sagemaker_endpoint:
        return f"SageMaker endpoint {sagemaker_endpoint}"
    return None


def remote_router(endpoint: str | None, sagemaker_endpoint: str | None, region: str | None) -> RouterLike | None:
    """The remote client asked for on the command line, if any."""
    if endpoint and sagemaker_endpoint:
        raise ValueError("--endpoint and --sagemaker-endpoint are exclusive")
    if endpoint:
        return HttpRouter(endpoint)
    if sagemaker_endpoint:
        return SageMakerRouter(sagemaker_endpoint, region)
    return None

