"""model_fn under the SageMaker model server: the toolkit passes the server's context (system_properties with the
worker's gpu_id), and the server runs SAGEMAKER_MODEL_SERVER_WORKERS copies, each handed one request at a time."""
import os
from types import SimpleNamespace

import torch

from taskrouter import handler
from taskrouter.batching import DEFAULT_BATCH


def server_context(gpu_id=None):
    """What multi-model-server's Context carries that model_fn reads (the real one is exercised in test_container)."""
    return SimpleNamespace(system_properties={"model_dir": "", "gpu_id": gpu_id, "batch_size": 1})


def test_workers_share_the_cores_and_batching_is_off(tiny_dir, monkeypatch):
    monkeypatch.delenv("TASKROUTER_THREADS", raising=False)
    monkeypatch.delenv("TASKROUTER_BATCH_MAX", raising=False)
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "2")
    threads = torch.get_num_threads()
    try:
        router = handler.model_fn(str(tiny_dir), server_context())
        assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) // 2)
        assert router.batcher.max_batch == 1
        assert router.loaded.device.type == "cpu"  # no CUDA here: the gpu id is ignored, not an error
        monkeypatch.delenv("SAGEMAKER_MODEL_SERVER_WORKERS")
        assert handler.model_fn(str(tiny_dir)).batcher.max_batch == DEFAULT_BATCH  # the local server batches
    finally:
        torch.set_num_threads(threads)
