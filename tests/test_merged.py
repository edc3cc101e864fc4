"""A single adapter merged into the weights answers as the unmerged one, and the base stays reachable, exactly."""
import pytest
import torch

from taskrouter.loading import load_model
from taskrouter.router import Router
from taskrouter.schema import parse_request
from tiny import build_adapter


def _probs(router, payload):
    return {c.task: c.p for c in router.route(parse_request({**payload, "top_k": 4})).candidates}


def test_merged_adapter_routes_as_unmerged_and_switches_without_drift(tiny_dir, tmp_path, request_payload):
    adapter = {"tiny-router": build_adapter(tiny_dir, tmp_path / "tiny-router")}
    merged = Router(load_model(str(tiny_dir), adapter))
    unmerged = Router(load_model(str(tiny_dir), adapter, merge_lora=False))
    plain = Router(load_model(str(tiny_dir), {}))
    assert merged.loaded.merged is not None and unmerged.loaded.merged is None
    weights = {n: p.clone() for n, p in merged.loaded.model.named_parameters()}
    bare = {**request_payload, "adapter": "none"}
    for _ in range(2):  # adapter, base, adapter, base: each answer as the reference, every time
        assert _probs(merged, request_payload) == pytest.approx(_probs(unmerged, request_payload), abs=1e-4)
        assert _probs(merged, bare) == pytest.approx(_probs(plain, request_payload), abs=1e-5)
    assert _probs(merged, request_payload) != pytest.approx(_probs(plain, request_payload), abs=1e-4)
    with merged.loaded.use_adapter("tiny-router"):  # serving the adapter: merged weights, no LoRA matmuls
        changed = [n for n, p in merged.loaded.model.named_parameters() if n in weights and not torch.equal(p, weights[n])]
        assert changed and all("q_proj" in n or "v_proj" in n for n in changed)
        assert merged.loaded.peft.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters
    merged.loaded.use_adapter(None)  # the base weights are back bit for bit, however often it switched
    for name, param in merged.loaded.model.named_parameters():
        assert torch.equal(param, weights[name]), name


def test_two_adapters_are_never_merged(tiny_dir, tmp_path):
    adapters = {n: build_adapter(tiny_dir, tmp_path / n) for n in ("one", "two")}
    assert load_model(str(tiny_dir), adapters).merged is None
