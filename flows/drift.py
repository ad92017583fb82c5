"""Embedding drift of a run against its source's baseline (W2 5/5; filled in by the drift work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flows.pipeline import Pipeline
    from flows.runs import Run


def check_run(pipeline: Pipeline, run: Run) -> None:
    """Compare what ``run`` embedded with its source's baseline (anchoring one on a source's first run)."""
