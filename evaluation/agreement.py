"""How far a faster numeric path (bfloat16, a merged LoRA, a moved window...) strays from the reference:
two evaluation runs of the same turns compared answer by answer.

The runs are `taskrouter eval --teacher-forcing` output folders (teacher forcing, so one changed
answer never changes the next request), one with the reference settings and one with the
candidate's; each predictions file both share is compared on the turns both hold.
"""
from __future__ import annotations

import json
from pathlib import Path


def _predictions(path: Path) -> dict[tuple[str, int], dict]:
    with open(path, encoding="utf-8") as f:
        return {(p["id"], p["turn"]): p for p in map(json.loads, filter(str.strip, f))}


def _correct(prediction: dict) -> bool:
    return (prediction["task"] if prediction["task"] != "none" else None) == prediction["gold"]


def compare_runs(reference: Path, candidate: Path) -> list[dict]:
    """Per predictions file found in both folders: turns compared, share of the same chosen task,
    each run's task accuracy on those turns, and the turns that changed."""
    rows = []
    for ref_file in sorted(Path(reference).glob("predictions-*.jsonl")):
        cand_file = Path(candidate) / ref_file.name
        if not cand_file.exists():
            continue
        ref, cand = _predictions(ref_file), _predictions(cand_file)
        common = sorted(ref.keys() & cand.keys())
        if not common:
            continue
        changed = [k for k in common if ref[k]["task"] != cand[k]["task"]]
        rows.append({"file": ref_file.name, "turns": len(common), "same_task": 1 - len(changed) / len(common),
                     "accuracy_reference": sum(_correct(ref[k]) for k in common) / len(common),
                     "accuracy_candidate": sum(_correct(cand[k]) for k in common) / len(common),
                     "changed": [{"id": k[0], "turn": k[1], "reference": ref[k]["task"], "candidate": cand[k]["task"]}
                                 for k in changed]})
    if not rows:
        raise ValueError(f"--runs {reference} {candidate}: no predictions file with common turns in both")
    return rows


def report(rows: list[dict]) -> None:
    for row in rows:
        print(f"  {row['file']:<48} {row['turns']:5d} turns  same task {row['same_task']:.3f} "
              f"({len(row['changed'])} changed)  accuracy {row['accuracy_reference']:.3f} -> "
              f"{row['accuracy_candidate']:.3f}")
