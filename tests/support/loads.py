"""Document loads for sandbox tests: module-level (they travel to parser processes by pickle) and light to
import there (a parser process imports this module, not the test's)."""

from __future__ import annotations

import os
import signal
import time

from connectors.base import DocumentError, Page, ParsedDocument


def parsed(text: str) -> ParsedDocument:
    return ParsedDocument(title=text[:20], pages=[Page(1, text)], metadata={"pid": os.getpid()})


def sleeps(seconds: float) -> ParsedDocument:
    time.sleep(seconds)
    return parsed("woke up")


def hoards(size: int) -> ParsedDocument:
    blob = bytearray(size)  # a decompression bomb's worth
    return parsed(f"held {len(blob)}")


def dies() -> ParsedDocument:
    os.kill(os.getpid(), signal.SIGSEGV)
    return parsed("unreachable")


def refuses() -> ParsedDocument:
    raise DocumentError("encrypted", "no password opens it", retryable=False)


def flaky() -> ParsedDocument:
    raise DocumentError("unreadable", "the share went away", retryable=True)
