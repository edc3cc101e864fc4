"""The shipped sales benchmark and assistant training data follow BENCH_FORMAT.md; the data stays out of sales."""
from collections import Counter
from pathlib import Path

import pytest

from taskrouter.evaluation.benchfile import read_conversations

SALES = Path(__file__).resolve().parents[1] / "evaluation" / "benchmarks" / "sales.jsonl"
ASSISTANT = Path(__file__).resolve().parents[1] / "training" / "data" / "assistant"
SEED_TASKS = {"answer_to_a_prospect", "follow_up_email", "meeting_recap", "post_deal_appreciation_and_resource_sharing",
              "prepare_a_quote", "qualify_leads", "respond_to_customer_request"}


@pytest.fixture(scope="module")
def sales():
    return read_conversations(SALES)  # raises on inconsistent events, unknown names, wrong turn indices


def test_sales_is_valid_and_large_enough(sales):
    assert len(sales) >= 60
    assert len({c["id"] for c in sales}) == len(sales)
    for conv in sales:
        assert any(m["role"] == "assistant" for m in conv["messages"]), conv["id"]
        assert any(label["event"] == "start" for label in conv["labels"]), f"{conv['id']} has no start point"
        assert all(t["description"] for t in conv["tasks"]), conv["id"]


def test_sales_covers_switches_ends_none_and_varied_task_lists(sales):
    events = Counter(label["event"] for conv in sales for label in conv["labels"])
    assert events["switch"] >= 20 and events["end"] >= 20 and events["none"] >= 10
    lists = {tuple(t["name"] for t in conv["tasks"]) for conv in sales}
    assert len(lists) >= 4
    names = {t["name"] for conv in sales for t in conv["tasks"]}
    assert SEED_TASKS <= names and names - SEED_TASKS  # renamed or added tasks appear
    assert any(SEED_TASKS - {t["name"] for t in conv["tasks"]} for conv in sales)  # removed or renamed tasks


def test_assistant_data_is_valid_disjoint_and_never_about_sales():
    train = read_conversations(ASSISTANT / "train.jsonl") + read_conversations(ASSISTANT / "train-more.jsonl")
    calibrate = read_conversations(ASSISTANT / "calibrate.jsonl")
    dev = read_conversations(ASSISTANT / "dev.jsonl")
    assert len(train) >= 480 and len(calibrate) >= 100 and len(dev) >= 50
    assert len({c["id"] for c in train + calibrate + dev}) == len(train) + len(calibrate) + len(dev)
    # no request written twice across the splits (short closings such as "perfect, thanks" may repeat)
    said = lambda convs: {m["content"] for c in convs for m in c["messages"] if len(m["content"]) > 40}  # noqa: E731
    assert not said(train) & said(dev) and not said(train) & said(calibrate) and not said(calibrate) & said(dev)
    names = {t["name"] for c in train + calibrate + dev for t in c["tasks"]}
    assert not names & SEED_TASKS
    assert not [n for n in names if any(w in n for w in ("sale", "prospect", "quote", "deal", "lead"))]
    events = Counter(label["event"] for c in train for label in c["labels"])
    assert min(events[e] for e in ("start", "continue", "switch", "end", "none")) >= 50


ROLES = Path(__file__).resolve().parents[1] / "training" / "data" / "roles"


def industry(conv: dict) -> str:
    return conv["id"].split("-")[1]  # roles-<industry>-<role>-NN


def test_roles_data_holds_many_lists_and_keeps_its_dev_industries_out_of_training():
    train, dev = read_conversations(ROLES / "train.jsonl"), read_conversations(ROLES / "dev.jsonl")
    assert len(train) >= 600 and len(dev) >= 100
    assert not {industry(c) for c in train} & {industry(c) for c in dev}  # held out by industry, not by conversation
    train_names = {t["name"] for c in train for t in c["tasks"]}
    assert len(train_names) >= 1000 and not train_names & SEED_TASKS
    assert len({t["name"] for c in dev for t in c["tasks"]} & train_names) == 0
    said = lambda convs: {m["content"] for c in convs for m in c["messages"] if len(m["content"]) > 40}  # noqa: E731
    assert not said(train) & said(dev)
    sizes = Counter(min(len(c["tasks"]) // 8, 2) for c in train)  # 3-7, 8-15, 16-25 tasks
    assert all(sizes[k] >= 80 for k in range(3))
    events = Counter(label["event"] for c in train for label in c["labels"])
    assert min(events[e] for e in ("start", "continue", "switch", "end", "none")) >= 50


@pytest.mark.parametrize("original, twin", [(SALES, SALES.with_name("sales-reworded.jsonl")),
                                            (ASSISTANT / "dev.jsonl", ASSISTANT / "dev-reworded.jsonl")])
def test_reworded_twins_keep_the_dialogues_and_rename_every_task(original, twin):
    before, after = read_conversations(original), read_conversations(twin)
    assert [c["id"] for c in before] == [c["id"] for c in after]
    for a, b in zip(before, after):
        assert a["messages"] == b["messages"] and len(a["tasks"]) == len(b["tasks"])
        old = {t["name"] for t in a["tasks"]}
        assert not old & {t["name"] for t in b["tasks"]}
        assert all(x["description"] != y["description"] for x, y in zip(a["tasks"], b["tasks"]) if x["description"])
        position = {t["name"]: i for i, t in enumerate(a["tasks"])}
        renamed = {t["name"]: i for i, t in enumerate(b["tasks"])}
        for la, lb in zip(a["labels"], b["labels"]):  # the same task, by position in the list
            assert (la["task"] is None) == (lb["task"] is None) and la["event"] == lb["event"]
            assert la["task"] is None or position[la["task"]] == renamed[lb["task"]]
