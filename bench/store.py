"""The vector store at N chunks (default 100k, 384 dims) on a fresh embedded Postgres, in one run: write methods
without the index, the same upsert into the live HNSW index, the store's own load (deferred index, built
after), 10k new chunks into the full store three ways, search latency and recall (vector and halfvec), and
the first comparison again on a store without the full-text column (``database.full_text: false``).

    python bench/store.py [--rows 100000] [--increment 10000] [--live-rows N] [--queries 100]

Vectors are a mixture of low-rank gaussians, not uniform noise: 1,000 topic centres, each with its own
12-dimensional subspace of variation plus a little isotropic noise, normalised; the 20 chunks of a document
share a topic. Real embeddings are clustered and have a low intrinsic dimension; uniform random vectors in 384
dims have no near neighbours, so recall on them says little. Queries are fresh draws from the same mixture, on
topics the store holds. Text is ~80 words per chunk from a topic vocabulary, so the full-text column and its
GIN index cost what they would.

Every figure comes from this run; ratios compare phases measured side by side. The live upsert can be timed
on a sample (``--live-rows``) and extrapolated: the output says which figures were measured.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vectorstore import bulk, generations, indexing, ledger, migrations, search, store
from vectorstore.db import Connection, connect, open_pool
from vectorstore.embedded import embedded_url, stop_embedded
from vectorstore.generations import Generation
from vectorstore.indexing import IndexLoad, IndexOptions
from vectorstore.ledger import DocumentVersion
from vectorstore.migrations import index_name, migrate
from vectorstore.runs import pid_alive
from vectorstore.search import SearchFilter
from vectorstore.settings import SearchSettings
from vectorstore.store import ChunkRow
from vectorstore.writers import Writers, Written

Vectors = npt.NDArray[np.float32]

CHUNKS_PER_DOC = 20
SOURCE = "bench"
COLUMNS = "id, document_id, chunk_index, page, text, token_count, model_id, embedding, metadata, tenant"
TYPES = ["uuid", "int8", "int4", "int4", "text", "int4", "int4", "vector", "jsonb", "text"]
STAGING_DDL = """
CREATE TEMP TABLE chunks_staging (
    id uuid, document_id bigint, chunk_index integer, page integer, text text, token_count integer,
    model_id integer, embedding vector, metadata jsonb, tenant text
) ON COMMIT DROP
"""
UPSERT = f"""
INSERT INTO chunks ({COLUMNS}) SELECT {COLUMNS} FROM chunks_staging
ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, embedding = EXCLUDED.embedding,
    metadata = EXCLUDED.metadata, model_id = EXCLUDED.model_id
"""  # noqa: S608 (constant column list)


@dataclass(frozen=True)
class BenchModel:
    name: str = "bench-synthetic"
    revision: str = "1"
    dim: int = 384
    normalized: bool = True


# ---------------------------------------------------------------- data (pure)


@dataclass(frozen=True)
class Mixture:
    """Topic centres with a low-rank subspace of variation each: near neighbours exist, as in real embeddings."""

    centres: Vectors
    bases: Vectors  # (topics, dim, rank)
    spread: float = 0.8
    noise: float = 0.3

    @classmethod
    def make(cls, rng: np.random.Generator, dim: int, topics: int = 1000, rank: int = 12) -> Mixture:
        centres = rng.standard_normal((topics, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        bases = rng.standard_normal((topics, dim, rank), dtype=np.float32)
        bases /= np.linalg.norm(bases, axis=1, keepdims=True)
        return cls(centres, bases)

    def draw(self, rng: np.random.Generator, topics: npt.NDArray[np.int64]) -> Vectors:
        """Unit vectors around the given topics (one per entry)."""
        rank, dim = self.bases.shape[2], self.centres.shape[1]
        z = rng.standard_normal((len(topics), rank), dtype=np.float32) * (self.spread / np.sqrt(rank))
        local = np.einsum("ndr,nr->nd", self.bases[topics], z)
        eps = rng.standard_normal((len(topics), dim), dtype=np.float32) * (self.noise / np.sqrt(dim))
        v = (self.centres[topics] + local + eps).astype(np.float32)
        out: Vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def doc_topics(rng: np.random.Generator, rows: int, topics: int) -> npt.NDArray[np.int64]:
    """A document's chunks share a topic, as the chunks of one page or article do."""
    per_doc = rng.integers(0, topics, size=(rows + CHUNKS_PER_DOC - 1) // CHUNKS_PER_DOC)
    return np.repeat(per_doc, CHUNKS_PER_DOC)[:rows]


def texts(rng: np.random.Generator, topics: npt.NDArray[np.int64], words_per_chunk: int = 80) -> list[str]:
    """~500 characters per chunk: 60% words of the chunk's topic, the rest common words."""
    syllables = ["ka", "lo", "ri", "ten", "mar", "vos", "el", "un", "dra", "pi", "sor", "ne", "tal", "qu", "ab"]
    vocab = ["".join(rng.choice(syllables, size=3)) + str(i % 7) for i in range(4000)]
    common = rng.integers(0, 1000, size=(len(topics), words_per_chunk))
    topical = 1000 + (topics[:, None] * 3 + rng.integers(0, 40, size=(len(topics), words_per_chunk))) % 3000
    pick = rng.random((len(topics), words_per_chunk)) < 0.6
    idx = np.where(pick, topical, common)
    return [" ".join(vocab[i] for i in row) for row in idx]


def chunk_id(i: int) -> uuid.UUID:
    return uuid.UUID(int=(0xB5 << 120) | i)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def exact_top(data: Vectors, queries: Vectors, k: int) -> list[list[int]]:
    """Brute-force top-k by cosine (unit vectors: the dot product), a check on the database's exact scan."""
    scores = queries @ data.T
    top = np.argsort(-scores, axis=1)[:, :k]
    return [[int(i) for i in row] for row in top]


# ---------------------------------------------------------------- the store under test


@dataclass
class Corpus:
    vectors: Vectors
    texts: list[str]
    doc_ids: list[int]  # database id of each chunk's document

    def rows(self, start: int, stop: int, model_id: int) -> Iterator[tuple[Any, ...]]:
        empty = Jsonb({})
        for i in range(start, stop):
            yield (
                chunk_id(i),
                self.doc_ids[i],
                i % CHUNKS_PER_DOC,
                None,
                self.texts[i],
                128,
                model_id,
                self.vectors[i],
                empty,
                "default",
            )


class Bench:
    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.args = args
        self.conn = connect(url)
        migrate(self.conn, args.dim)
        self.admin: Connection = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        self.gen: Generation = generations.register(self.conn, BenchModel(dim=args.dim))
        self.source_id = ledger.ensure_source(self.conn, SOURCE, "pdf")
        self.results: list[tuple[str, str, str]] = []

        self.pool = open_pool(url, size=args.writers) if args.writers else None
        self.writers = Writers(self.pool, args.writers) if self.pool is not None else None

    def note(self, phase: str, what: str, figure: str) -> None:
        self.results.append((phase, what, figure))
        print(f"[{phase}] {what}: {figure}", flush=True)

    @property
    def how(self) -> str:
        return f"{self.writers.count} background writers" if self.writers else "one connection"

    def setting(self, name: str) -> str:
        row = self.admin.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
        return str(next(iter(row.values()))) if row else "?"

    def documents(self, prefix: str, count: int) -> list[int]:
        """Ledger rows for ``count`` documents (committed), returning their ids in order."""
        with self.conn.transaction():
            rows = self.conn.execute(
                """
                INSERT INTO documents (source_id, external_id, uri, content_hash, status, chunk_count)
                SELECT %(source)s, %(prefix)s || i, 'file:///' || %(prefix)s || i, md5(%(prefix)s || i),
                       'committed', %(per)s
                FROM generate_series(0, %(n)s - 1) i
                ON CONFLICT (source_id, external_id) DO UPDATE SET updated_at = now()
                RETURNING id, external_id
                """,
                {"source": self.source_id, "prefix": prefix, "n": count, "per": CHUNKS_PER_DOC},
            ).fetchall()
        by_name = {r["external_id"]: int(r["id"]) for r in rows}
        return [by_name[f"{prefix}{i}"] for i in range(count)]

    def truncate(self) -> None:
        self.admin.execute("TRUNCATE chunks")

    def index_size(self) -> int:
        row = self.admin.execute("SELECT pg_relation_size(to_regclass(%s)) AS n", (index_name(self.gen.id),)).fetchone()
        return int(row["n"] or 0) if row else 0

    def drop_index(self) -> None:
        self.admin.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index_name(self.gen.id))))

    def build(self, options: IndexOptions | None = None) -> float:
        started = time.perf_counter()
        indexing.build_index(self.conn, self.gen, options or IndexOptions())
        return time.perf_counter() - started

    # -- write methods: batches of --batch rows, one transaction each

    def write_executemany(self, corpus: Corpus, start: int, stop: int) -> None:
        query = f"INSERT INTO chunks ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"  # noqa: S608
        for lo in range(start, stop, self.args.batch):
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.executemany(query, corpus.rows(lo, min(stop, lo + self.args.batch), self.gen.id))

    def _copy(self, table: str, corpus: Corpus, lo: int, hi: int) -> None:
        statement = sql.SQL("COPY {} (" + COLUMNS + ") FROM STDIN (FORMAT BINARY)").format(sql.Identifier(table))
        with self.conn.cursor().copy(statement) as copy:
            copy.set_types(TYPES)
            for row in corpus.rows(lo, hi, self.gen.id):
                copy.write_row(row)

    def write_copy(self, corpus: Corpus, start: int, stop: int) -> None:
        for lo in range(start, stop, self.args.batch):
            with self.conn.transaction():
                self._copy("chunks", corpus, lo, min(stop, lo + self.args.batch))

    def write_copy_without_full_text(self, corpus: Corpus, start: int, stop: int) -> None:
        """What-if: the same COPY into a twin of ``chunks`` without the full-text column and its GIN index
        (same primary key, document index and foreign key), to show what the full-text column costs a write."""
        self.admin.execute("DROP TABLE IF EXISTS chunks_no_fts")
        self.admin.execute("CREATE TABLE chunks_no_fts (LIKE chunks INCLUDING DEFAULTS)")
        self.admin.execute("ALTER TABLE chunks_no_fts DROP COLUMN tsv, ADD PRIMARY KEY (id)")
        self.admin.execute("ALTER TABLE chunks_no_fts ADD FOREIGN KEY (document_id) REFERENCES documents (id)")
        self.admin.execute("CREATE INDEX ON chunks_no_fts (document_id, chunk_index)")
        try:
            for lo in range(start, stop, self.args.batch):
                with self.conn.transaction():
                    self._copy("chunks_no_fts", corpus, lo, min(stop, lo + self.args.batch))
        finally:
            self.admin.execute("DROP TABLE chunks_no_fts")

    def write_upsert(
        self, corpus: Corpus, start: int, stop: int, progress: Callable[[int, float], None] | None = None
    ) -> None:
        started = time.perf_counter()
        for lo in range(start, stop, self.args.batch):
            hi = min(stop, lo + self.args.batch)
            with self.conn.transaction():
                self.conn.execute(STAGING_DDL)
                self._copy("chunks_staging", corpus, lo, hi)
                self.conn.execute(UPSERT)
            if progress:
                progress(hi - start, time.perf_counter() - started)

    def write_documents(
        self,
        corpus: Corpus,
        prefix: str,
        start: int,
        stop: int,
        load: IndexLoad | None,
        *,
        group: bool = True,
        background: bool = True,
    ) -> int:
        """The pipeline's path: flushes of --flush chunks that an ``IndexLoad`` oversees, each committed by
        ``store.commit_documents`` in one transaction (ledger rows, stale chunks removed, one binary COPY) on
        one of --writers background connections, at most that many in flight, as ``Pipeline`` does; with
        ``background=False`` (or --writers 0) on the bench's own connection; with ``group=False`` by
        ``store.commit_document`` in one transaction per document (the path before group commit).
        Documents are numbered from ``start``: ``prefix`` + 0, 1, ... Returns the rows the load wrote live
        (an ``IndexLoad`` may start live and switch to deferred as the load grows)."""
        live = 0
        writers = self.writers if group and background else None
        inflight: deque[tuple[int, Future[Written]]] = deque()

        def settle(rows: int, future: Future[Written]) -> None:
            seconds = future.result().seconds
            if load is not None:
                load.observe(rows, seconds)

        for lo in range(start, stop, self.args.flush):
            hi = min(stop, lo + self.args.flush)
            if load is not None and load.before_write(hi - lo) is bulk.Strategy.LIVE:
                live += hi - lo
            started = time.perf_counter()
            items, vectors = [], {}
            for first in range(lo, hi, CHUNKS_PER_DOC):
                last = min(hi, first + CHUNKS_PER_DOC)
                rows = [
                    ChunkRow(chunk_id(i), (i - start) % CHUNKS_PER_DOC, None, corpus.texts[i], 128)
                    for i in range(first, last)
                ]
                number = (first - start) // CHUNKS_PER_DOC
                doc = DocumentVersion(
                    external_id=f"{prefix}{number}",
                    uri=f"file:///{prefix}{number}",
                    title=None,
                    content_hash=f"h{first}",
                    fingerprint="bench",
                )
                vectors.update({chunk_id(i): corpus.vectors[i] for i in range(first, last)})
                items.append(store.DocumentCommit(doc, rows))
            if writers is not None:
                inflight.append((hi - lo, writers.submit(self.source_id, items, vectors, self.gen.id)))
                while len(inflight) > writers.count:
                    settle(*inflight.popleft())
                continue
            if group:
                store.commit_documents(self.conn, self.source_id, items, vectors, self.gen.id)
            else:
                for item in items:
                    store.commit_document(self.conn, self.source_id, item.doc, item.chunks, vectors, self.gen.id)
            if load is not None:
                load.observe(hi - lo, time.perf_counter() - started)
        while inflight:
            settle(*inflight.popleft())
        return live

    def store_load(self, corpus: Corpus, n: int) -> tuple[float, float, float, bulk.Strategy]:
        """The store's load of the base ``n`` chunks into an emptied table, under an ``IndexLoad`` told the size
        (it drops the HNSW and GIN indexes and builds them after): (write seconds, build seconds, of which the
        GIN index's, strategy)."""
        self.truncate()
        self.build()  # on the empty table: instant
        load = IndexLoad(self.conn, self.gen, IndexOptions(), expected=n)
        write_s = timed(lambda: self.write_documents(corpus, "doc-", 0, n, load))
        strategy = load.strategy
        return write_s, timed(load.finish), load.full_text_build_s, strategy

    def forget_increment(self, prefix: str) -> None:
        """Back to the base state: the increment's documents (and chunks) gone, vacuumed, the index built anew
        over the base rows, so each variant starts from the same table and the same kind of graph."""
        self.admin.execute(
            "DELETE FROM documents WHERE source_id = %s AND external_id LIKE %s", (self.source_id, prefix + "%")
        )
        self.drop_index()
        self.admin.execute("VACUUM ANALYZE chunks")
        self.admin.execute("VACUUM ANALYZE documents")
        self.build()

    # -- search

    def search_keys(self, q: Vectors, settings: SearchSettings) -> tuple[list[tuple[int, int]], float]:
        started = time.perf_counter()
        hits = search.search(self.conn, q, 10, settings=settings, where=SearchFilter(), generation=self.gen)
        elapsed = time.perf_counter() - started
        return [(h.document_id, h.chunk_index) for h in hits], elapsed


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f} rows/s ({seconds:.1f} s for {rows:,})"


def run(bench: Bench, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    n, inc = args.rows, args.increment
    t0 = time.perf_counter()
    mixture = Mixture.make(rng, args.dim)
    topics = doc_topics(rng, n + inc, len(mixture.centres))
    vectors = mixture.draw(rng, topics)
    queries = mixture.draw(rng, rng.choice(np.unique(topics[:n]), size=args.queries))  # topics the store holds
    chunk_texts = texts(rng, topics)
    base_docs = bench.documents("doc-", n // CHUNKS_PER_DOC)
    # doc_ids: the base's documents only; the increment's are created by commit_document
    corpus = Corpus(vectors, chunk_texts, [base_docs[i // CHUNKS_PER_DOC] for i in range(n)])
    print(f"generated {n + inc:,} vectors and texts in {time.perf_counter() - t0:.1f} s", flush=True)
    nn = np.sort(queries @ vectors[:n].T, axis=1)[:, -10:]
    sample = vectors[rng.integers(0, n, size=(2, 2000))]
    bench.note(
        "data",
        "cosine: query to its 1st / 10th neighbour (median), random pairs (mean)",
        f"{np.median(nn[:, -1]):.2f} / {np.median(nn[:, 0]):.2f}, "
        f"{float(np.mean(np.sum(sample[0] * sample[1], axis=1))):.3f}",
    )
    bench.note(
        "server",
        "Postgres settings",
        f"shared_buffers {bench.setting('shared_buffers')}, max_parallel_maintenance_workers "
        f"{bench.setting('max_parallel_maintenance_workers')}, max_worker_processes "
        f"{bench.setting('max_worker_processes')}, index builds with maintenance_work_mem "
        f"{IndexOptions().maintenance_work_mem}",
    )

    # 1. Write methods into the table without the index.
    bench.drop_index()
    methods: dict[str, float] = {}
    for name, write in (
        ("executemany (pipelined)", bench.write_executemany),
        ("binary COPY", bench.write_copy),
        ("COPY to staging + upsert", bench.write_upsert),
        ("binary COPY, what-if: the table without the full-text column", bench.write_copy_without_full_text),
    ):
        bench.truncate()
        methods[name] = timed(functools.partial(write, corpus, 0, n))
        bench.note("1 no index", name, rate(n, methods[name]))

    bench.truncate()
    per_doc = timed(lambda: bench.write_documents(corpus, "doc-", 0, n, None, group=False))
    bench.note("1 no index", "the store, one transaction per document (commit_document)", rate(n, per_doc))
    bench.truncate()  # the ledger rows stay (same ids): the next writer updates them
    grouped = timed(lambda: bench.write_documents(corpus, "doc-", 0, n, None, background=False))
    bench.note(
        "1 no index",
        f"the store, group commit per {args.flush:,} chunks (commit_documents) on one connection",
        rate(n, grouped),
    )
    bench.note("1 no index", "group commit vs one transaction per document", f"{per_doc / grouped:.2f}x faster")
    if bench.writers is not None:
        bench.truncate()
        spread = timed(lambda: bench.write_documents(corpus, "doc-", 0, n, None))
        bench.note(
            "1 no index",
            f"the store, group commit on {bench.writers.count} background writers (database.writers)",
            rate(n, spread) + f": {grouped / spread:.2f}x one connection",
        )

    # 2. The same upsert into the table with its live HNSW index, from empty.
    bench.truncate()
    bench.build()  # on the empty table: instant
    live_rows = min(n, args.live_rows or n)

    def progress(done: int, seconds: float) -> None:
        print(f"    live upsert: {done:,} rows in {seconds:.0f} s ({done / seconds:,.0f} rows/s)", flush=True)

    live_s = timed(lambda: bench.write_upsert(corpus, 0, live_rows, progress))
    live_full = live_s * n / live_rows
    if live_rows == n:
        bench.note("2 live index", "COPY to staging + upsert, HNSW live", rate(n, live_s) + ", measured")
    else:
        bench.note(
            "2 live index",
            "COPY to staging + upsert, HNSW live",
            f"{live_rows / live_s:,.0f} rows/s measured on the first {live_rows:,} rows ({live_s:.1f} s); "
            f"{live_full:.0f} s for {n:,} EXTRAPOLATED linearly (an underestimate: inserts slow as the graph grows)",
        )
    indexing.record_cost(bench.conn, "live_insert", live_s, live_rows)

    # 3. The store's own load into an empty store: commit_documents per flush under an IndexLoad told the
    #    size, which drops the index and builds it after (maintenance_work_mem 1GB).
    write_s, build_s, gin_s, strategy = bench.store_load(corpus, n)
    size = bench.index_size()
    bench.note(
        "3 store load", f"group commit per {args.flush:,} chunks, {bench.how}, strategy {strategy}", rate(n, write_s)
    )
    bench.note(
        "3 store load",
        "index builds after the load: HNSW (m=16, ef_construction=64) + full-text GIN",
        f"{build_s:.1f} s ({build_s - gin_s:.1f} + {gin_s:.1f} s), HNSW {size / 2**20:.0f} MiB",
    )
    store_total = write_s + build_s
    hnsw_s = build_s - gin_s  # the bare methods of phase 1 wrote into the GIN index: only the HNSW build is theirs
    copy_total = methods["binary COPY"] + hnsw_s
    upsert_total = methods["COPY to staging + upsert"] + hnsw_s
    no_fts_total = methods["binary COPY, what-if: the table without the full-text column"] + hnsw_s
    live_label = "measured" if live_rows == n else "extrapolated"
    for label, total in (
        ("store load + build", store_total),
        ("binary COPY + build", copy_total),
        ("staging upsert + build", upsert_total),
        ("what-if: binary COPY without the full-text column + the same build", no_fts_total),
    ):
        bench.note(
            "4 acceptance A",
            f"{label} vs live upsert ({live_label} {live_full:.0f} s)",
            f"{total:.1f} s: {live_full / total:.1f}x faster (>= 5x: {'PASS' if live_full / total >= 5 else 'FAIL'})",
        )

    # 6a. Search on the freshly built vector index: latency and recall against the exact scan.
    exact_keys = search_phase(bench, queries, corpus, vectors[:n], "vector", None)

    # 5. 10k new chunks into the full store: live, deferred, and the store's choice, each from the same state.
    prefix = "new-"
    live_inc = timed(lambda: bench.write_documents(corpus, prefix, n, n + inc, None))
    bench.note(
        "5 increment",
        f"(a) live: {inc:,} chunks into the indexed {n:,}",
        f"{live_inc:.1f} s ({inc / live_inc:,.0f} rows/s)",
    )
    indexing.record_cost(bench.conn, "live_insert", live_inc, inc)
    reset_s = timed(lambda: bench.forget_increment(prefix))
    print(f"    reset (delete, vacuum, rebuild): {reset_s:.1f} s", flush=True)

    measured = indexing.costs(bench.conn)
    bench.note(
        "5 increment",
        "store_stats before (c) (recorded by this run: the live upserts via record_cost, plain writes and builds "
        "by the store's own observe/build_index)",
        f"live {measured.live_insert * 1e3:.2f} ms/row, plain {measured.plain_insert * 1e3:.3f} ms/row, "
        f"build {measured.build * 1e3:.3f} ms/row: predicts live {measured.live(inc):.1f} s, "
        f"deferred {measured.deferred(n, inc):.1f} s",
    )
    choice = IndexLoad(bench.conn, bench.gen, IndexOptions(), expected=inc)
    c_started = time.perf_counter()
    c_live = bench.write_documents(corpus, prefix, n, n + inc, choice)
    c_write = time.perf_counter() - c_started
    chosen = choice.strategy
    if chosen is bulk.Strategy.DEFERRED and c_live:
        chosen_label = f"live for the first {c_live:,} rows, then deferred"
    else:
        chosen_label = str(chosen)
    c_build = timed(choice.finish)
    chose_s = c_write + c_build
    bench.note(
        "5 increment",
        f"(c) store's choice: {chosen_label}",
        f"{chose_s:.1f} s (writes {c_write:.1f} s, build {c_build:.1f} s)",
    )
    bench.forget_increment(prefix)

    deferred_write = 0.0

    def deferred() -> None:
        nonlocal deferred_write
        bench.drop_index()
        deferred_write = timed(lambda: bench.write_documents(corpus, prefix, n, n + inc, None))
        bench.build()

    deferred_s = timed(deferred)
    bench.note(
        "5 increment",
        "(b) deferred: drop index, insert, rebuild",
        f"{deferred_s:.1f} s (writes {deferred_write:.1f} s, build {deferred_s - deferred_write:.1f} s)",
    )
    best = min(live_inc, deferred_s)
    better = bulk.Strategy.LIVE if live_inc <= deferred_s else bulk.Strategy.DEFERRED
    bench.note(
        "5 increment",
        "(c) / min(a, b)",
        f"{chose_s / best:.2f} (chose {chosen_label}; the faster was {better}; no slower than the better, 10% for "
        f"noise: {'PASS' if chose_s <= 1.1 * best else 'FAIL'})",
    )
    hindsight = bulk.IndexCosts(
        live_insert=live_inc / inc,
        plain_insert=deferred_write / inc,
        build=(deferred_s - deferred_write) / (n + inc),
    )
    bench.note(
        "5 increment",
        "costs measured in (a)/(b) themselves",
        f"live {hindsight.live_insert * 1e3:.2f} ms/row, plain {hindsight.plain_insert * 1e3:.3f} ms/row, "
        f"build {hindsight.build * 1e3:.3f} ms/row: choose() would say {bulk.choose(n, inc, hindsight)}",
    )
    bench.admin.execute(
        "DELETE FROM documents WHERE source_id = %s AND external_id LIKE %s", (bench.source_id, prefix + "%")
    )
    bench.admin.execute("VACUUM ANALYZE chunks")

    # 6b. The same searches through a halfvec index over the same rows.
    bench.drop_index()
    half_s = bench.build(IndexOptions(index_type="halfvec"))
    bench.note(
        "6 halfvec",
        "HNSW build (halfvec)",
        f"{half_s:.1f} s, {bench.index_size() / 2**20:.0f} MiB (vector: {size / 2**20:.0f} MiB)",
    )
    search_phase(bench, queries, corpus, vectors[:n], "halfvec", exact_keys)

    # 7. Acceptance A again on a store with `database.full_text: false` (no tsvector column, no GIN index):
    #    the live upsert and the store's load + build, both without the full-text column.
    bench.drop_index()
    bench.truncate()
    migrations.set_full_text(bench.conn, False)
    bench.build()  # on the empty table: instant
    live_nft = timed(lambda: bench.write_upsert(corpus, 0, live_rows, progress)) * n / live_rows
    bench.note(
        "7 full_text off",
        "COPY to staging + upsert, HNSW live",
        f"{n / live_nft:,.0f} rows/s ({live_nft:.1f} s for {n:,}, {live_label})",
    )
    write_nft, build_nft, _, strategy = bench.store_load(corpus, n)
    bench.note(
        "7 full_text off",
        f"group commit per {args.flush:,} chunks, {bench.how}, strategy {strategy}",
        rate(n, write_nft),
    )
    total_nft = write_nft + build_nft
    ratio = live_nft / total_nft
    bench.note(
        "7 full_text off",
        f"acceptance A: store load + build ({write_nft:.1f} + {build_nft:.1f} s) vs live upsert ({live_nft:.0f} s)",
        f"{total_nft:.1f} s: {ratio:.1f}x faster (>= 5x: {'PASS' if ratio >= 5 else 'FAIL'})",
    )
    migrations.set_full_text(bench.conn, True)


def search_phase(
    bench: Bench,
    queries: Vectors,
    corpus: Corpus,
    data: Vectors,
    label: str,
    exact_keys: list[list[tuple[int, int]]] | None,
) -> list[list[tuple[int, int]]]:
    """Top-10 through ``search.search`` (vector mode): HNSW at ef_search 40 and 100, against the exact scan."""
    k = 10
    phase = f"6 search {label}"
    if exact_keys is None:
        exact = SearchSettings(mode="vector", exact="always")
        for q in queries[:5]:
            bench.search_keys(q, exact)  # warm the table into cache
        exact_keys, times = [], []
        for q in queries:
            keys, seconds = bench.search_keys(q, exact)
            exact_keys.append(keys)
            times.append(seconds)
        bench.note(
            phase,
            "exact scan top-10",
            f"median {statistics.median(times) * 1e3:.1f} ms, p95 {percentile(times, 0.95) * 1e3:.1f} ms",
        )
        truth = [[(corpus.doc_ids[i], i % CHUNKS_PER_DOC) for i in row] for row in exact_top(data, queries, k)]
        agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, exact_keys, strict=True)])
        bench.note(phase, "exact scan vs numpy brute force (check)", f"{agree:.4f} overlap")
    for ef in (40, 100):
        settings = SearchSettings(mode="vector", exact="never", ef_search=ef)
        for q in queries[:5]:
            bench.search_keys(q, settings)
        times, found = [], []
        for q, truth_keys in zip(queries, exact_keys, strict=True):
            keys, seconds = bench.search_keys(q, settings)
            times.append(seconds)
            found.append(len(set(keys) & set(truth_keys)) / k)
        recall = float(np.mean(found))
        bench.note(
            phase,
            f"HNSW top-10, ef_search {ef}",
            f"median {statistics.median(times) * 1e3:.1f} ms, p95 {percentile(times, 0.95) * 1e3:.1f} ms, "
            f"recall@10 {recall:.3f} (>= 0.95: {'PASS' if recall >= 0.95 else 'FAIL'}), worst query {min(found):.1f}",
        )
    return exact_keys


def wait_stopped(home: Path, timeout: float = 30.0) -> None:
    """Stop the embedded server and wait for its postmaster to exit before its data directory is removed."""
    pid_file = home / "pgdata" / "postmaster.pid"
    pid = int(pid_file.read_text().splitlines()[0]) if pid_file.exists() else None
    stop_embedded(home)
    deadline = time.monotonic() + timeout
    while pid is not None and pid > 0 and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="chunks in the base store")
    ap.add_argument("--increment", type=int, default=10_000, help="new chunks added to the full store (step 5)")
    ap.add_argument("--live-rows", type=int, default=0, help="time the live upsert on this many rows only (0: all)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch", type=int, default=5000, help="rows per transaction of the bulk write methods")
    ap.add_argument(
        "--flush",
        type=int,
        default=260,
        help="chunks per pipeline flush (the pipeline flushes at >= 256: 13 documents)",
    )
    ap.add_argument(
        "--writers", type=int, default=2, help="background connections of the store's writes (database.writers)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.rows % CHUNKS_PER_DOC or args.increment % CHUNKS_PER_DOC or args.flush % CHUNKS_PER_DOC:
        ap.error(f"--rows, --increment and --flush must be multiples of {CHUNKS_PER_DOC} (chunks per document)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragline-bench-store-", ignore_cleanup_errors=True) as tmp:
        home = Path(tmp) / "home"
        url = embedded_url(home)
        try:
            bench = Bench(url, args)
            run(bench, args)
            if bench.writers is not None:
                bench.writers.close()
            if bench.pool is not None:
                bench.pool.close()
            bench.conn.close()
            bench.admin.close()
        finally:
            wait_stopped(home)
        print(f"\ntotal {time.perf_counter() - started:.0f} s\n")
        print("| phase | what | figure |\n|---|---|---|")
        for phase, what, figure in bench.results:
            print(f"| {phase} | {what} | {figure} |")


if __name__ == "__main__":
    main()
