"""Seen / unseen task names, same-dialogue pairs (SGD vs SGD-X, shuffled lists) and gzipped benchmarks."""
import gzip
import json

from records import conversation

from taskrouter.evaluation.benchfile import bench_name, load_bench
from taskrouter.evaluation.metrics import compute_metrics, paired_metrics
from taskrouter.evaluation.seen import seen_names, training_files_of

TASKS = [{"name": "reserve_table", "description": "Book a table"}, {"name": "get_ride", "description": "Call a cab"}]
REWORDED = [{"name": "dinner_booking", "description": "Reserve seats at a restaurant"},
            {"name": "taxi_request", "description": "Order a taxi"}]


def preds(conv: dict, answers: list[str | None]) -> list[dict]:
    return [{"id": conv["id"], "turn": lab["turn"], "task": a, "event": "x", "latency_ms": 1.0, "valid": True}
            for lab, a in zip(conv["labels"], answers)]


def test_accuracy_is_split_by_whether_the_gold_name_was_trained_on():
    conv = conversation("c", [("table for two", "reserve_table"), ("and a cab", "get_ride"), ("thanks", None)], TASKS)
    metrics = compute_metrics([conv], preds(conv, ["reserve_table", None, None]), frozenset({"reserve_table"}))
    assert metrics["names"]["seen"] == {"turns": 1, "task_accuracy": 1.0}
    assert metrics["names"]["unseen"] == {"turns": 1, "task_accuracy": 0.0}  # the gold-none turn is in neither
    assert "names" not in compute_metrics([conv], preds(conv, ["reserve_table", None, None]))


def test_reworded_pairs_map_names_by_position_and_shuffles_by_name():
    turns = [("table for two", "reserve_table"), ("and a cab", "get_ride")]
    plain = conversation("d1", turns, TASKS)
    reworded = conversation("d1", [("table for two", "dinner_booking"), ("and a cab", "taxi_request")], REWORDED)
    m = paired_metrics([plain], preds(plain, ["reserve_table", "get_ride"]),
                       [reworded], preds(reworded, ["dinner_booking", None]))
    assert (m["turns"], m["task_accuracy_a"], m["task_accuracy_b"], m["gap"], m["changed"]) == (2, 1.0, 0.5, 0.5, 0.5)
    shuffled = conversation("d1", turns, TASKS[::-1])  # same names, other order: compared by name, not position
    m = paired_metrics([plain], preds(plain, ["reserve_table", "get_ride"]),
                       [shuffled], preds(shuffled, ["reserve_table", "get_ride"]))
    assert m["changed"] == 0.0 and m["gap"] == 0.0
    other = conversation("zz", turns, TASKS)
    assert paired_metrics([plain], preds(plain, [None, None]), [other], preds(other, [None, None])) is None


def test_training_files_are_collected_from_runs_warm_starts_and_means(tmp_path):
    data = tmp_path / "train.jsonl.gz"
    with gzip.open(data, "wt") as f:
        f.write(json.dumps(conversation("t", [("x", "reserve_table")], TASKS)) + "\n")
    manifest = {"average_of": [
        {"training_data": {"files": [str(data)]},
         "init_adapter": {"train_command": f"taskrouter train --data {tmp_path / 'gone.jsonl'} --out x"}},
        {"train_command": f"taskrouter train --data {data} --out y"}]}
    assert training_files_of([manifest]) == [str(data), str(tmp_path / "gone.jsonl")]
    names, missing = seen_names([manifest])
    assert names == {"reserve_table", "get_ride"} and missing == [str(tmp_path / "gone.jsonl")]


def test_gzipped_rewordings_load_and_sample_the_same_dialogues(tmp_path):
    plain = [conversation(f"d{i}", [("table", "reserve_table")], TASKS) for i in range(40)]
    (tmp_path / "sgd").mkdir()
    (tmp_path / "sgd_x").mkdir()
    (tmp_path / "sgd" / "dev.jsonl").write_text("".join(json.dumps(c) + "\n" for c in plain))
    with gzip.open(tmp_path / "sgd_x" / "dev_v4.jsonl.gz", "wt") as f:  # a rewording missing some dialogues
        f.write("".join(json.dumps(conversation(f"d{i}", [("table", "dinner_booking")], REWORDED)) + "\n"
                        for i in range(40) if i % 4))
    a = load_bench(f"{tmp_path / 'sgd' / 'dev.jsonl'}@10")
    b = load_bench(f"{tmp_path / 'sgd_x' / 'dev_v4.jsonl.gz'}@10")
    assert (a.name, b.name) == ("sgd-dev", "sgd_x-dev_v4") and b.total == 30
    ids_a, ids_b = {c["id"] for c in a.conversations}, {c["id"] for c in b.conversations}
    assert ids_a - ids_b <= {f"d{i}" for i in range(0, 40, 4)}  # every shared dialogue sampled in a is in b too
    assert bench_name(tmp_path / "train_v2.jsonl.gz") == f"{tmp_path.name}-train_v2"
