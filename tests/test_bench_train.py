"""`taskrouter bench train` times the same examples packed and apart; packing must share the task-list heads."""
import json

from taskrouter.cli import main


def test_bench_train_packs_share_heads_and_reports_both_speeds(tiny_dir, tmp_path, capsys):
    tasks = [{"name": "meeting_recap", "description": "Write a recap of a meeting"},
             {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"}]
    messages = [{"role": "user", "content": "Recap the ACME meeting."}, {"role": "assistant", "content": "Sure."},
                {"role": "user", "content": "Now the follow-up email."}, {"role": "assistant", "content": "Done."},
                {"role": "user", "content": "Thanks, that's all."}]
    record = {"tasks": tasks, "messages": messages,
              "labels": [{"turn": 0, "task": "meeting_recap", "event": "start"},
                         {"turn": 2, "task": "follow_up_email", "event": "switch"},
                         {"turn": 4, "task": None, "event": "end"}]}
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({**record, "id": f"c{i}"}) for i in range(10)) + "\n")
    out = tmp_path / "figures.json"
    main(["bench", "train", "--base", str(tiny_dir), "--data", str(data), "--samples", "9", "--json", str(out)])
    figures = json.loads(out.read_text())
    assert figures["examples"] == 9 and figures["packs"] < 9
    assert figures["tokens_packed"] < figures["tokens_apart"]
    assert figures["packed_s_per_example"] > 0 and figures["apart_s_per_example"] > 0
    assert "speed-up" in capsys.readouterr().out
