"""The server's memory over a load test: its /metrics sampled every few seconds, written as CSV, summarised.

`process_resident_memory_bytes` is the worker's RSS (one worker by default); the
prefix cache's bytes and the 5xx count come from the same scrape, so a soak shows
whether memory stays flat under TASKROUTER_CACHE_MB and whether anything failed.
"""
from __future__ import annotations

import csv
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

COLUMNS = ("seconds", "rss_mb", "cache_mb", "requests", "errors_5xx")


def scrape(host: str, api_key: str = "") -> dict[str, float]:
    """One /metrics reading: RSS and prefix-cache MB, invocations answered and 5xx among them."""
    req = urllib.request.Request(f"{host.rstrip('/')}/metrics",
                                 headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    with urllib.request.urlopen(req, timeout=10) as res:
        text = res.read().decode()
    row = {"rss_mb": 0.0, "cache_mb": 0.0, "requests": 0.0, "errors_5xx": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "process_resident_memory_bytes":
                row["rss_mb"] = sample.value / 2**20
            elif sample.name == "taskrouter_prefix_cache_bytes":
                row["cache_mb"] = sample.value / 2**20
            elif sample.name == "taskrouter_requests_total" and sample.labels.get("route") == "/invocations":
                row["requests"] += sample.value
                row["errors_5xx"] += sample.value if sample.labels.get("status", "").startswith("5") else 0
    return row


class Sampler(threading.Thread):
    """Scrapes `host` every `every_s` seconds and once more when stopped; rows accumulate in `rows`."""

    def __init__(self, host: str, every_s: float, api_key: str = ""):
        super().__init__(name="rss-sampler", daemon=True)
        self.host, self.every_s, self.api_key = host, every_s, api_key
        self.rows: list[dict[str, float]] = []
        self._stop_event = threading.Event()
        self._began = time.monotonic()

    def run(self) -> None:
        while True:
            self._sample()
            if self._stop_event.wait(self.every_s):
                self._sample()  # the closing reading: the last row is the server as the load ended
                return

    def _sample(self) -> None:
        try:
            self.rows.append({"seconds": round(time.monotonic() - self._began, 1), **scrape(self.host, self.api_key)})
        except OSError:
            pass  # a missed sample (server busy or restarting) is a gap in the series, not an error

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


def write_csv(rows: list[dict[str, float]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: round(row[key], 1) for key in COLUMNS} for row in rows)


def summarise(rows: list[dict[str, float]]) -> str:
    """First, peak and last RSS, growth over the second half of the run, and the server's 5xx count."""
    if not rows:
        return "memory: no /metrics sample (does the server expose /metrics?)"
    half = rows[len(rows) // 2]
    last = rows[-1]
    return (f"memory: RSS {rows[0]['rss_mb']:.0f} MB at start, peak {max(r['rss_mb'] for r in rows):.0f} MB, "
            f"{last['rss_mb']:.0f} MB at the end ({last['rss_mb'] - half['rss_mb']:+.0f} MB over the second half); "
            f"prefix cache {last['cache_mb']:.0f} MB; server: {last['requests']:.0f} invocations, "
            f"{last['errors_5xx']:.0f} answered 5xx")
