"""The metrics of BENCH_FORMAT.md, computed once from gold labels and predictions.

Task accuracy counts a `null` task as the class "none"; start, end and switch
points are each a binary problem (is this turn such a point?) with a confusion
matrix, precision, recall and F1; none detection is the precision and recall of
`task: null`; invalid outputs are counted; latency is p50 / p95 (numpy's linear
interpolation) and mean per routing request. The counts and scores are scikit-learn's;
a ratio with a zero denominator is `None` (reported as "n/a"), never a made-up 0 or 1;
F1 is 2tp / (2tp + fp + fn), so it is 0 when a point exists or is predicted but never hit.

Measures beyond BENCH_FORMAT: task accuracy on the turns that follow a wrong
answer in the same conversation (closed loop, that wrong answer is the request's
current task, so this says how often the router recovers from its own mistakes);
task accuracy on the turns whose gold task name the adapters trained on and on
those whose name they never saw (evaluation/seen.py); and, for two benchmarks of
the same dialogues (SGD dev and an SGD-X rewording, or a shuffled task list), the
accuracy of each over their common turns and how often the answer changed.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

NONE_CLASS = "none"
POINTS = ("start", "end", "switch")


def as_class(task: str | None) -> str:
    """A task name, or the class "none" for `null`."""
    return NONE_CLASS if task is None else task


def _defined(value: float) -> float | None:
    """scikit-learn's score as a float, or None where it is undefined (it reports nan there)."""
    return None if np.isnan(value) else float(value)


def binary_scores(gold: list[bool], pred: list[bool]) -> dict:
    """Confusion matrix (tp, fp, fn, tn) with precision, recall and F1 of one binary decision."""
    (tp, fn), (fp, tn) = confusion_matrix(gold, pred, labels=[True, False]).tolist() if gold else ((0, 0), (0, 0))
    precision, recall, f1, _ = precision_recall_fscore_support(gold, pred, average="binary", pos_label=True,
                                                               zero_division=np.nan) if gold else (np.nan,) * 4
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": _defined(precision), "recall": _defined(recall),
            "f1": _defined(f1)}


def latency_stats(latencies_ms: list[float]) -> dict:
    """p50, p95 and mean latency in milliseconds (None when there are no requests)."""
    if not latencies_ms:
        return {"p50_ms": None, "p95_ms": None, "mean_ms": None}
    values = np.asarray(latencies_ms, dtype=float)
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "mean_ms": float(values.mean())}


def pair_turns(conversations: Iterable[Mapping], predictions: Iterable[Mapping]) -> list[tuple[dict, dict]]:
    """(gold label, prediction) for every labelled user turn; a missing or unknown prediction is an error."""
    by_key = {}
    for pred in predictions:
        key = (pred["id"], pred["turn"])
        if key in by_key:
            raise ValueError(f"prediction for conversation {key[0]!r} turn {key[1]} appears twice")
        by_key[key] = pred
    pairs = []
    for conv in conversations:
        for label in conv["labels"]:
            key = (conv["id"], label["turn"])
            if key not in by_key:
                raise ValueError(f"no prediction for conversation {key[0]!r} turn {key[1]}")
            pairs.append((label, by_key.pop(key)))
    if by_key:
        conv_id, turn = next(iter(by_key))
        raise ValueError(f"prediction for conversation {conv_id!r} turn {turn} has no gold label")
    return pairs


def compute_metrics(conversations: Iterable[Mapping], predictions: Iterable[Mapping],
                    seen: frozenset[str] | None = None) -> dict:
    """All BENCH_FORMAT metrics of one predictions set against its conversations' labels; with `seen`
    (the task names the adapters trained on), the accuracy on turns whose gold name is or is not in it."""
    pairs = pair_turns(conversations, predictions)
    gold_tasks = [as_class(g["task"]) for g, _ in pairs]
    pred_tasks = [as_class(p["task"]) for _, p in pairs]
    metrics: dict = {
        "turns": len(pairs),
        "task_accuracy": float(accuracy_score(gold_tasks, pred_tasks)) if pairs else None,
    }
    for point in POINTS:
        metrics[point] = binary_scores([g["event"] == point for g, _ in pairs], [p["event"] == point for _, p in pairs])
    none = binary_scores([g == NONE_CLASS for g in gold_tasks], [p == NONE_CLASS for p in pred_tasks])
    metrics["none"] = {"precision": none["precision"], "recall": none["recall"], "tp": none["tp"],
                       "fp": none["fp"], "fn": none["fn"]}
    after_miss = [g == p for i, (g, p) in enumerate(zip(gold_tasks, pred_tasks))
                  if i and pairs[i - 1][1]["id"] == pairs[i][1]["id"] and gold_tasks[i - 1] != pred_tasks[i - 1]]
    metrics["after_miss"] = {"turns": len(after_miss),
                             "task_accuracy": sum(after_miss) / len(after_miss) if after_miss else None}
    if seen is not None:
        metrics["names"] = {}
        for group, wanted in (("seen", True), ("unseen", False)):
            hits = [g == p for g, p in zip(gold_tasks, pred_tasks) if g != NONE_CLASS and (g in seen) == wanted]
            metrics["names"][group] = {"turns": len(hits), "task_accuracy": sum(hits) / len(hits) if hits else None}
    metrics["invalid"] = sum(not p["valid"] for _, p in pairs)
    metrics["latency"] = latency_stats([p["latency_ms"] for _, p in pairs])
    return metrics


def task_confusion(conversations: Iterable[Mapping], predictions: Iterable[Mapping]) -> Counter:
    """Counts of (gold class, predicted class) over all labelled turns, for the task-selection matrix."""
    return Counter((as_class(g["task"]), as_class(p["task"])) for g, p in pair_turns(conversations, predictions))


def _position_map(a: Mapping, b: Mapping) -> dict[str, str]:
    """Conversation b's task names mapped onto a's: by name when both lists hold the same names (a shuffle),
    else by position (an SGD-X rewording keeps the tasks in order)."""
    names_a, names_b = [t["name"] for t in a["tasks"]], [t["name"] for t in b["tasks"]]
    if set(names_a) == set(names_b):
        return {n: n for n in names_b}
    return dict(zip(names_b, names_a)) if len(names_a) == len(names_b) else {}


def paired_metrics(conv_a: list[Mapping], preds_a: list[Mapping], conv_b: list[Mapping],
                   preds_b: list[Mapping]) -> dict | None:
    """Accuracy of two benchmarks of the same dialogues over their common labelled turns, their gap (a - b)
    and the share of turns whose answer differs (b's names mapped onto a's); None when no id is shared."""
    by_id_b = {c["id"]: c for c in conv_b}
    common = [c for c in conv_a if c["id"] in by_id_b and len(c["labels"]) == len(by_id_b[c["id"]]["labels"])]
    if not common:
        return None
    ids = {c["id"] for c in common}
    pa = {(p["id"], p["turn"]): p for p in preds_a if p["id"] in ids}
    pb = {(p["id"], p["turn"]): p for p in preds_b if p["id"] in ids}
    right_a = right_b = changed = turns = 0
    for conv in common:
        other = by_id_b[conv["id"]]
        mapping = _position_map(conv, other)
        for la, lb in zip(conv["labels"], other["labels"]):
            a, b = pa[(conv["id"], la["turn"])], pb[(conv["id"], lb["turn"])]
            right_a += as_class(a["task"]) == as_class(la["task"])
            right_b += as_class(b["task"]) == as_class(lb["task"])
            changed += as_class(a["task"]) != as_class(mapping.get(b["task"], b["task"]) if b["task"] else None)
            turns += 1
    acc_a, acc_b = right_a / turns, right_b / turns
    return {"conversations": len(common), "turns": turns, "task_accuracy_a": acc_a, "task_accuracy_b": acc_b,
            "gap": acc_a - acc_b, "changed": changed / turns}
