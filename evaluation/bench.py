"""`taskrouter bench latency`: what each request costs, against what the arithmetic allows.

(`taskrouter bench train` measures training speed instead: see training/speed.py.)

Every sample is one conversation: by default a synthetic sales one (8 tasks, a distinct
company name each, so nothing is shared by accident), or with `--data FILE[@N]` real
ones from a router-bench file (the request at user turn `--turns`, the gold previous task
as current task). Each sample is routed three ways, one after the other: cold (empty
prefix cache), next turn (its previous turn routed first) and with only its first turn
routed (the task list cached: what a next turn costs once the history window moved).
Each route is followed by the bare decoder forward over the same new tokens on the same
cached prefix. The report gives the tokens each request computed, the FLOPs per token,
the matmul rate this machine reaches at the model's shapes per kernel (float32,
bfloat16, int8) and every latency as a multiple of its floor (evaluation/floor.py);
`--compare llama.cpp` routes the same token ids through llama.cpp, alternating.
The micro-batching figure routes 8 next-turn requests one at a time, then all at once
from 8 threads (and, with block attention, once more with dense masked attention).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from taskrouter.extras import MissingExtra, require

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
    import torch

    model = outlines.from_transformers(router.loaded.model, router.loaded.tokenizer)
    times = []
    for req in requests:
        text = router.loaded.tokenizer.decode(router.prompt_ids(req), skip_special_tokens=True)  # what the router reads
        choice = Literal[tuple(req.task_names + ["none"])]
        start = time.perf_counter()
        router.loaded.use_adapter(router.default_adapter)
        with torch.inference_mode():
            model(text, choice, max_new_tokens=24)
        times.append(time.perf_counter() - start)
    return {"outlines_first_call_s": times[0], "outlines_steady_p50_s": statistics.median(times[1:] or times)}


def _batching(router, samples: list["Sample"]) -> dict:
    """BATCH next-turn requests (previous turns cached) routed one at a time, then all at once."""
    def phase(run) -> float:
        router.cache.clear()
        for sample in samples:
            router.route(sample.previous)
        start = time.perf_counter()
        run([sample.request for sample in samples])
        return time.perf_counter() - start

    def together(requests: list) -> None:
        with ThreadPoolExecutor(len(requests)) as pool:
            list(pool.map(router.route, requests))

    figures = {"batch_one_at_a_time_s": phase(lambda requests: [router.route(r) for r in requests])}
    figures["batch_together_s"] = at_once = phase(together)
    figures["batch_speedup"] = figures["batch_one_at_a_time_s"] / at_once
    if router.engine.attention == "blocks":  # the same batch shape with dense masked attention
        router.engine.attention = "dense"
        try:
            figures["batch_together_dense_s"] = phase(together)
        finally:
            router.engine.attention = "blocks"
        figures["block_over_dense"] = figures["batch_together_dense_s"] / at_once
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["latency", "train", "agree"],
                        help="latency: cold, next-turn and batch figures against the floor; "
                             "train: seconds per training example, packed vs one forward per example; "
                             "agree: two eval runs (--runs REFERENCE CANDIDATE) compared answer by answer")
    parser.add_argument("--runs", nargs=2, metavar=("REFERENCE", "CANDIDATE"),
                        help="agree: two `taskrouter eval --teacher-forcing` output folders of the same benchmarks")
    parser.add_argument("--model-dir", help="an unpacked artifact (default: the embedded model and its adapters)")
    parser.add_argument("--strategy", default=None, help="prompt strategy (default: the adapter's, else zero_shot)")
    parser.add_argument("--samples", type=int, default=10,
                        help="latency: conversations measured; train: examples to train (default 10)")
    parser.add_argument("--turns", type=int, default=5,
                        help="latency: the user turn measured (default 5; with --data, a conversation's last "
                             "when it has fewer)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--no-outlines", action="store_true",
                        help="skip the outlines baseline (its first call indexes the whole vocabulary)")
    parser.add_argument("--data", action="append", metavar="FILE[@N]",
                        help="train: router-bench training file(s) to sample examples from (repeatable); "
                             "latency: real conversations from this router-bench file instead of synthetic ones")
    parser.add_argument("--compare", choices=["llama.cpp"],
                        help="latency: route the same token ids through llama.cpp too (pip install "
                             "'taskrouter[llamacpp]'), same threads, alternating with the router")
    parser.add_argument("--against", metavar="CHECKOUT",
                        help="latency: also route every request, alternating, with the router of another "
                             "checkout of this project (e.g. a git worktree of an older commit), in this process")
    parser.add_argument("--against-env", action="append", default=[], metavar="TASKROUTER_NAME=VALUE",
                        help="latency: settings the --against router loads with (repeatable); without --against, "
                             "it is this checkout's router, so one run compares two settings (docs/settings.md)")
    parser.add_argument("--llama-model", metavar="GGUF",
                        help="--compare llama.cpp: the model file (default: the embedded Q4_K_M GGUF)")
    parser.add_argument("--llama-lora", metavar="GGUF",
                        help="--compare llama.cpp: a LoRA adapter in GGUF (convert_lora_to_gguf.py of llama.cpp)")
    parser.add_argument("--base", default="embedded", help="train: base model (default: the embedded one)")
    parser.add_argument("--history-tokens", type=int, default=96,
                        help="train: conversation tokens kept after the task list (default 96, as taskrouter train)")


def run(args: argparse.Namespace) -> None:
    if args.what == "train":
        _train(args)
    elif args.what == "agree":
        _agree(args)
    else:
        _latency(args)


def _agree(args: argparse.Namespace) -> None:
    from .agreement import compare_runs, report

    if not args.runs:
        raise SystemExit("error: --runs: bench agree needs two eval output folders, the reference first")
    try:
        rows = compare_runs(*map(Path, args.runs))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"taskrouter bench agree — {args.runs[1]} against {args.runs[0]}")
    report(rows)
    _write_json(args.json, {"reference": args.runs[0], "candidate": args.runs[1], "files": rows})


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


@dataclass(frozen=True)
class Sample:
    """A measured request and what warms the cache before it: its previous turn, or its first turn."""

    first: object  # RouteRequest
    previous: object
    request: object


def synthetic_samples(count: int, turns: int, strategy: str | None, offset: int = 0) -> list[Sample]:
    """`count` sales conversations (a distinct company each), measured at user turn `turns`."""
    from taskrouter.schema import parse_request

    tasks = [{"name": n, "description": d} for n, d in TASKS]

    def request(i: int, turn: int):
        payload = {"messages": conversation(f"Company{i:03d}", turn), "tasks": tasks,
                   "current_task": "prepare_a_quote" if turn > 2 else None}
        return parse_request({**payload, "strategy": strategy} if strategy else payload)

    return [Sample(request(i, 1), request(i, max(1, turns - 1)), request(i, turns))
            for i in range(offset, offset + count)]


def data_samples(spec: str, count: int, turns: int, strategy: str | None) -> list[Sample]:
    """Conversations of a router-bench file (`FILE@N` samples N of them, else `count`) with two user
    turns or more, each measured at its user turn `turns` (or its last), the gold previous task current."""
    from taskrouter.schema import parse_request

    from .benchfile import load_bench

    bench = load_bench(spec, None if "@" in spec else count)
    samples = []
    for conv in bench.conversations:
        gold = {label["turn"]: label["task"] for label in conv["labels"]}
        users = [i for i, m in enumerate(conv["messages"]) if m["role"] == "user" and i in gold]
        if len(users) < 2:
            continue
        chosen = users[: min(turns, len(users))]

        def request(k: int):
            payload = {"messages": conv["messages"][: chosen[k] + 1], "tasks": conv["tasks"],
                       "current_task": gold[chosen[k - 1]] if k else None}
            return parse_request({**payload, "strategy": strategy} if strategy else payload)

        samples.append(Sample(request(0), request(len(chosen) - 2), request(len(chosen) - 1)))
    if not samples:
        raise ValueError(f"--data {spec}: no conversation with two labelled user turns")
    return samples[:count]


@dataclass(frozen=True)
class Measure:
    seconds: float  # Router.route
    bare_seconds: float  # the decoder alone over the same new tokens on the same cached prefix
    tokens: int  # tokens the route computed (new prompt tokens and trie nodes)
    padding: int  # rows it computed beyond those (`rows.padded`)
    context: int  # tokens of its prompt


KINDS = ("cold", "next", "list")
LABELS = {"cold": "cold (empty cache)", "next": "next turn (previous turn cached)",
          "list": "next turn, only the task list cached", "free": "free decoding, cold"}


def _measure(router, request, warm: list) -> Measure:
    """Route `request` after `warm` on an empty cache; then the bare forward over what it computed."""
    import torch
    from transformers import DynamicCache

    from taskrouter.engine import cache_kwargs
    from taskrouter.kvcache import join_spans, prefix_keys

    _reset(router, warm)
    namespace, segments = router.prompt_segments(request)
    covered, stored = router.cache.longest(prefix_keys(namespace, segments[:-1]))
    stats = router.engine.stats
    tokens, padding = stats.tokens, stats.padding
    start = time.perf_counter()
    router.route(request)
    seconds = time.perf_counter() - start
    tokens, padding = stats.tokens - tokens, stats.padding - padding
    new = [t for segment in segments[covered:] for t in segment]
    decoder = router.loaded.model.get_decoder()
    router.loaded.use_adapter(router.default_adapter)
    with torch.inference_mode():
        past = join_spans([(stored, 0, stored.get_seq_length())]) if stored is not None else DynamicCache()
        start = time.perf_counter()
        decoder(input_ids=torch.tensor([new], device=router.loaded.device), use_cache=True,
                **cache_kwargs(decoder, past))
        bare = time.perf_counter() - start
    return Measure(seconds, bare, tokens, padding, sum(map(len, segments)))


def _against(args: argparse.Namespace) -> tuple[object | None, str | None]:
    """The router to compare with (None without --against / --against-env) and how the report names it: another
    checkout's, or this one's, loaded while the --against-env variables are set."""
    if not (args.against or args.against_env):
        return None, None
    variables = dict(_variable(v) for v in args.against_env)
    with _environment(variables):
        if args.against:
            router = _other_router(args.against, args.model_dir)
        else:
            from taskrouter import handler

            router = handler.model_fn(args.model_dir)
    name = args.against or "this checkout"
    return router, " ".join([name, *(f"{k}={v}" for k, v in variables.items())])


def _variable(text: str) -> tuple[str, str]:
    """`TASKROUTER_NAME=VALUE` of --against-env, checked: a name outside the settings is an error naming it."""
    from taskrouter.settings import PREFIX, Settings

    name, sep, value = text.partition("=")
    if not sep or not name.startswith(PREFIX) or name[len(PREFIX):].lower() not in Settings.model_fields:
        raise SystemExit(f"error: --against-env {text!r}: not TASKROUTER_NAME=VALUE of a setting in docs/settings.md")
    return name, value


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    """These environment variables set, and this checkout's settings re-read, until the block ends."""
    from taskrouter import settings

    with mock.patch.dict(os.environ, variables):
        settings.get.cache_clear()
        try:
            yield
        finally:
            settings.get.cache_clear()


def _other_router(checkout: str, model_dir: str | None):
    """The router of another checkout's `code/taskrouter`, imported under its own name next to this one;
    its `route` takes this checkout's requests (re-read into that checkout's own schema classes)."""
    import importlib.util
    import sys

    package = Path(checkout) / "code" / "taskrouter"
    if not (package / "__init__.py").is_file():
        raise SystemExit(f"error: --against {checkout}: no code/taskrouter package there")
    spec = importlib.util.spec_from_file_location("taskrouter_against", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    router = importlib.import_module(f"{spec.name}.handler").model_fn(model_dir)
    parse, route = importlib.import_module(f"{spec.name}.schema").parse_request, router.route
    router.route = lambda request: route(parse(request.model_dump(mode="json", exclude_none=True)))
    return router


def _reset(router, warm: list) -> None:
    """Empty the router's prefix cache (any version of the Router), then route `warm`."""
    cache = router.cache
    if hasattr(cache, "clear"):
        cache.clear()
    else:  # checkouts before PrefixCache.clear
        router.cache = type(cache)(cache.max_bytes)
    for w in warm:
        router.route(w)


def _route_seconds(router, request, warm: list) -> float:
    """Seconds to route `request` after `warm` on an empty prefix cache."""
    _reset(router, warm)
    start = time.perf_counter()
    router.route(request)
    return time.perf_counter() - start


def _floors(router, measured: dict[str, list[Measure]]) -> dict:
    """FLOPs per token, the matmul rate of each kernel at each figure's token count, and every figure's floor."""
    from taskrouter.hardware import CpuFeatures

    from .floor import KERNELS, matmul_rate, model_cost

    loaded = router.loaded
    lora = loaded.peft is not None and router.default_adapter is not None and loaded.merged is None
    cost = model_cost(loaded.model, lora_active=lora)
    dtype = str(loaded.dtype).removeprefix("torch.")
    kernel = f"{dtype}-packed" if loaded.packed is not None else dtype  # the kernel the model computes with
    figures = {"cpu": CpuFeatures.detect().describe(), "dtype": dtype, "kernel": kernel,
               "lora_merged": loaded.merged is not None,
               "mflop_per_token": (cost.linear + cost.lora) / 1e6, "kflop_per_key": cost.attention_per_key / 1e3}
    for kind, values in measured.items():
        tokens = round(statistics.median(m.tokens for m in values))
        context = round(statistics.median(m.context for m in values))
        padding = round(statistics.median(m.padding for m in values))
        flops = cost.flops(tokens, context)
        rates = {k: matmul_rate(k, cost.shapes, tokens) for k in KERNELS}
        floors = {k: flops / r for k, r in rates.items() if r}
        p50 = statistics.median(m.seconds for m in values)
        bare = statistics.median(m.bare_seconds for m in values)
        figures[kind] = {"p50_s": p50, "p95_s": _percentiles([m.seconds for m in values])[1], "tokens": tokens,
                         "padding": padding, "context": context, "mflop": flops / 1e6, "bare_forward_s": bare,
                         "route_over_bare": p50 / bare,
                         "gflops": {k: (r or 0) / 1e9 for k, r in rates.items()},
                         "floor_s": floors.get(kernel), "over_floor": p50 / floors[kernel] if kernel in floors else None,
                         "best_kernel": min(floors, key=floors.get), "best_floor_s": min(floors.values()),
                         "over_best_floor": p50 / min(floors.values())}
    return figures


def _latency(args: argparse.Namespace) -> None:
    if not args.no_outlines:  # before the model loads, not after minutes of measuring
        try:
            require("outlines", "bench", "the outlines baseline of taskrouter bench latency (or --no-outlines)")
        except MissingExtra as exc:
            raise SystemExit(f"error: {exc}") from None
    import torch

    from taskrouter import handler

    router = handler.model_fn(args.model_dir)
    strategy = args.strategy or ("adapter" if router.default_adapter else "zero_shot")
    count = args.samples + BATCH
    samples = (data_samples(args.data[0], count, args.turns, args.strategy) if args.data
               else synthetic_samples(count, args.turns, args.strategy))
    measured_samples, batch_samples = samples[: args.samples], samples[-BATCH:]
    peer = None
    if args.compare == "llama.cpp":
        from .llamacpp import LlamaCppPeer

        peer = LlamaCppPeer.open(args.llama_model, args.llama_lora, torch.get_num_threads())
    other, other_name = _against(args)
    for r in (router, other):
        if r is not None:
            r.route(samples[0].request)  # warm-up: allocator, kernels
    measured: dict[str, list[Measure]] = {kind: [] for kind in KINDS}
    peer_seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    other_seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    free = []
    for sample in measured_samples:
        for kind, warm in zip(KINDS, ([], [sample.previous], [sample.first])):
            measured[kind].append(_measure(router, sample.request, warm))
            if peer is not None:  # alternating with the router, on the very same token ids
                peer_seconds[kind].append(peer.seconds(router.prompt_ids(sample.request),
                                                       [router.prompt_ids(w) for w in warm]))
            if other is not None:
                other_seconds[kind].append(_route_seconds(other, sample.request, warm))
        router.cache.clear()
        start = time.perf_counter()
        router.route(sample.request.model_copy(update={"decoding": "free"}))
        free.append(time.perf_counter() - start)
    figures = {"model": router.loaded.name, "adapter": router.default_adapter, "strategy": strategy,
               "data": args.data[0] if args.data else "synthetic sales", "samples": len(measured_samples),
               "threads": torch.get_num_threads(), "tasks": len(measured_samples[0].request.tasks),
               "free_decoding_cold_p50_s": statistics.median(free)}
    figures.update(_floors(router, measured))
    if peer is not None:
        figures["llama_cpp"] = {"model": peer.describe(), **{
            kind: {"p50_s": statistics.median(v), "router_speedup": statistics.median(v) / figures[kind]["p50_s"]}
            for kind, v in peer_seconds.items()}}
    if other is not None:
        figures["against"] = {"checkout": other_name, **{
            kind: {"p50_s": statistics.median(v), "speedup": statistics.median(v) / figures[kind]["p50_s"]}
            for kind, v in other_seconds.items()}}
    figures.update(_batching(router, batch_samples))
    if not args.no_outlines:
        figures.update(_outlines_baseline(router, [s.request for s in measured_samples]))
        figures["outlines_over_constrained"] = figures["outlines_steady_p50_s"] / figures["cold"]["p50_s"]
    _report(figures, router.batcher.max_batch)
    _write_json(args.json, figures)


def _report(figures: dict, max_batch: int) -> None:
    ms = 1000
    print(f"taskrouter bench latency — {figures['model']} adapter={figures['adapter']} strategy={figures['strategy']}, "
          f"{figures['kernel']}{' (LoRA merged)' if figures['lora_merged'] else ''}, {figures['samples']} samples "
          f"of {figures['data']}, {figures['tasks']} tasks, {figures['threads']} threads, CPU {figures['cpu']}")
    print(f"  {figures['mflop_per_token']:.1f} MFLOP per computed token in the linear layers, "
          f"+ {figures['kflop_per_key']:.1f} kFLOP per key it attends to")
    kinds = [k for k in KINDS if k in figures]
    for kind in kinds:
        f = figures[kind]
        rates = ", ".join(f"{k} {v:.3g}" for k, v in f["gflops"].items() if v)
        print(f"  matmul GFLOP/s at the model's shapes, {f['tokens']} rows: {rates}")
    print(f"  {'':<38} {'p50 ms':>8} {'p95 ms':>8} {'tokens':>7} {'+pad':>5} {'bare ms':>8} {'/bare':>6} "
          f"{'floor ms':>9} {'x floor':>8} {'best floor':>16} {'x best':>7}")
    for kind in kinds:
        f = figures[kind]
        floor = f"{f['floor_s'] * ms:9.1f} {f['over_floor']:7.1f}x" if f["floor_s"] else f"{'-':>9} {'-':>8}"
        print(f"  {LABELS[kind]:<38} {f['p50_s'] * ms:8.1f} {f['p95_s'] * ms:8.1f} {f['tokens']:7d} {f['padding']:5d} "
              f"{f['bare_forward_s'] * ms:8.1f} {f['route_over_bare']:5.2f}x {floor} "
              f"{f['best_floor_s'] * ms:7.1f} ({f['best_kernel']:>8}) {f['over_best_floor']:6.1f}x")
    print(f"  {LABELS['free']:<38} {figures['free_decoding_cold_p50_s'] * ms:8.1f}")
    if "llama_cpp" in figures:
        peer = figures["llama_cpp"]
        for kind in kinds:
            print(f"  llama.cpp ({peer['model']}), {LABELS[kind]:<38} {peer[kind]['p50_s'] * ms:8.1f} ms: "
                  f"the router is {peer[kind]['router_speedup']:.2f}x as fast")
    if "against" in figures:
        for kind in kinds:
            other = figures["against"][kind]
            print(f"  {figures['against']['checkout']}, {LABELS[kind]:<38} {other['p50_s'] * ms:8.1f} ms: "
                  f"this one is {other['speedup']:.2f}x as fast")
    if "outlines_first_call_s" in figures:
        print(f"  {'outlines Literal choice, first call (vocabulary index)':<50} {figures['outlines_first_call_s']:9.1f} s")
        print(f"  {'outlines Literal choice, later calls':<50} p50 {figures['outlines_steady_p50_s'] * ms:7.1f} ms")
        print(f"  outlines (later calls) / constrained scorer (cold) {figures['outlines_over_constrained']:.2f}x")
    print(f"  {BATCH} next turns of {BATCH} conversations: one at a time {figures['batch_one_at_a_time_s'] * ms:.0f} ms, "
          f"arriving together {figures['batch_together_s'] * ms:.0f} ms "
          f"({figures['batch_speedup']:.2f}x, micro-batches of up to {max_batch})")
    if "block_over_dense" in figures:
        print(f"  the same, arriving together with dense masked attention {figures['batch_together_dense_s'] * ms:.0f} ms "
              f"(block attention {figures['block_over_dense']:.2f}x faster)")
