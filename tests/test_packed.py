"""Linear layers on oneDNN-packed weights answer as torch's own matmul, whichever weights a layer holds."""
import pytest
import torch

from taskrouter import packed
from taskrouter.evaluation.floor import matmul_rate
from taskrouter.hardware import CpuFeatures
from taskrouter.loading import load_model
from taskrouter.router import Router
from taskrouter.schema import parse_request
from tiny import build_adapter

NATIVE_BF16 = CpuFeatures.detect().native_bf16  # this machine's, before any test replaces detect()
NATIVE_BF16_ONLY = pytest.mark.skipif(not NATIVE_BF16,
                                      reason="bfloat16 is packed only where the CPU multiplies it natively")


def _probs(router, payload):
    return {c.task: c.p for c in router.route(parse_request({**payload, "top_k": 4})).candidates}


def test_a_packed_weight_multiplies_as_the_dense_one():
    weight, bias, x = torch.randn(48, 32), torch.randn(48), torch.randn(3, 7, 32)
    assert packed.linear(x, packed.pack(weight), bias) == pytest.approx(torch.nn.functional.linear(x, weight, bias),
                                                                        abs=1e-5)


@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=NATIVE_BF16_ONLY)])
def test_packed_routes_as_unpacked_through_adapter_switches(tiny_dir, tmp_path, request_payload, dtype):
    adapter = {"tiny-router": build_adapter(tiny_dir, tmp_path / "tiny-router")}
    fast = Router(load_model(str(tiny_dir), adapter, dtype=dtype))
    reference = Router(load_model(str(tiny_dir), adapter, dtype=dtype, pack_weights=False))
    layers = [m for n, m in fast.loaded.model.get_decoder().named_modules()
              if type(m) is torch.nn.Linear and ".lora_" not in n]
    assert fast.loaded.packed is not None and reference.loaded.packed is None
    assert fast.loaded.packed.layers == layers
    bare = {**request_payload, "adapter": "none"}
    for _ in range(2):  # merged weights, base weights, and back: each layer computes with the weight it holds now
        assert _probs(fast, request_payload) == pytest.approx(_probs(reference, request_payload), abs=1e-5)
        assert _probs(fast, bare) == pytest.approx(_probs(reference, bare), abs=1e-5)
    assert _probs(fast, request_payload) != pytest.approx(_probs(fast, bare), abs=1e-4)


@NATIVE_BF16_ONLY
def test_a_packed_bfloat16_weight_multiplies_as_the_dense_one():
    weight, x = torch.randn(48, 32).bfloat16(), torch.randn(3, 7, 32).bfloat16()
    assert packed.linear(x, packed.pack(weight)).float() == pytest.approx(
        torch.nn.functional.linear(x, weight).float(), rel=1e-2, abs=1e-2)


def test_native_dtypes_are_packed_and_only_when_asked(tiny_dir, monkeypatch):
    assert load_model(str(tiny_dir), {}, dtype="float32").packed is not None
    assert load_model(str(tiny_dir), {}, dtype="float32", pack_weights=False).packed is None
    assert load_model(str(tiny_dir), {}, dtype="float16").packed is None
    for native in (True, False):  # bfloat16 only where the CPU has AMX or AVX512-BF16
        features = CpuFeatures("AVX512" if native else "AVX2", amx=native, avx512_bf16=native, vnni=native)
        monkeypatch.setattr(CpuFeatures, "detect", classmethod(lambda cls, f=features: f))
        assert (load_model(str(tiny_dir), {}, dtype="bfloat16").packed is not None) is native
    monkeypatch.setattr(packed, "available", lambda: False)  # a torch without oneDNN's linear ops
    assert load_model(str(tiny_dir), {}, dtype="float32").packed is None


def test_the_floor_measures_the_packed_kernels():
    assert matmul_rate("float32-packed", ((32, 64), (64, 32)), rows=24, repeats=2) > 0
    rate = matmul_rate("bfloat16-packed", ((32, 64), (64, 32)), rows=24, repeats=2)
    assert (rate is not None and rate > 0) if NATIVE_BF16 else rate is None
