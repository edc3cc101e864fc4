"""`taskrouter bench latency` on the tiny model: tokens computed, FLOPs per token, rates and floors that add up."""
import json

import pytest

from taskrouter.cli import main

pytestmark = pytest.mark.slow  # 3 x 2 routed samples, 3 batches of 8, the matmul rates


def _bench(tmp_path, *extra) -> dict:
    out = tmp_path / "latency.json"
    main(["bench", "latency", "--samples", "2", "--turns", "3", "--no-outlines", "--json", str(out), *extra])
    return json.loads(out.read_text())


def test_bench_reports_computed_tokens_and_every_latency_against_its_floor(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TASKROUTER_DTYPE", "float32")
    figures = _bench(tmp_path, "--model-dir", str(tiny_dir))
    # the tiny gemma3: per layer q 64x64, k and v 64x32, o 64x64, gate, up and down 64x128: 2 layers, 2 FLOP a weight
    assert figures["mflop_per_token"] == pytest.approx(2 * 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128) / 1e6)
    assert figures["kflop_per_key"] == pytest.approx(4 * 2 * 2 * 32 / 1e3)
    cold, nxt, listed = figures["cold"], figures["next"], figures["list"]
    assert cold["tokens"] >= cold["context"]  # cold computes its whole prompt (and the trie nodes)
    assert nxt["tokens"] < listed["tokens"] < cold["tokens"]  # the more is cached, the less is computed
    assert figures["kernel"] == "float32-packed"  # float32 on CPU: oneDNN on packed weights, its floor from that kernel
    for f in (cold, nxt, listed):
        assert f["gflops"]["float32"] > 0 and f["floor_s"] > 0
        assert f["floor_s"] == pytest.approx(f["mflop"] / 1e3 / f["gflops"]["float32-packed"])
        assert f["over_floor"] == pytest.approx(f["p50_s"] / f["floor_s"])
        assert f["best_floor_s"] <= f["floor_s"] and f["route_over_bare"] > 0
    out = capsys.readouterr().out
    assert "x floor" in out and "float32" in out and "next turn, only the task list cached" in out


def test_bench_on_real_conversations_against_another_checkout_and_a_missing_peer_is_named(tiny_dir, tmp_path,
                                                                                          monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("TASKROUTER_DTYPE", "float32")
    monkeypatch.setenv("TASKROUTER_PACK_WEIGHTS", "0")
    checkout = Path(__file__).resolve().parents[1]  # this very checkout, imported a second time under its own name
    figures = _bench(tmp_path, "--model-dir", str(tiny_dir), "--data", "evaluation/benchmarks/sales.jsonl@4",
                     "--against", str(checkout))
    assert figures["data"].endswith("sales.jsonl@4") and figures["samples"] == 2
    assert figures["kernel"] == "float32" and figures["next"]["floor_s"] == pytest.approx(
        figures["next"]["mflop"] / 1e3 / figures["next"]["gflops"]["float32"])
    assert figures["next"]["tokens"] < figures["cold"]["tokens"]
    assert figures["against"]["checkout"] == str(checkout)
    assert all(figures["against"][k]["p50_s"] > 0 for k in ("cold", "next", "list"))
    with pytest.raises(SystemExit, match="no code/taskrouter"):
        _bench(tmp_path, "--model-dir", str(tiny_dir), "--against", str(tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # not installed
    with pytest.raises(SystemExit, match="llama-cpp-python"):
        _bench(tmp_path, "--model-dir", str(tiny_dir), "--compare", "llama.cpp")


def _run_folder(path, answers: dict) -> None:
    path.mkdir()
    rows = [{"id": conv, "turn": turn, "task": task, "gold": gold} for (conv, turn), (task, gold) in answers.items()]
    (path / "predictions-adapter-sgd-dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_bench_agree_counts_changed_answers_and_both_accuracies(tmp_path, capsys):
    _run_folder(tmp_path / "ref", {("a", 0): ("x", "x"), ("a", 2): ("none", None), ("b", 0): ("y", "x")})
    _run_folder(tmp_path / "cand", {("a", 0): ("x", "x"), ("a", 2): ("x", None), ("b", 0): ("x", "x"),
                                    ("c", 0): ("x", "x")})  # a turn the reference lacks is not compared
    out = tmp_path / "agree.json"
    main(["bench", "agree", "--runs", str(tmp_path / "ref"), str(tmp_path / "cand"), "--json", str(out)])
    row, = json.loads(out.read_text())["files"]
    assert row["turns"] == 3 and row["same_task"] == pytest.approx(1 / 3)
    assert row["accuracy_reference"] == pytest.approx(2 / 3) and row["accuracy_candidate"] == pytest.approx(2 / 3)
    assert [(c["id"], c["turn"]) for c in row["changed"]] == [("a", 2), ("b", 0)]
    assert "2 changed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no predictions file"):
        main(["bench", "agree", "--runs", str(tmp_path / "ref"), str(tmp_path)])


def test_llama_cpp_loads_without_amx_repacking_and_then_restores_its_defaults():
    from types import SimpleNamespace

    from taskrouter.evaluation.llamacpp import _plain_cpu_buffers

    bindings = SimpleNamespace(llama_model_default_params=lambda: SimpleNamespace(use_extra_bufts=True))
    defaults = bindings.llama_model_default_params
    with _plain_cpu_buffers(bindings):
        assert bindings.llama_model_default_params().use_extra_bufts is False  # what Llama() reads while it loads
    assert bindings.llama_model_default_params is defaults
    assert bindings.llama_model_default_params().use_extra_bufts is True
