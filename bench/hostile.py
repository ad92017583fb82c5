"""The hostile PDF corpus (``tests/support/hostile_pdfs.py``) through the real CLI, with default settings:
wall time, peak memory, and what happened to each file.

    python bench/hostile.py [--bomb issue|under-budget] [--workers N] [--limit SECONDS] [--keep DIR]

One ``python -m ragline ingest pdf CORPUS --json`` in a fresh RAGLINE_HOME. While it runs, every process's
VmRSS is sampled from /proc: the CLI's process tree (the CLI, its fork server and parser processes) is
summed at each sample; the embedded Postgres (the postmaster and its backends) and the Prefect server are
services the CLI starts and leaves running, so they are reported apart. A sum of VmRSS counts pages shared
between processes once per process: an upper bound. The first run of a fresh home includes starting
Postgres and the Prefect server and loading the model.

``--bomb`` picks the parse-time bomb: ``issue`` (default) is the shape the issue names (~1M text operators a
page), ``under-budget`` the test's (its text of all pages just under ``pdf.max_chars``). ``--workers`` sets
``parsing.workers`` (default: the CPUs less one, at most four): memory limits are per parser process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from tests.support.hostile_pdfs import issue_bomb, parse_time_bomb, write_corpus
from vectorstore.embedded import embedded_url

SAMPLE_SECONDS = 0.1
GIB = 1024**3


def _status(pid: str) -> tuple[int, int] | None:
    """(parent pid, VmRSS in bytes) of a process; None once it is gone. Kernel threads have no VmRSS."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
    except OSError:
        return None
    rss = fields.get("VmRSS", "0 kB").split()[0]
    return int(fields["PPid"]), int(rss) * 1024


def _descendants(root: int, parents: dict[int, int]) -> set[int]:
    """``root`` and every process below it, from a parent map."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in parents and pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _pid_in(path: Path, parse: str) -> int | None:
    """A service's pid from its state file (postmaster.pid's first line, or the Prefect server's JSON)."""
    try:
        text = path.read_text()
        return int(text.splitlines()[0]) if parse == "line" else int(json.loads(text)["pid"])
    except (OSError, ValueError, KeyError, IndexError):
        return None


@dataclass
class Peaks:
    """Peak VmRSS sums (bytes) seen by the sampler, per group of processes."""

    cli_tree: int = 0
    cli: int = 0
    parser: int = 0
    postgres: int = 0
    prefect: int = 0
    processes_in_tree: int = 0
    samples: int = 0
    tree: set[int] = field(default_factory=set)
    """The CLI's process tree at the last sample."""
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self, cli: int, home: Path) -> None:
        parents, rss = {}, {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (status := _status(entry)) is not None:
                parents[int(entry)], rss[int(entry)] = status
        services = {}
        for name, path, parse in (
            ("postgres", home / "pgdata" / "postmaster.pid", "line"),
            ("prefect", home / "prefect" / "server.json", "json"),
        ):
            pid = _pid_in(path, parse)
            services[name] = _descendants(pid, parents) if pid is not None else set()
        tree = _descendants(cli, parents) - services["postgres"] - services["prefect"]
        self.cli_tree = max(self.cli_tree, sum(rss[p] for p in tree))
        self.cli = max(self.cli, rss.get(cli, 0))
        self.parser = max(self.parser, max((rss[p] for p in tree - {cli}), default=0))
        self.tree = tree
        self.postgres = max(self.postgres, sum(rss[p] for p in services["postgres"]))
        self.prefect = max(self.prefect, sum(rss[p] for p in services["prefect"]))
        self.processes_in_tree = max(self.processes_in_tree, len(tree))
        self.samples += 1

    def watch(self, cli: int, home: Path) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            self.sample(cli, home)


def outcomes(home: Path, started: float) -> list[dict[str, object]]:
    """Each document of the run: status, reason, and when (seconds after the CLI started) it was settled."""
    with psycopg.connect(embedded_url(home), row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT external_id, status, error_reason, last_error, chunk_count, updated_at FROM documents "
            "ORDER BY updated_at"
        ).fetchall()
    for row in rows:
        updated: datetime = row.pop("updated_at")
        row["settled_s"] = round(updated.timestamp() - started, 1)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--bomb", choices=["issue", "under-budget"], default="issue")
    ap.add_argument("--workers", type=int, help="parsing.workers (default: ragline's default).")
    ap.add_argument("--limit", type=float, default=1800.0, help="Seconds before the ingest is killed.")
    ap.add_argument("--keep", type=Path, help="Build the corpus and home here and leave them (default: a temp dir).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        corpus, home = base / "corpus", base / "home"
        t0 = time.perf_counter()
        write_corpus(corpus, issue_bomb if args.bomb == "issue" else parse_time_bomb)
        print(f"corpus written in {time.perf_counter() - t0:.1f} s: {corpus}", file=sys.stderr)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
        env["RAGLINE_HOME"] = str(home)
        if args.workers is not None:
            config = base / "ragline.yaml"
            config.write_text(f"parsing:\n  workers: {args.workers}\n")
            env["RAGLINE_CONFIG"] = str(config)
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragline", "ingest", "pdf", str(corpus), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peaks = Peaks()
        sampler = threading.Thread(target=peaks.watch, args=(proc.pid, home), daemon=True)
        sampler.start()
        try:
            try:
                out, err = proc.communicate(timeout=args.limit)
            except subprocess.TimeoutExpired:
                for pid in peaks.tree:  # the CLI and its parser processes, never the services
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                out, err = proc.communicate()
                print(f"the ingest did not end within {args.limit:g} s: killed", file=sys.stderr)
            wall = time.perf_counter() - t0
            peaks.stop.set()
            sampler.join()
            if proc.returncode != 0:
                _report(wall, peaks, None, outcomes(home, started), err)
                raise SystemExit(f"ragline ingest failed ({proc.returncode}): {err.strip()}")
            rows = outcomes(home, started)
        finally:
            subprocess.run([sys.executable, "-m", "ragline", "stop"], env=env, capture_output=True, check=False)
    _report(wall, peaks, json.loads(out), rows, err)


def _report(wall: float, peaks: Peaks, counts: dict[str, int] | None, rows: list[dict[str, object]], err: str) -> None:
    print(f"wall time: {wall:.1f} s")
    print(
        f"peak VmRSS, CLI process tree (summed, {peaks.processes_in_tree} processes at most): "
        f"{peaks.cli_tree / GIB:.2f} GiB; the CLI process {peaks.cli / GIB:.2f} GiB, "
        f"largest parser-side process {peaks.parser / GIB:.2f} GiB"
    )
    print(f"peak VmRSS, embedded Postgres (summed): {peaks.postgres / GIB:.2f} GiB")
    print(f"peak VmRSS, Prefect server: {peaks.prefect / GIB:.2f} GiB ({peaks.samples} samples)")
    if counts is not None:
        print("counts:", {k: v for k, v in counts.items() if v})
    for row in rows:
        reason = row["error_reason"] or f"{row['chunk_count']} chunk(s)"
        print(f"  {row['settled_s']:7.1f} s  {row['status']:<11} {reason:<14} {Path(str(row['external_id'])).name}")
        if row["last_error"]:
            print(f"             {row['last_error']}")
    for line in err.splitlines():
        if "skipped" in line:
            print("  warning:", line.strip())
    sys.stderr.write(err)  # the CLI's log, for the timeline


if __name__ == "__main__":
    main()
