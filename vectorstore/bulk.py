"""How a load meets the HNSW index: inserted into the live graph, or written without it and the index built
after. Pure cost model; the costs are measured on the store itself (``vectorstore.indexing`` records them).

Inserting into a live HNSW graph costs a graph search per row (~350 rows/s measured here on 100k rows, 2
cores), while building the graph once over all rows costs far less per row (~30 s for 100k with enough
``maintenance_work_mem``) but has to cover the rows already there. So small increments go into the live
index and large loads, relative to the table, go in without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Strategy(StrEnum):
    LIVE = "live"
    """Rows go into the indexed table; searches keep using the index throughout."""
    DEFERRED = "deferred"
    """The index is dropped for the load and built after it; searches are exact (sequential) meanwhile."""


@dataclass(frozen=True)
class IndexCosts:
    """Seconds per row of each way of writing, as measured on this store (defaults: ENVIRONMENT.md, 100k
    chunks of 384 dims, Postgres 18, pgvector 0.8.5, 2 cores)."""

    live_insert: float = 1 / 350
    """Writing one row into a table with a live HNSW index (COPY or upsert)."""
    plain_insert: float = 1 / 40_000
    """Writing one row into the table without the index."""
    build: float = 30.0 / 100_000
    """Building the index, per row indexed (the graph covers old and new rows)."""
    build_fixed: float = 0.5
    """Fixed cost of dropping and building an index (catalog work, a scan of the table)."""

    def live(self, incoming: int) -> float:
        return incoming * self.live_insert

    def deferred(self, existing: int, incoming: int) -> float:
        return incoming * self.plain_insert + (existing + incoming) * self.build + self.build_fixed


def choose(existing: int, incoming: int, costs: IndexCosts | None = None, *, min_rows: int = 1000) -> Strategy:
    """The cheaper way to write ``incoming`` rows into a generation that holds ``existing``.

    Loads under ``min_rows`` always go live: below that the difference is noise, and a dropped index slows
    every concurrent search for the whole load.
    """
    costs = costs or IndexCosts()
    if incoming < min_rows:
        return Strategy.LIVE
    return Strategy.DEFERRED if costs.deferred(existing, incoming) < costs.live(incoming) else Strategy.LIVE


def projected(rows_so_far: int, expected: int | None) -> int:
    """Total size of a load. A known size is taken as it is; a load whose end is unknown (a remote source
    pages on), or that outgrew its estimate, is assumed to write as much again as it wrote so far.
    Re-deciding on this as the load grows switches to a deferred index no later than when the live writes
    already cost as much as the build would (the ski-rental bound: at most about twice the cost of the
    better choice made with hindsight)."""
    if expected is not None and rows_so_far <= expected:
        return expected
    return max(expected or 0, 2 * rows_so_far)


def ewma(old: float | None, sample: float, weight: float = 0.3) -> float:
    """Blend a new measurement into a stored cost: noisy machines make single samples unreliable."""
    return sample if old is None else (1 - weight) * old + weight * sample
