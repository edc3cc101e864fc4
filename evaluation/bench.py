"""`taskrouter bench latency`: cold / next-turn latency and constrained-vs-forward cost, in one run.

(`taskrouter bench train` measures training speed instead: see training/speed.py.)

The request is the issue's shape: ~400 tokens of prompt with 8 tasks. Each sample
uses its own conversation (a distinct company name), so nothing is shared by
accident between samples; "cold" empties the prefix cache before every request.
The micro-batching figure routes 8 next-turn requests one at a time, then 8 others
arriving together from 8 threads, then (on models that run block attention) 8 more
arriving together with dense masked attention instead.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

BATCH = 8  # concurrent requests in the micro-batching figure
TASKS = [
    ("answer_to_a_prospect", "Answer a question a prospect asked about the product or the offer"),
    ("follow_up_email", "Write a follow-up email to a prospect or a customer after a call or a meeting"),
    ("meeting_recap", "Write a recap of a meeting: attendees, decisions, next steps"),
    ("post_deal_appreciation_and_resource_sharing", "Thank a customer after a signed deal and share resources"),
    ("prepare_a_quote", "Prepare a price quote with products, quantities and discounts"),
    ("qualify_leads", "Qualify a list of leads by budget, authority, need and timing"),
    ("respond_to_customer_request", "Answer a request or a complaint from an existing customer"),
    ("plan_a_call", "Prepare the agenda and questions for an upcoming sales call"),
]


def conversation(company: str, turns: int) -> list[dict]:
    """A sales conversation about `company` with `turns` user messages."""
    lines = [
        f"I just got off a call with the procurement team at {company}, they want 40 licenses and a discount.",
        f"Sure. What did {company} say about their budget and the timeline for the roll-out in their teams?",
        "They have budget approved for this quarter, the VP of sales signs, they want to start in March.",
        "Great, that sounds like a qualified opportunity. Do you want me to draft something for them?",
        f"Yes, put together the pricing for {company}: 40 seats of the pro plan, 12% off, annual billing.",
        "Here is a first draft of the quote with 40 pro seats, 12% discount and annual billing terms.",
        "Add the onboarding package and a line for premium support, then send me the total per year.",
        "Done: onboarding and premium support are added; the yearly total is 41,300 euros before tax.",
        f"Now write the email to their buyer at {company} with the quote attached and a call proposal.",
    ]
    messages = []
    for i in range(2 * turns - 1):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": lines[i % len(lines)]})
    return messages


def _percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return statistics.median(values), p95


def _outlines_baseline(router, requests) -> dict:
    """The same choice made by outlines' constrained generation (Literal over the names), for comparison."""
    from typing import Literal

    import outlines

    model = outlines.from_transformers(router.loaded.model, router.loaded.tokenizer)
    times = []
    for req in requests:
        text = router.loaded.tokenizer.decode(router.prompt_ids(req), skip_special_tokens=True)  # what the router reads
        choice = Literal[tuple(req.task_names + ["none"])]
        start = time.perf_counter()
        with torch.inference_mode(), router.loaded.use_adapter(router.default_adapter):
            model(text, choice, max_new_tokens=24)
        times.append(time.perf_counter() - start)
    return {"outlines_first_call_s": times[0], "outlines_steady_p50_s": statistics.median(times[1:] or times)}


def _batching(router, request, turns: int) -> dict:
    """BATCH next-turn requests (previous turns cached) routed one at a time, then other ones all at once."""
    def next_turns(first: int) -> list:
        for i in range(BATCH):
            router.route(request(first + i, turns - 1))
        return [request(first + i, turns) for i in range(BATCH)]

    alone = next_turns(4000)
    start = time.perf_counter()
    for req in alone:
        router.route(req)
    one_at_a_time = time.perf_counter() - start

    def all_at_once(requests: list) -> float:
        with ThreadPoolExecutor(BATCH) as pool:
            start = time.perf_counter()
            list(pool.map(router.route, requests))
            return time.perf_counter() - start

    figures = {"batch_one_at_a_time_s": one_at_a_time}
    figures["batch_together_s"] = at_once = all_at_once(next_turns(5000))
    figures["batch_speedup"] = one_at_a_time / at_once
    if router.engine.attention == "blocks":  # the same batch shape with dense masked attention
        router.engine.attention = "dense"
        try:
            figures["batch_together_dense_s"] = all_at_once(next_turns(6000))
        finally:
            router.engine.attention = "blocks"
        figures["block_over_dense"] = figures["batch_together_dense_s"] / at_once
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["latency", "train"],
                        help="latency: cold, next-turn and constrained-vs-forward figures; "
                             "train: seconds per training example, packed vs one forward per example")
    parser.add_argument("--model-dir", help="an unpacked artifact (default: the embedded model and its adapters)")
    parser.add_argument("--strategy", default=None, help="prompt strategy (default: the adapter's, else zero_shot)")
    parser.add_argument("--samples", type=int, default=10,
                        help="latency: requests per measured figure; train: examples to train (default 10)")
    parser.add_argument("--turns", type=int, default=5, help="user turns in the measured request (default 5)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--no-outlines", action="store_true",
                        help="skip the outlines baseline (its first call indexes the whole vocabulary)")
    parser.add_argument("--data", action="append", metavar="FILE",
                        help="train: router-bench training file(s) to sample examples from (repeatable)")
    parser.add_argument("--base", default="embedded", help="train: base model (default: the embedded one)")
    parser.add_argument("--history-tokens", type=int, default=96,
                        help="train: conversation tokens kept after the task list (default 96, as taskrouter train)")


def run(args: argparse.Namespace) -> None:
    if args.what == "train":
        _train(args)
        return
    _latency(args)


def _train(args: argparse.Namespace) -> None:
    from taskrouter.training import speed

    if not args.data:
        raise SystemExit("error: --data: bench train needs at least one router-bench training file")
    figures = speed.measure(args.base, args.data, args.samples, args.history_tokens)
    speed.report(figures)
    _write_json(args.json, figures)


def _write_json(path: str | None, figures: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=2)


def _latency(args: argparse.Namespace) -> None:
    from taskrouter import handler
    from taskrouter.schema import parse_request

    router = handler.model_fn(args.model_dir)
    tasks = [{"name": n, "description": d} for n, d in TASKS]

    def request(i: int, turns: int, decoding: str = "constrained"):
        payload = {"messages": conversation(f"Company{i:03d}", turns), "tasks": tasks, "decoding": decoding,
                   "current_task": "prepare_a_quote" if turns > 2 else None}
        if args.strategy:
            payload["strategy"] = args.strategy
        return parse_request(payload)

    def timed(req) -> float:
        start = time.perf_counter()
        router.route(req)
        return time.perf_counter() - start

    probe = request(0, args.turns)
    strategy = args.strategy or ("adapter" if router.default_adapter else "zero_shot")
    ids = router.prompt_ids(probe)
    router.route(request(999, args.turns))  # warm-up: allocator, kernels
    cold, free, nxt, new_conv, forward = [], [], [], [], []
    for i in range(args.samples):
        router.cache.clear()
        cold.append(timed(request(i, args.turns)))
        router.cache.clear()
        free.append(timed(request(i, args.turns, "free")))
        router.route(request(1000 + i, args.turns - 1))  # the previous turn of this conversation
        nxt.append(timed(request(1000 + i, args.turns)))
        new_conv.append(timed(request(2000 + i, args.turns)))  # task list cached, conversation new
        with torch.inference_mode(), router.loaded.use_adapter(router.default_adapter):
            sample_ids = torch.tensor([ids], device=router.loaded.device)
            start = time.perf_counter()
            router.loaded.model(input_ids=sample_ids, logits_to_keep=1)
            forward.append(time.perf_counter() - start)
    figures = {
        "model": router.loaded.name, "adapter": router.default_adapter, "strategy": strategy,
        "prompt_tokens": len(ids), "tasks": len(tasks), "samples": args.samples, "threads": torch.get_num_threads(),
        "cold_p50_s": _percentiles(cold)[0], "cold_p95_s": _percentiles(cold)[1],
        "next_turn_p50_s": _percentiles(nxt)[0], "next_turn_p95_s": _percentiles(nxt)[1],
        "new_conversation_known_tasks_p50_s": _percentiles(new_conv)[0],
        "plain_forward_p50_s": _percentiles(forward)[0],
        "free_decoding_cold_p50_s": _percentiles(free)[0],
    }
    figures.update(_batching(router, request, args.turns))
    if not args.no_outlines:
        figures.update(_outlines_baseline(router, [request(3000 + i, args.turns) for i in range(args.samples)]))
        figures["outlines_over_constrained"] = figures["outlines_steady_p50_s"] / figures["cold_p50_s"]
    figures["constrained_over_forward"] = figures["cold_p50_s"] / figures["plain_forward_p50_s"]
    figures["constrained_over_free"] = figures["cold_p50_s"] / figures["free_decoding_cold_p50_s"]
    figures["next_turn_speedup_vs_cold"] = figures["cold_p50_s"] / figures["next_turn_p50_s"]
    print(f"taskrouter bench latency — {figures['model']} adapter={figures['adapter']} strategy={strategy}, "
          f"{len(ids)}-token prompt, {len(tasks)} tasks, {args.samples} samples, {figures['threads']} threads")
    rows = [
        ("cold (empty cache)", cold), ("next turn (conversation cached)", nxt),
        ("new conversation (task list cached)", new_conv), ("free decoding, cold", free),
        ("plain forward pass (full LM head, last position)", forward),
    ]
    for label, values in rows:
        p50, p95 = _percentiles(values)
        print(f"  {label:<50} p50 {p50 * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms")
    if "outlines_first_call_s" in figures:
        print(f"  {'outlines Literal choice, first call (vocabulary index)':<50} {figures['outlines_first_call_s']:9.1f} s")
        print(f"  {'outlines Literal choice, later calls':<50} p50 {figures['outlines_steady_p50_s'] * 1000:7.1f} ms")
        print(f"  outlines (later calls) / constrained scorer (cold) {figures['outlines_over_constrained']:.2f}x")
    print(f"  constrained answer (cold) / one plain forward      {figures['constrained_over_forward']:.2f}x")
    print(f"  constrained (cold) / free decoding (cold)          {figures['constrained_over_free']:.2f}x")
    print(f"  cold / next turn                                   {figures['next_turn_speedup_vs_cold']:.2f}x")
    print(f"  {BATCH} next turns of {BATCH} conversations: one at a time {figures['batch_one_at_a_time_s'] * 1000:.0f} ms, "
          f"arriving together {figures['batch_together_s'] * 1000:.0f} ms "
          f"({figures['batch_speedup']:.2f}x, micro-batches of up to {router.batcher.max_batch})")
    if "block_over_dense" in figures:
        print(f"  the same, arriving together with dense masked attention {figures['batch_together_dense_s'] * 1000:.0f} ms "
              f"(block attention {figures['block_over_dense']:.2f}x faster)")
    _write_json(args.json, figures)
