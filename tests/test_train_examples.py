"""Training packs: the serving prompt + answer, labels on the answer only, one forward per pack, augmentation,
balance, closed-loop replays."""
import json
import re
import random
from collections import Counter
from dataclasses import fields

import pytest
import torch
from transformers import AutoTokenizer

from taskrouter.loading import load_model
from taskrouter.prompts import answer_text, build_prompt, encode_prompt
from taskrouter.schema import Message, Task
from taskrouter.training.closed_loop import replay_records
from taskrouter.training.examples import IGNORE, VERBS, Augment, Pack, Regrouper, augment, conversation_plan, \
    encode_pack, keep_probabilities, sample_plans
from taskrouter.training.train import pack_loss

TASKS = [{"name": "meeting_recap", "description": "Write a recap of a meeting"},
         {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"},
         {"name": "prepare_a_quote", "description": "Prepare a price quote"},
         {"name": "book_a_flight", "description": "Book a flight"},
         {"name": "weather", "description": "Weather forecast"}]


def only(**probabilities: float) -> Augment:
    """An augmentation doing only what is named."""
    return Augment(**{**{f.name: 0.0 for f in fields(Augment)}, **probabilities})


MESSAGES = [{"role": "user", "content": "Please write a recap of the meeting with ACME."},
            {"role": "assistant", "content": "Sure, what were the main points?"},
            {"role": "user", "content": "Send a follow-up email to the prospect."},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Thanks, that's all."}]
RECORD = {"id": "c1", "source": "x/train", "tasks": TASKS, "messages": MESSAGES,
          "labels": [{"turn": 0, "task": "meeting_recap", "event": "start"},
                     {"turn": 2, "task": "follow_up_email", "event": "switch"},
                     {"turn": 4, "task": None, "event": "end"}]}


def single(i: int, task: str | None, text: str = "Will it rain tomorrow?") -> dict:
    return {"id": f"q{i}", "source": "y/train", "tasks": TASKS, "messages": [{"role": "user", "content": text}],
            "labels": [{"turn": 0, "task": task, "event": "none" if task is None else "start"}]}


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def test_each_example_is_the_serving_prompt_plus_answer_with_labels_on_the_answer_only(tokenizer):
    pack = encode_pack(tokenizer, conversation_plan(RECORD), history_tokens=1024)
    assert [e.event for e in pack.examples] == ["start", "switch", "end"]
    for example, turn, current, gold in zip(pack.examples, (0, 2, 4), (None, "meeting_recap", "follow_up_email"),
                                            ("meeting_recap", "follow_up_email", "none")):
        prompt = build_prompt("adapter", [Task(**t) for t in TASKS], [Message(**m) for m in MESSAGES[: turn + 1]],
                              current)
        prompt_ids = encode_prompt(tokenizer, prompt, history_tokens=1024).ids
        answer_ids = tokenizer.encode(answer_text(gold), add_special_tokens=False)
        assert pack.head + example.ids == prompt_ids + answer_ids
        assert [t for t in example.labels if t != IGNORE] == answer_ids
        assert example.labels[-len(answer_ids):] == answer_ids


def test_long_prompts_drop_old_turns_but_keep_the_head_the_newest_message_and_the_answer(tokenizer):
    full = encode_pack(tokenizer, conversation_plan(RECORD), history_tokens=1024)
    newest = len(tokenizer.encode("User: " + MESSAGES[4]["content"] + "\n", add_special_tokens=False))
    short = encode_pack(tokenizer, conversation_plan(RECORD), history_tokens=newest)
    assert short.head == full.head and len(short.examples[-1].ids) < len(full.examples[-1].ids)
    kept, whole = short.examples[-1].ids, full.examples[-1].ids
    assert whole[-len(kept):] == kept and len(kept) > newest  # the newest message and what follows, untouched
    assert short.examples[-1].labels[-3:] == full.examples[-1].labels[-3:]


def test_one_forward_per_pack_gives_the_sum_of_separate_losses(tiny_dir, tokenizer):
    """Tree attention must make every example see exactly its own prompt, even past the tiny model's sliding window."""
    loaded = load_model(str(tiny_dir))
    pack = encode_pack(tokenizer, conversation_plan(RECORD), history_tokens=1024)
    assert len(pack.head) + len(pack.examples[-1].ids) > loaded.model.config.sliding_window
    with torch.no_grad():
        together = pack_loss(loaded.model, pack, loaded.device).item()
        apart = [pack_loss(loaded.model, Pack(pack.head, [e]), loaded.device).item() for e in pack.examples]
    assert len(set(round(a, 3) for a in apart)) == 3  # the examples really differ
    assert together == pytest.approx(sum(apart), rel=1e-4)


def test_renaming_keeps_gold_and_current_consistent():
    plan = conversation_plan(RECORD)
    descriptions = {t["name"]: t["description"] for t in TASKS}
    for seed in range(40):
        renamed = augment(plan, random.Random(seed), only(rename=1))
        by_name = {t["name"]: t["description"] for t in renamed.tasks}
        assert "meeting_recap" not in by_name
        for before, after in zip(plan.queries, renamed.queries):
            assert (after.gold is None) == (before.gold is None) and after.event == before.event
            if before.gold:
                assert by_name[after.gold] == descriptions[before.gold]


def test_dropping_keeps_used_tasks_unless_one_leaves_and_its_turns_become_none():
    plan = conversation_plan(RECORD)
    for seed in range(40):
        kept = augment(plan, random.Random(seed), only(drop_distractors=1))
        names = {t["name"] for t in kept.tasks}
        assert {"meeting_recap", "follow_up_email"} <= names and len(names) >= 2
        dropped = augment(plan, random.Random(seed), only(drop_gold=1))
        names = {t["name"] for t in dropped.tasks}
        gone = ({"meeting_recap", "follow_up_email"} - names).pop()
        assert len(names) == 4
        for q in dropped.queries:
            assert gone not in (q.gold, q.current) and (q.current is None or q.current in names)
    gone_first = [q.event for q in augment(plan, random.Random(2), only(drop_gold=1)).queries]
    assert gone_first in (["none", "start", "end"], ["start", "end", "none"])


def test_single_turn_rows_regroup_under_one_list_with_off_list_requests_as_none():
    rows = [single(i, "weather") for i in range(5)] + [single(10 + i, "translate", "Say hi in Italian")
                                                      for i in range(5)]
    plan = Regrouper(rows).plan(rows[0], random.Random(0))
    assert plan.tasks == tuple(TASKS) and plan.queries[0].gold == "weather"
    assert all(q.gold in (None, "weather") and q.current is None for q in plan.queries)
    for q in plan.queries:
        assert (q.gold is None) == (q.messages[0]["content"] == "Say hi in Italian")


def test_regrouped_lists_are_sometimes_lengthened_and_golds_follow_the_longer_list():
    other = [{"name": "translate", "description": "Translate a text"}, {"name": "timer", "description": "Set a timer"}]
    rows = [single(i, "weather") for i in range(5)] + [{**single(10 + i, "translate", "Say hi in Italian"),
                                                        "tasks": other} for i in range(5)]
    plans = [Regrouper(rows).plan(rows[0], random.Random(seed)) for seed in range(40)]
    longer = [p for p in plans if len(p.tasks) > len(TASKS)]
    assert longer and len(longer) < len(plans)
    for plan in plans:
        names = {t["name"] for t in plan.tasks}
        assert len(names) == len(plan.tasks)  # no name twice
        for q in plan.queries:
            asked = "translate" if q.messages[0]["content"] == "Say hi in Italian" else "weather"
            assert q.gold == (asked if asked in names else None)


def test_keep_probabilities_hit_the_balance():
    counts = Counter({"continue": 800, "start": 100, "switch": 100})
    keep = keep_probabilities(counts, {"start": 0.4, "continue": 0.3, "switch": 0.3})
    kept = {e: counts[e] * keep[e] for e in counts}
    assert keep["start"] == 1.0 and kept["continue"] / sum(kept.values()) == pytest.approx(0.3)


def test_sampling_fills_the_quota_and_balances_events():
    records = [dict(RECORD, id=f"c{i}") for i in range(30)] + [single(i, None if i % 2 else "weather")
                                                               for i in range(30)]
    balance = {"start": 0.25, "switch": 0.25, "end": 0.25, "none": 0.25, "continue": 0.25}  # no continue in the data
    plans = sample_plans(records, 2000, balance, random.Random(0), aug=None, pilot=500)
    counts = Counter(q.event for p in plans for q in p.queries)
    assert sum(counts.values()) == 2000 and set(counts) == {"start", "switch", "end", "none"}
    assert all(abs(c / 2000 - 0.25) < 0.05 for c in counts.values())
    assert len(plans) < 2000  # examples are packed


def test_verb_swap_changes_a_names_leading_verb_never_its_description_or_labels():
    plan = conversation_plan(RECORD)
    descriptions = {t["name"]: t["description"] for t in TASKS}
    swapped_any = False
    for seed in range(40):
        swapped = augment(plan, random.Random(seed), only(swap_verbs=1))
        by_description = {t["description"]: t["name"] for t in swapped.tasks}
        for name, description in descriptions.items():
            new = by_description[description]
            assert new.partition("_")[2] == name.partition("_")[2]  # only the leading word may change
            if new != name:
                swapped_any = True
                assert new.split("_")[0] in VERBS
        for before, after in zip(plan.queries, swapped.queries):
            assert after.event == before.event
            if before.gold:
                assert descriptions[before.gold] == next(t["description"] for t in swapped.tasks
                                                         if t["name"] == after.gold)
    assert swapped_any


def test_wrong_current_task_changes_later_turns_current_never_their_gold():
    plan = conversation_plan(RECORD)
    names = {t["name"] for t in TASKS} | {None}
    changed = 0
    for seed in range(40):
        noisy = augment(plan, random.Random(seed), only(wrong_current=0.5))
        assert noisy.queries[0] == plan.queries[0]  # a first turn has no current task to get wrong
        for before, after in zip(plan.queries, noisy.queries):
            assert after.gold == before.gold and after.current in names
            changed += after.current != before.current
    assert changed > 10


def predictions_file(tmp_path, answers: dict[str, list], run: dict | None = None):
    """A `taskrouter eval` predictions file (and, if given, its run.json) answering each labelled turn."""
    lines = [json.dumps({"id": cid, "turn": turn, "task": task, "event": "x", "latency_ms": 1.0, "valid": True})
             for cid, tasks in answers.items() for turn, task in zip((0, 2, 4), tasks)]
    path = tmp_path / "predictions-adapter-x-train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    if run is not None:
        (tmp_path / "run.json").write_text(json.dumps(run))
    return path


def test_closed_loop_replay_trains_the_routers_own_currents_with_the_gold_answers(tmp_path):
    right = {**RECORD, "id": "c2"}
    unfinished = {**RECORD, "id": "c3"}
    path = predictions_file(tmp_path, {"c1": ["follow_up_email", "follow_up_email", None],
                                       "c2": ["meeting_recap", "follow_up_email", "weather"],
                                       "c3": ["weather"]}, run={"teacher_forcing": False})
    [replay] = replay_records([RECORD, right, unfinished], path)  # c2 never sent a wrong current; c3 is cut short
    assert replay["id"] == "c1" and replay["source"] == "x/train closed loop"
    plan = conversation_plan(replay)
    assert [q.current for q in plan.queries] == [None, "follow_up_email", "follow_up_email"]
    assert [q.gold for q in plan.queries] == ["meeting_recap", "follow_up_email", None]
    assert [q.event for q in plan.queries] == ["start", "continue", "end"]  # from what the router sent
    assert [q.current for q in conversation_plan(RECORD).queries] == [None, "meeting_recap", "follow_up_email"]


def test_closed_loop_refuses_teacher_forced_or_foreign_predictions(tmp_path):
    forced = predictions_file(tmp_path, {"c1": ["weather", "weather", None]}, run={"teacher_forcing": True})
    with pytest.raises(ValueError, match="--closed-loop .*teacher-forcing"):
        replay_records([RECORD], forced)
    (tmp_path / "run.json").unlink()
    foreign = predictions_file(tmp_path, {"elsewhere": ["weather", "weather", None]})
    with pytest.raises(ValueError, match="--closed-loop .*in no --data file .*'elsewhere'"):
        replay_records([RECORD], foreign)


def test_mixed_name_styles_follow_gold_and_current_and_opaque_names_keep_their_description():
    plan = conversation_plan(RECORD)
    descriptions = {t["name"]: t["description"] for t in TASKS}
    opaque_form = re.compile(r"^(t\d+|T-\d+|task_\d+|op\d+|wf-\d+|[A-Z]{1,2}_?\d+)$")
    restyled = opaque = dropped = 0
    for seed in range(60):
        out = augment(plan, random.Random(seed), only(mix_names=1, drop_descriptions=0.5))
        names = [t["name"] for t in out.tasks]
        assert len(set(names)) == len(names) and "none" not in {n.lower() for n in names}
        by_name = {t["name"]: t["description"] for t in out.tasks}
        for old, new in zip(plan.queries, out.queries):
            assert (new.gold is None) == (old.gold is None) and new.event == old.event
            if old.gold is None:
                continue
            if opaque_form.match(new.gold):  # an opaque code: only its description says what it is
                opaque += 1
                assert by_name[new.gold] == descriptions[old.gold]
            else:
                assert by_name[new.gold] in (descriptions[old.gold], "")
                dropped += by_name[new.gold] == ""
            restyled += new.gold != old.gold
    assert restyled > 30 and opaque > 3 and dropped > 3


def test_rewordings_of_one_corpus_are_one_source_when_sampling():
    base = [{**RECORD, "id": f"a{i}", "source": "a/train"} for i in range(20)]
    v1 = [{**RECORD, "id": f"b{i}", "source": "sgd_x/train_v1"} for i in range(20)]
    v2 = [{**RECORD, "id": f"c{i}", "source": "sgd_x/train_v2"} for i in range(20)]
    plans = sample_plans(base + v1 + v2, 600, {"start": 1, "switch": 1, "end": 1}, random.Random(0), aug=None)
    sources = Counter(q.source for p in plans for q in p.queries)
    share = sources["a/train"] / sum(sources.values())
    assert 0.4 < share < 0.6 and sources["sgd_x/train_v1"] and sources["sgd_x/train_v2"]


def test_mix_weights_sources_and_equal_weights_are_plain_round_robin():
    from itertools import islice

    from taskrouter.training.examples import weighted_rounds

    assert list(islice(weighted_rounds(["a", "b", "c"], {"a": 1, "b": 1, "c": 1}), 7)) == list("abcabca")
    counts = Counter(islice(weighted_rounds(["a", "b"], {"a": 3, "b": 1}), 400))
    assert counts == {"a": 300, "b": 100}
    base = [{**RECORD, "id": f"a{i}", "source": "a/train"} for i in range(20)]
    other = [{**RECORD, "id": f"b{i}", "source": "b/train"} for i in range(20)]
    plans = sample_plans(base + other, 900, {"start": 1, "switch": 1, "end": 1}, random.Random(0), aug=None,
                         mix={"a/train": 2})
    sources = Counter(q.source for p in plans for q in p.queries)
    assert 0.6 < sources["a/train"] / sum(sources.values()) < 0.73
    with pytest.raises(ValueError, match="--mix: no --data file is source 'c/train'"):
        sample_plans(base, 10, {"start": 1}, random.Random(0), aug=None, mix={"c/train": 1})
