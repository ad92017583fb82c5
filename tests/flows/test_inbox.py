"""The service's inbox: posted files kept once per content, the journal of admitted requests, and when a file
goes (at once after a commit, after the retention time after a failure, never while a request needs it)."""

from __future__ import annotations

from pathlib import Path

from flows.inbox import Inbox
from flows.trigger import TriggerRequest, pdf_request

PDF = b"%PDF-1.4 a posted file"


def posted(inbox: Inbox, source: str = "inbox", data: bytes = PDF) -> TriggerRequest:
    digest, path = inbox.store(data, "../../etc/notes.pdf")
    assert path.parent == inbox.folder(digest) and path.name == "notes.pdf"  # no way out of the inbox
    return pdf_request(digest, source, path.name)


def test_the_journal_keeps_admitted_requests_until_they_settle(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    first, url = posted(inbox), TriggerRequest("url", "inbox", "https://example.test/a.pdf", tenant="acme")
    assert inbox.admit(first) and inbox.admit(url)
    assert not inbox.admit(first)  # an identical request is already journaled
    assert inbox.pending() == [first, url]
    assert Inbox(tmp_path).pending() == [first, url]  # what the next process finds
    inbox.settle(first, keep=False)
    assert inbox.files() == [] and inbox.pending() == [url]


def test_a_file_stays_while_another_request_needs_it(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    one, other = posted(inbox, "inbox"), posted(inbox, "field-notes")  # same content, two sources
    assert inbox.admit(one) and inbox.admit(other)
    inbox.settle(one, keep=False)
    assert len(inbox.files()) == 1
    inbox.settle(other, keep=False)
    assert inbox.files() == []


def test_failed_runs_keep_their_file_for_the_retention_time(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    failed = posted(inbox)
    inbox.admit(failed)
    inbox.settle(failed, keep=True)
    assert len(inbox.files()) == 1 and inbox.pending() == []
    assert inbox.prune(3600) == 0 and len(inbox.files()) == 1
    assert inbox.prune(0) == 1 and inbox.files() == []


def test_refused_requests_leave_nothing_behind(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    shed = posted(inbox)
    assert inbox.admit(shed)
    inbox.drop(shed, journaled=True)
    assert inbox.files() == [] and inbox.pending() == []
    kept = posted(inbox)  # a retained copy (its run failed) posted again and refused: still retained
    inbox.admit(kept)
    inbox.settle(kept, keep=True)
    inbox.drop(posted(inbox), journaled=False)
    assert len(inbox.files()) == 1


def test_orphans_and_bad_entries(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    posted(inbox)  # stored, then the process died before admitting it
    assert inbox.prune(3600) == 0 and inbox.prune(0) == 1
    inbox.journal.mkdir(parents=True, exist_ok=True)
    (inbox.journal / "broken.json").write_text("{not json")
    assert inbox.pending() == [] and (inbox.journal / "broken.bad").exists()
