"""Embedding baseline logic with a fake keyword encoder (MiniLM itself takes ~30 s to load)."""
import numpy as np
import pytest

from taskrouter.evaluation.embedding import EmbeddingRouter, task_text, tune_threshold
from taskrouter.schema import parse_request

WORDS = ["recap", "email", "quote", "weather"]


class KeywordEncoder:
    """Normalised keyword counts; counts how many texts it embedded."""

    def __init__(self):
        self.texts = []

    def __call__(self, texts):
        self.texts += list(texts)
        rows = np.array([[t.lower().count(w) for w in WORDS] + [0.3] for t in texts], dtype=float)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


TASKS = [{"name": "meeting_recap", "description": "Write a recap of a meeting"},
         {"name": "follow_up_email", "description": "Write a follow-up email"},
         {"name": "prepare_a_quote", "description": "Prepare a price quote"}]


def request(text, current=None):
    return parse_request({"messages": [{"role": "user", "content": "earlier recap"},
                                       {"role": "assistant", "content": "ok"},
                                       {"role": "user", "content": text}],
                          "tasks": TASKS, "current_task": current})


def test_routes_last_user_message_to_most_similar_task_or_none():
    encoder = KeywordEncoder()
    router = EmbeddingRouter(encoder, threshold=0.5)
    answer = router.route(request("please draft the email", current="meeting_recap"))
    assert answer.task == "follow_up_email" and answer.event == "switch" and answer.strategy == "embedding"
    assert answer.candidates[0].task == "follow_up_email" and answer.candidates[0].p == pytest.approx(answer.confidence)
    low = router.route(request("what's the weather like", current="meeting_recap"))
    assert low.task == "none" and low.event == "end" and low.confidence < 0.5
    # task texts are embedded once per router: 3 tasks + 2 messages
    assert len(encoder.texts) == 5 and encoder.texts[1] == task_text("meeting_recap", "Write a recap of a meeting")


def test_tune_threshold_on_labelled_turns():
    conv = {"id": "t", "tasks": TASKS,
            "messages": [{"role": "user", "content": "recap of the call"}, {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": "weather today?"}],
            "labels": [{"turn": 0, "task": "meeting_recap", "event": "start"},
                       {"turn": 2, "task": None, "event": "end"}]}
    threshold, accuracy, turns = tune_threshold(EmbeddingRouter(KeywordEncoder(), 0.0), [conv])
    assert turns == 2 and accuracy == 1.0 and 0.1 < threshold <= 0.8


def test_tuning_refuses_reporting_and_test_splits(tmp_path):
    from taskrouter.cli import main

    path = tmp_path / "clinc150" / "val.jsonl"
    path.parent.mkdir()
    path.write_text("")
    with pytest.raises(SystemExit, match="tune on training-side data"):
        main(["eval", "--tune", "--config", "embedding", "--bench", str(path)])
