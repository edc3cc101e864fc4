"""`taskrouter data check` (rules of written training data, rejects by reason) and `data reword` (twins)."""
import json

import pytest
from records import TASKS, conversation

from taskrouter.cli import main


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_check_keeps_what_passes_and_counts_rejects_by_reason(tmp_path, capsys):
    good = conversation("g1", [("recap the ACME call", "meeting_recap"), ("thanks", None)])
    bad_task = conversation("b1", [("x", "meeting_recap")])
    bad_task["labels"][0]["task"] = "not_listed"
    ends_with_assistant = {**conversation("b2", [("x", "meeting_recap")]),}
    ends_with_assistant["messages"] = ends_with_assistant["messages"] + [{"role": "assistant", "content": "ok"}]
    tiny_list = conversation("b3", [("x", "meeting_recap")], TASKS[:1])
    repeat = {**good, "id": "g2"}  # the same text under another id
    src = write(tmp_path / "drafts.jsonl", [good, bad_task, ends_with_assistant, tiny_list, repeat, good])
    out = tmp_path / "checked.jsonl"
    main(["data", "check", str(src), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "kept 1, rejected 5" in printed
    for reason in ("unknown_task: 1", "last_not_user: 1", "list_size: 1", "duplicate_text: 1", "duplicate_id: 1"):
        assert reason in printed
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["g1"]


def test_reword_renames_tasks_and_labels_and_shuffles_keeping_ids(tmp_path):
    conv = conversation("c1", [("recap", "meeting_recap"), ("now the quote", "prepare_a_quote"), ("bye", None)])
    src = write(tmp_path / "dev.jsonl", [conv])
    mapping = {t["name"]: {"name": t["name"].upper(), "description": "new " + t["description"]} for t in TASKS}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    main(["data", "reword", str(src), "--map", str(tmp_path / "map.json"), "--out", str(tmp_path / "twin.jsonl")])
    twin = json.loads((tmp_path / "twin.jsonl").read_text())
    assert twin["id"] == "c1" and twin["messages"] == conv["messages"]
    assert [t["name"] for t in twin["tasks"]] == [t["name"].upper() for t in TASKS]
    assert twin["tasks"][0]["description"] == "new " + TASKS[0]["description"]
    assert [lab["task"] for lab in twin["labels"]] == ["MEETING_RECAP", "PREPARE_A_QUOTE", None]
    assert [lab["event"] for lab in twin["labels"]] == [lab["event"] for lab in conv["labels"]]
    orders = set()
    for seed in range(6):
        main(["data", "reword", str(src), "--shuffle-seed", str(seed), "--out", str(tmp_path / "s.jsonl")])
        shuffled = json.loads((tmp_path / "s.jsonl").read_text())
        assert sorted(shuffled["tasks"], key=lambda t: t["name"]) == sorted(TASKS, key=lambda t: t["name"])
        orders.add(tuple(t["name"] for t in shuffled["tasks"]))
    assert len(orders) > 1


@pytest.mark.parametrize("mapping, needle", [
    ({"meeting_recap": {"name": "x"}}, "'follow_up_email' is not in the map"),
    ({t["name"]: {"name": "same"} for t in TASKS}, "duplicate task names"),
    ({"meeting_recap": {"description": "no name"}}, "needs a non-empty \"name\""),
])
def test_reword_refuses_a_map_that_loses_or_merges_tasks(tmp_path, mapping, needle):
    src = write(tmp_path / "dev.jsonl", [conversation("c1", [("recap", "meeting_recap")])])
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    with pytest.raises(SystemExit, match=needle):
        main(["data", "reword", str(src), "--map", str(tmp_path / "map.json"), "--out", str(tmp_path / "t.jsonl")])
    assert not (tmp_path / "t.jsonl").exists()
