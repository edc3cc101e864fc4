"""Run every config over every benchmark, turn by turn, into resumable predictions files.

Closed loop by default: a request's `current_task` is the router's own previous
answer in that conversation, as in a live conversation; with teacher forcing it
is the gold previous task. Predictions are appended one whole conversation at a
time, so an interrupted run resumes after the last complete conversation, and a
conversation already predicted is never recomputed. With `parallel` > 1 several
conversations are in flight at once (each still turn by turn), which lets an
in-process router batch them. `run.json` in the output
directory records what decides the predictions (config definitions, the adapter
weights' digest and none bias, teacher forcing, remote target); resuming with a different setup is refused.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from taskrouter.events import event_for
from taskrouter.schema import NONE, parse_request

from .backends import RouterLike, RouterPool, adapter_state
from .benchfile import Bench
from .configs import EvalConfig

PREDICTION_KEYS = ("id", "turn", "task", "event", "latency_ms", "valid", "gold", "confidence", "candidates")
RUN_FILE = "run.json"


def predictions_path(out: Path, config: str, bench: str) -> Path:
    return out / f"predictions-{config}-{bench}.jsonl"


def read_predictions(path: Path, conversations: list[dict]) -> dict[str, list[dict]]:
    """Predictions of the conversations that are complete in `path`; a partial tail is dropped from the file."""
    if not path.exists():
        return {}
    expected = {c["id"]: [label["turn"] for label in c["labels"]] for c in conversations}
    by_id: dict[str, list[dict]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        try:
            pred = json.loads(line)
            by_id.setdefault(pred["id"], []).append(pred)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by an interruption
    complete = {cid: preds for cid, preds in by_id.items()
                if [p["turn"] for p in preds] == expected.get(cid, [p["turn"] for p in preds])}
    kept = [json.dumps(p) for preds in complete.values() for p in preds]
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return {cid: preds for cid, preds in complete.items() if cid in expected}


def route_conversation(router: RouterLike, conv: dict, config: EvalConfig, teacher_forcing: bool = False) -> list[dict]:
    """One prediction per labelled user turn, each request carrying the conversation up to that turn."""
    names = {t["name"] for t in conv["tasks"]}
    predicted: str | None = None
    gold: str | None = None
    out = []
    for label in conv["labels"]:
        current = gold if teacher_forcing else predicted
        payload = {"messages": conv["messages"][: label["turn"] + 1], "tasks": conv["tasks"], "current_task": current}
        if config.kind == "llm":
            payload.update(strategy=config.strategy, decoding=config.decoding, adapter=config.adapter or NONE)
        request = parse_request(payload)
        start = time.perf_counter()
        answer = router.route(request)
        latency_ms = (time.perf_counter() - start) * 1000
        task = None if answer.task == NONE else answer.task
        valid = answer.valid and (task is None or task in names)  # a remote answer outside the list is invalid
        task = task if valid else None
        out.append({"id": conv["id"], "turn": label["turn"], "task": task, "event": event_for(current, task),
                    "latency_ms": round(latency_ms, 2), "valid": valid, "gold": label["task"],
                    "confidence": round(answer.confidence, 4),
                    "candidates": [[c.task, round(c.p, 4)] for c in answer.candidates],
                    **({"hosted": answer.hosted} if hasattr(answer, "hosted") else {})})  # endpoint usage
        predicted, gold = task, label["task"]
    return out


def check_run_record(out: Path, record: dict) -> None:
    """Refuse to resume into `out` when a config, teacher forcing or the remote target changed."""
    path = out / RUN_FILE
    old = json.loads(path.read_text()) if path.exists() else {"configs": {}}
    for key in ("teacher_forcing", "remote"):
        if key in old and old[key] != record[key]:
            raise ValueError(f"{out}: earlier predictions were made with {key}={old[key]!r}, now {record[key]!r}; "
                             "use another --out")
    for name, definition in record["configs"].items():
        if name in old["configs"] and old["configs"][name] != definition:
            raise ValueError(f"{out}: config {name!r} changed since its predictions were written "
                             f"({old['configs'][name]} -> {definition}); use another --out or name")
    merged = {**old, **record, "configs": {**old["configs"], **record["configs"]}}
    path.write_text(json.dumps(merged, indent=2) + "\n")


def _decides(config: EvalConfig, remote: str | None) -> dict:
    """What decides a config's predictions: its definition and, in process, its adapter's weights and none bias."""
    return {**config.definition(), **({} if remote else adapter_state(config))}


def run_all(benches: list[Bench], configs: list[EvalConfig], out: Path, pool: RouterPool,
            teacher_forcing: bool = False, remote: str | None = None, progress: bool = True,
            parallel: int = 1) -> dict:
    """Predict what is missing for every (config, bench); returns {(config, bench): predictions} and counts."""
    from tqdm import tqdm

    if parallel < 1:
        raise ValueError(f"--parallel {parallel}: must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    check_run_record(out, {"teacher_forcing": teacher_forcing, "remote": remote,
                           "configs": {c.name: _decides(c, remote) for c in configs}})
    done = {(c.name, b.name): read_predictions(predictions_path(out, c.name, b.name), b.conversations)
            for c in configs for b in benches}
    todo = [(c, b, conv) for c in configs for b in benches for conv in b.conversations
            if conv["id"] not in done[(c.name, b.name)]]
    routers = {c.name: pool.get(c) for c in configs if any(c is t for t, _, _ in todo)}  # all load before any work
    computed = 0
    with tqdm(total=sum(len(conv["labels"]) for _, _, conv in todo), unit="turn", disable=not progress,
              desc="routing") as bar, ThreadPoolExecutor(parallel) as executor:
        running = {executor.submit(route_conversation, routers[config.name], conv, config, teacher_forcing):
                   (config, bench, conv) for config, bench, conv in todo}
        try:
            for future in running:  # written in order, one whole conversation at a time
                config, bench, conv = running[future]
                bar.set_postfix_str(f"{config.name} / {bench.name}", refresh=False)
                preds = future.result()
                with open(predictions_path(out, config.name, bench.name), "a", encoding="utf-8") as f:
                    f.write("".join(json.dumps(p) + "\n" for p in preds))
                done[(config.name, bench.name)][conv["id"]] = preds
                computed += len(preds)
                bar.update(len(preds))
        except BaseException:  # an error or Ctrl-C: stop at once, what was written stays resumable
            executor.shutdown(wait=True, cancel_futures=True)
            raise
    predictions = {key: [p for conv in bench.conversations for p in by_id[conv["id"]]]
                   for bench in benches for key, by_id in done.items() if key[1] == bench.name}
    return {"predictions": predictions, "computed_turns": computed}
