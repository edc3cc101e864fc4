"""Run the Locust conversation-replay scenario headless against a running router and summarise it.

Users replay router-bench conversations turn by turn (loadtest/locustfile.py).
Users and run time are bounded, and only loopback hosts are allowed unless
--allow-remote: a load test is not something to point at someone else's server by
accident. Writes Locust's CSV files and HTML report to --out and prints
requests/s, p50/p95/p99 latency and failures. Meanwhile the server's /metrics is
sampled (its RSS, prefix-cache bytes, 5xx count) into memory.csv; with --distinct
every replay is a conversation never seen before, the memory soak.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import ipaddress
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from taskrouter import settings
from taskrouter.resources import locustfile, sample_bench

from . import memory

MAX_USERS = 512
MAX_SECONDS = 3600


def parse_duration(text: str) -> int:
    """Seconds in '90', '60s', '5m', '1h30m'; a clear error otherwise."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"--duration {text!r}: use e.g. 60s, 5m or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not 1 <= total <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"--duration {text!r}: must be between 1 s and {MAX_SECONDS} s")
    return total


def _users(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_USERS:
        raise argparse.ArgumentTypeError(f"--users {value}: must be between 1 and {MAX_USERS}")
    return value


def is_loopback(host: str) -> bool:
    """True when every address the URL's host name resolves to is a loopback address."""
    name = urlsplit(host).hostname
    if not name:
        raise SystemExit(f"--host {host!r}: expected a URL such as http://127.0.0.1:8080")
    try:
        infos = socket.getaddrinfo(name, None)
    except socket.gaierror as exc:
        raise SystemExit(f"--host {host!r}: cannot resolve {name}: {exc}") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def wait_ready(host: str, timeout: float) -> None:
    """Wait for GET /ping to answer 200 (the model is loaded) or exit with the reason."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{host.rstrip('/')}/ping", timeout=5) as res:
                if res.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(1)
    raise SystemExit(f"--host {host}: /ping not ready after {timeout:.0f} s ({last}); is `taskrouter serve` running?")


def locust_command(args: argparse.Namespace, seconds: int, prefix: Path, html: Path) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless", "--host", args.host,
            "--users", str(args.users), "--spawn-rate", str(args.spawn_rate or args.users),
            "--run-time", f"{seconds}s", "--stop-timeout", "30", "--csv", str(prefix), "--html", str(html),
            "--only-summary", "--bench", str(args.bench), "--think-time", str(args.think_time),
            *(["--distinct"] if args.distinct else []), *(["--api-key", args.api_key] if args.api_key else [])]


def summarise(stats_csv: Path) -> dict:
    """The 'Aggregated' row of Locust's *_stats.csv: requests, failures, req/s and percentiles (ms)."""
    with open(stats_csv, newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    row = rows.get("Aggregated")
    if row is None:
        raise SystemExit(f"{stats_csv}: no Aggregated row (did any request run?)")
    num = lambda key: float(row[key]) if row.get(key) not in (None, "", "N/A") else float("nan")  # noqa: E731
    return {"requests": int(num("Request Count")), "failures": int(num("Failure Count")),
            "rps": num("Requests/s"), "p50_ms": num("50%"), "p95_ms": num("95%"), "p99_ms": num("99%"),
            "mean_ms": num("Average Response Time")}


def format_summary(s: dict, users: int, seconds: int) -> str:
    return (f"{users} users, {seconds} s: {s['requests']} requests, {s['rps']:.2f} req/s, "
            f"p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, "
            f"mean {s['mean_ms']:.0f} ms, failures {s['failures']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=_users, default=16, help=f"concurrent simulated agents (1..{MAX_USERS}, default 16)")
    parser.add_argument("--duration", type=parse_duration, default=60, help="run time, e.g. 60s, 5m (default 60s, max 1h)")
    parser.add_argument("--host", default="http://127.0.0.1:8080", help="router URL (default http://127.0.0.1:8080)")
    parser.add_argument("--bench", default=str(sample_bench()),
                        help="router-bench JSONL whose conversations are replayed (default: the sample bench "
                             "shipped with taskrouter, 16 conversations)")
    parser.add_argument("--out", default="runs/loadtest", help="directory for the CSV files and report.html (default runs/loadtest)")
    parser.add_argument("--spawn-rate", type=float, help="users started per second (default: all at once)")
    parser.add_argument("--think-time", type=float, default=0.0, help="seconds a user waits between turns (default 0)")
    parser.add_argument("--distinct", action="store_true",
                        help="every replay a conversation the server has not seen (numbered, task list reordered): "
                             "the memory soak")
    parser.add_argument("--sample-every", type=float, default=10.0,
                        help="seconds between samples of the server's /metrics into memory.csv (default 10; 0: off)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    parser.add_argument("--ready-timeout", type=float, default=120, help="seconds to wait for /ping 200 (default 120)")


def run(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("locust") is None:  # run by this interpreter, so it must be installed here
        raise SystemExit("taskrouter loadtest needs locust: pip install 'taskrouter[loadtest]'")
    if not args.allow_remote and not is_loopback(args.host):
        raise SystemExit(f"--host {args.host}: not a loopback address; pass --allow-remote to load-test another machine")
    if not Path(args.bench).is_file():
        raise SystemExit(f"--bench {args.bench}: no such file")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix, html = out / "locust", out / "report.html"
    wait_ready(args.host, args.ready_timeout)
    args.api_key = settings.get().api_key.get_secret_value() if settings.get().api_key else ""
    command = locust_command(args, args.duration, prefix, html)
    print("taskrouter loadtest:", " ".join(c if c != args.api_key else "***" for c in command), file=sys.stderr)
    sampler = memory.Sampler(args.host, args.sample_every, args.api_key) if args.sample_every > 0 else None
    if sampler:
        sampler.start()
    code = subprocess.run(command).returncode  # locust exits 1 when some request failed: still summarise
    if sampler:
        sampler.stop()
        memory.write_csv(sampler.rows, out / "memory.csv")
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        raise SystemExit(f"locust exited with {code} and wrote no {stats}")
    summary = summarise(stats)
    print(format_summary(summary, args.users, args.duration))
    if sampler:
        print(memory.summarise(sampler.rows))
    print(f"report: {html}  csv: {prefix}_*.csv" + (f", {out / 'memory.csv'}" if sampler else ""))
    if code not in (0, 1):
        raise SystemExit(code)
