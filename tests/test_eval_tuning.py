"""The none decision's tuning: the grid search, the adapter's none bias in the Router, and `eval --tune`."""
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest

from taskrouter.cli import main
from taskrouter.evaluation.tuning import best_threshold
from taskrouter.loading import load_model
from taskrouter.router import Router
from taskrouter.schema import parse_request
from records import TASKS, conversation
from tiny import build_adapter

CONVERSATIONS = [
    conversation("a", [("Write a recap of the ACME meeting.", "meeting_recap"), ("Thanks, that's all.", None)]),
    conversation("b", [("Send a follow-up email to Dana.", "follow_up_email"),
                      ("Actually, prepare a quote for her first.", "prepare_a_quote")]),
    conversation("c", [("What's the weather in Lyon?", None), ("And tomorrow?", None)]),
    conversation("d", [("Play some music.", None), ("Recap the call with Bo.", "meeting_recap")]),
]


@pytest.fixture
def adapters(tiny_dir, tmp_path):
    build_adapter(tiny_dir, tmp_path / "adapters" / "tiny-router")
    return tmp_path / "adapters"


def test_best_threshold_maximises_accuracy_on_hand_case():
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.6])
    best_is_gold = np.array([True, True, False, False, False])
    gold_is_none = np.array([False, False, True, True, True])
    grid = np.round(np.arange(0, 1.0001, 0.01), 2)
    threshold, accuracy = best_threshold(scores, best_is_gold, gold_is_none, grid)
    assert threshold == pytest.approx(0.71) and accuracy == 1.0  # middle of the perfect range 0.61-0.80
    assert best_threshold(scores, best_is_gold, gold_is_none, np.array([0.0, 0.5]))[1] == pytest.approx(0.8)


def test_the_none_bias_shifts_the_log_odds_of_none_for_the_adapter_only(tiny_dir, adapters):
    router = Router(load_model(str(tiny_dir), {"tiny-router": adapters / "tiny-router"}))
    manifest = router.loaded.adapters["tiny-router"]
    payload = {"messages": [{"role": "user", "content": "Please write a recap of the meeting with ACME."}],
               "tasks": TASKS, "top_k": 4}

    def probs(**extra) -> dict[str, float]:
        return {c.task: c.p for c in router.route(parse_request({**payload, **extra})).candidates}

    plain, plain_zero_shot = probs(), probs(strategy="zero_shot")
    manifest["none_bias"] = {"value": 1.5}
    shifted = probs()
    assert sum(shifted.values()) == pytest.approx(1, abs=1e-4)
    for task in ("meeting_recap", "follow_up_email"):  # log p(task) - log p(none) drops by exactly the bias
        before = math.log(plain[task]) - math.log(plain["none"])
        assert math.log(shifted[task]) - math.log(shifted["none"]) == pytest.approx(before - 1.5, abs=1e-3)
    assert probs(strategy="zero_shot") == plain_zero_shot  # tuned for the adapter's own prompt only
    manifest["none_bias"] = {"value": 30.0}
    assert router.route(parse_request(payload)).task == "none"
    manifest["none_bias"] = {"value": -30.0}
    assert router.route(parse_request(payload)).task != "none"
    del manifest["none_bias"]


def test_tune_writes_the_bias_the_server_then_reproduces(tiny_dir, adapters, tmp_path, capsys):
    bench = tmp_path / "calibrate.jsonl"
    bench.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    config = f"mine:model={tiny_dir},adapter=tiny-router,adapters_dir={adapters},strategy=adapter"
    main(["eval", "--tune", "--config", config, "--bench", str(bench)])
    assert "none bias" in capsys.readouterr().out
    manifest = json.loads((adapters / "tiny-router" / "router.json").read_text())
    tuned = manifest["none_bias"]
    assert tuned["turns"] == 8 and tuned["data"][0]["file"] == str(bench)
    assert tuned["task_accuracy"] >= tuned["task_accuracy_without"]
    assert manifest["prompt_format"] == "adapter"  # the rest of the manifest is kept
    assert f"None bias {tuned['value']:+.1f}" in (adapters / "tiny-router" / "README.md").read_text()
    # the same turns evaluated through the Router with the written bias give the tuned accuracy
    out = tmp_path / "run"
    main(["eval", "--bench", str(bench), "--config", config, "--teacher-forcing", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["results"]["calibrate"]["mine"]["task_accuracy"] == pytest.approx(tuned["task_accuracy"], abs=1e-3)
    assert json.loads((out / "run.json").read_text())["configs"]["mine"]["none_bias"] == tuned["value"]
    # tuning again starts from the adapter's own scores, not from the already-biased answers
    main(["eval", "--tune", "--config", config, "--bench", str(bench)])
    again = json.loads((adapters / "tiny-router" / "router.json").read_text())["none_bias"]
    assert again["value"] == tuned["value"] and again["task_accuracy_without"] == tuned["task_accuracy_without"]


def test_tune_refuses_a_config_without_an_adapter_and_an_endpoint(tiny_dir, tmp_path):
    bench = tmp_path / "calibrate.jsonl"
    bench.write_text(json.dumps(CONVERSATIONS[0]) + "\n")
    with pytest.raises(SystemExit, match="--config base: --tune sets an adapter's none bias"):
        main(["eval", "--tune", "--config", f"base:model={tiny_dir}", "--bench", str(bench)])
    with pytest.raises(SystemExit, match="--tune needs --config"):
        main(["eval", "--tune", "--bench", str(bench)])
    with pytest.raises(SystemExit, match="cannot tune an endpoint"):
        main(["eval", "--tune", "--config", "adapter", "--endpoint", "http://127.0.0.1:9", "--bench", str(bench)])


def test_the_shipped_adapter_bias_was_tuned_on_data_it_never_trained_on():
    from taskrouter.loading import DEFAULT_ADAPTERS_DIR, read_manifest

    manifest = read_manifest(DEFAULT_ADAPTERS_DIR / "gemma3-270m-router")
    tuned_on = {d["file"] for d in manifest["none_bias"]["data"]}

    def trained_on(step: dict | None) -> set[str]:
        """Every --data file of the runs behind an adapter: its warm-start chain and the adapters it averages."""
        if not step:
            return set()
        words = shlex.split(step.get("train_command") or "")
        files = {words[i + 1] for i, w in enumerate(words) if w == "--data"}
        return files.union(trained_on(step.get("init_adapter")), *map(trained_on, step.get("average_of") or []))

    assert len(trained_on(manifest)) >= 3 and tuned_on and not tuned_on & trained_on(manifest)
    assert not {Path(n).stem for n in tuned_on} & {"dev", "val", "test"}
    assert -8 <= manifest["none_bias"]["value"] <= 8
