"""Tune a router's none decision on labelled turns: the threshold with the best task accuracy.

Both routers answer their best-scoring task unless its score is below a threshold,
and none otherwise. The embedding baseline thresholds the best cosine
(evaluation/embedding_threshold.json). An adapter thresholds the log-odds of its
best task against none: its "none bias" (router.json `none_bias`, applied by the
Router). A small adapter learns a prior for none from its training mix, and that
prior does not hold in new domains. One grid search serves both. Tune on
training-side data only: dev/val splits are for reporting and test splits are held out.
"""
from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taskrouter.loading import MANIFEST, read_manifest
from taskrouter.schema import NONE, Limits, parse_request

if TYPE_CHECKING:
    from taskrouter.router import Router

BIAS_GRID = np.round(np.arange(-8.0, 8.0001, 0.1), 1)
FLOOR = 1e-6  # candidates' probabilities are rounded to 6 decimals


def best_threshold(scores: np.ndarray, best_is_gold: np.ndarray, gold_is_none: np.ndarray,
                   grid: np.ndarray) -> tuple[float, float]:
    """(threshold, task accuracy) maximising accuracy: a turn is right when it keeps its gold best task
    (score >= threshold) or answers none for a gold none (score < threshold). Ties take the middle one."""
    accuracies = np.array([np.mean(np.where(scores >= t, best_is_gold, gold_is_none)) for t in grid])
    best = np.flatnonzero(accuracies == accuracies.max())
    i = int(best[len(best) // 2])
    return float(grid[i]), float(accuracies[i])


def none_log_odds(router: Router, adapter: str, conversations: list[dict],
                  parallel: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per labelled turn, teacher-forced: log p(best task) - log p(none) of the adapter before any
    none bias, whether that best task is the gold one, and whether the gold is none."""
    from tqdm import tqdm

    requests, golds = [], []
    for conv in conversations:
        previous = None
        for label in conv["labels"]:
            requests.append(parse_request({
                "messages": conv["messages"][: label["turn"] + 1], "tasks": conv["tasks"], "current_task": previous,
                "strategy": "adapter", "adapter": adapter,
                "top_k": min(len(conv["tasks"]) + 1, Limits().max_top_k)}))
            golds.append(label["task"])
            previous = label["task"]
    with ThreadPoolExecutor(parallel) as pool:  # concurrent requests share the router's micro-batches
        answers = list(tqdm(pool.map(router.route, requests), total=len(requests), desc="scoring turns", unit="turn"))
    bias = router.none_bias(adapter)  # the answers' probabilities include the current bias: take it out
    log_odds, best_is_gold = np.zeros(len(answers)), np.zeros(len(answers), dtype=bool)
    for i, (answer, gold) in enumerate(zip(answers, golds)):
        p = {c.task: c.p for c in answer.candidates}
        best = next((c.task for c in answer.candidates if c.task != NONE), None)
        if best is None:  # an empty task list: none is the only answer
            log_odds[i] = -math.inf
            continue
        log_odds[i] = math.log(max(p[best], FLOOR)) - math.log(max(p.get(NONE, 0.0), FLOOR)) + bias
        best_is_gold[i] = best == gold
    return log_odds, best_is_gold, np.array([g is None for g in golds])


def tune_none_bias(router: Router, adapter: str, conversations: list[dict]) -> dict:
    """The none bias with the best teacher-forced task accuracy, and the accuracy without it."""
    log_odds, best_is_gold, gold_is_none = none_log_odds(router, adapter, conversations)
    value, accuracy = best_threshold(log_odds, best_is_gold, gold_is_none, BIAS_GRID)
    untuned = float(np.mean(np.where(log_odds >= 0, best_is_gold, gold_is_none)))
    return {"value": value, "task_accuracy": round(accuracy, 4), "task_accuracy_without": round(untuned, 4),
            "turns": len(log_odds)}


def save_none_bias(adapter_dir: Path, result: dict, data: list[dict]) -> None:
    """Record the tuned bias in the adapter's router.json with the data it was tuned on."""
    manifest = read_manifest(adapter_dir)
    manifest["none_bias"] = {**result, "mode": "teacher forcing",
                             "grid": [float(BIAS_GRID[0]), float(BIAS_GRID[-1]), 0.1], "data": data}
    (Path(adapter_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    from taskrouter.training.model_card import write_model_card

    write_model_card(Path(adapter_dir), manifest)  # the card states the bias the server applies
