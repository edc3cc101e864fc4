"""Metrics of BENCH_FORMAT.md on small hand-computed cases, and the bench-file checks."""
import json

import pytest

from taskrouter.evaluation.benchfile import bench_name, check_conversation, load_bench, sample
from taskrouter.evaluation.metrics import binary_scores, compute_metrics, latency_stats, task_confusion

TASKS = [{"name": "a", "description": "A"}, {"name": "b", "description": "B"}]


def conv(cid, labels):
    messages = []
    for i, _ in enumerate(labels):
        messages += [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"r{i}"}]
    return {"id": cid, "tasks": TASKS, "messages": messages[:-1],
            "labels": [{"turn": 2 * i, "task": t, "event": e} for i, (t, e) in enumerate(labels)]}


GOLD = [conv("A", [("a", "start"), ("a", "continue"), ("b", "switch"), (None, "end")]),
        conv("B", [(None, "none"), ("b", "start")])]


def pred(cid, turn, task, event, latency, valid=True):
    return {"id": cid, "turn": turn, "task": task, "event": event, "latency_ms": latency, "valid": valid}


PREDS = [pred("A", 0, "a", "start", 10), pred("A", 2, "b", "switch", 20), pred("A", 4, "b", "continue", 30),
         pred("A", 6, None, "end", 40), pred("B", 0, "a", "start", 50), pred("B", 2, None, "end", 60, valid=False)]


def test_hand_computed_metrics():
    m = compute_metrics(GOLD, PREDS)
    assert m["turns"] == 6 and m["task_accuracy"] == pytest.approx(3 / 6)
    assert {k: m["start"][k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 1, "fp": 1, "fn": 1, "tn": 3}
    assert (m["start"]["precision"], m["start"]["recall"], m["start"]["f1"]) == (0.5, 0.5, 0.5)
    assert {k: m["end"][k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 1, "fp": 1, "fn": 0, "tn": 4}
    assert m["end"]["f1"] == pytest.approx(2 / 3) and m["end"]["recall"] == 1.0
    assert (m["switch"]["tp"], m["switch"]["fp"], m["switch"]["fn"]) == (0, 1, 1)
    assert (m["switch"]["precision"], m["switch"]["recall"], m["switch"]["f1"]) == (0.0, 0.0, 0.0)
    assert (m["none"]["precision"], m["none"]["recall"]) == (0.5, 0.5)
    assert m["invalid"] == 1
    assert m["after_miss"] == {"turns": 2, "task_accuracy": 0.5}  # A turn 4 recovers, B turn 2 does not
    assert m["latency"] == {"p50_ms": 35.0, "p95_ms": pytest.approx(57.5), "mean_ms": 35.0}


def test_after_a_miss_never_looks_across_conversations():
    # B ends on a miss and A follows it: A's first turn has no previous answer of its own
    assert compute_metrics([GOLD[1], GOLD[0]], PREDS)["after_miss"] == {"turns": 2, "task_accuracy": 0.5}


def test_null_task_counts_as_class_none():
    assert task_confusion(GOLD, PREDS)[("none", "a")] == 1
    assert task_confusion(GOLD, PREDS)[("b", "none")] == 1


def test_undefined_ratios_are_none_not_zero():
    scores = binary_scores([False, False], [False, False])
    assert scores["precision"] is None and scores["recall"] is None and scores["f1"] is None and scores["tn"] == 2
    missed = binary_scores([True], [False])
    assert missed["precision"] is None and missed["recall"] == 0.0 and missed["f1"] == 0.0
    assert latency_stats([]) == {"p50_ms": None, "p95_ms": None, "mean_ms": None}


@pytest.mark.parametrize("preds, needle", [
    (PREDS[:-1], "no prediction for conversation 'B' turn 2"),
    (PREDS + [pred("C", 0, None, "none", 1)], "has no gold label"),
    (PREDS + [PREDS[0]], "appears twice"),
])
def test_predictions_must_match_labels(preds, needle):
    with pytest.raises(ValueError, match=needle):
        compute_metrics(GOLD, preds)


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["labels"][1].update(event="switch"), "expected 'continue'"),
    (lambda c: c["labels"][2].update(task="zzz"), "not in its task list"),
    (lambda c: c["labels"][1].update(turn=3), "not the user message indices"),
])
def test_bench_check_rejects_inconsistent_labels(mutate, needle):
    bad = json.loads(json.dumps(GOLD[0]))
    mutate(bad)
    with pytest.raises(ValueError, match=needle):
        check_conversation(bad)


def test_sampling_is_seeded_and_nested(tmp_path):
    convs = [conv(f"c{i}", [("a", "start")]) for i in range(50)]
    small, large = sample(convs, 5, 7), sample(convs, 20, 7)
    assert small == sample(convs, 5, 7) and {c["id"] for c in small} <= {c["id"] for c in large}
    assert sample(convs, 5, 8) != small and sample(convs, None, 7) == convs
    path = tmp_path / "sgd" / "dev.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(c) + "\n" for c in convs))
    bench = load_bench(f"{path}@3", limit=10)
    assert bench.name == "sgd-dev" and len(bench.conversations) == 3 and bench.total == 50
    assert bench_name(tmp_path / "sales.jsonl") == "sales"


@pytest.mark.parametrize("seed", range(40))
def test_scikit_learn_scores_equal_the_definitions(seed):
    """The counts and ratios are the BENCH_FORMAT definitions, on random decisions with and without points."""
    import random

    rng = random.Random(seed)
    n = rng.randint(1, 30)
    gold = [rng.random() < rng.choice([0.0, 0.3, 1.0]) for _ in range(n)]
    pred = [rng.random() < rng.choice([0.0, 0.5, 1.0]) for _ in range(n)]
    tp = sum(g and p for g, p in zip(gold, pred))
    fp = sum(p and not g for g, p in zip(gold, pred))
    fn = sum(g and not p for g, p in zip(gold, pred))

    def ratio(num, den):
        return num / den if den else None

    assert binary_scores(gold, pred) == {"tp": tp, "fp": fp, "fn": fn, "tn": n - tp - fp - fn,
                                         "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
                                         "f1": ratio(2 * tp, 2 * tp + fp + fn)}


def test_task_matrix_keeps_the_top_gold_classes_then_none_then_other():
    from collections import Counter

    from taskrouter.evaluation.plots import task_matrix

    confusion = Counter({("a", "a"): 5, ("a", "b"): 2, ("b", "b"): 3, ("c", "none"): 1, ("none", "c"): 4,
                         ("none", "none"): 6})
    labels, matrix = task_matrix(confusion, top_n=2)
    assert labels == ["a", "b", "none", "(other)"]
    assert matrix.tolist() == [[5, 2, 0, 0], [0, 3, 0, 0], [0, 0, 6, 4], [0, 0, 1, 0]]
