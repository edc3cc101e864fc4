"""`taskrouter data review` under gunicorn in a real headless Chromium (Playwright): two reviewers with their
login links at once, a SIGKILL, a restart; keyboard labelling, the key help, a second review and its agreement."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} missing: scripts/test.sh installs Debian's chromium")

TASKS = [
    {"name": "meeting_recap", "description": "Write a recap of a meeting"},
    {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"},
    {"name": "prepare_a_quote", "description": "Prepare a price quote"},
]


def conversation(i: int) -> dict:
    return {"id": f"c{i:03d}", "source": "test", "tasks": TASKS,
            "messages": [{"role": "user", "content": f"Please recap meeting number {i}."},
                         {"role": "assistant", "content": "Sure, what happened?"},
                         {"role": "user", "content": "Thanks, that's all."}],
            "labels": [{"turn": 0, "task": "meeting_recap", "event": "start"},
                       {"turn": 2, "task": None, "event": "end"}]}


class ReviewServer:
    """`data review` (gunicorn master + worker) in its own session, so the test can SIGKILL it like a crash."""

    def __init__(self, data: Path, db: Path, log: Path, *options: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = [sys.executable, "-m", "taskrouter.training.data_cli", "review", str(data), "--db", str(db),
                     "--port", str(self.port), *options]
        self.log, self.proc = log, None

    def start(self) -> "ReviewServer":
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if requests.get(self.url, timeout=1).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError(f"review server did not start: {self.log.read_text()}")

    def link(self, name: str) -> str:
        """The login link the server printed for a reviewer."""
        return re.search(rf"  {name}: (http://\S+#token=\S+)", self.log.read_text()).group(1)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # master and worker, as a crash of the service would
        assert self.proc.wait(10) == -signal.SIGKILL


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


def open_reviewer(browser, link: str, name: str):
    page = browser.new_context().new_page()
    page.set_default_timeout(15000)
    page.goto(link)
    page.wait_for_function("document.querySelector('#conv-id').textContent !== ''")
    assert page.inner_text("#reviewer-name") == name and "#token" not in page.url
    return page


def wait_saved(page, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#status').textContent.includes({json.dumps(text)})")


def wait_conversation(page, conv_id: str) -> None:
    page.wait_for_function(f"document.querySelector('#conv-id').textContent === {json.dumps(conv_id)}")


def test_two_reviewers_crash_and_restart(browser, tmp_path):
    data, db = tmp_path / "synth.jsonl", tmp_path / "review.sqlite"
    data.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(5)))
    server = ReviewServer(data, db, tmp_path / "server.log", "--reviewer", "ann", "--reviewer", "bob",
                          "--second-review", "0").start()
    assert requests.post(server.url + "api/claim", json={"reviewer": "ann"}).status_code == 401  # no token, no name

    ann = open_reviewer(browser, server.link("ann"), "ann")
    bob = open_reviewer(browser, server.link("bob"), "bob")
    assert ann.inner_text("#conv-id") == "c000" and bob.inner_text("#conv-id") == "c001"
    assert "Write a follow-up email to a prospect" in ann.inner_text("#tasks")
    assert "Please recap meeting number 0." in ann.inner_text("#messages")

    ann.click("#confirm")
    wait_saved(ann, "Saved c000: confirmed")
    wait_conversation(ann, "c002")

    bob.click("#edit")
    selects = bob.locator("#labels select")
    selects.nth(0).select_option("follow_up_email")
    selects.nth(1).select_option("meeting_recap")
    assert bob.locator("#labels .event").all_inner_texts() == ["start", "switch"]  # events re-derived live
    bob.click("#save")
    wait_saved(bob, "Saved c001: relabelled")
    wait_conversation(bob, "c003")

    ann.click("#wrong")
    wait_saved(ann, "Saved c002: wrong")
    wait_conversation(ann, "c004")
    bob.keyboard.press("l")
    wait_saved(bob, "Saved c003: later")
    bob.wait_for_selector("#done", state="visible")
    assert "1 marked for later" in bob.inner_text("#done-text")
    assert bob.inner_text("#progress").startswith("3 of 5 decided")
    assert bob.inner_text("#counts") == "decisions: ann 2 · bob 2"
    assert bob.eval_on_selector("#bar", "b => [b.value, b.max]") == [3, 5]
    bob.screenshot(path=str(tmp_path / "bob-done.png"))

    server.kill()  # a crash: no shutdown, no flush
    server.start()

    ann.reload()  # the reopened tab resumes the conversation ann held
    wait_conversation(ann, "c004")
    assert ann.inner_text("#progress").startswith("3 of 5 decided")
    ann.click("#back")
    wait_conversation(ann, "c002")
    assert "already decided: wrong" in ann.inner_text("#conv-meta")
    ann.screenshot(path=str(tmp_path / "ann-back.png"))
    server.kill()

    out = tmp_path / "validated.jsonl"
    printed = subprocess.run([sys.executable, "-m", "taskrouter.training.data_cli", "export", "--db", str(db),
                              "--out", str(out)], capture_output=True, text=True, check=True).stdout
    assert "wrote 2 conversations" in printed
    assert "1 wrong, 0 whose second review disagrees, 1 marked for later, 1 undecided" in printed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["c000", "c001"]
    assert records[0]["labels"] == conversation(0)["labels"]
    assert records[1]["labels"] == [{"turn": 0, "task": "follow_up_email", "event": "start"},
                                    {"turn": 2, "task": "meeting_recap", "event": "switch"}]


def test_keyboard_labelling_help_and_a_second_review(browser, tmp_path):
    from sklearn.metrics import cohen_kappa_score

    data, db = tmp_path / "synth.jsonl", tmp_path / "review.sqlite"
    data.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(2)))
    server = ReviewServer(data, db, tmp_path / "server.log", "--reviewer", "ann", "--reviewer", "bob",
                          "--second-review", "1").start()
    try:
        ann = open_reviewer(browser, server.link("ann"), "ann")
        ann.keyboard.press("?")
        assert ann.is_visible("#help") and "the conversation itself is wrong" in ann.inner_text("#help")
        ann.keyboard.press("Escape")
        assert not ann.is_visible("#help")
        ann.keyboard.press("e")  # change labels by keys alone: task 2 for the first message, none for the second
        ann.keyboard.press("2")
        ann.keyboard.press("0")
        assert ann.locator("#labels .task select").evaluate_all("s => s.map(x => x.value)") == ["follow_up_email", ""]
        assert ann.locator("#labels .event").all_inner_texts() == ["start", "end"]
        ann.keyboard.press("s")
        wait_saved(ann, "Saved c000: relabelled")
        wait_conversation(ann, "c001")
        ann.keyboard.press("c")
        wait_saved(ann, "Saved c001: confirmed")
        ann.wait_for_selector("#done", state="visible")

        bob = open_reviewer(browser, server.link("bob"), "bob")  # gets ann's conversations to check, blind
        wait_conversation(bob, "c000")
        assert "second review" in bob.inner_text("#conv-meta")
        assert bob.locator("#labels .task").all_inner_texts() == ["meeting_recap", "(none)"]
        bob.keyboard.press("c")
        wait_saved(bob, "Saved c000: confirmed")
        wait_conversation(bob, "c001")
        bob.keyboard.press("c")
        wait_saved(bob, "Saved c001: confirmed")
        bob.wait_for_selector("#done", state="visible")
        kappa = cohen_kappa_score(["follow_up_email", "none", "meeting_recap", "none"],
                                  ["meeting_recap", "none", "meeting_recap", "none"])
        assert bob.inner_text("#counts") == f"decisions: ann 2 · bob 2 · 2 second reviews, κ {kappa:.2f} over 4 turns"
        bob.screenshot(path=str(tmp_path / "bob-second.png"))
    finally:
        server.kill()
    printed = subprocess.run([sys.executable, "-m", "taskrouter.training.data_cli", "export", "--db", str(db),
                              "--out", str(tmp_path / "validated.jsonl")], capture_output=True, text=True,
                             check=True).stdout
    # c000: ann relabelled it, bob kept the file's labels: held back until someone settles it
    assert "wrote 1 conversations" in printed and "1 whose second review disagrees" in printed
    assert f"Cohen's kappa {kappa:.2f}" in printed
