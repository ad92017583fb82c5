"""CI lint of deploy/: the images, the compose file, the Kubernetes manifests and the guide, checked without a
Docker engine (none runs in CI). The images and compose must build from the repository's own files, and
every command deploy/README.md documents must name files, services and ``ragline`` commands that exist.

The small parsers (Dockerfile instructions, .dockerignore patterns, compose interpolation, shell commands in
Markdown) are pure and tested on their own tables first, so a lint failure points at the deploy files and
not at the lint.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import psycopg
import pytest
import sqlalchemy as sa
import yaml

from flows.settings import load_settings
from ragline.cli import cli

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda")
COMPOSE = DEPLOY / "compose.yaml"
PREFECT_YAML = DEPLOY / "prefect.yaml"
GUIDE = DEPLOY / "README.md"
K8S = DEPLOY / "k8s"
# What a compose run needs set for the interpolation; the value is never used.
COMPOSE_ENV = {"POSTGRES_PASSWORD": "lint-only", "RAGLINE_SERVE_TOKEN": "lint-only"}
# The environment the app reads (flows/settings.py, flows/prefect_server.py).
APP_ENV = ("RAGLINE_DATABASE_URL", "RAGLINE_HOME", "RAGLINE_CONFIG", "PREFECT_API_URL")
PREFECT_WORKER_HEALTH_PORT = 8080  # PREFECT_WORKER_WEBSERVER_PORT's default, served by --with-healthcheck


# -- Dockerfile parsing (pure) -----------------------------------------------------------------------------


class LintError(ValueError):
    """A deploy file that would not build or run: the message names the file and the line or key."""


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    index: int
    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)


_DIRECTIVE = re.compile(r"^#\s*(\w+)\s*=\s*(\S+)\s*$")


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined, as BuildKit reads them: parser directives only at the
    top, comment lines (even inside a continuation) dropped, the escape character honoured."""
    escape = "\\"
    lines = text.splitlines()
    start = 0
    for start, raw in enumerate(lines):  # noqa: B007 - the index of the first non-directive line is kept
        m = _DIRECTIVE.match(raw)
        if not m:
            break
        if m.group(1).lower() == "escape":
            escape = m.group(2)
    else:
        start = len(lines)
    out: list[Instruction] = []
    buf: list[str] = []
    first = 0
    for number, raw in enumerate(lines[start:], start=start + 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            first = number
        body = raw.rstrip()
        if body.endswith(escape):
            buf.append(body[: -len(escape)])
            continue
        buf.append(body)
        joined = " ".join(part.strip() for part in buf if part.strip())
        buf = []
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), first))
    if buf:
        raise LintError(f"line {first}: a continuation runs past the end of the file")
    return out


def split_stages(instructions: list[Instruction]) -> tuple[list[Instruction], list[Stage]]:
    """Global ARGs (before the first FROM) and the build stages."""
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--platform")]
            name = words[2].lower() if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3) or (len(words) == 3 and name is None):
                raise LintError(f"line {ins.line}: FROM takes IMAGE [AS NAME], got {ins.args!r}")
            stages.append(Stage(len(stages), words[0], name, ins.line))
        elif not stages:
            if ins.keyword != "ARG":
                raise LintError(f"line {ins.line}: {ins.keyword} before the first FROM")
            global_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise LintError("no FROM instruction")
    return global_args, stages


def exec_or_shell(args: str) -> list[str] | str:
    """JSON (exec) form as a list, shell form as the string."""
    if args.startswith("["):
        try:
            parsed = json.loads(args)
        except json.JSONDecodeError:
            return args  # Docker runs a malformed JSON array as a shell command
        if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
            return parsed
    return args


def copy_parts(args: str) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of COPY/ADD."""
    form = exec_or_shell(args)
    words = form if isinstance(form, list) else shlex.split(form)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    if len(words) < 2:
        raise LintError(f"COPY/ADD needs a source and a destination: {args!r}")
    return flags, words[:-1], words[-1]


def image_pinned(ref: str) -> bool:
    """A tag with a version number (not latest, not bare), or a digest."""
    if "@sha256:" in ref:
        return True
    name, _, tag = ref.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


# -- pip install lines ---------------------------------------------------------------------------------------

_PIP_VALUE_OPTIONS = {
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--platform",
    "--python-version",
    "--only-binary",
    "--no-binary",
    "--progress-bar",
}


@dataclass(frozen=True)
class PipInstall:
    requirements: tuple[str, ...]
    constraints: tuple[str, ...]
    requirement_files: tuple[str, ...]
    options: tuple[str, ...]


def shell_commands(script: str) -> Iterator[list[str]]:
    """Simple commands of a shell line, split at && || ; | (enough for RUN lines and documented steps)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    current: list[str] = []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            if current:
                yield current
            current = []
        else:
            current.append(token)
    if current:
        yield current


def pip_installs(script: str) -> list[PipInstall]:
    found = []
    for words in shell_commands(script):
        if words[:2] == ["pip", "install"] or words[:2] == ["pip3", "install"]:
            rest = words[2:]
        elif len(words) > 3 and words[0].startswith("python") and words[1:4] == ["-m", "pip", "install"]:
            rest = words[4:]
        else:
            continue
        reqs: list[str] = []
        constraints: list[str] = []
        req_files: list[str] = []
        options: list[str] = []
        it = iter(rest)
        for word in it:
            opt, eq, value = word.partition("=")
            if opt in _PIP_VALUE_OPTIONS:
                value = value if eq else next(it, "")
                if opt in ("-c", "--constraint"):
                    constraints.append(value)
                elif opt in ("-r", "--requirement"):
                    req_files.append(value)
                options.append(opt)
            elif word in ("-e", "--editable"):
                reqs.append(next(it, ""))
            elif word.startswith("-"):
                options.append(word)
            else:
                reqs.append(word)
        found.append(PipInstall(tuple(reqs), tuple(constraints), tuple(req_files), tuple(options)))
    return found


def read_constraints(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise LintError(f"{path.name}: {line!r} is not pinned with ==")
            pins[normalize(name)] = version.strip()
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- .dockerignore (pure) --------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i)
            if end < 0:
                raise LintError(f".dockerignore: unclosed [ in {pattern!r}")
            out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


class DockerIgnore:
    """Docker's rules: patterns relative to the context root, the last matching pattern wins, `!` re-includes,
    and a pattern that matches a directory matches everything under it."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = line[1:].strip() if negated else line
            pattern = re.sub(r"/+", "/", pattern).strip("/")
            pattern = pattern.removeprefix("./")
            self.rules.append((negated, _pattern_regex(pattern)))

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negated, regex in self.rules:
            if any(regex.match(p) for p in prefixes):
                result = not negated
        return result


def context_files(context: Path, ignore: DockerIgnore, source: str) -> list[str]:
    """Files under ``source`` (a path or glob relative to the context) that the build context sends."""
    matches = sorted(context.glob(source)) if any(c in source for c in "*?[") else [context / source]
    files: list[str] = []
    for match in matches:
        candidates = [match] if match.is_file() else sorted(p for p in match.rglob("*") if p.is_file())
        for p in candidates:
            rel = p.relative_to(context).as_posix()
            if not ignore.excluded(rel):
                files.append(rel)
    return files


# -- compose interpolation (pure) --------------------------------------------------------------------------------

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]+)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        expr = m.group("braced") or m.group("plain")
        op = re.search(r":?[-?+]", expr)
        if op is None:
            return env.get(expr, "")
        name, arg = expr[: op.start()], expr[op.end() :]
        value, colon, kind = env.get(name), op.group(0).startswith(":"), op.group(0)[-1]
        unset = value is None or (colon and value == "")
        if kind == "-":
            return arg if unset else str(value)
        if kind == "?":
            if unset:
                raise LintError(f"required variable {name} is not set: {arg}")
            return str(value)
        return "" if unset else arg  # "+": the alternative when set

    return _VAR.sub(sub, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def required_variables(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text)}


# -- Markdown shell blocks (pure) ----------------------------------------------------------------------------


def shell_blocks(markdown: str) -> list[tuple[int, list[str]]]:
    """(line, commands) of each fenced sh/bash/shell/console block: continuations joined, comments and
    prompts dropped."""
    blocks: list[tuple[int, list[str]]] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(```+|~~~+)\s*(\w*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i + 1
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        if lang not in ("sh", "bash", "shell", "console"):
            continue
        commands: list[str] = []
        pending = ""
        for raw in body:
            line = raw.strip()
            if lang == "console":
                if not line.startswith("$ ") and not pending:
                    continue  # output
                line = line.removeprefix("$ ")
            if not pending and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            commands.append(pending + line)
            pending = ""
        blocks.append((start, commands))
    return blocks


def strip_comment(command: str) -> str:
    lexer = shlex.shlex(command, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return shlex.join(list(lexer))


# -- the ragline CLI -------------------------------------------------------------------------------------------


def check_ragline_command(words: list[str], where: str) -> None:
    """``ragline ...`` names commands and options the CLI has (the group tree of ragline.cli:cli)."""
    command: click.Command = cli
    path = ["ragline"]
    args = words[1:]
    ctx = click.Context(cli)
    while isinstance(command, click.Group):
        while args and args[0].startswith("-"):
            _check_option(command, args.pop(0), path, where)
        if not args:
            return
        sub = command.get_command(ctx, args[0])
        if sub is None:
            known = ", ".join(sorted(command.list_commands(ctx)))
            raise LintError(f"{where}: `{' '.join(path)} {args[0]}` is not a command (known: {known})")
        path.append(args.pop(0))
        command = sub
    for arg in args:
        if arg.startswith("-") and arg != "-":
            _check_option(command, arg, path, where)


def _check_option(command: click.Command, arg: str, path: list[str], where: str) -> None:
    name = arg.split("=", 1)[0]
    options = {o for p in command.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
    options |= {"-h", "--help"}
    if name not in options:
        raise LintError(f"{where}: `{' '.join(path)}` has no option {name} (known: {', '.join(sorted(options))})")


# -- loading the deploy files ------------------------------------------------------------------------------------


def load_compose(env: Mapping[str, str] = COMPOSE_ENV) -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), f"{COMPOSE}: the top level must be a mapping"
    return dict(interpolate_tree(data, env))


def dockerfile_stages(path: Path) -> list[Stage]:
    try:
        return split_stages(parse_dockerfile(path.read_text()))[1]
    except LintError as err:
        raise LintError(f"{path.relative_to(REPO)}: {err}") from err


def final_stage(path: Path) -> Stage:
    return dockerfile_stages(path)[-1]


def last(stage: Stage, keyword: str) -> Instruction | None:
    found = [i for i in stage.instructions if i.keyword == keyword]
    return found[-1] if found else None


def command_words(value: Any) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else shlex.split(str(value))


def service_argv(service: Mapping[str, Any], dockerfile: Path | None) -> list[str]:
    """What a service runs: its entrypoint + command, falling back to the image's."""
    entry = command_words(service.get("entrypoint"))
    cmd = command_words(service.get("command"))
    if dockerfile is not None:
        stage = final_stage(dockerfile)
        if "entrypoint" not in service and (ins := last(stage, "ENTRYPOINT")):
            form = exec_or_shell(ins.args)
            entry = form if isinstance(form, list) else ["sh", "-c", form]
        if "command" not in service and "entrypoint" not in service and (ins := last(stage, "CMD")):
            form = exec_or_shell(ins.args)
            cmd = form if isinstance(form, list) else ["sh", "-c", form]
    return entry + cmd


def service_dockerfile(service: Mapping[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return (DEPLOY / build / "Dockerfile").resolve()
    context, dockerfile = str(build.get("context", ".")), str(build.get("dockerfile", "Dockerfile"))
    return (DEPLOY / context / dockerfile).resolve()


def embedded_commands(argv: list[str]) -> list[list[str]]:
    """The simple commands a service runs, including those inside ``sh -c``."""
    if len(argv) >= 3 and argv[0] in ("sh", "bash", "/bin/sh") and argv[1] == "-c":
        return list(shell_commands(argv[2]))
    return [argv] if argv else []


def option_value(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def compose_pools(compose: Mapping[str, Any]) -> dict[str, str]:
    """service -> work pool of each Prefect worker service."""
    pools = {}
    for name, service in compose["services"].items():
        for words in embedded_commands(service_argv(service, service_dockerfile(service))):
            if words[:3] == ["prefect", "worker", "start"]:
                pool = option_value(words, "--pool") or option_value(words, "-p")
                assert pool, f"compose service {name}: `prefect worker start` without --pool"
                pools[name] = pool
    return pools


# ==============================================================================================================
# The parsers, on their own
# ==============================================================================================================


def test_parse_dockerfile_joins_continuations_and_drops_comments() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11.14-slim AS build\n"
        "RUN a \\\n"
        "    # a comment inside the continuation\n"
        "    && b\n"
        "\n"
        "from build\n"
        'CMD ["serve", "--port", "8000"]\n'
    )
    ins = parse_dockerfile(text)
    assert [(i.keyword, i.args, i.line) for i in ins] == [
        ("FROM", "python:3.11.14-slim AS build", 2),
        ("RUN", "a && b", 3),
        ("FROM", "build", 7),
        ("CMD", '["serve", "--port", "8000"]', 8),
    ]
    _, stages = split_stages(ins)
    assert [(s.base, s.name) for s in stages] == [("python:3.11.14-slim", "build"), ("build", None)]
    assert exec_or_shell(ins[-1].args) == ["serve", "--port", "8000"]


def test_parse_dockerfile_honours_the_escape_directive() -> None:
    ins = parse_dockerfile("# escape=`\nFROM scratch\nRUN a `\n  b\n")
    assert [i.args for i in ins] == ["scratch", "a b"]


def test_parse_dockerfile_refuses_an_unfinished_continuation() -> None:
    with pytest.raises(LintError, match="line 2: a continuation"):
        parse_dockerfile("FROM scratch\nRUN a \\\n")


@pytest.mark.parametrize(
    ("ref", "pinned"),
    [
        ("python:3.11.14-slim-bookworm", True),
        ("pgvector/pgvector:0.8.1-pg17", True),
        ("localhost:5000/ragline:1.2", True),
        ("python@sha256:" + "a" * 64, True),
        ("python", False),
        ("python:latest", False),
        ("python:slim", False),
        ("localhost:5000/ragline", False),
    ],
)
def test_image_pinned(ref: str, pinned: bool) -> None:
    assert image_pinned(ref) is pinned


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("flows/ingest.py", False),
        ("flows", False),
        ("pyproject.toml", False),
        ("tests/test_cli.py", True),
        (".venv/bin/python", True),
        ("flows/__pycache__/ingest.cpython-311.pyc", True),
        ("flows/deep/x.pyc", True),
        ("deploy/.env", True),
        ("deploy/prod.env", True),
        ("examples/pdfs/a.pdf", True),
    ],
)
def test_dockerignore_rules(path: str, excluded: bool) -> None:
    ignore = DockerIgnore("*\n!pyproject.toml\n!flows/\n!deploy/\n**/__pycache__\n**/*.py[cod]\n**/.env\n**/*.env\n")
    assert ignore.excluded(path) is excluded


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A:?needed}", {"A": "x"}, "x"),
        ("$$HOME/${A}", {"A": "b"}, "$HOME/b"),
        ("${A:+alt}", {"A": "x"}, "alt"),
        ("pre-$A-post", {"A": "x"}, "pre-x-post"),
    ],
)
def test_interpolate(value: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(value, env) == expected


def test_interpolate_names_a_missing_required_variable() -> None:
    with pytest.raises(LintError, match="POSTGRES_PASSWORD is not set: see the guide"):
        interpolate("${POSTGRES_PASSWORD:?see the guide}", {})


def test_pip_installs_reads_constraints_and_requirements() -> None:
    script = (
        'pip install --no-deps --index-url "$URL" torch==2.13.0 && python -m pip install -c constraints.txt . '
        "&& echo done"
    )
    first, second = pip_installs(script)
    assert first.requirements == ("torch==2.13.0",)
    assert first.constraints == ()
    assert second.requirements == (".",)
    assert second.constraints == ("constraints.txt",)


def test_shell_blocks_join_continuations_and_skip_output() -> None:
    md = "text\n```sh\n# comment\nragline status \\\n  --json\n```\n```console\n$ ragline search q\n1. result\n```\n"
    assert shell_blocks(md) == [(2, ["ragline status --json"]), (7, ["ragline search q"])]


def test_check_ragline_command_names_unknown_commands_and_options() -> None:
    check_ragline_command(["ragline", "search", "q", "-k", "5", "--json"], "here")
    with pytest.raises(LintError, match="here: `ragline nope` is not a command"):
        check_ragline_command(["ragline", "nope"], "here")
    with pytest.raises(LintError, match="`ragline search` has no option --bogus"):
        check_ragline_command(["ragline", "search", "q", "--bogus"], "here")


# ==============================================================================================================
# The images
# ==============================================================================================================


def _dockerignore() -> DockerIgnore:
    path = REPO / ".dockerignore"
    assert path.is_file(), "the repository root has no .dockerignore: the build context would send everything"
    return DockerIgnore(path.read_text())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_stages_and_base_images(name: str) -> None:
    path = DEPLOY / name
    stages = dockerfile_stages(path)
    assert stages, f"{name}: no FROM"
    names = [s.name for s in stages if s.name]
    assert len(names) == len(set(names)), f"{name}: stage names repeat: {names}"
    for stage in stages:
        earlier = {s.name for s in stages[: stage.index] if s.name}
        if stage.base not in earlier:
            assert image_pinned(stage.base), f"{name} line {stage.line}: base image {stage.base} is not pinned"
        for ins in stage.instructions:
            if ins.keyword in ("COPY", "ADD"):
                flags, _, _ = copy_parts(ins.args)
                src = flags.get("from")
                if src is not None and not src.isdigit():
                    assert src.lower() in earlier or image_pinned(src), (
                        f"{name} line {ins.line}: --from={src} is neither an earlier stage nor a pinned image"
                    )
                elif src is not None:
                    assert int(src) < stage.index, f"{name} line {ins.line}: --from={src} is not an earlier stage"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_exist_in_the_build_context(name: str) -> None:
    ignore = _dockerignore()
    checked = 0
    for stage in dockerfile_stages(DEPLOY / name):
        for ins in stage.instructions:
            if ins.keyword not in ("COPY", "ADD"):
                continue
            flags, sources, _ = copy_parts(ins.args)
            if "from" in flags:
                continue
            for source in sources:
                checked += 1
                assert "://" not in source, f"{name} line {ins.line}: ADD from a URL is not reproducible"
                assert "$" not in source, f"{name} line {ins.line}: {source} depends on a build argument"
                assert (REPO / source).exists() or any(c in source for c in "*?["), (
                    f"{name} line {ins.line}: {source} does not exist in the repository"
                )
                assert context_files(REPO, ignore, source), (
                    f"{name} line {ins.line}: {source} is excluded by .dockerignore (nothing would be sent)"
                )
                missing = [
                    p.relative_to(REPO).as_posix()
                    for p in (REPO / source).rglob("*.py")
                    if "__pycache__" not in p.parts
                    and ignore.excluded(p.relative_to(REPO).as_posix())
                    and (REPO / source).is_dir()
                ]
                assert not missing, f"{name} line {ins.line}: .dockerignore drops sources of {source}: {missing}"
    assert checked, f"{name}: no COPY from the build context"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_follow_constraints(name: str) -> None:
    pins = read_constraints(REPO / "constraints.txt")
    assert "torch" in pins, "constraints.txt does not pin torch"
    installs = 0
    for stage in dockerfile_stages(DEPLOY / name):
        copied: set[str] = set()
        torch_first = False
        for ins in stage.instructions:
            if ins.keyword in ("COPY", "ADD"):
                flags, sources, _ = copy_parts(ins.args)
                if "from" not in flags:
                    copied |= {Path(s).name for s in sources}
            if ins.keyword != "RUN":
                continue
            for pip in pip_installs(ins.args):
                installs += 1
                where = f"{name} line {ins.line}"
                assert not pip.requirement_files or pip.constraints, f"{where}: -r without constraints"
                for c in pip.constraints:
                    assert Path(c).name == "constraints.txt", f"{where}: constrained by {c}, not constraints.txt"
                    assert "constraints.txt" in copied, f"{where}: constraints.txt is used before it is copied"
                for req in pip.requirements:
                    if req in (".", "./") or req.startswith("./"):
                        assert pip.constraints, f"{where}: ragline is installed without -c constraints.txt"
                        assert torch_first, f"{where}: ragline is installed before the pinned torch wheel"
                        continue
                    pkg, sep, version = req.partition("==")
                    assert sep, f"{where}: {req} is not pinned (pins come from constraints.txt)"
                    assert pins.get(normalize(pkg)) == version, (
                        f"{where}: {req} differs from constraints.txt ({pkg}=={pins.get(normalize(pkg))})"
                    )
                    if normalize(pkg) == "torch":
                        assert "--index-url" in pip.options or "-i" in pip.options, (
                            f"{where}: torch without --index-url would come from PyPI with CUDA for every image"
                        )
                        torch_first = True
    assert installs, f"{name}: no pip install"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runtime_is_non_root_with_ragline_entrypoint(name: str) -> None:
    stage = final_stage(DEPLOY / name)
    user = last(stage, "USER")
    assert user is not None, f"{name}: the final stage runs as root (no USER)"
    assert user.args.split(":")[0] not in ("root", "0"), f"{name} line {user.line}: USER {user.args} is root"
    entry = last(stage, "ENTRYPOINT")
    assert entry is not None and exec_or_shell(entry.args) == ["ragline"], f"{name}: ENTRYPOINT is not ['ragline']"
    workdir = last(stage, "WORKDIR")
    assert workdir is not None and workdir.args == "/app", f"{name}: flows are loaded from WORKDIR /app"
    health = last(stage, "HEALTHCHECK")
    assert health is not None, f"{name}: no HEALTHCHECK for the default command"
    cmd = last(stage, "CMD")
    assert cmd is not None, f"{name}: no default CMD"
    argv = exec_or_shell(cmd.args)
    assert isinstance(argv, list), f"{name} line {cmd.line}: CMD in shell form would not pass signals"
    check_ragline_command(["ragline", *argv], f"{name} line {cmd.line}")
    port = option_value(argv, "--port")
    assert port and f":{port}/" in health.args, f"{name}: HEALTHCHECK does not probe the port CMD serves ({port})"
    env = " ".join(i.args for i in stage.instructions if i.keyword == "ENV")
    for var in ("RAGLINE_HOME", "HF_HUB_OFFLINE"):
        assert var in env, f"{name}: {var} is not set in the runtime stage"


def test_cuda_image_differs_from_the_cpu_image_only_in_torch_and_gpu_settings() -> None:
    """The two images must not drift: same stages, same copies, same entrypoint."""
    cpu, cuda = (dockerfile_stages(DEPLOY / n) for n in DOCKERFILES)
    assert cpu, "the CPU Dockerfile has no stages"
    assert [(s.base, s.name) for s in cpu] == [(s.base, s.name) for s in cuda]
    for a, b in zip(cpu, cuda, strict=True):
        keep = ("COPY", "ADD", "USER", "WORKDIR", "ENTRYPOINT", "CMD", "HEALTHCHECK")
        assert [(i.keyword, i.args) for i in a.instructions if i.keyword in keep] == [
            (i.keyword, i.args) for i in b.instructions if i.keyword in keep
        ]
    torch_index = [i.args for s in cuda for i in s.instructions if i.keyword == "ARG" and "TORCH_INDEX_URL" in i.args]
    assert torch_index and "/whl/cu" in torch_index[0], "Dockerfile.cuda does not take torch from a CUDA index"


# ==============================================================================================================
# The compose file
# ==============================================================================================================


def test_compose_refuses_to_run_without_a_database_password() -> None:
    assert "POSTGRES_PASSWORD" in required_variables(COMPOSE.read_text())
    with pytest.raises(LintError, match="POSTGRES_PASSWORD is not set"):
        load_compose({})


def test_compose_required_variables_are_documented() -> None:
    guide = GUIDE.read_text()
    required = required_variables(COMPOSE.read_text())
    assert required, "compose.yaml requires no variable (the database password must be one)"
    for var in required:
        assert var in guide, f"compose.yaml requires {var}, which deploy/README.md does not mention"


def test_compose_services_build_from_the_repository() -> None:
    compose = load_compose()
    services: dict[str, Any] = compose["services"]
    assert {"postgres", "prefect-server", "worker", "serve"} <= services.keys()
    for name, service in services.items():
        dockerfile = service_dockerfile(service)
        if dockerfile is None:
            image = service.get("image")
            assert image and image_pinned(str(image)), f"compose service {name}: image {image} is not pinned"
            continue
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert context == REPO, f"compose service {name}: the build context must be the repository root"
        assert dockerfile.is_file(), f"compose service {name}: {dockerfile} does not exist"
        assert dockerfile.parent == DEPLOY and dockerfile.name in DOCKERFILES, (
            f"compose service {name}: builds from {dockerfile}, which this lint does not check"
        )
    assert "pgvector" in services["postgres"]["image"], "the postgres service has no pgvector"


def test_compose_dependencies_and_healthchecks() -> None:
    services: dict[str, Any] = load_compose()["services"]

    def healthcheck(name: str) -> bool:
        hc = services[name].get("healthcheck")
        if hc is not None:
            return not hc.get("disable") and bool(hc.get("test"))
        dockerfile = service_dockerfile(services[name])
        return dockerfile is not None and last(final_stage(dockerfile), "HEALTHCHECK") is not None

    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        assert one_shot or healthcheck(name), f"compose service {name}: a long-running service without healthcheck"
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"compose service {name}: depends on unknown service {dep}"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert healthcheck(dep), f"compose service {name}: waits for {dep} to be healthy; it has no check"
            elif condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"compose service {name}: {dep} never completes"
            else:
                assert condition == "service_started", f"compose service {name}: unknown condition {condition}"
            assert not set(services[dep].get("profiles") or []) - set(service.get("profiles") or []), (
                f"compose service {name}: depends on {dep}, which only starts with a profile"
            )
    # No cycles: compose would refuse to start.
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"compose: dependency cycle {' -> '.join((*path, name))}"
        for dep in services[name].get("depends_on") or {}:
            visit(dep, (*path, name))
        if name not in order:
            order.append(name)

    for name in services:
        visit(name, ())


def _listen_port(service: Mapping[str, Any], argv: list[str]) -> str:
    """The port a service listens on: ragline's --port, Prometheus' and the Pushgateway's
    --web.listen-address, Grafana's GF_SERVER_HTTP_PORT."""
    if port := option_value(argv, "--port"):
        return port
    if address := option_value(argv, "--web.listen-address"):
        return address.rsplit(":", 1)[-1]
    return str((service.get("environment") or {}).get("GF_SERVER_HTTP_PORT", ""))


def test_compose_healthchecks_probe_the_ports_services_listen_on() -> None:
    services: dict[str, Any] = load_compose()["services"]
    probed = 0
    for name, service in services.items():
        hc = service.get("healthcheck") or {}
        if hc.get("disable") or not hc.get("test"):
            continue
        probe = " ".join(command_words(hc["test"]))
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", probe)
        if url is None:
            continue
        argv = service_argv(service, service_dockerfile(service))
        if argv[:3] == ["prefect", "worker", "start"]:
            assert "--with-healthcheck" in argv, f"compose service {name}: the worker serves no health endpoint"
            listens = str(PREFECT_WORKER_HEALTH_PORT)
        else:
            listens = _listen_port(service, argv)
        assert url.group(1) == listens, f"compose service {name}: probes :{url.group(1)}, listens on :{listens}"
        probed += 1
    assert probed, "compose: no healthcheck probes an HTTP port"


def test_compose_volumes_configs_and_ports() -> None:
    compose = load_compose()
    services: dict[str, Any] = compose["services"]
    volumes = set(compose.get("volumes") or {})
    configs: dict[str, Any] = compose.get("configs") or {}
    host_ports: list[str] = []
    assert volumes and configs, "compose declares no volumes or no configs"
    mounted = referenced = 0
    for name, service in services.items():
        for spec in service.get("volumes") or []:
            mounted += 1
            source = str(spec).split(":")[0]
            if source.startswith((".", "/")):
                path = (DEPLOY / source).resolve()
                assert path.exists(), f"compose service {name}: bind mount {source} does not exist ({path})"
            else:
                assert source in volumes, f"compose service {name}: volume {source} is not declared"
        for ref in service.get("configs") or []:
            referenced += 1
            source = ref["source"] if isinstance(ref, dict) else ref
            assert source in configs, f"compose service {name}: config {source} is not declared"
        host_ports += [str(p).rsplit(":", 1)[0] for p in service.get("ports") or []]
    assert mounted and referenced, "compose: no service mounts a volume or a config"
    assert len(host_ports) == len(set(host_ports)), f"compose: a host port is published twice: {host_ports}"
    for cname, config in configs.items():
        assert ("content" in config) != ("file" in config), f"compose config {cname}: needs one of content/file"
        if "file" in config:
            assert (DEPLOY / config["file"]).is_file(), f"compose config {cname}: {config['file']} does not exist"


def _mount_targets(service: Mapping[str, Any]) -> list[str]:
    targets = [str(v).split(":")[1] for v in service.get("volumes") or []]
    targets += [c["target"] for c in service.get("configs") or [] if isinstance(c, dict) and "target" in c]
    return targets


def test_compose_app_services_get_the_environment_the_app_needs(tmp_path: Path) -> None:
    compose = load_compose()
    services: dict[str, Any] = compose["services"]
    app = {n: s for n, s in services.items() if n != "prefect-server" and service_dockerfile(s) is not None}
    assert {"worker", "serve", "deployments"} <= app.keys()
    server_port = option_value(service_argv(services["prefect-server"], None), "--port")
    for name, service in app.items():
        env: dict[str, str] = service.get("environment") or {}
        missing = [v for v in APP_ENV if not env.get(v)]
        assert not missing, f"compose service {name}: {', '.join(missing)} not set"
        db = psycopg.conninfo.conninfo_to_dict(env["RAGLINE_DATABASE_URL"])
        assert db.get("host") == "postgres", f"compose service {name}: the database is not the postgres service"
        assert db.get("dbname") == services["postgres"]["environment"]["POSTGRES_DB"]
        assert env["PREFECT_API_URL"] == f"http://prefect-server:{server_port}/api", (
            f"compose service {name}: PREFECT_API_URL does not point at the prefect-server service"
        )
        config_target = env["RAGLINE_CONFIG"]
        assert config_target in _mount_targets(service), f"compose service {name}: nothing mounts {config_target}"
        assert env["RAGLINE_HOME"] in _mount_targets(service), f"compose service {name}: RAGLINE_HOME is not a volume"
    # The config they read is valid, and every PDF path it names is mounted.
    config = compose["configs"]["ragline-config"]
    text = config["content"] if "content" in config else (DEPLOY / config["file"]).read_text()
    (tmp_path / "config.yaml").write_text(text)
    settings = load_settings({"RAGLINE_HOME": str(tmp_path), "RAGLINE_CONFIG": str(tmp_path / "config.yaml")})
    assert settings.sources, "the compose config has no sources"
    read = [p for source in settings.sources for p in getattr(source, "paths", [])]
    assert read, "the compose config has no source that reads paths"
    for name, service in app.items():
        targets = _mount_targets(service)
        for source in settings.sources:
            for p in getattr(source, "paths", []):
                assert any(p == t or p.startswith(t.rstrip("/") + "/") for t in targets), (
                    f"compose service {name}: source {source.name} reads {p}, which is not mounted"
                )


def test_compose_prefect_server_keeps_its_state_in_postgres() -> None:
    compose = load_compose()
    server = compose["services"]["prefect-server"]
    url = server["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://"), "Prefect's server needs the asyncpg driver for Postgres"
    dbname = url.rsplit("/", 1)[1]
    assert dbname != compose["services"]["postgres"]["environment"]["POSTGRES_DB"], "Prefect shares ragline's db"
    created = [
        compose["configs"][c["source"]]["content"]
        for c in compose["services"]["postgres"].get("configs") or []
        if c["target"].startswith("/docker-entrypoint-initdb.d/")
    ]
    assert any(re.search(rf"CREATE DATABASE {dbname}\b", sql) for sql in created), f"nothing creates {dbname}"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    check = " ".join(command_words(compose["services"]["postgres"]["healthcheck"]["test"]))
    assert f"-d {dbname}" in check, "the postgres healthcheck must wait for Prefect's database too"


def test_compose_runs_commands_that_exist() -> None:
    compose = load_compose()
    assert compose["services"], "compose has no services"
    for name, service in compose["services"].items():
        argv = service_argv(service, service_dockerfile(service))
        commands = embedded_commands(argv)
        assert commands, f"compose service {name}: runs nothing"
        for words in commands:
            if words[0] == "ragline":
                check_ragline_command(words, f"compose service {name}")
            elif words[0] == "prefect":
                assert words[1] in ("server", "worker", "deploy", "--no-prompt"), (
                    f"compose service {name}: unexpected prefect command {' '.join(words)}"
                )


def test_compose_gpu_variant_reserves_gpus_with_the_cuda_image() -> None:
    services: dict[str, Any] = load_compose()["services"]
    gpu = {n: s for n, s in services.items() if "gpu" in (s.get("profiles") or [])}
    assert gpu, "compose has no service in the gpu profile"
    for name, service in gpu.items():
        dockerfile = service_dockerfile(service)
        assert dockerfile is not None and dockerfile.name == "Dockerfile.cuda", f"{name}: not the CUDA image"
        assert service["image"] != services["worker"]["image"], f"{name}: shares the CPU image's tag"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), name


# ==============================================================================================================
# Prefect deployments (deploy/prefect.yaml, rendered by `ragline deploy render`)
# ==============================================================================================================


def _prefect_yaml() -> dict[str, Any]:
    if not PREFECT_YAML.is_file():
        pytest.fail(
            "deploy/prefect.yaml is missing: render it with `ragline deploy render -o deploy/prefect.yaml` "
            "(issue 6, deployments)"
        )
    data = yaml.safe_load(PREFECT_YAML.read_text())
    assert isinstance(data, dict) and data.get("deployments"), "deploy/prefect.yaml has no deployments"
    return data


def test_prefect_yaml_entrypoints_are_prefect_flows() -> None:
    from prefect import Flow

    entrypoints = set()
    deployments = _prefect_yaml()["deployments"]
    assert deployments, "deploy/prefect.yaml has no deployments"
    for deployment in deployments:
        where = f"deploy/prefect.yaml deployment {deployment.get('name')!r}"
        path, sep, attr = str(deployment.get("entrypoint", "")).partition(":")
        assert sep and path.endswith(".py"), f"{where}: entrypoint must be path.py:function"
        assert (REPO / path).is_file(), f"{where}: {path} does not exist"
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, attr, None)
        assert isinstance(flow, Flow), f"{where}: {deployment['entrypoint']} is not a Prefect flow"
        try:
            inspect.signature(flow.fn).bind(**(deployment.get("parameters") or {}))
        except TypeError as err:
            raise AssertionError(f"{where}: parameters do not fit {attr}: {err}") from err
        entrypoints.add(deployment["entrypoint"])
    assert {"flows/ingest.py:ingest_source", "flows/snapshot.py:snapshot_store"} <= entrypoints


def test_prefect_yaml_schedules_and_work_pools_match_compose() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    pools = set(compose_pools(load_compose()).values())
    data = _prefect_yaml()
    assert data["deployments"], "deploy/prefect.yaml has no deployments"
    for deployment in data["deployments"]:
        where = f"deploy/prefect.yaml deployment {deployment.get('name')!r}"
        pool = (deployment.get("work_pool") or {}).get("name")
        assert pool in pools, f"{where}: work pool {pool!r} has no worker in compose (workers poll {pools})"
        for schedule in deployment.get("schedules") or []:
            if "cron" in schedule:
                CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    for step in [*(data.get("pull") or []), *(s for d in data["deployments"] for s in d.get("pull") or [])]:
        workdir = (step.get("prefect.deployments.steps.set_working_directory") or {}).get("directory")
        assert workdir in (None, "/app") or not str(workdir).startswith("/"), (
            f"deploy/prefect.yaml: pull step sets the working directory to {workdir}, absent from the images "
            "(their flows live in /app)"
        )


# ==============================================================================================================
# Kubernetes
# ==============================================================================================================


def _k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def test_base_job_template_selects_gpu_nodes() -> None:
    template = json.loads((K8S / "base-job-template.json").read_text())
    variables = template["variables"]["properties"]
    text = json.dumps(template["job_configuration"])
    used = set(re.findall(r"\{\{\s*([\w.]+)\s*\}\}", text))
    assert used <= variables.keys(), f"base-job-template.json: undefined variables {used - variables.keys()}"
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert "nodeSelector" in pod and "tolerations" in pod, "base-job-template.json: no GPU node selection"
    container = pod["containers"][0]
    assert "nvidia.com/gpu" in container["resources"]["limits"], "base-job-template.json: no nvidia.com/gpu limit"
    assert "ragline:cuda" in str(variables["image"].get("default")), "the GPU pool's default image is not CUDA"


def test_k8s_manifests_are_consistent() -> None:
    docs = _k8s_documents()
    assert docs, "deploy/k8s has no manifests"
    deployments = {}
    for fname, doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"deploy/k8s/{fname}: not a Kubernetes object"
        if doc["kind"] == "Deployment":
            deployments[doc["metadata"]["name"]] = doc
            pod = doc["spec"]["template"]["spec"]
            assert pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{fname}: pods may run as root"
            for c in pod["containers"]:
                argv = [*c.get("command", []), *c.get("args", [])]
                for words in embedded_commands(argv):
                    if words and words[0] == "ragline":
                        check_ragline_command(words, f"deploy/k8s/{fname}")
                env = {e["name"] for e in c.get("env", [])}
                missing = [v for v in APP_ENV if v not in env]
                assert not missing, f"deploy/k8s/{fname}: container {c['name']} lacks {missing}"
    scaled = [(f, d) for f, d in docs if d["kind"] == "ScaledObject"]
    assert scaled, "deploy/k8s: no KEDA ScaledObject for scale-to-zero and standby"
    for fname, doc in scaled:
        target = doc["spec"]["scaleTargetRef"]["name"]
        assert target in deployments, f"deploy/k8s/{fname}: scales {target}, which is not defined"
    assert any(d["spec"].get("minReplicaCount", 1) == 0 for _, d in scaled), "nothing scales to zero"
    assert any(d["spec"].get("minReplicaCount", 1) >= 1 for _, d in scaled), "no warm standby"


def _keda_queries() -> list[tuple[str, str, str]]:
    """(file, database, query) of each postgresql trigger; the database is named by its authenticationRef."""
    found = []
    for fname, doc in _k8s_documents():
        if doc["kind"] != "ScaledObject":
            continue
        for trigger in doc["spec"]["triggers"]:
            if trigger["type"] == "postgresql":
                auth = trigger["authenticationRef"]["name"]
                database = auth.rsplit("-", 1)[-1]
                assert database in ("prefect", "ragline"), f"deploy/k8s/{fname}: which database does {auth} poll?"
                found.append((fname, database, trigger["metadata"]["query"]))
    return found


def _prefect_schema(url: str) -> None:
    """Prefect's tables from its ORM, as its server would create them on Postgres."""
    from prefect.server.database import orm_models

    metadata = sa.MetaData()
    for table in orm_models.Base.metadata.sorted_tables:
        copy = table.to_metadata(metadata)
        for index in list(copy.indexes):  # trigram indexes need pg_trgm, which the embedded server lacks
            if index.dialect_options["postgresql"].get("using") == "gin":
                copy.indexes.discard(index)
    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()


def test_keda_queries_run_against_the_pinned_schemas(empty_database_url: str, database_url: str) -> None:
    """The scalers count rows in Prefect's tables and in ragline's: run each query on the schema of the pinned
    Prefect (its ORM) or of ragline (its migrations: the test's database is migrated), so a rename fails here,
    not silently in production."""
    queries = _keda_queries()
    assert {db for _, db, _ in queries} == {"prefect", "ragline"}
    urls = {"prefect": empty_database_url, "ragline": database_url}
    _prefect_schema(urls["prefect"])
    for fname, database, query in queries:
        with psycopg.connect(urls[database]) as conn:
            row = conn.execute(query).fetchone()
        assert row == (0,), f"deploy/k8s/{fname}: the query returns {row} on an empty {database} database"


# ==============================================================================================================
# The guide: every documented command names things that exist
# ==============================================================================================================


def _documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for line, commands in shell_blocks(GUIDE.read_text()):
        for command in commands:
            for words in shell_commands(strip_comment(command)):
                found.append((f"deploy/README.md block at line {line}", words))
    return found


def _repo_path(token: str) -> Path | None:
    """A token that names a file of this repository (deploy/..., examples/...), else None."""
    token = token.rsplit("=", 1)[-1]
    top = token.split("/", 1)[0]
    if "/" in token and not token.startswith(("/", "http")) and (REPO / top).is_dir() and "$" not in token:
        return REPO / token
    return None


def test_guide_has_the_sections_operators_need() -> None:
    guide = GUIDE.read_text()
    for heading in ("compose", "work pool", "kubernetes", "scal", "gpu"):
        assert heading in guide.lower(), f"deploy/README.md says nothing about {heading}"
    assert _documented_commands(), "deploy/README.md has no shell blocks"


def test_guide_commands_name_existing_files_services_and_commands() -> None:
    compose = load_compose()
    services = compose["services"]
    profiles = {p for s in services.values() for p in s.get("profiles") or []}
    pools = set(compose_pools(compose).values())
    k8s_pools: set[str] = set()
    commands = _documented_commands()
    assert commands, "deploy/README.md has no shell blocks"
    for where, words in commands:
        for token in words:
            path = _repo_path(token)
            if path is not None:
                assert path.exists(), f"{where}: {token} does not exist in the repository"
        if words[0] == "ragline":
            check_ragline_command(words, where)
        elif words[:2] == ["docker", "compose"]:
            assert option_value(words, "-f") == "deploy/compose.yaml", (
                f"{where}: compose without -f deploy/compose.yaml"
            )
            if (profile := option_value(words, "--profile")) is not None:
                assert profile in profiles, f"{where}: no compose profile {profile}"
            if (scale := option_value(words, "--scale")) is not None:
                assert scale.split("=")[0] in services, f"{where}: --scale names unknown service {scale}"
            verbs = [w for w in words if w in ("exec", "run", "logs", "restart", "stop")]
            if verbs:
                rest = words[words.index(verbs[0]) + 1 :]
                named = [w for w in rest if not w.startswith("-")]
                assert named and named[0] in services, f"{where}: `{verbs[0]}` names no compose service: {rest}"
                if named[0] in services and verbs[0] in ("exec", "run") and len(named) > 1:
                    inner = named[1:]
                    if inner[0] == "ragline":
                        check_ragline_command(inner, where)
        elif words[:2] == ["docker", "build"]:
            dockerfile = option_value(words, "-f")
            assert dockerfile and (REPO / dockerfile).is_file(), f"{where}: docker build of {dockerfile}"
            assert words[-1] == ".", f"{where}: the build context must be the repository root"
        elif words[:3] == ["prefect", "work-pool", "create"]:
            pool_type = option_value(words, "--type")
            if pool_type == "kubernetes":
                k8s_pools.add(words[3])
            template = option_value(words, "--base-job-template")
            if template is not None:
                json.loads((REPO / template).read_text())
        elif words[:3] == ["prefect", "worker", "start"]:
            pool = option_value(words, "--pool")
            assert pool in pools | k8s_pools, f"{where}: worker on pool {pool}, which the guide never sets up"
        elif words[:2] == ["kubectl", "apply"]:
            target = option_value(words, "-f")
            assert target and (REPO / target).exists(), f"{where}: kubectl apply -f {target}"


# ==============================================================================================================
# Monitoring: Prometheus, the Pushgateway and Grafana (profile `monitoring`; tests/deploy/test_prometheus.py runs
# the real Prometheus on these files)
# ==============================================================================================================

PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "ragline.json"
# Series Prometheus itself adds (up) or the Pushgateway does (push_time_seconds), which the rules may use.
NOT_RAGLINE_SERIES = {"up", "push_time_seconds", "push_failure_time_seconds"}


def exported_series() -> set[str]:
    """Every series name ragline exposes: telemetry.metrics' families with their samples' suffixes, and the GPU
    collector's gauges (defined there, collected only where NVML answers)."""
    from prometheus_client.metrics import MetricWrapperBase

    import telemetry.metrics
    from telemetry.gpu import GpuCollector

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names = set()
    for value in vars(telemetry.metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    names |= {family.name for family in GpuCollector(nvml=object()).describe()}
    return names


def _series_used(expr: str) -> set[str]:
    """Series names an expression selects (ragline_*, and the few others the rules may use)."""
    names = set(re.findall(r"\b(ragline_[a-z0-9_]+)\b", expr))
    names |= {n for n in re.findall(r"\b([a-z_]+)\s*[{\[]", expr) if n in NOT_RAGLINE_SERIES}
    return names


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_alerts_and_dashboard_use_series_ragline_exports() -> None:
    """A renamed metric must fail here, not leave an alert that can never fire or a panel that stays empty."""
    exported = exported_series() | NOT_RAGLINE_SERIES
    for rule in _alert_rules():
        unknown = _series_used(rule["expr"]) - exported
        assert not unknown, f"alerts.yml {rule['alert']}: no such series {sorted(unknown)}"
        annotations = rule.get("annotations") or {}
        assert annotations.get("summary") and annotations.get("description"), f"{rule['alert']}: no annotations"
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), f"{rule['alert']}: severity"
    exprs = _dashboard_exprs()
    assert exprs, "the dashboard has no queries"
    for title, expr in exprs:
        unknown = _series_used(expr) - exported
        assert not unknown, f"dashboard panel {title!r}: no such series {sorted(unknown)}"
    alerts = {rule["alert"] for rule in _alert_rules()}
    for needed in ("BreakerOpen", "QuarantineSpike", "Drift", "SnapshotOverdue", "GpuMemoryHigh", "ServeDown"):
        assert any(needed in a for a in alerts), f"alerts.yml has no {needed} alert"
    used = {n for _, e in exprs for n in _series_used(e)}
    for needed in ("ragline_embedded_tokens_total", "ragline_embedding_queue_depth", "ragline_gpu_memory_used_bytes"):
        assert needed in used, f"the dashboard does not show {needed}"


def test_compose_monitoring_profile_wires_prometheus_to_serve_and_the_gateway() -> None:
    compose = load_compose()
    services: dict[str, Any] = compose["services"]
    monitoring = {n for n, s in services.items() if "monitoring" in (s.get("profiles") or [])}
    assert monitoring == {"prometheus", "pushgateway", "grafana"}, monitoring
    prometheus = services["prometheus"]
    mounts = {c["target"]: compose["configs"][c["source"]]["file"] for c in prometheus["configs"]}
    config_path = option_value(command_words(prometheus["command"]), "--config.file")
    assert config_path is not None and config_path in mounts, f"prometheus reads {config_path}, which no config mounts"
    config = yaml.safe_load((DEPLOY / mounts[config_path]).read_text())
    for rule_file in config["rule_files"]:
        target = str(Path(config_path).parent / rule_file)
        assert target in mounts, f"prometheus.yml loads {rule_file}; nothing mounts {target}"
        assert (DEPLOY / mounts[target]).resolve() == (PROMETHEUS_DIR / "alerts.yml").resolve()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    serve_port = option_value(service_argv(services["serve"], service_dockerfile(services["serve"])), "--port")
    gateway_port = _listen_port(services["pushgateway"], command_words(services["pushgateway"]["command"]))
    targets = {t for job in jobs.values() for sc in job["static_configs"] for t in sc["targets"]}
    assert f"serve:{serve_port}" in targets and f"pushgateway:{gateway_port}" in targets, targets
    serve_job = next(j for j in jobs.values() if f"serve:{serve_port}" in j["static_configs"][0]["targets"])
    token_file = serve_job["authorization"]["credentials_file"]
    secrets = [s if isinstance(s, str) else s["source"] for s in prometheus.get("secrets") or []]
    assert token_file in {f"/run/secrets/{s}" for s in secrets}, f"prometheus mounts no secret at {token_file}"
    for secret in secrets:
        assert compose["secrets"][secret].get("environment") == "RAGLINE_SERVE_TOKEN", (
            f"secret {secret} is not the operator's token, which serve's /metrics needs"
        )
    gateway_job = next(j for j in jobs.values() if f"pushgateway:{gateway_port}" in j["static_configs"][0]["targets"])
    assert gateway_job.get("honor_labels") is True, "the Pushgateway job must keep the pushed instance and source"
    # Runs outside serve push where the gateway listens once PUSHGATEWAY_URL is set (the guide says how).
    for name in ("worker", "worker-gpu"):
        env = services[name]["environment"]
        assert "RAGLINE_METRICS__PUSHGATEWAY" in env, f"compose service {name} cannot push its metrics"
    assert f"PUSHGATEWAY_URL=http://pushgateway:{gateway_port}" in GUIDE.read_text()


def test_grafana_provisioning_finds_its_data_source_and_dashboard() -> None:
    compose = load_compose()
    grafana = compose["services"]["grafana"]
    mounts = {c["target"]: DEPLOY / compose["configs"][c["source"]]["file"] for c in grafana["configs"]}
    datasources = [
        d
        for t, f in mounts.items()
        if "/provisioning/datasources/" in t
        for d in yaml.safe_load(f.read_text())["datasources"]
    ]
    providers = [
        p
        for t, f in mounts.items()
        if "/provisioning/dashboards/" in t
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    prometheus_port = _listen_port(
        compose["services"]["prometheus"], command_words(compose["services"]["prometheus"]["command"])
    )
    (source,) = datasources
    assert source["type"] == "prometheus" and source["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = providers
    dashboards = [t for t in mounts if t.startswith(provider["options"]["path"].rstrip("/") + "/")]
    assert dashboards, f"nothing mounts a dashboard under {provider['options']['path']}"
    assert any(mounts[t].resolve() == DASHBOARD.resolve() for t in dashboards)
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    uids |= {v["datasource"]["uid"] for v in dashboard["templating"]["list"] if "datasource" in v}
    assert uids == {source["uid"]}, f"the dashboard refers to data sources {uids}, Grafana has {source['uid']}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_service_monitor_selects_the_serve_service_and_its_port() -> None:
    docs = _k8s_documents()
    services = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Service"}
    monitors = [(f, d) for f, d in docs if d["kind"] == "ServiceMonitor"]
    assert monitors, "deploy/k8s: no ServiceMonitor scrapes ragline serve"
    for fname, monitor in monitors:
        wanted = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services.values() if wanted.items() <= (s["metadata"].get("labels") or {}).items()]
        assert chosen, f"deploy/k8s/{fname}: the ServiceMonitor selects no Service (labels {wanted})"
        for endpoint in monitor["spec"]["endpoints"]:
            ports = {p["name"] for s in chosen for p in s["spec"]["ports"]}
            assert endpoint["port"] in ports, f"deploy/k8s/{fname}: no Service port named {endpoint['port']}"
            assert endpoint["path"] == "/metrics" and endpoint["authorization"]["type"] == "Bearer"
