"""Build fine-tuning data: a teacher LLM writes labelled conversations (generate), a team checks them in
the browser (review), and the checked ones are written out as router-bench JSONL (export).

  taskrouter data generate --tasks tasks.json --n 200 --teacher https://host/v1 --model NAME --out synth.jsonl
  taskrouter data review synth.jsonl --db review.sqlite --port 8090 --reviewer ann --reviewer bob
  taskrouter data export --db review.sqlite --out validated.jsonl
  taskrouter data check drafts/*.jsonl --out checked.jsonl       (conversations written by hand or by agents)
  taskrouter data reword dev.jsonl --map map.json --out dev-reworded.jsonl    (a twin to measure robustness)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{generate,review,export,check,reword}")

    gen = sub.add_parser("generate", help="write synthetic labelled conversations with a teacher LLM",
                         description="A teacher LLM writes conversations from scripted situations (one task, a "
                         "switch, an end, no task). Malformed replies are rejected and counted, never written; "
                         "rerunning with the same --out resumes.")
    gen.add_argument("--tasks", required=True, help="JSON file: a list of {name, description} (or {\"tasks\": [...]})")
    gen.add_argument("--n", type=int, default=200, help="conversations the output file should hold (default 200)")
    gen.add_argument("--teacher", required=True,
                     help="an OpenAI-compatible base URL (e.g. http://localhost:8000/v1) or a local model path")
    gen.add_argument("--model", help="model name sent to an HTTP teacher (required with a URL)")
    gen.add_argument("--api-key-env", default="OPENAI_API_KEY",
                     help="environment variable holding the API key (default OPENAI_API_KEY; unset = no key)")
    gen.add_argument("--out", required=True, help="router-bench JSONL to append to (resumed if it exists)")
    gen.add_argument("--seed", type=int, default=0, help="seed of the scripted situations (default 0)")
    gen.add_argument("--mix", default="task=0.35,switch=0.25,end=0.25,none=0.15",
                     help="shares of the scripted situations: one task throughout, a switch mid-way, the user "
                     "closing the task, a request matching no task (default %(default)s)")
    gen.add_argument("--examples", help="router-bench JSONL whose first 2 conversations are the few-shot examples "
                     "(default: built-in sales examples)")
    gen.add_argument("--id-prefix", default="synth", help="conversation ids are PREFIX-00000, ... (default synth)")
    gen.add_argument("--workers", type=int, default=1, help="parallel requests to an HTTP teacher (default 1)")
    gen.add_argument("--max-attempts", type=int, default=3, help="teacher attempts per conversation (default 3)")
    gen.add_argument("--max-rejects", type=int, help="stop after this many rejected replies (default max(10, n))")
    gen.add_argument("--max-retries", type=int, default=5, help="HTTP retries on 429/5xx/timeouts (default 5)")
    gen.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time")
    gen.add_argument("--timeout", type=float, default=120.0, help="HTTP timeout per request in seconds")
    gen.add_argument("--temperature", type=float, default=0.9, help="teacher sampling temperature (default 0.9)")
    gen.add_argument("--max-tokens", type=int, default=1500, help="longest teacher reply in tokens")
    gen.add_argument("--show-prompt", action="store_true",
                     help="print the teacher chat of the first conversation slot and exit (no teacher call)")
    gen.set_defaults(data_run=run_generate)

    rev = sub.add_parser("review", help="serve the team review web app on a router-bench file",
                         description="Each --reviewer gets a login link (printed once); reviewers open it and "
                         "each gets a conversation no one else holds. Every decision is stored in the SQLite "
                         "database at once; a sample of decided conversations goes to a second reviewer, and "
                         "the page reports how the two agree (Cohen's kappa). Served by gunicorn.")
    rev.add_argument("file", help="router-bench JSONL to review (imported into --db; rerunning adds nothing twice)")
    rev.add_argument("--db", required=True, help="SQLite database of the review (created if missing)")
    rev.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")
    rev.add_argument("--host", default="127.0.0.1", help="listening address (0.0.0.0 for the whole team's network)")
    rev.add_argument("--lease-minutes", type=float, default=15.0,
                     help="a conversation open in a tab is held this long without activity (default 15)")
    rev.add_argument("--reviewer", action="append", default=[], metavar="NAME",
                     help="add a reviewer and print their login link (repeatable; once per name, kept in --db)")
    rev.add_argument("--new-token", action="append", default=[], metavar="NAME",
                     help="replace a reviewer's lost login link (repeatable)")
    rev.add_argument("--second-review", type=float, default=0.1, metavar="SHARE",
                     help="share of decided conversations that a second reviewer checks (default 0.1; 0 turns "
                          "second reviews off)")
    rev.add_argument("--threads", type=int, default=8, help="gunicorn threads serving reviewers (default 8)")
    rev.set_defaults(data_run=run_review)

    chk = sub.add_parser("check", help="check written conversations and keep those that pass",
                         description="Every rule a generated conversation must meet (one label per user message, "
                         "tasks from the list, consistent events, alternating roles ending on the user), task lists "
                         "of --min-tasks to --max-tasks, no repeated id or text. Prints rejects by reason.")
    chk.add_argument("files", nargs="+", help="router-bench JSONL files (gzipped or not)")
    chk.add_argument("--out", help="write the conversations that pass here (router-bench JSONL)")
    chk.add_argument("--min-tasks", type=int, default=3, help="fewest tasks a list may hold (default 3)")
    chk.add_argument("--max-tasks", type=int, default=25, help="most tasks a list may hold (default 25)")
    chk.set_defaults(data_run=run_check)

    rew = sub.add_parser("reword", help="the same conversations under another task list (a map, a shuffle)",
                         description="Writes a twin of a router-bench file with the same ids: every task renamed and "
                         "re-described by --map (labels follow), and/or each list shuffled with --shuffle-seed. "
                         "`taskrouter eval` pairs a twin with its original: accuracy gap and changed answers.")
    rew.add_argument("file", help="router-bench JSONL to reword")
    rew.add_argument("--out", required=True, help="router-bench JSONL to write")
    rew.add_argument("--map", help='JSON {"old name": {"name": "new", "description": "new"}} covering every task')
    rew.add_argument("--shuffle-seed", type=int, help="shuffle every task list with this seed")
    rew.set_defaults(data_run=run_reword)

    exp = sub.add_parser("export", help="write the confirmed and relabelled conversations as router-bench JSONL")
    exp.add_argument("--db", required=True, help="SQLite database of a review")
    exp.add_argument("--out", required=True, help="router-bench JSONL to write")
    exp.set_defaults(data_run=run_export)


def run(args: argparse.Namespace) -> None:
    args.data_run(args)


def run_generate(args: argparse.Namespace) -> None:
    """`data generate`: check the options, build the teacher, generate and print the summary."""
    from .generate import EXAMPLES, chat_messages, generate, parse_mix, plan_for, read_tasks
    from .records import BenchRecord, describe
    from .teacher import FatalTeacherError, make_teacher

    from pydantic import ValidationError

    if args.n < 1:
        sys.exit("--n: must be at least 1")
    try:
        tasks, mix = read_tasks(args.tasks), parse_mix(args.mix)
    except ValueError as exc:
        sys.exit(str(exc))
    examples = None
    if args.examples:
        try:
            with open(args.examples, encoding="utf-8") as f:
                examples = [BenchRecord.model_validate_json(line).model_dump() for _, line in zip(range(2), f)]
        except (OSError, ValidationError) as exc:
            sys.exit(f"--examples {args.examples}: {describe(exc) if isinstance(exc, ValidationError) else exc}")
    if args.show_prompt:
        for message in chat_messages(plan_for(0, args.seed, tasks, mix), tasks, examples or EXAMPLES):
            print(f"--- {message['role']}\n{message['content']}")
        return
    try:
        teacher = make_teacher(args.teacher, args.model, args.api_key_env, temperature=args.temperature,
                               max_tokens=args.max_tokens,
                               **({"timeout": args.timeout, "max_retries": args.max_retries, "backoff": args.backoff}
                                  if args.teacher.startswith(("http://", "https://")) else {}))
        summary = generate(tasks, teacher, Path(args.out), args.n, seed=args.seed, examples=examples, mix=mix,
                           id_prefix=args.id_prefix, max_attempts=args.max_attempts, max_rejects=args.max_rejects,
                           workers=args.workers if args.teacher.startswith(("http://", "https://")) else 1)
    except FatalTeacherError as exc:
        sys.exit(f"error: {exc}")
    except OSError as exc:
        sys.exit(f"--teacher {args.teacher}: {exc}")
    print("\n".join(summary.lines()))
    if summary.stopped:
        sys.exit(1)


def run_review(args: argparse.Namespace) -> None:
    """`data review`: import the file, issue reviewers' links, and serve the web app with gunicorn."""
    from .review import create_app
    from .review_store import ReviewStore

    if not 0.0 <= args.second_review <= 1.0:
        sys.exit(f"--second-review {args.second_review}: a share between 0 and 1")
    store = ReviewStore(args.db, lease_seconds=args.lease_minutes * 60, second_share=args.second_review)
    try:
        added = store.import_file(args.file)
        tokens = {name: store.add_reviewer(name) for name in args.reviewer}
        tokens.update({name: store.add_reviewer(name, new_token=True) for name in args.new_token})
    except (OSError, ValueError) as exc:
        sys.exit(str(exc))
    if not store.reviewers():
        sys.exit("--reviewer: name at least one reviewer (each gets a login link)")
    progress = store.progress()
    print(f"{args.db}: {progress['total']} conversations ({added} new from {args.file}), "
          f"{progress['decided']} decided; reviewers: {', '.join(store.reviewers())}", flush=True)
    for name, token in tokens.items():
        print(f"  {name}: http://{args.host}:{args.port}/#token={token}" if token else
              f"  {name}: has a login link already (--new-token {name} replaces it)", flush=True)
    serve(create_app(store), args.host, args.port, args.threads)


def serve(app, host: str, port: int, threads: int) -> None:
    """Run a WSGI app under gunicorn in this process (one worker: the store is one SQLite file)."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            options = {"bind": f"{host}:{port}", "workers": 1, "worker_class": "gthread", "threads": threads,
                       "accesslog": "-", "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(L)ss',
                       "control_socket_disable": True}
            for key, value in options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self):
            return app

    Server().run()


def run_check(args: argparse.Namespace) -> None:
    """`data check`: print every reject and the counts; write what passed with --out."""
    from .datacheck import check_files, write_records

    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        sys.exit(f"{missing[0]}: no such file")
    result = check_files(args.files, args.min_tasks, args.max_tasks)
    print("\n".join(result.lines + [f"kept {len(result.kept)}, rejected {sum(result.rejected.values())}"
                                    + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(result.rejected.items()))})"
                                       if result.rejected else "")]))
    if args.out:
        write_records(result.kept, args.out)


def run_reword(args: argparse.Namespace) -> None:
    """`data reword`: write the twin file."""
    from .reword import read_map, reword_file

    if args.map is None and args.shuffle_seed is None:
        sys.exit("data reword: give --map, --shuffle-seed or both")
    try:
        n = reword_file(args.file, args.out, read_map(args.map) if args.map else None, args.shuffle_seed)
    except (OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(f"wrote {n} conversations to {args.out}")


def run_export(args: argparse.Namespace) -> None:
    """`data export`: write confirmed + relabelled conversations and print what was kept and skipped."""
    from .review_store import ReviewStore

    if not Path(args.db).exists():
        sys.exit(f"--db {args.db}: no such file")
    counts = ReviewStore(args.db).export(args.out)
    print(json.dumps(counts))
    print(f"wrote {counts['written']} conversations to {args.out} ({counts['confirmed']} confirmed, "
          f"{counts['relabelled']} relabelled; skipped {counts['wrong']} wrong, {counts['disputed']} whose second "
          f"review disagrees, {counts['later']} marked for later, {counts['undecided']} undecided)")
    agreement = ReviewStore(args.db).agreement()
    if agreement["second_reviews"]:
        kappa = "n/a" if agreement["kappa"] is None else f"{agreement['kappa']:.2f}"
        same_task = "n/a" if agreement["same_task"] is None else f"{agreement['same_task']:.2f}"
        print(f"second reviews: {agreement['second_reviews']}, same decision {agreement['same_status']:.2f}; "
              f"over {agreement['turns']} turns both kept: same task {same_task}, Cohen's kappa {kappa}")


def main(argv: list[str] | None = None) -> None:
    """`python -m taskrouter.training.data_cli ...`: the same command without loading the other subcommands."""
    parser = argparse.ArgumentParser(prog="taskrouter data", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(args)


if __name__ == "__main__":
    main()
