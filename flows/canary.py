"""The model canary, checked once per process where its embedding pool first embeds (``CheckedPool``: the
first request of a CLI run, ``ragline serve``'s warm-up, a worker's first batch), before any vector of the
process is written.

The first check of a generation stores the canary's vectors as its reference. A later check with a text
under ``drift.canary_min_cosine`` or a mean under ``drift.canary_min_mean`` records a mismatch: an error in
the log, ``ragline status``, and ``ragline_canary_ok{model}`` at 0, and every write into the generation is
refused from then on, by any process (``vectorstore.baselines.ensure_writable``), with an error that names
the generation, the worst text and its cosine. The documents of a refused run stay pending, nothing is
quarantined. Resolution, by an operator: restore the weights, library or precision that wrote the
generation and run ``ragline canary accept`` (the reference stays as it was, the check now matches), or
accept the new numerics as they are (``ragline canary accept`` takes the current model's vectors as the
reference), or configure the new weights as another model and re-embed into its own generation
(``ragline generation migrate``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from embedding import canary
from embedding.model import EmbeddingSettings, TextEmbedder
from embedding.pool import EmbeddingPool, EmbedRequest, Lane
from telemetry.metrics import CANARY_OK
from vectorstore import baselines
from vectorstore.db import Connection
from vectorstore.generations import ModelIdentity

log = logging.getLogger(__name__)


def model_label(identity: ModelIdentity) -> str:
    return f"{identity.name}@{identity.revision}"


def generation_of(conn: Connection, identity: ModelIdentity) -> int | None:
    """The generation (models row) of ``identity``, None before any process registered it."""
    row = conn.execute(
        "SELECT id FROM models WHERE name = %s AND revision = %s AND dim = %s AND normalized = %s",
        (identity.name, identity.revision, identity.dim, identity.normalized),
    ).fetchone()
    conn.commit()
    return None if row is None else int(row["id"])


@dataclass(frozen=True)
class Checked:
    """A check's outcome: ``stored`` on a generation's first check (its reference was stored now);
    ``writes_stopped`` while the generation's recorded status is a mismatch (this check's, or an earlier one's)."""

    result: canary.CanaryResult
    stored: bool
    writes_stopped: bool


def check(conn: Connection, embedder: TextEmbedder, model_id: int, tolerance: canary.Tolerance) -> Checked:
    """Embed the canary texts and compare them with ``model_id``'s stored vectors (storing them on the
    generation's first check); record the result, set the gauge, log a mismatch as an error."""
    texts = list(canary.CANARY_TEXTS)
    digest = canary.texts_digest()
    fresh = embedder.embed(texts)
    label = model_label(embedder.identity)
    stored = baselines.stored_canary(conn, model_id)
    if stored is None or (stored.digest != digest and stored.status == "ok"):
        # First start of the generation (or a ragline whose canary texts changed): this is the reference.
        if baselines.store_canary(conn, model_id, digest, fresh, replace=stored is not None):
            CANARY_OK.labels(label).set(1)
            log.info("model canary of generation %d (%s): reference vectors stored", model_id, label)
            return Checked(canary.CanaryResult(True, 1.0, 1.0, "", tolerance), stored=True, writes_stopped=False)
        stored = baselines.stored_canary(conn, model_id)  # a concurrent first start stored first: compare
        assert stored is not None
    result = canary.compare(stored.vectors, fresh, tolerance, texts)
    baselines.record_check(conn, model_id, result)
    stopped = not result.ok or stored.status == "mismatch"
    CANARY_OK.labels(label).set(0 if stopped else 1)
    if not result.ok:
        log.error(
            "model canary of generation %d (%s): %s. Writes into this generation are stopped: `ragline canary --help` "
            "says how to resolve it",
            model_id,
            label,
            result.describe(),
        )
    elif stopped:
        log.error(
            "model canary of generation %d (%s) matches here (%s), but a mismatch recorded earlier keeps its "
            "writes stopped until `ragline canary accept`",
            model_id,
            label,
            result.describe(),
        )
    else:
        log.info("model canary of generation %d (%s): %s", model_id, label, result.describe())
    return Checked(result, stored=False, writes_stopped=stopped)


def accept(
    conn: Connection, embedder: TextEmbedder, model_id: int, tolerance: canary.Tolerance
) -> canary.CanaryResult | None:
    """The operator's resolution: this process's model vectors become ``model_id``'s canary reference and
    writes resume. Returns how they compared with the reference they replace (None: there was none)."""
    fresh = embedder.embed(list(canary.CANARY_TEXTS))
    stored = baselines.stored_canary(conn, model_id)
    before = canary.compare(stored.vectors, fresh, tolerance) if stored is not None else None
    baselines.store_canary(conn, model_id, canary.texts_digest(), fresh, replace=True)
    CANARY_OK.labels(model_label(embedder.identity)).set(1)
    return before


Starter = Callable[[TextEmbedder], bool]
"""Run the canary for an embedder; False when it cannot run yet (no generation registered), to be tried on
the next request."""


def at_start(connect: Callable[[], Connection], tolerance: canary.Tolerance) -> Starter:
    """The check a ``CheckedPool`` runs, on a connection of its own (the pipeline's may be mid-transaction)."""

    def run(embedder: TextEmbedder) -> bool:
        try:
            conn = connect()
        except Exception:  # the run's own connection reports the database; the gate still reads the state
            log.warning("could not check the model canary: no database connection", exc_info=True)
            return True
        try:
            model_id = generation_of(conn, embedder.identity)
            if model_id is None:
                return False
            check(conn, embedder, model_id, tolerance)
            return True
        finally:
            conn.close()

    return run


class CheckedPool(EmbeddingPool):
    """The embedding pool, running the model canary before its first request is queued (once per process;
    again on a later request while its generation is not registered yet, as on a brand-new store). Requests of
    other threads wait for the check: no vector of this process is written before it is recorded."""

    def __init__(self, settings: EmbeddingSettings, *, starter: Starter, **pool: Any) -> None:
        """``pool``: ``EmbeddingPool``'s seams (a given embedder, devices), for tests."""
        super().__init__(settings, **pool)
        self._starter = starter
        self._canary_lock = threading.RLock()  # the check's own request re-enters
        self._canary_done = False
        self._checking = False
        self._background: threading.Thread | None = None

    def check_soon(self) -> None:
        """Start the check on a thread of its own, for a caller with other work to do meanwhile (the work
        ahead of a first run's flow parses while the model loads for it); ``checking`` says when it is over."""
        with self._canary_lock:
            if self._canary_done or self._checking or self._background is not None:
                return
            self._background = threading.Thread(target=self._check, name="model-canary", daemon=True)
            self._background.start()

    def checking(self) -> bool:
        """Whether a check started by ``check_soon`` is still running (a submit now would wait for it)."""
        background = self._background
        return background is not None and background.is_alive()

    def _check(self) -> None:
        try:
            self._ensure_checked()
        except Exception:  # the next request runs the check again, and raises what it finds
            log.warning("the model canary check failed; the next request runs it again", exc_info=True)

    def submit(
        self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None, lane: Lane | None = None
    ) -> EmbedRequest:
        if texts:
            self._ensure_checked()
        return super().submit(texts, token_counts=token_counts, lane=lane)

    def _ensure_checked(self) -> None:
        if self._canary_done:
            return
        with self._canary_lock:
            if not self._canary_done and not self._checking:
                self._checking = True
                try:
                    self._canary_done = self._starter(self)
                finally:
                    self._checking = False
