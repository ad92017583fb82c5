"""A real MediaWiki (Debian's ``mediawiki`` package, 1.39) for integration tests.

``install`` runs install.php once into a template directory (SQLite); ``clone`` copies it for each test, which
is far cheaper than installing again and keeps tests from seeing each other's changes. ``serve`` runs PHP's
built-in server on a free loopback port and stops it by pid, its workers included (with
``PHP_CLI_SERVER_WORKERS`` they outlive the parent). ``RealWiki`` changes pages through the Action API as the
logged-in admin, so every change goes through MediaWiki's own edit, delete and move code and lands in
``recentchanges`` as it would on a production wiki; ``import_pages`` seeds many pages at once with
importTextFiles.php.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MEDIAWIKI_DIR = Path("/usr/share/mediawiki")
INSTALL_COMMAND = "apt-get install -y --no-install-recommends mediawiki php-sqlite3 php-cli"
ADMIN = "Admin"


class MediaWikiUnavailable(RuntimeError):
    """PHP or Debian's MediaWiki is not installed: the message says how to install them."""


class WikiError(RuntimeError):
    """The wiki refused an action or did not start; the message names the action and the wiki's answer."""


def check_installed(mediawiki_dir: Path = MEDIAWIKI_DIR, php: str = "php") -> None:
    """Fail with the command that fixes it: a missing wiki must fail these tests, never skip them."""
    missing = []
    if shutil.which(php) is None:
        missing.append("php (php-cli)")
    elif "pdo_sqlite" not in subprocess.run([php, "-m"], capture_output=True, text=True, check=False).stdout:
        missing.append("PHP's SQLite driver (php-sqlite3)")
    if not (mediawiki_dir / "maintenance" / "install.php").is_file():
        missing.append(f"MediaWiki ({mediawiki_dir}/maintenance/install.php, package mediawiki)")
    if missing:
        raise MediaWikiUnavailable(
            f"the real-MediaWiki tests need {', '.join(missing)}; on Debian 12 install them as root with: "
            f"{INSTALL_COMMAND}"
        )


@dataclass(frozen=True)
class WikiInstall:
    """An installed wiki: ``root`` holds LocalSettings.php and the SQLite files under ``db``."""

    root: Path
    password: str

    @property
    def settings_file(self) -> Path:
        return self.root / "LocalSettings.php"


def _php_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def set_setting(install: WikiInstall, name: str, value: str) -> None:
    """Replace the ``$wgName = ...;`` line install.php wrote (a string value)."""
    text = install.settings_file.read_text()
    pattern = re.compile(rf"^\${name} = .*;$", re.MULTILINE)
    if not pattern.search(text):
        raise WikiError(f"{install.settings_file}: no ${name} line to replace")
    install.settings_file.write_text(pattern.sub(lambda _: f"${name} = {_php_string(value)};", text, count=1))


def _run(install: WikiInstall | None, args: list[str], what: str, timeout: float = 120.0) -> str:
    env = dict(os.environ)
    if install is not None:
        env["MW_CONFIG_FILE"] = str(install.settings_file)
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if done.returncode != 0:
        raise WikiError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    return done.stdout


def maintenance(install: WikiInstall, script: str, *args: str) -> str:
    """Run one of MediaWiki's maintenance scripts against ``install``."""
    path = MEDIAWIKI_DIR / "maintenance" / script
    return _run(install, ["php", str(path), *args], f"{script} on {install.root}")


def install(root: Path, name: str = "RaglineTestWiki") -> WikiInstall:
    """install.php with SQLite into ``root``; the server URL is set later by ``serve``."""
    check_installed()
    root.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)  # install.php refuses short or common passwords
    args = [
        "php",
        str(MEDIAWIKI_DIR / "maintenance" / "install.php"),
        "--dbtype=sqlite",
        f"--dbpath={root / 'db'}",
        "--dbname=wiki",
        "--server=http://127.0.0.1",
        "--scriptpath=",
        f"--confpath={root}",
        f"--pass={password}",
        "--lang=en",
        name,
        ADMIN,
    ]
    _run(None, args, f"install.php into {root}")
    return WikiInstall(root, password)


def clone(template: WikiInstall, root: Path) -> WikiInstall:
    """A copy of an installed (and possibly seeded) wiki that can change on its own."""
    shutil.copytree(template.root, root)
    copy = WikiInstall(root, template.password)
    set_setting(copy, "wgSQLiteDataDir", str(root / "db"))
    return copy


def import_pages(install: WikiInstall, pages: Mapping[str, str]) -> None:
    """Create or overwrite pages in one process (much faster than one API edit each). ``--rc`` puts them in
    recentchanges, as pages written by people are."""
    with tempfile.TemporaryDirectory(prefix="wikipages-") as tmp:
        files = []
        for title, text in pages.items():
            if "/" in title or title.startswith("."):
                raise ValueError(f"importTextFiles takes the title from the file name: {title!r} cannot be one")
            path = Path(tmp) / title
            path.write_text(text)
            files.append(str(path))
        maintenance(install, "importTextFiles.php", "--rc", "--overwrite", "--quiet", *files)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """Child pids, grandchildren included, read from /proc (PHP's server workers are forked children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            for child in (task / "children").read_text().split():
                found.append(int(child))
                found.extend(descendants(int(child)))
    return found


def group_members(pgid: int) -> list[int]:
    """Pids of the process group ``pgid``: workers stay in their server's group even once it has died and
    they were adopted by init, where ``descendants`` no longer finds them."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped by someone else counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_processes(process: subprocess.Popen[bytes], timeout: float = 10.0) -> list[int]:
    """Stop a server and every process it forked, each by pid: SIGTERM, then SIGKILL for what remains.
    Returns the pids it stopped."""
    # the server leads its own process group (serve starts it in a new session)
    pids = sorted({*descendants(process.pid), *group_members(process.pid), process.pid})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if alive(pid):  # only live ones: a pid that is gone may already name someone else's process
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not any(alive(p) for p in pids):
            break
    process.wait(timeout)  # reap the server itself; the workers are reaped by whoever adopted them
    return pids


class RealWiki:
    """A running wiki: its URLs, and page changes through the Action API as the logged-in admin."""

    def __init__(self, install: WikiInstall, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.install = install
        self.port = port
        self.process = process
        self.log = log
        self.server_url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.server_url}/api.php"
        self._http = httpx.Client(timeout=30.0)
        self._csrf: str | None = None

    def close(self) -> None:
        self._http.close()

    def request_log(self) -> list[str]:
        """The URIs PHP's server logged, oldest first: what the connector really asked for."""
        return re.findall(r"\[\d{3}\]: (?:GET|POST) (\S+)", self.log.read_text(errors="replace"))

    def _answer(self, response: httpx.Response, what: str) -> dict[str, Any]:
        response.raise_for_status()
        body = response.json()
        if not isinstance(body, dict):
            raise WikiError(f"{what}: the answer is not a JSON object: {body!r:.300}")
        if "error" in body:
            raise WikiError(f"{what}: {body['error'].get('code')}: {body['error'].get('info')}")
        return body

    def query(self, **params: Any) -> dict[str, Any]:
        response = self._http.get(
            self.api_url, params={"action": "query", "format": "json", "formatversion": "2", **params}
        )
        return self._answer(response, f"query {params}")

    def _post(self, action: str, what: str, **params: Any) -> dict[str, Any]:
        data = {"action": action, "format": "json", "formatversion": "2", **params}
        if action != "clientlogin":
            data["token"] = self._token()
        return self._answer(self._http.post(self.api_url, data=data), what)

    def _token(self) -> str:
        if self._csrf is None:
            self.login()
        assert self._csrf is not None
        return self._csrf

    def login(self) -> None:
        """action=clientlogin: the supported way for a main account (action=login wants a bot password)."""
        token = self.query(meta="tokens", type="login")["query"]["tokens"]["logintoken"]
        answer = self._post(
            "clientlogin",
            f"login as {ADMIN}",
            username=ADMIN,
            password=self.install.password,
            logintoken=token,
            loginreturnurl=self.server_url,
        )
        if answer.get("clientlogin", {}).get("status") != "PASS":
            raise WikiError(f"login as {ADMIN} at {self.api_url}: {answer.get('clientlogin')}")
        self._csrf = str(self.query(meta="tokens")["query"]["tokens"]["csrftoken"])

    def edit(self, title: str, text: str, *, create_only: bool = False) -> int:
        """Create or change a page; returns its page id."""
        flags = {"createonly": "1"} if create_only else {}
        answer = self._post("edit", f"edit {title!r}", title=title, text=text, summary="ragline test", **flags)
        result = answer["edit"]
        if result.get("result") != "Success":
            raise WikiError(f"edit {title!r}: {result}")
        return int(result["pageid"])

    def delete(self, title: str) -> None:
        self._post("delete", f"delete {title!r}", title=title, reason="ragline test")

    def undelete(self, title: str) -> None:
        self._post("undelete", f"undelete {title!r}", title=title, reason="ragline test")

    def move(self, old: str, new: str, *, redirect: bool = True) -> None:
        """Rename a page; the page keeps its id. ``redirect`` leaves a redirect (a new page) at the old title."""
        flags = {} if redirect else {"noredirect": "1"}
        self._post("move", f"move {old!r} to {new!r}", **{"from": old}, to=new, reason="ragline test", **flags)

    def page(self, title: str) -> dict[str, Any]:
        """The page's info (pageid, ns, redirect, missing) as the API reports it."""
        page: dict[str, Any] = self.query(titles=title, prop="info")["query"]["pages"][0]
        return page

    def content_pages(self, namespace: int = 0) -> dict[int, str]:
        """Page id to title of every non-redirect page in ``namespace``, listed by the wiki itself."""
        found: dict[int, str] = {}
        cont: dict[str, Any] = {}
        while True:
            body = self.query(list="allpages", apnamespace=namespace, apfilterredir="nonredirects", aplimit=500, **cont)
            found.update({p["pageid"]: p["title"] for p in body["query"]["allpages"]})
            cont = body.get("continue") or {}
            if not cont:
                return found


def _ready(url: str) -> bool:
    """api.php runs MediaWiki end to end (settings, database) and answers an empty query."""
    with suppress(httpx.HTTPError, ValueError):
        response = httpx.get(url, params={"action": "query", "format": "json", "formatversion": "2"}, timeout=5.0)
        return response.status_code == 200 and response.json() == {"batchcomplete": True}
    return False


@contextmanager
def serve(install: WikiInstall, *, workers: int | None = None, startup_timeout: float = 60.0) -> Iterator[RealWiki]:
    """Serve ``install`` on a free loopback port until the block ends, then stop every server process.

    Without ``workers`` the server handles one request at a time, so each API call has finished its deferred
    updates (recentchanges rows included) before the next call starts: tests never race the wiki.
    """
    check_installed()
    env = {**os.environ, "MW_CONFIG_FILE": str(install.settings_file)}
    if workers:
        env["PHP_CLI_SERVER_WORKERS"] = str(workers)
    for _ in range(3):  # the free port can be taken between choosing it and binding it: choose again
        port = free_port()
        log = install.root / f"server-{port}.log"
        set_setting(install, "wgServer", f"http://127.0.0.1:{port}")
        with log.open("ab") as out:
            process = subprocess.Popen(
                ["php", "-S", f"127.0.0.1:{port}", "-t", str(MEDIAWIKI_DIR)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: how stop_processes finds orphaned workers
            )
        wiki = RealWiki(install, port, process, log)
        try:
            deadline = time.monotonic() + startup_timeout
            while process.poll() is None and time.monotonic() < deadline and not _ready(wiki.api_url):
                time.sleep(0.1)
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                if "Address already in use" in tail:
                    continue
                raise WikiError(f"php -S for {install.root} exited with {process.returncode}: {tail}")
            if not _ready(wiki.api_url):
                raise WikiError(f"{wiki.api_url} did not answer within {startup_timeout:.0f} s")
            yield wiki
            return
        finally:
            wiki.close()
            stop_processes(process)
    raise WikiError(f"php -S for {install.root} found no free port in 3 tries")


def append_settings(install: WikiInstall, php: str) -> None:
    """Add configuration lines at the end of LocalSettings.php (later lines win)."""
    with install.settings_file.open("a") as out:
        out.write(f"\n{php}\n")
