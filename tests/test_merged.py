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
    merged.loaded.use_adapter("tiny-router")  # serving the adapter: merged weights, no LoRA matmuls
    changed = [n for n, p in merged.loaded.model.named_parameters() if n in weights and not torch.equal(p, weights[n])]
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)
    assert merged.loaded.peft.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters
    merged.loaded.use_adapter(None)  # the base weights are back bit for bit, however often it switched
    for name, param in merged.loaded.model.named_parameters():
        assert torch.equal(param, weights[name]), name


def test_two_adapters_are_never_merged(tiny_dir, tmp_path):
    adapters = {n: build_adapter(tiny_dir, tmp_path / n) for n in ("one", "two")}
    assert load_model(str(tiny_dir), adapters).merged is None


def test_switching_between_unmerged_adapters_and_none_routes_as_each_alone(tiny_dir, tmp_path, request_payload,
                                                                           monkeypatch):
    adapters = {n: build_adapter(tiny_dir, tmp_path / n) for n in ("one", "two")}
    both = Router(load_model(str(tiny_dir), adapters, dtype="float32"))
    alone = {n: Router(load_model(str(tiny_dir), {n: path}, dtype="float32", merge_lora=False))
             for n, path in adapters.items()}
    plain = Router(load_model(str(tiny_dir), {}, dtype="float32"))
    expected = {n: _probs(r, request_payload) for n, r in alone.items()}
    expected["none"] = _probs(plain, request_payload)
    assert expected["one"] != pytest.approx(expected["two"], abs=1e-4)
    for name in ("one", "none", "two", "two", "one", "none", "none", "two"):
        assert _probs(both, {**request_payload, "adapter": name}) == pytest.approx(expected[name], abs=1e-5), name
    switches = []  # the same adapter again: peft's module walks are not repeated
    for method in ("disable_adapter_layers", "enable_adapter_layers"):
        monkeypatch.setattr(both.loaded.peft.base_model, method, lambda m=method: switches.append(m))
    monkeypatch.setattr(both.loaded.peft, "set_adapter", lambda name: switches.append(name))
    for _ in range(3):
        _probs(both, {**request_payload, "adapter": "two"})
    assert switches == []
