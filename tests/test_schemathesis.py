"""schemathesis against /openapi.json of the served app (tiny model): every check, bounded, seeded, 0 failures.

The API has no links between operations, so schemathesis' stateful phase has nothing to chain
("not applicable"); the examples, coverage and fuzzing phases run. Rules the document states only
in words are excused in tests/schemathesis_hooks.py, each by the message that names it.
"""
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from taskrouter.serving.app import create_app

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_schemathesis_finds_nothing(tiny_dir, monkeypatch):
    monkeypatch.setenv("TASKROUTER_THREADS", "1")
    server = make_server("127.0.0.1", 0, create_app(str(tiny_dir), load_async=False), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = dict(os.environ, SCHEMATHESIS_HOOKS="schemathesis_hooks", PYTHONPATH=str(HERE))
        res = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run",
                              f"http://127.0.0.1:{server.port}/openapi.json", "--checks", "all",
                              "--max-examples", "60", "--seed", "20", "--workers", "2", "--max-time", "100",
                              "--no-color"], capture_output=True, text=True, env=env, cwd=HERE, timeout=300)
    finally:
        server.shutdown()
    summary = res.stdout[res.stdout.find("SUMMARY"):]
    print(summary)
    assert res.returncode == 0, res.stdout[-6000:]
    assert "Test cases:" in summary
