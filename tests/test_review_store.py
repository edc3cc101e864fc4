"""The review store (SQLite leases + decisions), its Flask API, and `data export`."""
from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from taskrouter.training import data_cli
from taskrouter.training.review import create_app
from taskrouter.training.review_store import Conflict, ReviewStore

TASKS = [
    {"name": "meeting_recap", "description": "Write a recap of a meeting"},
    {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"},
]


def conversation(i: int) -> dict:
    return {"id": f"c{i:03d}", "source": "test", "tasks": TASKS,
            "messages": [{"role": "user", "content": f"recap meeting {i}"},
                         {"role": "assistant", "content": "Sure, what happened?"},
                         {"role": "user", "content": "thanks, that's all"}],
            "labels": [{"turn": 0, "task": "meeting_recap", "event": "start"},
                       {"turn": 2, "task": None, "event": "end"}]}


def bench_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(n)))
    return path


@pytest.fixture
def store(tmp_path) -> ReviewStore:
    store = ReviewStore(tmp_path / "review.sqlite")
    store.import_file(bench_file(tmp_path / "synth.jsonl", 5))
    return store


def test_import_is_idempotent_and_checks_lines(store, tmp_path):
    assert store.import_file(tmp_path / "synth.jsonl") == 0
    assert store.progress()["total"] == 5
    tail = tmp_path / "tail.jsonl"  # benchmark conversations (SGD) may end with the assistant
    tail.write_text(json.dumps(conversation(7) | {"messages": conversation(7)["messages"] + [
        {"role": "assistant", "content": "Bye!"}]}) + "\n")
    assert store.import_file(tail) == 1
    broken = tmp_path / "broken.jsonl"
    bad = conversation(9) | {"labels": [{"turn": 0, "task": "meeting_recap", "event": "continue"},
                                        {"turn": 2, "task": None, "event": "end"}]}
    broken.write_text(json.dumps(conversation(8)) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:2: .*event 'continue', expected 'start'"):
        store.import_file(broken)
    assert store.progress()["total"] == 6
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_claims_never_hand_out_the_same_conversation(tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    store.import_file(bench_file(tmp_path / "synth.jsonl", 40))
    got: dict[str, list[str]] = {"ann": [], "bob": []}
    start = threading.Barrier(2)

    def work(reviewer: str) -> None:
        mine = ReviewStore(store.path)  # own connections, as separate server threads have
        start.wait()
        while (item := mine.claim(reviewer)) is not None:
            got[reviewer].append(item["id"])
            time.sleep(0.002)  # reading the conversation
            mine.decide(reviewer, item["id"], "confirm")

    threads = [threading.Thread(target=work, args=(name,)) for name in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(got["ann"]) & set(got["bob"])
    assert sorted(got["ann"] + got["bob"]) == [f"c{i:03d}" for i in range(40)]
    assert got["ann"] and got["bob"]
    assert store.progress()["decided"] == 40


def _claim_all(path: str, reviewer: str, out: str) -> None:
    store, mine = ReviewStore(path), []
    while (item := store.claim(reviewer)) is not None:
        mine.append(item["id"])
        store.decide(reviewer, item["id"], "later")
    Path(out).write_text(json.dumps(mine))


def test_claims_from_two_processes_are_atomic(tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    store.import_file(bench_file(tmp_path / "synth.jsonl", 30))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_claim_all, args=(store.path, name, str(tmp_path / name))) for name in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [json.loads((tmp_path / name).read_text()) for name in ("p1", "p2")]
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == [f"c{i:03d}" for i in range(30)]


def test_simultaneous_first_claims_are_all_different(tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    store.import_file(bench_file(tmp_path / "synth.jsonl", 8))
    start, got = threading.Barrier(8), {}

    def claim(reviewer: str) -> None:
        mine = ReviewStore(store.path)
        start.wait()
        got[reviewer] = mine.claim(reviewer)["id"]

    threads = [threading.Thread(target=claim, args=(f"r{k}",)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got.values()) == [f"c{i:03d}" for i in range(8)]
    assert store.claim("late") is None and store.progress()["in_review"] == 8


def test_leases_resume_expire_and_block_others(tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    store.import_file(bench_file(tmp_path / "synth.jsonl", 3))
    a = store.claim("ann")
    assert store.claim("ann")["id"] == a["id"]  # a reopened tab gets the same conversation
    b = store.claim("bob")
    assert b["id"] != a["id"]
    with pytest.raises(Conflict):
        store.decide("bob", a["id"], "confirm")
    short = ReviewStore(store.path, lease_seconds=-1)  # every lease it grants has already expired
    c = short.claim("cat")
    assert c["id"] not in (a["id"], b["id"])
    assert short.claim("dan")["id"] == c["id"]  # cat's lease is expired: dan may take it
    assert store.renew("ann", a["id"]) and not store.renew("bob", a["id"])


def test_decisions_survive_reopening_and_back_navigation(store):
    first = store.claim("ann")
    assert store.decide("ann", first["id"], "relabel", ["follow_up_email", "follow_up_email"]) == "relabelled"
    second = store.claim("ann")
    assert store.decide("ann", second["id"], "wrong") == "wrong"
    third = store.claim("ann")

    reopened = ReviewStore(store.path)
    assert reopened.decision(first["id"]) == {
        "status": "relabelled", "reviewer": "ann",
        "labels": [{"turn": 0, "task": "follow_up_email", "event": "start"},
                   {"turn": 2, "task": "follow_up_email", "event": "continue"}]}
    progress = reopened.progress()
    assert {k: progress[k] for k in ("confirmed", "relabelled", "later", "wrong", "total", "decided", "by_reviewer")} \
        == {"confirmed": 0, "relabelled": 1, "later": 0, "wrong": 1, "total": 5, "decided": 2, "by_reviewer": {"ann": 2}}
    back = reopened.back("ann", third["id"])
    assert back["id"] == second["id"] and back["status"] == "wrong"
    back = reopened.back("ann", back["id"])
    assert back["id"] == first["id"] and back["labels"][1]["task"] == "follow_up_email"
    assert back["original_labels"][1]["task"] is None
    assert reopened.back("ann", first["id"]) is None
    with pytest.raises(ValueError, match=r"tasks\[0\]: 'book_flight' is not in"):
        reopened.decide("ann", first["id"], "relabel", ["book_flight", None])
    with pytest.raises(ValueError, match="tasks: 1 given for 2 user messages"):
        reopened.decide("ann", first["id"], "relabel", [None])
    assert reopened.decide("ann", first["id"], "confirm", [t["task"] for t in back["original_labels"]]) == "confirmed"


def test_export_writes_confirmed_and_relabelled_only(store, tmp_path, capsys):
    decisions = {"c000": ("confirm", None), "c001": ("relabel", [None, None]), "c002": ("wrong", None),
                 "c003": ("later", None)}
    for conv_id, (action, tasks) in decisions.items():
        item = store.claim("ann")
        assert item["id"] == conv_id
        store.decide("ann", conv_id, action, tasks)
    assert store.claim("ann", pool="later")["id"] == "c003"

    out = tmp_path / "validated.jsonl"
    data_cli.main(["export", "--db", store.path, "--out", str(out)])
    printed = capsys.readouterr().out
    assert "wrote 2 conversations" in printed
    assert "1 wrong, 0 whose second review disagrees, 1 marked for later, 1 undecided" in printed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["c000", "c001"]
    assert records[0] == conversation(0)
    assert records[1]["labels"] == [{"turn": 0, "task": None, "event": "none"},
                                    {"turn": 2, "task": None, "event": "none"}]
    assert set(records[1]) == {"id", "source", "tasks", "messages", "labels"}


def test_http_api(store):
    client = create_app(store).test_client()
    ann_auth = {"Authorization": f"Bearer {store.add_reviewer('ann')}"}
    bob_auth = {"Authorization": f"Bearer {store.add_reviewer('bob')}"}
    assert "taskrouter review" in client.get("/").get_data(as_text=True)
    for headers in ({}, {"Authorization": "Bearer forged"}):  # a name in the body is no identity
        res = client.post("/api/claim", json={"reviewer": "ann"}, headers=headers)
        assert res.status_code == 401 and res.get_json()["error"]["message"].startswith("token:")
    assert client.get("/api/whoami", headers=ann_auth).get_json()["reviewer"] == "ann"
    ann = client.post("/api/claim", json={}, headers=ann_auth).get_json()
    bob = client.post("/api/claim", json={"reviewer": "ann"}, headers=bob_auth).get_json()
    assert ann["item"]["id"] != bob["item"]["id"] and ann["progress"]["in_review"] == 1
    stolen = client.post("/api/decide", json={"reviewer": "ann", "id": ann["item"]["id"], "action": "confirm"},
                         headers=bob_auth)
    assert stolen.status_code == 409
    bad = client.post("/api/decide", json={"id": ann["item"]["id"], "action": "maybe"}, headers=ann_auth)
    assert bad.status_code == 400 and "action" in bad.get_json()["error"]["message"]
    missing = client.post("/api/decide", json={"id": "nope", "action": "confirm"}, headers=ann_auth)
    assert missing.status_code == 404
    done = client.post("/api/decide", json={"id": ann["item"]["id"], "action": "relabel",
                                            "tasks": ["follow_up_email", None]}, headers=ann_auth).get_json()
    assert done["status"] == "relabelled" and done["progress"]["decided"] == 1
    assert done["progress"]["by_reviewer"] == {"ann": 1}
    assert client.post("/api/heartbeat", json={"id": bob["item"]["id"]}, headers=bob_auth).get_json()["held"]


def test_tokens_name_reviewers_and_are_stored_hashed(store):
    token = store.add_reviewer("ann")
    assert store.reviewer_for(token) == "ann" and store.reviewer_for(token + "x") is None
    assert store.add_reviewer("ann") is None  # shown once; a lost token is replaced on demand
    fresh = store.add_reviewer("ann", new_token=True)
    assert store.reviewer_for(fresh) == "ann" and store.reviewer_for(token) is None
    assert token not in Path(store.path).read_bytes().decode("latin-1")


def test_only_the_lease_holder_decides(store):
    """A made-up name can neither decide a conversation nobody leased nor overwrite a finished decision."""
    item = store.claim("ann")
    with pytest.raises(Conflict, match="being reviewed by ann"):
        store.decide("mallory", item["id"], "wrong")
    with pytest.raises(Conflict, match="not leased to mallory"):
        store.decide("mallory", "c004", "wrong")
    store.decide("ann", item["id"], "confirm")
    with pytest.raises(Conflict, match="not leased to mallory"):
        store.decide("mallory", item["id"], "wrong")
    assert store.decision(item["id"])["status"] == "confirmed"


def test_second_review_of_a_sample_and_its_agreement(tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite", second_share=1.0)  # every kept conversation is checked
    store.import_file(bench_file(tmp_path / "synth.jsonl", 3))
    for _ in range(3):
        item = store.claim("ann")
        tasks = [label["task"] for label in item["labels"]]
        store.decide("ann", item["id"], "confirm", tasks if item["id"] != "c001" else ["follow_up_email", None])
    assert store.claim("ann") is None  # nobody reviews their own conversation twice
    seen = []
    while (item := store.claim("bob")) is not None:
        assert item["second_review"] and item["status"] is None
        assert item["labels"] == item["original_labels"]  # the first reviewer's labels stay hidden
        seen.append(item["id"])
        store.decide("bob", item["id"], "confirm" if item["id"] != "c002" else "relabel",
                     None if item["id"] != "c002" else ["meeting_recap", "meeting_recap"])
    assert seen == ["c000", "c001", "c002"]
    assert store.decision("c001")["reviewer"] == "ann"  # the second review never replaces the first
    agreement = store.agreement()
    first = ["meeting_recap", "none", "follow_up_email", "none", "meeting_recap", "none"]
    second = ["meeting_recap", "none", "meeting_recap", "none", "meeting_recap", "meeting_recap"]
    from sklearn.metrics import cohen_kappa_score

    assert agreement == {"second_reviews": 3, "same_status": pytest.approx(1 / 3), "turns": 6,
                         "same_task": pytest.approx(4 / 6), "kappa": pytest.approx(cohen_kappa_score(first, second))}
    assert store.progress()["by_reviewer"] == {"ann": 3, "bob": 3}
    # c001 and c002 were decided differently by the two reviewers: held back until someone settles them
    counts = store.export(tmp_path / "validated.jsonl")
    assert counts["written"] == 1 and counts["disputed"] == 2
    assert [json.loads(line)["id"] for line in (tmp_path / "validated.jsonl").read_text().splitlines()] == ["c000"]


def test_the_second_review_sample_is_independent_of_a_sample_drawn_by_the_ids_hash(tmp_path):
    import hashlib

    store = ReviewStore(tmp_path / "review.sqlite", second_share=0.5)
    ids = sorted((f"conv-{i}" for i in range(400)), key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:60]
    assert 15 <= sum(map(store.sampled, ids)) <= 45  # about half, not all 60


def test_every_bad_input_is_a_json_error(store):
    token = store.add_reviewer("ann")
    client = create_app(store).test_client()
    auth = {"Authorization": f"Bearer {token}"}
    item = client.post("/api/claim", json={}, headers=auth).get_json()["item"]
    for body, field in (({"id": item["id"], "action": "relabel", "tasks": [[], [], []]}, "tasks[0]"),
                        ({"id": item["id"], "action": "relabel", "tasks": "x"}, "tasks"),
                        ({"id": ["x"], "action": "confirm"}, "id"), ({"id": item["id"], "action": 3}, "action")):
        res = client.post("/api/decide", json=body, headers=auth)
        assert res.status_code == 400 and res.get_json()["error"]["message"].startswith(field), body
    for res in (client.post("/api/claim", data="not json", headers=auth), client.get("/api/nowhere", headers=auth),
                client.get("/api/claim", headers=auth), client.post("/api/claim", json={"pool": 1}, headers=auth)):
        assert res.status_code in (400, 404, 405) and res.is_json and "error" in res.get_json()
