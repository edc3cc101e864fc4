"""Training examples: the serving prompt + answer, labels on the answer only, consistent augmentation, balance."""
import json
import random
from collections import Counter

import pytest
from transformers import AutoTokenizer

from taskrouter.prompts import answer_text, build_prompt, encode_prompt
from taskrouter.schema import Message, Task
from taskrouter.training.examples import IGNORE, Augment, augment, build_examples, encode_example, read_turns, \
    sample_turns, splice_switch, turns_of

TASKS = [{"name": "meeting_recap", "description": "Write a recap of a meeting"},
         {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"},
         {"name": "prepare_a_quote", "description": "Prepare a price quote"},
         {"name": "book_a_flight", "description": "Book a flight"},
         {"name": "weather", "description": "Weather forecast"}]
MESSAGES = [{"role": "user", "content": "Please write a recap of the meeting with ACME."},
            {"role": "assistant", "content": "Sure, what were the main points?"},
            {"role": "user", "content": "Send a follow-up email to the prospect."},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Thanks, that's all."}]
RECORD = {"id": "c1", "tasks": TASKS, "messages": MESSAGES,
          "labels": [{"turn": 0, "task": "meeting_recap", "event": "start"},
                     {"turn": 2, "task": "follow_up_email", "event": "switch"},
                     {"turn": 4, "task": None, "event": "end"}]}


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def test_example_is_the_serving_prompt_plus_answer_with_labels_on_the_answer_only(tokenizer):
    example = encode_example(tokenizer, TASKS, MESSAGES[:3], "meeting_recap", "follow_up_email", max_tokens=1024)
    prompt = build_prompt("adapter", [Task(**t) for t in TASKS], [Message(**m) for m in MESSAGES[:3]], "meeting_recap")
    prompt_ids = encode_prompt(tokenizer, prompt, 1024).ids
    answer_ids = tokenizer.encode(answer_text("follow_up_email"), add_special_tokens=False)
    assert example.input_ids == prompt_ids + answer_ids
    assert example.labels[: len(prompt_ids)] == [IGNORE] * len(prompt_ids)
    assert example.labels[len(prompt_ids):] == answer_ids
    assert example.event == "switch"
    end = encode_example(tokenizer, TASKS, MESSAGES, "follow_up_email", None, max_tokens=1024)
    assert [i for i in end.labels if i != IGNORE] == tokenizer.encode(answer_text("none"), add_special_tokens=False)
    assert end.event == "end"


def test_long_prompts_drop_old_turns_but_keep_the_answer(tokenizer):
    full = encode_example(tokenizer, TASKS, MESSAGES, "follow_up_email", None, max_tokens=1024)
    short = encode_example(tokenizer, TASKS, MESSAGES, "follow_up_email", None, max_tokens=len(full.input_ids) - 10)
    assert len(short.input_ids) < len(full.input_ids)
    assert short.labels[-3:] == full.labels[-3:]


def test_turns_carry_the_gold_previous_task():
    turns = turns_of(RECORD, "x")
    assert [(t.previous, t.task, t.event) for t in turns] == [
        (None, "meeting_recap", "start"), ("meeting_recap", "follow_up_email", "switch"), ("follow_up_email", None, "end")]


def test_renaming_keeps_gold_and_current_consistent():
    turn = turns_of(RECORD, "x")[1]
    descriptions = {t["name"]: t["description"] for t in TASKS}
    renamed = 0
    for seed in range(40):
        tasks, current, gold = augment(turn, random.Random(seed), Augment(drop_distractors=0, drop_gold=0, rename=1))
        by_name = {t["name"]: t["description"] for t in tasks}
        assert by_name[gold] == descriptions["follow_up_email"]
        assert by_name[current] == descriptions["meeting_recap"]
        renamed += gold != "follow_up_email"
    assert renamed == 40


def test_dropping_keeps_current_and_gold_unless_the_gold_is_dropped():
    turn = turns_of(RECORD, "x")[1]
    for seed in range(40):
        tasks, current, gold = augment(turn, random.Random(seed), Augment(drop_distractors=1, drop_gold=0, rename=0))
        names = [t["name"] for t in tasks]
        assert {"meeting_recap", "follow_up_email"} <= set(names) and len(names) >= 2
        tasks, current, gold = augment(turn, random.Random(seed), Augment(drop_distractors=0, drop_gold=1, rename=0))
        assert gold is None and "follow_up_email" not in [t["name"] for t in tasks]
        assert current == "meeting_recap" and current in [t["name"] for t in tasks]
    continuing = turns_of({**RECORD, "labels": [{"turn": 0, "task": "weather", "event": "start"},
                                                {"turn": 2, "task": "weather", "event": "continue"}]}, "x")[1]
    _, current, gold = augment(continuing, random.Random(0), Augment(drop_distractors=0, drop_gold=1, rename=0))
    assert gold == current == "weather"  # the current task is never dropped


def test_sampling_balances_events(tmp_path):
    lines = []
    for i in range(60):
        lines.append(dict(RECORD, id=f"c{i}"))
        lines.append({"id": f"q{i}", "tasks": TASKS, "messages": MESSAGES[:1],
                      "labels": [{"turn": 0, "task": None if i % 2 else "weather", "event": "none" if i % 2 else "start"}]})
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines))
    turns = read_turns(path)
    weights = {"start": 0.25, "switch": 0.25, "end": 0.25, "none": 0.25, "continue": 0.25}  # no continue in the data
    sample = sample_turns(turns, 400, weights, random.Random(0), synthetic_switch=0.5)
    counts = Counter(t.event for t in sample)
    assert counts == {"start": 100, "switch": 100, "end": 100, "none": 100}
    assert Counter(t.source for t in sample if t.event == "switch")["synthetic-switch"] == 50


def test_spliced_switch_joins_two_conversations():
    first = turns_of(RECORD, "a")[0]
    other = {"id": "c2", "tasks": [{"name": "weather", "description": "Weather forecast"}],
             "messages": [{"role": "user", "content": "Will it rain?"}],
             "labels": [{"turn": 0, "task": "weather", "event": "start"}]}
    spliced = splice_switch(first, turns_of(other, "b")[0])
    assert spliced.event == "switch" and spliced.previous == "meeting_recap" and spliced.task == "weather"
    assert spliced.record["messages"][spliced.turn]["content"] == "Will it rain?"
    assert {t["name"] for t in spliced.record["tasks"]} == {"meeting_recap", "weather"}


def test_build_examples_without_augmentation_matches_the_gold(tokenizer):
    examples = build_examples(tokenizer, turns_of(RECORD, "x"), 1024, random.Random(0), aug=None)
    assert [e.event for e in examples] == ["start", "switch", "end"]
