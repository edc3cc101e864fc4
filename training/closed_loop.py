"""Closed-loop (DAgger) training data: conversations replayed with the current tasks a router really sent.

In a live conversation a request's current task is the router's own previous answer. An adapter
trained only on gold current tasks has never seen a wrong one, so after a mistake it tends to
keep it (the teacher-forced vs closed-loop gap: docs/experiments.md). `taskrouter eval` on
training conversations records what the router
answered; here those conversations become training records whose turns carry the router's
previous answer as the current task and the gold task as the answer, so the adapter learns from
the states it actually visits (DAgger: Ross, Gordon & Bagnell, 2011).
"""
from __future__ import annotations

import json
from pathlib import Path

CURRENTS = "closed_loop_currents"  # record key: the current task sent at each label, in label order


def gold_currents(labels: list[dict]) -> list[str | None]:
    """The current task of each label (sorted by turn) under teacher forcing: the gold previous task."""
    return [None] + [label["task"] for label in labels[:-1]]


def replay_records(records: list[dict], predictions: str | Path) -> list[dict]:
    """Copies of the conversations of `records` predicted in `predictions` (a `taskrouter eval`
    predictions file, closed loop) that the router got wrong before their last turn, each with its
    sent current tasks under CURRENTS and the source `<source> closed loop`. The others would only
    repeat the gold-current examples."""
    # Read here, not with evaluation.runner.read_predictions: that one rewrites the file, and the
    # evaluation package is not shipped to SageMaker training jobs (nor is its RUN_FILE constant).
    path = Path(predictions)
    run_file = path.parent / "run.json"  # the evaluation's record, when the file is where eval wrote it
    if run_file.exists() and json.loads(run_file.read_text()).get("teacher_forcing"):
        raise ValueError(f"--closed-loop {path}: predicted with --teacher-forcing, so it sent gold current tasks")
    answers: dict[str, dict[int, str | None]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    pred = json.loads(line)
                    answers.setdefault(pred["id"], {})[pred["turn"]] = pred["task"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"--closed-loop {path}:{n}: not a prediction line ({exc})") from None
    by_id = {r["id"]: r for r in records}
    unknown = sorted(answers.keys() - by_id.keys())
    if unknown:
        raise ValueError(f"--closed-loop {path}: {len(unknown)} predicted conversations are in no --data file "
                         f"(e.g. {unknown[0]!r})")
    replayed = []
    for cid, turns in answers.items():
        record = by_id[cid]
        labels = sorted(record["labels"], key=lambda lab: lab["turn"])
        if sorted(turns) != [lab["turn"] for lab in labels]:
            continue  # a conversation the evaluation did not finish
        sent = [None] + [turns[lab["turn"]] for lab in labels[:-1]]
        if sent != gold_currents(labels):
            replayed.append({**record, "labels": labels, CURRENTS: sent, "source": f"{record['source']} closed loop"})
    return replayed
