"""The ``ragline`` command line. Every command exits 0 on success, or non-zero with one line on stderr.

Commands that only read (status, search, quarantine list) and ingests with nothing to do never import
Prefect or start its server: planning against the ledger is plain ragline, and a flow runs only when there
is work, so the common commands stay fast. The commands live in the ``*_cmd`` modules by concern; this is
the root group that adds them, and ``main()``, which turns errors into that one line.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys

import click

from ragline.context import Context, fail, known_errors, setup_logging
from ragline.drift_cmd import baseline, canary
from ragline.generation_cmd import generation
from ragline.ingest_cmd import ingest
from ragline.query_cmd import quarantine, search, status
from ragline.serve_cmd import deploy, serve, stop, trigger
from ragline.snapshot_cmd import snapshot


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what ragline does.")
@click.version_option(package_name="ragline")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """ragline: ingest PDFs and SaaS sources into Postgres + pgvector, and search them."""
    setup_logging(verbose)
    ctx.obj = Context()


_COMMANDS = (ingest, search, status, quarantine, stop, snapshot, generation, baseline, canary)
for _command in (*_COMMANDS, serve, trigger, deploy):
    cli.add_command(_command)


_HEAVY = ("torch", "prefect", "transformers", "openvino")
_exit_code = [0]


def _exit_without_teardown() -> None:
    """The last exit handler (registered before any other but logging's): once a command that loaded the
    model or Prefect is done and every other handler has run (Prefect's log and event flushes, the parser
    processes' shutdown), flush and leave without the interpreter tearing down torch, transformers and Prefect
    module by module: measured here, 0.9-1.7 s of a command's wall time for nothing. Nothing is closed here:
    a model still loading on a pool thread (a run that failed early) must not be waited for, and the database
    sees its idle connections end with the process (an open transaction is rolled back, as on any exit).
    Light commands (status, search through the service) exit as usual."""
    if not any(name in sys.modules for name in _HEAVY):
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_exit_code[0])


def main() -> None:
    atexit.register(_exit_without_teardown)
    try:
        _main()
    except SystemExit as done:
        code = done.code
        _exit_code[0] = code if isinstance(code, int) else 0 if code is None else 1
        raise
    except BaseException:  # RAGLINE_DEBUG's traceback: printed by the interpreter, then exit 1 as it would
        _exit_code[0] = 1
        raise


def _main() -> None:
    known = known_errors()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except known as err:
        fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as err:
        if os.environ.get("RAGLINE_DEBUG"):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        fail(f"unexpected {type(err).__name__}: {first} (set RAGLINE_DEBUG=1 for the traceback)", 2)
