"""The CPU's own features pick the dtype: bfloat16 only with native bf16 matrix units, on both branches."""
import pytest
import torch

from taskrouter import hardware, loading
from taskrouter.hardware import CpuFeatures, cpu_dtype
from taskrouter.loading import load_model
from taskrouter.router import Router
from taskrouter.schema import parse_request

AMX = CpuFeatures("AVX512", amx=True, avx512_bf16=True, vnni=True)
AVX512_BF16 = CpuFeatures("AVX512", amx=False, avx512_bf16=True, vnni=True)
AVX512_ONLY = CpuFeatures("AVX512", amx=False, avx512_bf16=False, vnni=True)
AVX2 = CpuFeatures("AVX2", amx=False, avx512_bf16=False, vnni=False)
CAPPED = CpuFeatures("AVX2", amx=True, avx512_bf16=True, vnni=True)  # ATEN_CPU_CAPABILITY=avx2 on an AMX CPU


@pytest.mark.parametrize("features, expected", [(AMX, torch.bfloat16), (AVX512_BF16, torch.bfloat16),
                                                (AVX512_ONLY, torch.float32), (AVX2, torch.float32),
                                                (CAPPED, torch.float32)])
def test_bfloat16_only_where_the_cpu_multiplies_it_natively(features, expected):
    assert cpu_dtype(features) == expected


def test_detected_features_are_this_machines():
    features = CpuFeatures.detect()
    assert features.capability == torch.backends.cpu.get_cpu_capability()
    assert features.describe().startswith(features.capability)


@pytest.mark.parametrize("features, expected", [(AMX, torch.bfloat16), (AVX2, torch.float32)])
def test_auto_dtype_loads_the_model_in_the_detected_dtype(tiny_dir, request_payload, monkeypatch, features, expected):
    monkeypatch.setattr(loading, "cpu_dtype", hardware.cpu_dtype)  # undo the suite's float32 default
    monkeypatch.setattr(CpuFeatures, "detect", classmethod(lambda cls: features))
    loaded = load_model(str(tiny_dir))
    assert loaded.dtype == expected
    answer = Router(loaded).route(parse_request({**request_payload, "top_k": 4}))
    assert answer.task in {t["name"] for t in request_payload["tasks"]} | {"none"}
    assert abs(sum(c.p for c in answer.candidates) - 1) < 1e-3


def test_an_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="^dtype: 'float33'"):
        loading.pick_dtype("float33", torch.device("cpu"))
