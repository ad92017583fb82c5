"""Model generations, deferred-index loads, tenants and filters, against the real embedded Postgres."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
from prometheus_client import REGISTRY

from vectorstore import bulk, generations, indexing, ledger, search, store
from vectorstore.db import Connection, connect
from vectorstore.generations import SwitchRefusedError
from vectorstore.indexing import IndexLoad, IndexOptions
from vectorstore.ledger import DocumentVersion
from vectorstore.search import QueryDimensionError, SearchFilter
from vectorstore.settings import SearchSettings
from vectorstore.store import ChunkRow
from vectorstore.tenancy import ensure_row_level_security


@dataclass(frozen=True)
class Model:
    name: str
    revision: str
    dim: int
    normalized: bool = True


OLD = Model("old-model", "1", 3)
NEW = Model("new-model", "7", 4)
OPTIONS = IndexOptions(maintenance_work_mem="64MB", min_rows=0)


def unit(values: list[float]) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def commit(
    conn: Connection,
    source: str,
    name: str,
    vectors: list[list[float]],
    model: int,
    *,
    fp: str = "f",
    meta: dict[str, str] | None = None,
) -> None:
    source_id = ledger.ensure_source(conn, source, "pdf")
    rows = [
        ChunkRow(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}/{name}/{i}/{model}"), i, 1, f"{name} {i}", 3)
        for i in range(len(vectors))
    ]
    doc = DocumentVersion(external_id=name, uri=name, title=name, content_hash="h", fingerprint=fp, metadata=meta)
    store.commit_document(
        conn, source_id, doc, rows, {r.id: unit(v) for r, v in zip(rows, vectors, strict=True)}, model
    )


def texts(hits: list[search.SearchHit]) -> list[str]:
    return [h.text for h in hits]


def test_first_model_serves_and_a_new_one_is_built_beside_it(conn: Connection) -> None:
    old = generations.register(conn, OLD, "fp-old")
    assert old.state == "active"
    commit(conn, "s", "a", [[1, 0, 0], [0, 1, 0]], old.id, fp="fp-old")
    commit(conn, "s", "b", [[0, 0, 1]], old.id, fp="fp-old")
    indexing.build_index(conn, old, OPTIONS)

    new = generations.register(conn, NEW, "fp-new")
    assert new.state == "building"
    assert generations.register(conn, OLD).state == "active"  # the serving model keeps serving
    assert generations.count_pending(conn, old, new) == 2

    # a document re-committed by a run with the new model: its old vectors keep serving until the switch
    commit(conn, "s", "a", [[1, 0, 0, 0]], new.id, fp="fp-new")
    assert texts(search.search(conn, unit([1, 0, 0]), 5))[0] == "a 0"
    assert conn.execute("SELECT count(*) AS n FROM chunks WHERE model_id = %s", (old.id,)).fetchone() == {"n": 3}
    with pytest.raises(QueryDimensionError, match="serving model old-model"):
        search.search(conn, unit([1, 0, 0, 0]), 5)

    with pytest.raises(SwitchRefusedError, match="1 document"):
        generations.switch(conn, new)
    work = store.generation_work(conn, generations.pending_documents(conn, old, new, 10), old.id)
    assert [(w.external_id, [c.text for c in w.chunks]) for w in work] == [("b", ["b 0"])]
    rows = [ChunkRow(uuid.uuid4(), 0, 1, "b 0", 3)]
    assert store.add_generation_chunks(
        conn, work[0].document_id, rows, {rows[0].id: unit([0, 0, 1, 0])}, new.id, "fp-new"
    )
    assert not store.add_generation_chunks(
        conn, work[0].document_id, rows, {rows[0].id: unit([0, 0, 1, 0])}, new.id, "x"
    )
    with pytest.raises(SwitchRefusedError, match="index"):
        generations.switch(conn, new)
    indexing.build_index(conn, generations.by_id(conn, new.id) or new, OPTIONS)
    generations.switch(conn, new)

    assert generations.active(conn) == generations.by_id(conn, new.id)
    assert texts(search.search(conn, unit([0, 0, 1, 0]), 1, settings=SearchSettings(exact="never"))) == ["b 0"]
    overview = {g["name"]: g for g in generations.overview(conn)}
    assert overview["old-model"]["state"] == "retired" and overview["new-model"]["state"] == "active"
    assert generations.purge_retired(conn, batch=1) == 3
    assert conn.execute("SELECT count(*) AS n FROM chunks WHERE model_id = %s", (old.id,)).fetchone() == {"n": 0}
    assert not generations.index_present(conn, old.id)
    fps = {r["external_id"]: r["fingerprint"] for r in conn.execute("SELECT external_id, fingerprint FROM documents")}
    assert fps == {"a": "fp-new", "b": "fp-new"}


def test_configuring_a_third_model_mid_build_retires_the_unfinished_one(conn: Connection) -> None:
    generations.register(conn, OLD)
    first = generations.register(conn, NEW)
    second = generations.register(conn, Model("third", "1", 3))
    assert second.state == "building"
    assert (generations.by_id(conn, first.id) or first).state == "retired"


def test_costs_choose_live_for_increments_and_deferred_for_large_loads() -> None:
    costs = bulk.IndexCosts()
    assert bulk.choose(100_000, 500, costs) is bulk.Strategy.LIVE  # under min_rows
    assert bulk.choose(0, 100_000, costs) is bulk.Strategy.DEFERRED
    assert bulk.choose(100_000, 5_000, costs) is bulk.Strategy.LIVE
    assert bulk.choose(100_000, 50_000, costs) is bulk.Strategy.DEFERRED
    # the break-even moves with the measured costs: a slow build keeps more loads live
    slow_build = bulk.IndexCosts(build=3e-3)
    assert bulk.choose(100_000, 50_000, slow_build) is bulk.Strategy.LIVE
    assert bulk.projected(10, None) == 20 and bulk.projected(10, 500) == 500
    assert bulk.projected(800, 500) == 1600  # outgrew its estimate: unknown end again


def test_a_known_increment_that_is_cheaper_live_stays_live_to_the_end(conn: Connection) -> None:
    """10k rows into a 100k generation with costs under which live is cheaper: every flush stays live (a
    load re-deciding as if its written rows were still to pay for would switch half way, paying twice)."""
    gen = generations.register(conn, OLD)
    indexing.build_index(conn, gen, OPTIONS)
    load = IndexLoad(conn, gen, IndexOptions(min_rows=0), expected=10_000)
    load._existing = 100_000  # the generation's size, as counted at the first write
    load._costs = bulk.IndexCosts(live_insert=1.73e-3, plain_insert=0.31e-3, build=0.198e-3)
    for _ in range(10):
        assert load.before_write(1000) is bulk.Strategy.LIVE
        load.written += 1000
    assert generations.index_present(conn, gen.id)
    # the same costs, a load of unknown size: it switches once it has outgrown the break-even
    unknown = IndexLoad(conn, gen, IndexOptions(min_rows=0))
    unknown._existing, unknown._costs = 100_000, load._costs
    switched_at = None
    for _ in range(200):
        if unknown.before_write(1000) is bulk.Strategy.DEFERRED:
            switched_at = unknown.written
            break
        unknown.written += 1000
    assert switched_at is not None and 5_000 <= switched_at <= 40_000
    unknown.finish()
    assert bulk.ewma(None, 2.0) == 2.0 and bulk.ewma(1.0, 2.0, weight=0.5) == 1.5


def test_a_large_load_drops_the_index_searches_stay_exact_and_the_index_comes_back(
    conn: Connection, database_url: str
) -> None:
    gen = generations.register(conn, OLD)
    indexing.build_index(conn, gen, OPTIONS)
    conn.execute("SELECT 1")  # a read left open by the caller must not swallow the load's own transactions
    load = IndexLoad(conn, gen, IndexOptions(min_rows=10), expected=5000)
    assert load.before_write(100) is bulk.Strategy.DEFERRED
    with connect(database_url) as other:  # the drops and the holder are committed, not a pending savepoint
        assert not generations.index_present(other, gen.id)
        assert indexing.full_text_index_missing(other)  # the GIN index goes too: rows skip it during the load
        assert other.execute("SELECT count(*) AS n FROM index_loads").fetchone() == {"n": 1}
    rng = np.random.default_rng(1)
    for i in range(20):
        commit(conn, "s", f"d{i}", rng.normal(size=(10, 3)).tolist(), gen.id)
    load.observe(200, 0.5)
    hits = search.search(conn, unit([1, 0, 0]), 3)  # no index: an exact scan, still correct
    assert len(hits) == 3 and hits[0].similarity >= hits[-1].similarity
    # Hybrid search ranks words without the GIN index too (a scan): the document named in the query is found.
    hybrid = search.search(conn, unit([0, 0, 1]), 3, text="d17", settings=SearchSettings(mode="hybrid"))
    assert "d17 0" in texts(hybrid)
    assert load.finish() > 0
    assert generations.index_present(conn, gen.id) and not indexing.full_text_index_missing(conn)
    stats = {r["key"] for r in conn.execute("SELECT key FROM store_stats")}
    assert {"plain_insert_s_per_row", "build_s_per_row"} <= stats
    # costs measured on this store now drive the choice
    assert indexing.costs(conn).plain_insert == pytest.approx(0.5 / 200)


def test_two_deferred_loads_build_once_after_the_last(conn: Connection) -> None:
    gen = generations.register(conn, OLD)
    first, second = (IndexLoad(conn, gen, IndexOptions(min_rows=0), expected=10**6) for _ in range(2))
    first.before_write(10)
    second.before_write(10)
    assert first.finish() == 0.0 and not generations.index_present(conn, gen.id)
    assert indexing.full_text_index_missing(conn)  # the second load still writes: built after it
    assert second.finish() >= 0.0 and generations.index_present(conn, gen.id)
    assert not indexing.full_text_index_missing(conn)


def test_a_killed_load_leaves_its_rebuild_to_the_next_start(conn: Connection, database_url: str) -> None:
    gen = generations.register(conn, OLD)
    indexing.build_index(conn, gen, OPTIONS)
    script = (
        "import sys; from vectorstore.db import connect; from vectorstore import generations;"
        "from vectorstore.indexing import IndexLoad, IndexOptions;"
        "c = connect(sys.argv[1]); g = generations.active(c);"
        "IndexLoad(c, g, IndexOptions(min_rows=0), expected=10**6).before_write(10)"  # exits without finish()
    )
    subprocess.run([sys.executable, "-c", script, database_url], check=True, env={**os.environ})
    assert not generations.index_present(conn, gen.id) and indexing.full_text_index_missing(conn)
    holders = conn.execute("SELECT host FROM index_loads").fetchall()
    assert holders == [{"host": socket.gethostname()}]
    assert indexing.repair(conn, OPTIONS) == [gen.id]
    with connect(database_url) as other:  # committed: other sessions see it, and no lock is left held
        assert generations.index_present(other, gen.id)
        assert not indexing.full_text_index_missing(other)
        assert other.execute("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory'").fetchone() == {"n": 0}
    assert conn.execute("SELECT count(*) AS n FROM index_loads").fetchone() == {"n": 0}


def test_filters_by_source_tenant_and_metadata(conn: Connection) -> None:
    gen = generations.register(conn, OLD)
    ledger.ensure_source(conn, "acme-wiki", "pdf", "acme")
    ledger.ensure_source(conn, "globex-wiki", "pdf", "globex")
    commit(conn, "acme-wiki", "a", [[1, 0, 0]], gen.id, meta={"lang": "en", "team": "ops"})
    commit(conn, "globex-wiki", "g", [[1, 0.1, 0]], gen.id, meta={"lang": "de"})
    q = unit([1, 0, 0])
    assert texts(search.search(conn, q, 5)) == ["a 0", "g 0"]
    assert texts(search.search(conn, q, 5, where=SearchFilter(tenant="globex"))) == ["g 0"]
    assert texts(search.search(conn, q, 5, where=SearchFilter(source="acme-wiki"))) == ["a 0"]
    assert texts(search.search(conn, q, 5, where=SearchFilter(metadata={"team": "ops"}))) == ["a 0"]
    assert texts(search.search(conn, q, 5, where=SearchFilter(metadata={"lang": "fr"}))) == []
    # moving a source to another tenant moves its rows
    ledger.ensure_source(conn, "acme-wiki", "pdf", "globex")
    assert texts(search.search(conn, q, 5, where=SearchFilter(tenant="globex"))) == ["a 0", "g 0"]


def test_row_level_security_confines_a_tenant_whatever_the_sql(conn: Connection) -> None:
    gen = generations.register(conn, OLD)
    ledger.ensure_source(conn, "acme-wiki", "pdf", "acme")
    ledger.ensure_source(conn, "globex-wiki", "pdf", "globex")
    commit(conn, "acme-wiki", "a", [[1, 0, 0]], gen.id)
    commit(conn, "globex-wiki", "g", [[1, 0.1, 0]], gen.id)
    ensure_row_level_security(conn)
    ensure_row_level_security(conn)  # idempotent
    hits = search.search(conn, unit([1, 0, 0]), 5, where=SearchFilter(tenant="acme"), row_level_security=True)
    assert texts(hits) == ["a 0"]
    with conn.transaction():  # the policy, not the filter: a raw query as the tenant role sees one tenant
        conn.execute("SET LOCAL ROLE ragline_tenant")
        conn.execute("SELECT set_config('ragline.tenant', 'globex', true)")
        seen = conn.execute("SELECT text FROM chunks").fetchall()
        docs = conn.execute("SELECT external_id FROM documents").fetchall()
    assert seen == [{"text": "g 0"}] and docs == [{"external_id": "g"}]
    with conn.transaction():  # no tenant set: nothing at all
        conn.execute("SET LOCAL ROLE ragline_tenant")
        assert conn.execute("SELECT count(*) AS n FROM chunks").fetchone() == {"n": 0}


def test_halfvec_index_answers_like_the_full_precision_scan(conn: Connection) -> None:
    gen = generations.register(conn, OLD)
    rng = np.random.default_rng(7)
    for i in range(30):
        commit(conn, "s", f"d{i}", rng.normal(size=(10, 3)).tolist(), gen.id)
    indexing.build_index(conn, gen, IndexOptions(index_type="halfvec", maintenance_work_mem="64MB"))
    assert generations.index_type(conn, gen.id) == "halfvec"
    q = unit([0.3, -1, 0.2])
    exact = texts(search.search(conn, q, 10, settings=SearchSettings(exact="always")))
    indexed = texts(search.search(conn, q, 10, settings=SearchSettings(exact="never", ef_search=200)))
    assert len(set(exact) & set(indexed)) >= 9


def test_index_builds_are_counted_and_timed_and_no_ops_are_not(conn: Connection) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    def read() -> tuple[float, float, float, float]:
        return (
            sample("ragline_index_builds_total", kind="hnsw"),
            sample("ragline_index_builds_total", kind="full_text"),
            sample("ragline_index_build_duration_seconds_count"),
            sample("ragline_index_build_duration_seconds_sum"),
        )

    gen = generations.register(conn, OLD)
    indexing.build_index(conn, gen, OPTIONS)
    before = read()
    assert indexing.build_index(conn, gen, OPTIONS) == 0.0  # present: nothing built, nothing counted
    assert read() == before
    load = IndexLoad(conn, gen, IndexOptions(min_rows=10), expected=5000)
    assert load.before_write(100) is bulk.Strategy.DEFERRED  # drops both indexes
    commit(conn, "s", "d", np.random.default_rng(2).normal(size=(20, 3)).tolist(), gen.id)
    seconds = load.finish()  # the last holder builds both again
    hnsw, full_text, count, total = (a - b for a, b in zip(read(), before, strict=True))
    assert (hnsw, full_text, count) == (1, 1, 2)
    assert total == pytest.approx(seconds) and seconds > 0
