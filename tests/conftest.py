import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

from records import TASKS  # noqa: E402
from tiny import build_model  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_settings():
    """Settings are read once per process; a test that sets TASKROUTER_* variables gets them re-read."""
    from taskrouter import settings

    settings.get.cache_clear()
    yield
    settings.get.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def _float32_unless_asked():
    """Tests compare answers to 1e-4, so models load in float32 unless a test asks for another dtype: in
    process, and in the servers tests start (gunicorn, the model server), which read TASKROUTER_DTYPE; the
    CPU's own choice (bfloat16 on AMX / AVX512-BF16) is tested in test_hardware.py."""
    import torch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("taskrouter.loading.cpu_dtype", lambda: torch.float32)
        patch.setenv("TASKROUTER_DTYPE", "float32")
        yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("models") / "tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_falcon_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("models") / "tiny-falcon", arch="falcon")


@pytest.fixture(scope="session")
def tiny_router(tiny_dir):
    from taskrouter.loading import load_model
    from taskrouter.router import Router

    return Router(load_model(str(tiny_dir)))


@pytest.fixture
def request_payload() -> dict:
    return {"messages": [{"role": "user", "content": "Please write a recap of the meeting with ACME."}],
            "tasks": [dict(t) for t in TASKS]}
