"""The pure core of on-demand ingestion: request keys, request parsing, and the run book's admission, queue,
dedupe, expiry and shutdown, on an injected clock."""

from __future__ import annotations

import itertools
import json
import threading

import pytest

from flows.trigger import (
    Admitted,
    BadRequest,
    Rejected,
    RunBook,
    TriggerRequest,
    parse_json_request,
    pdf_request,
    retry_after,
    safe_filename,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book(queue_size: int = 2, **kw: float) -> tuple[RunBook, Clock]:
    clock = Clock()
    ids = (f"run{i}" for i in itertools.count(1))
    b = RunBook(queue_size, clock=clock, new_id=lambda: next(ids), **kw)  # type: ignore[arg-type]
    b.set_ready()
    return b, clock


def req(n: int, source: str = "inbox") -> TriggerRequest:
    return pdf_request(f"{n:064x}", source, f"f{n}.pdf")


def admitted(outcome: Admitted | Rejected) -> Admitted:
    assert isinstance(outcome, Admitted), outcome
    return outcome


def test_keys_follow_content_not_names() -> None:
    assert pdf_request("ab" * 32, "inbox", "a.pdf").key == pdf_request("ab" * 32, "inbox", "b.pdf").key
    assert pdf_request("ab" * 32, "inbox", "a.pdf").key != pdf_request("ab" * 32, "other", "a.pdf").key
    assert pdf_request("ab" * 32, "inbox", None).key != pdf_request("cd" * 32, "inbox", None).key
    one = TriggerRequest("records", "wiki", ids=("2", "1"))
    assert one.key == TriggerRequest("records", "wiki", ids=("1", "2", "1")).key
    assert one.key != TriggerRequest("records", "wiki", ids=("1",)).key
    assert TriggerRequest("url", "inbox", "http://x/a.pdf").key != TriggerRequest("url", "inbox", "http://x/b.pdf").key


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd.pdf"),
        ("C:\\Users\\x\\Q3 plan.PDF", "Q3 plan.PDF"),
        ("naïve résumé.pdf", "na_ve r_sum_.pdf"),
        ("...", "fallback.pdf"),
        (None, "fallback.pdf"),
        ("", "fallback.pdf"),
    ],
)
def test_safe_filename(name: str | None, expected: str) -> None:
    assert safe_filename(name, "fallback") == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"url": "https://example.org/a.pdf"}, TriggerRequest("url", "inbox", "https://example.org/a.pdf")),
        ({"url": "http://h/a.pdf", "source": "docs"}, TriggerRequest("url", "docs", "http://h/a.pdf")),
        ({"source": "wiki"}, TriggerRequest("records", "wiki")),
        ({"source": "wiki", "ids": ["7", 8, "7"]}, TriggerRequest("records", "wiki", ids=("7", "8"))),
    ],
)
def test_json_requests(body: dict[str, object], expected: TriggerRequest) -> None:
    assert parse_json_request(json.dumps(body).encode(), "inbox") == expected


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"url": "ftp://h/a.pdf"}', 422, "http(s)"),
        (b'{"url": "/a.pdf"}', 422, "absolute"),
        (b'{"url": "http://h/a.pdf", "ids": ["1"]}', 400, "not both"),
        (b'{"ids": ["1"]}', 400, "source"),
        (b'{"source": ""}', 400, "non-empty"),
        (b'{"source": "w", "ids": "1"}', 400, "list"),
        (b'{"source": "w", "ids": [""]}', 400, "non-empty"),
        (b'{"source": "w", "idz": []}', 400, "unknown field(s) idz"),
        (json.dumps({"source": "w", "ids": [str(i) for i in range(1001)]}).encode(), 413, "at most 1000"),
    ],
)
def test_bad_json_requests_say_why(body: bytes, status: int, fragment: str) -> None:
    with pytest.raises(BadRequest, match=None) as info:
        parse_json_request(body, "inbox")
    assert info.value.status == status and fragment in str(info.value)


@pytest.mark.parametrize(
    ("queued", "workers", "mean", "expected"),
    [(0, 1, None, 1), (0, 1, 0.4, 1), (3, 1, 2.0, 8), (3, 2, 2.0, 4), (2, 1, 2.5, 8), (100, 1, 5.0, 60)],
)
def test_retry_after(queued: int, workers: int, mean: float | None, expected: int) -> None:
    assert retry_after(queued, workers, mean) == expected


def test_not_ready_and_closing_answer_503() -> None:
    b = RunBook(2)
    rejected = b.submit(req(1))
    assert isinstance(rejected, Rejected) and rejected.status == 503 and "warming up" in rejected.reason
    assert b.unavailable() == rejected
    b.set_ready()
    assert b.unavailable() is None
    b.close()
    closing = b.submit(req(2))
    assert isinstance(closing, Rejected) and closing.status == 503 and "shutting down" in closing.reason


def test_a_full_queue_sheds_load_with_429_and_duplicates_still_get_their_run() -> None:
    b, clock = book(queue_size=2, workers=1)
    first = admitted(b.submit(req(1))).record
    admitted(b.submit(req(2)))
    full = b.submit(req(3))
    assert isinstance(full, Rejected) and full.status == 429 and full.retry_after >= 1
    again = admitted(b.submit(req(1)))
    assert again.duplicate and again.record["run_id"] == first["run_id"] == "run1"
    assert b.stats()["queued"] == 2

    run = b.take(0)
    assert run is not None and run.id == "run1" and run.state == "running"
    clock.now += 4.0
    b.finish(run.id, "completed", {"committed": 1})
    # The estimate follows the pace of recent runs: 4 s per run, 2 runs ahead of the next one.
    admitted(b.submit(req(3)))
    shed = b.submit(req(4))
    assert isinstance(shed, Rejected) and shed.retry_after == 12


def test_dedupe_window_and_failures() -> None:
    b, clock = book(queue_size=4, dedupe_seconds=60)
    done = admitted(b.submit(req(1))).record["run_id"]
    run = b.take(0)
    assert run is not None
    b.finish(run.id, "completed", {"committed": 1})
    assert admitted(b.submit(req(1))).record == {**b.get(done), "state": "completed"}  # type: ignore[dict-item]
    clock.now += 61
    assert admitted(b.submit(req(1))).record["run_id"] != done  # the window is over: a new run

    failed = admitted(b.submit(req(2))).record["run_id"]
    while (run := b.take(0)) is not None:
        b.finish(run.id, "failed" if run.id == failed else "completed", {}, "boom" if run.id == failed else None)
    record = b.get(failed)
    assert record is not None and record["state"] == "failed" and record["error"] == "boom"
    retried = admitted(b.submit(req(2)))
    assert not retried.duplicate and retried.record["run_id"] != failed  # a failed run is tried again


def test_runs_waiting_too_long_expire() -> None:
    b, clock = book(queue_size=4, queue_timeout=30)
    rid = admitted(b.submit(req(1))).record["run_id"]
    clock.now += 31
    assert b.take(0) is None
    record = b.get(rid)
    assert record is not None and record["state"] == "expired" and "queue timeout" in record["error"]
    assert not admitted(b.submit(req(1))).duplicate


def test_close_cancels_queued_runs_and_releases_workers() -> None:
    b, _ = book(queue_size=4)
    admitted(b.submit(req(1)))
    queued = admitted(b.submit(req(2))).record["run_id"]
    running = b.take(0)
    assert running is not None
    waiting: list[object] = []
    worker = threading.Thread(target=lambda: waiting.append(b.take()))
    assert b.close() == [queued]
    worker.start()
    worker.join(5)
    assert waiting == [None] and not worker.is_alive()
    assert not b.wait_idle(0.01)  # run1 is still running
    b.finish(running.id, "completed", {})
    assert b.wait_idle(0.01)
    record = b.get(queued)
    assert record is not None and record["state"] == "cancelled"


def test_history_is_bounded() -> None:
    b, _ = book(queue_size=10, history=2)
    ids = [admitted(b.submit(req(i))).record["run_id"] for i in range(3)]
    while (run := b.take(0)) is not None:
        b.finish(run.id, "completed", {})
    assert b.get(ids[0]) is None and b.get(ids[1]) is not None and b.get(ids[2]) is not None
    assert not admitted(b.submit(req(0))).duplicate  # forgotten with its record


def test_finish_checks_states() -> None:
    b, _ = book()
    rid = admitted(b.submit(req(1))).record["run_id"]
    with pytest.raises(ValueError, match="not running"):
        b.finish(rid, "completed", {})
    run = b.take(0)
    assert run is not None
    with pytest.raises(ValueError, match="not a final state"):
        b.finish(run.id, "running", {})
