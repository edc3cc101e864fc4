"""metrics.json, report.md and the plots of an evaluation run, from its predictions."""
from __future__ import annotations

import json
from pathlib import Path

from .benchfile import Bench
from .configs import EvalConfig
from .metrics import compute_metrics, paired_metrics, task_confusion
from .plots import plot_invalid, plot_latency, plot_points, plot_tasks


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _prf(m: dict) -> str:
    return f"{_num(m['precision'], 2)} / {_num(m['recall'], 2)} / {_num(m['f1'], 2)}"


def _acc(m: dict) -> str:
    return f"{_num(m['task_accuracy'])} ({m['turns']})"


def bench_tables(bench: Bench, results: dict[str, dict]) -> str:
    """The markdown tables of one benchmark: configs as rows."""
    names = any("names" in m for m in results.values())
    lines = [f"## {bench.name}", "",
             f"`{bench.path}`: {len(bench.conversations)} of {bench.total} conversations"
             + (f" (sample seed {bench.seed})" if len(bench.conversations) < bench.total else ""), "",
             "| config | turns | task acc | acc after a miss |" + (" acc, trained name | acc, unseen name |" if names
                                                                 else "")
             + " none P | none R | invalid | p50 ms | p95 ms | mean ms |",
             "|---|---:|---:|---:|" + ("---:|---:|" if names else "") + "---:|---:|---:|---:|---:|---:|"]
    for name, m in results.items():
        lat = m["latency"]
        split = f" {_acc(m['names']['seen'])} | {_acc(m['names']['unseen'])} |" if names else ""
        lines.append(f"| {name} | {m['turns']} | {_num(m['task_accuracy'])} | {_acc(m['after_miss'])} |{split} "
                     f"{_num(m['none']['precision'])} | "
                     f"{_num(m['none']['recall'])} | {m['invalid']} | {_num(lat['p50_ms'], 0)} | "
                     f"{_num(lat['p95_ms'], 0)} | {_num(lat['mean_ms'], 0)} |")
    lines += ["", "Start / end / switch points, precision / recall / F1 (gold count in brackets):", "",
              "| config | start | end | switch |", "|---|---|---|---|"]
    for name, m in results.items():
        cells = [f"{_prf(m[p])} ({m[p]['tp'] + m[p]['fn']})" for p in ("start", "end", "switch")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += hosted_table(results)
    if len(results) > 1:
        lines += ["", "Best config per measure: " + "; ".join(f"{label}: {winner}" for label, winner in leaders(results)) + "."]
    return "\n".join(lines) + "\n"


def hosted_table(results: dict[str, dict]) -> list[str]:
    """The rows only an endpoint has (configs with a `hosted` summary): how it was constrained, its retries,
    tokens per turn and, where the config gives prices, the cost per 1,000 turns."""
    hosted = {name: m["hosted"] for name, m in results.items() if "hosted" in m}
    if not hosted:
        return []
    lines = ["", "Hosted configs (tokens as the endpoint reported them; cost at the config's prices per million "
             "tokens):", "", "| config | constrained by | retries | prompt tokens / turn | completion tokens / turn | "
             "cost per 1,000 turns |", "|---|---|---:|---:|---:|---:|"]
    for name, h in hosted.items():
        used = ", ".join(f"{c} ({n})" if len(h["constraint"]) > 1 else c for c, n in h["constraint"].items())
        turns = h["turns_with_usage"]
        per_turn = [_num(h[k] / turns if turns else None, 1) for k in ("prompt_tokens", "completion_tokens")]
        lines.append(f"| {name} | {used} | {h['retries']} | {per_turn[0]} | {per_turn[1]} | "
                     f"{_num(h['cost_per_1000_turns'], 4)} |")
    return lines


MEASURES = [("task accuracy", lambda m: m["task_accuracy"], max), ("none recall", lambda m: m["none"]["recall"], max),
            ("start F1", lambda m: m["start"]["f1"], max), ("end F1", lambda m: m["end"]["f1"], max),
            ("switch F1", lambda m: m["switch"]["f1"], max), ("p50 latency", lambda m: m["latency"]["p50_ms"], min)]


def leaders(results: dict[str, dict]) -> list[tuple[str, str]]:
    """For each headline measure, the config(s) with the best value (ties listed together), so the report
    says at a glance where the LLM router beats the embedding baseline and where not."""
    out = []
    for label, get, best in MEASURES:
        values = {name: get(m) for name, m in results.items() if get(m) is not None}
        if values:
            target = best(values.values())
            out.append((label, ", ".join(n for n, v in values.items() if abs(v - target) < 1e-9)))
    return out


def pairs_of(benches: list[Bench]) -> list[tuple[Bench, Bench]]:
    """(reference, other) for every benchmark that shares conversation ids with an earlier one: the same
    dialogues reworded or reordered; the reference is the earliest such benchmark."""
    out = []
    for i, other in enumerate(benches):
        ids = {c["id"] for c in other.conversations}
        ref = next((b for b in benches[:i] if ids & {c["id"] for c in b.conversations}), None)
        if ref is not None:
            out.append((ref, other))
    return out


def paired_table(benches: list[Bench], configs: list[EvalConfig], predictions: dict) -> tuple[str, dict]:
    """The same-dialogues section: each config's accuracy on a reference benchmark and on its rewording
    over their common turns, the gap, and the share of answers that changed."""
    record: dict = {}
    lines = ["## Same dialogues, another task list", "",
             "Benchmarks sharing conversation ids (SGD dev and its SGD-X rewordings, or a shuffled list), over "
             "their common turns: the gap is the reference's accuracy minus the other's; changed = turns whose "
             "answer differs (names mapped by position, or by name for a shuffle).", "",
             "| reference | other | config | turns | acc reference | acc other | gap | changed |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for ref, other in pairs_of(benches):
        for config in configs:
            m = paired_metrics(ref.conversations, predictions[(config.name, ref.name)], other.conversations,
                               predictions[(config.name, other.name)])
            if m is None:
                continue
            record.setdefault(f"{ref.name} vs {other.name}", {})[config.name] = m
            lines.append(f"| {ref.name} | {other.name} | {config.name} | {m['turns']} | {_num(m['task_accuracy_a'])} "
                         f"| {_num(m['task_accuracy_b'])} | {m['gap']:+.3f} | {_num(m['changed'])} |")
    return ("\n".join(lines) + "\n" if record else ""), record


def write_report(out: Path, benches: list[Bench], configs: list[EvalConfig], predictions: dict,
                 command: str, mode: str, seen: frozenset[str] | None = None, seen_from: list[str] = (),
                 unseen_files: list[str] = ()) -> dict:
    """Compute the metrics of every (config, bench), write metrics.json, report.md and the PNGs; return the metrics.
    `seen` (task names in `seen_from`, the adapters' training files) splits accuracy by name familiarity."""
    results: dict[str, dict[str, dict]] = {}
    for bench in benches:
        results[bench.name] = {}
        for config in configs:
            preds = predictions[(config.name, bench.name)]
            metrics = results[bench.name][config.name] = compute_metrics(bench.conversations, preds, seen)
            if config.kind == "openai":
                from .hosted import usage_summary

                metrics["hosted"] = usage_summary(preds, config)
            title = f"{config.name} on {bench.name}"
            plot_points(metrics, title, out / f"points-{config.name}-{bench.name}.png")
            plot_tasks(task_confusion(bench.conversations, preds), title, out / f"tasks-{config.name}-{bench.name}.png")
    names = [c.name for c in configs]
    plot_latency(results, names, out / "latency.png")
    plot_invalid(results, names, out / "invalid.png")
    record = {"command": command, "mode": mode,
              "configs": {c.name: c.definition() for c in configs},
              "benches": {b.name: {"file": str(b.path), "conversations": len(b.conversations), "total": b.total,
                                   "limit": b.limit, "sample_seed": b.seed} for b in benches},
              "results": results}
    paired_md, record["same_dialogues"] = paired_table(benches, configs, predictions)
    if seen is not None:
        record["trained_names"] = {"files": list(seen_from), "names": len(seen), "missing_files": list(unseen_files)}
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    config_lines = [f"- `{c.name}`: " + ", ".join(f"{k}={v}" for k, v in c.definition().items()
                                                  if v not in (None, {})) for c in configs]
    parts = ["# Router evaluation", "", f"Command: `{command}`", "", f"Mode: {mode}. Latency is wall-clock per "
             "routing request as seen by the evaluation (network included for an endpoint).", "",
             "Configs:", *config_lines, ""]
    if seen is not None:
        parts += [f"Trained names: the {len(seen)} task names in the task lists of the adapters' training files "
                  f"({', '.join(f'`{f}`' for f in seen_from)}); \"unseen name\" turns have a gold task named in none "
                  "of them (gold none turns are in neither column)."
                  + (f" Not found, so not counted: {', '.join(unseen_files)}." if unseen_files else ""), ""]
    parts += [bench_tables(b, results[b.name]) for b in benches]
    if paired_md:
        parts.append(paired_md)
    parts += ["Plots: `points-<config>-<bench>.png` (start/end/switch confusion matrices), "
              "`tasks-<config>-<bench>.png` (task selection), `latency.png`, `invalid.png`.", ""]
    (out / "report.md").write_text("\n".join(parts))
    return record
