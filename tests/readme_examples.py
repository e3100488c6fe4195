"""Run the README's shell examples and compare what they print with what the README says.

The README's conventions (summed up in its Development section, for its editors):

- Every ```` ```sh ```` block runs, in order, in one bash session, against a broker started exactly as
  `make run` starts it (the `run:` recipe of the Makefile) on a fresh database in a temporary folder,
  which holds a copy of tests/data so that paths such as tests/data/csv/... resolve.
- A block preceded by `<!-- readme: skip: WHY -->` does not run (commands that need other services,
  install things or run the test suite); the reason is required.
- `# ` lines right after a command (no blank line between) are what it prints. Comment lines after a
  blank line are notes. A command without expected lines must print nothing.
- Expected JSON is compared structurally: key order is free, `…` (U+2026) is a wildcard: a value
  `"…"` matches any value, `…` as the last item of an array matches any further items, `…` as an
  object member allows more members, and `…` inside a string matches any text; a long string may wrap
  onto the next `# ` line (the break reads as one space). An expected output
  starting with `HTTP/` is compared as `curl -i` output: the status line, the header lines listed
  (a subset, names case-insensitive) and, after an empty `#` line, the body. Other text is compared
  with runs of whitespace made equal, `…` matching any text.
- A command must exit with status 0, unless its last expected line says `(exit status N)`.
- `make run` and `cityos serve` commands (possibly after VAR=value assignments) are not run by bash:
  the harness stops the broker it runs and starts it again as the command says, on the same folder.
- Ports: 127.0.0.1:1026 (the broker) and 8765 on 127.0.0.1 (the notification receiver in the README:
  `127.0.0.1:8765`, `("127.0.0.1", 8765)`, `/dev/tcp/127.0.0.1/8765`) are replaced by free ports in
  commands and expected outputs, so the test never collides with a running broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notify_helpers import free_port, stop_process, wait_serving

ROOT = Path(__file__).resolve().parent.parent
ELLIPSIS = "\u2026"
SKIP = re.compile(r"<!--\s*readme:\s*skip\b:?\s*(.*?)\s*-->")
SERVER_COMMAND = re.compile(r"^((?:[A-Z_][A-Z0-9_]*=\S*\s+)*)(make run|(?:\S*/)?cityos serve)\b(.*)$", re.S)
EXIT_STATUS = re.compile(r"\(exit status (\d+)\)")
TIMED_OUT = -1
BROKER_PORT = 1026
RECEIVER_PORT = 8765


@dataclass
class Command:
    """One command of a shell block, with the lines the README says it prints."""

    line: int  # README line of its first line
    text: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    line: int
    heading: str
    skip: str | None  # the reason, when the block is marked to be skipped
    commands: list[Command]


def parse_readme(text: str) -> list[Block]:
    """The README's sh blocks, each split into commands and their expected output lines."""
    blocks: list[Block] = []
    lines = text.splitlines()
    heading, previous, i = "", "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```sh":
            skip = SKIP.search(previous)
            start = i + 1
            i += 1
            body: list[tuple[int, str]] = []
            while lines[i].strip() != "```":
                body.append((i + 1, lines[i]))
                i += 1
            reason = None if skip is None else skip.group(1) or ""
            blocks.append(Block(start, heading, reason, _commands(body)))
        elif line.startswith("```"):  # another language: its lines are neither headings nor commands
            i += 1
            while lines[i].strip() != "```":
                i += 1
            previous = ""
        elif line.strip():
            previous = line
        i += 1
    return blocks


def _commands(body: list[tuple[int, str]]) -> list[Command]:
    commands: list[Command] = []
    pending: list[str] = []
    pending_line = 0
    after_command = False  # the previous line ended a command: `# ` lines are its output
    for number, line in body:
        if pending:
            pending.append(line)
            if _complete(pending):
                commands.append(Command(pending_line, "\n".join(pending)))
                pending, after_command = [], True
            continue
        stripped = line.strip()
        if not stripped:
            after_command = False
        elif stripped.startswith("#"):
            if after_command:
                commands[-1].expected.append(stripped[2:] if stripped.startswith("# ") else stripped[1:])
        else:
            pending, pending_line = [line], number
            if _complete(pending):
                commands.append(Command(pending_line, line))
                pending, after_command = [], True
    if pending:
        raise ValueError(f"README line {pending_line}: unfinished command (an open quote or a trailing \\)")
    return commands


def _complete(lines: list[str]) -> bool:
    if lines[-1].rstrip().endswith("\\"):
        return False
    try:
        shlex.split("\n".join(lines), comments=True)
    except ValueError:
        return False
    return True


# -- comparing ---------------------------------------------------------------------------------------
def _glob(pattern: str, text: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split(ELLIPSIS))
    return re.fullmatch(regex, text, re.S) is not None


def expected_json(text: str) -> Any:
    """Parse expected JSON in which a bare … stands for more items or members, and a string may wrap
    onto the next line (the line break and the indentation read as one space)."""
    out: list[str] = []
    stack: list[str] = []
    in_string = escaped = wrapped = False
    for char in text:
        if wrapped and char in " \t":
            continue
        wrapped = False
        if in_string and char == "\n":  # a long string wrapped over two comment lines: one space
            out.append(" ")
            wrapped = True
        elif in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif char in "[{":
            stack.append(char)
            out.append(char)
        elif char in "]}":
            if stack:
                stack.pop()
            out.append(char)
        elif char == ELLIPSIS:
            out.append(f'"{ELLIPSIS}": "{ELLIPSIS}"' if stack and stack[-1] == "{" else f'"{ELLIPSIS}"')
        else:
            out.append(char)
    return json.loads("".join(out))


def json_difference(expected: Any, got: Any, path: str = "$") -> str | None:
    """Where `got` departs from `expected` (with the … wildcards), or None."""
    if expected == ELLIPSIS:
        return None
    if isinstance(expected, str) and ELLIPSIS in expected:
        if isinstance(got, str) and _glob(expected, got):
            return None
        return f"{path}: expected a string like {expected!r}, got {json.dumps(got)}"
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{path}: expected an object, got {json.dumps(got)[:200]}"
        missing = [key for key in expected if key != ELLIPSIS and key not in got]
        if missing:
            return f"{path}: missing member(s) {missing}"
        extra = [key for key in got if key not in expected]
        if extra and ELLIPSIS not in expected:
            return f"{path}: unexpected member(s) {extra}"
        for key, value in expected.items():
            if key != ELLIPSIS and (difference := json_difference(value, got[key], f"{path}.{key}")):
                return difference
        return None
    if isinstance(expected, list):
        if not isinstance(got, list):
            return f"{path}: expected an array, got {json.dumps(got)[:200]}"
        open_ended = bool(expected) and expected[-1] == ELLIPSIS
        items = expected[:-1] if open_ended else expected
        if len(got) < len(items) or (not open_ended and len(got) != len(items)):
            return f"{path}: expected {len(items)}{' or more' if open_ended else ''} items, got {len(got)}"
        for index, item in enumerate(items):
            if difference := json_difference(item, got[index], f"{path}[{index}]"):
                return difference
        return None
    if type(expected) is not type(got) and not (
        isinstance(expected, int | float) and isinstance(got, int | float) and not isinstance(got, bool)
    ):
        return f"{path}: expected {json.dumps(expected)}, got {json.dumps(got)}"
    if expected != got:
        return f"{path}: expected {json.dumps(expected)}, got {json.dumps(got)}"
    return None


def _text_difference(expected: str, got: str) -> str | None:
    try:
        wanted = expected_json(expected)
    except ValueError:
        pass
    else:
        try:
            value = json.loads(got)
        except ValueError:
            return "expected JSON, got text that is not JSON"
        return json_difference(wanted, value)
    if _glob(" ".join(expected.split()), " ".join(got.split())):
        return None
    return "the text differs"


def output_difference(expected: list[str], got: str) -> str | None:
    """Why `got` (what a command printed) is not what the README's expected lines say, or None."""
    if not expected:
        return None if not got.strip() else "the README shows no output, but the command printed some"
    if not expected[0].startswith("HTTP/"):
        return _text_difference("\n".join(expected), got)
    head, _, body = got.replace("\r\n", "\n").partition("\n\n")
    while re.match(r"HTTP/\S+ 100\b", head):  # an interim `100 Continue` (older curl, large bodies)
        head, _, body = body.partition("\n\n")
    status, *headers = head.split("\n")
    if status.strip() != expected[0].strip():
        return f"status line: expected {expected[0].strip()!r}, got {status.strip()!r}"
    received: dict[str, list[str]] = {}
    for header in headers:
        name, _, value = header.partition(":")
        received.setdefault(name.strip().lower(), []).append(value.strip())
    expected_body: list[str] | None = None
    for index, line in enumerate(expected[1:], 1):
        if not line.strip():
            expected_body = expected[index + 1 :]
            break
        name, _, value = line.partition(":")
        values = received.get(name.strip().lower(), [])
        if not any(_glob(value.strip(), v) for v in values):
            return f"header {name.strip()}: expected {value.strip()!r}, got {values or 'no such header'}"
    if expected_body is None:
        return None
    return _text_difference("\n".join(expected_body), body)


# -- running -----------------------------------------------------------------------------------------
@dataclass
class Failure:
    block: Block
    command: Command
    expected: list[str]
    got: str
    stderr: str
    returncode: int
    reason: str

    def __str__(self) -> str:
        indent = "\n    "
        return (
            f"README.md line {self.command.line} (block at line {self.block.line}, under {self.block.heading!r}):"
            f"{indent}{indent.join(self.command.text.splitlines())}\n"
            f"  {self.reason}\n"
            f"  expected (from the README):{indent}{indent.join(self.expected) or '(no output)'}\n"
            f"  got (exit status {self.returncode}):{indent}{indent.join(self.got.splitlines()) or '(no output)'}"
            + (
                f"\n  stderr:{indent}{indent.join(self.stderr.strip().splitlines()[-15:])}"
                if self.stderr.strip()
                else ""
            )
        )


def make_run_command(env: dict[str, str] | None = None) -> list[str]:
    """The `cityos serve` line of the Makefile's `run:` recipe, with $(BIN) the virtual environment
    running the tests and any other make variable taken from the environment (empty if unset)."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^run:.*\n((?:\t.*\n?)+)", makefile, re.M)
    assert recipe, "the Makefile has no `run:` target"
    lines = [line.strip().lstrip("@") for line in recipe.group(1).splitlines() if "cityos serve" in line]
    assert len(lines) == 1, f"the Makefile's `run:` recipe should have one `cityos serve` line: {recipe.group(1)!r}"
    line = lines[0].replace("$(BIN)", str(Path(sys.executable).parent))
    line = re.sub(r"\$\((\w+)\)", lambda m: (env or {}).get(m.group(1), ""), line)
    return shlex.split(line)


def localise(text: str, broker: int, receiver: int) -> str:
    """The README text with the broker's and the receiver's ports replaced (the receiver's as a URL,
    a socket address or a bash /dev/tcp path, never a bare number that could be data)."""
    text = text.replace(f"127.0.0.1:{BROKER_PORT}", f"127.0.0.1:{broker}")
    return re.sub(rf"(127\.0\.0\.1(?::|/|\", )){RECEIVER_PORT}\b", rf"\g<1>{receiver}", text)


class ReadmeRun:
    """A broker as `make run` starts it and a bash session in a temporary folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.ports = {BROKER_PORT: self.port, RECEIVER_PORT: free_port()}
        shutil.copytree(ROOT / "tests" / "data", folder / "tests" / "data")
        bin_dir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
        self.env["PATH"] = bin_dir + os.pathsep + self.env.get("PATH", "")
        # curl as on a terminal: no progress meter on stderr (a user's curl shows none either)
        (folder / ".curlrc").write_text("no-progress-meter\n")
        self.env["CURL_HOME"] = str(folder)
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = folder / "server.log"
        self.shell = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=folder,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.count = 0

    def localise(self, text: str) -> str:
        return localise(text, self.port, self.ports[RECEIVER_PORT])

    def start_server(self, assignments: str, argv: list[str]) -> None:
        self.stop_server()
        env = {**self.env, "CITYOS_PORT": str(self.port)}
        for assignment in shlex.split(assignments):
            name, _, value = assignment.partition("=")
            env[name] = value
        with self.server_log.open("ab") as log:
            self.server = subprocess.Popen(argv, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_serving(self.server, f"http://127.0.0.1:{self.port}", 60, self.server_log.read_text)

    def stop_server(self) -> None:
        if self.server is None:
            return
        stop_process(self.server, timeout=15)
        self.server = None

    def server_command(self, text: str) -> bool:
        """Start the broker as a `make run` / `cityos serve` command says; False for other commands."""
        words = " ".join(shlex.split(text, comments=True))
        match = SERVER_COMMAND.match(words)
        if match is None:
            return False
        assignments, program, rest = match.groups()
        if program == "make run":
            argv = make_run_command(dict(a.partition("=")[::2] for a in shlex.split(assignments)))
        else:
            argv = [str(Path(sys.executable).parent / "cityos"), "serve", *shlex.split(rest)]
        self.start_server(assignments, argv)
        return True

    def run(self, text: str, timeout: float = 60) -> tuple[int, str, str]:
        """Run one command in the bash session: (exit status, stdout, stderr)."""
        self.count += 1
        out, err, status = (self.folder / f".cmd{self.count}.{part}" for part in ("out", "err", "rc"))
        assert self.shell.stdin is not None
        self.shell.stdin.write(
            f"{{\n{text}\n}} >{out} 2>{err} </dev/null; echo $? >{status}.tmp; mv {status}.tmp {status}\n"
        )
        self.shell.stdin.flush()
        deadline = time.monotonic() + timeout
        while not status.exists():
            if time.monotonic() > deadline or self.shell.poll() is not None:
                return TIMED_OUT, out.read_text() if out.exists() else "", f"timed out after {timeout} s"
            time.sleep(0.02)
        return int(status.read_text()), out.read_text(), err.read_text()

    def close(self) -> None:
        self.stop_server()
        if self.shell.stdin is not None:
            with contextlib.suppress(OSError):  # end what the README left in the background (by job pid)
                self.shell.stdin.write("kill $(jobs -p) 2>/dev/null; exit\n")
                self.shell.stdin.flush()
            self.shell.stdin.close()
        try:
            self.shell.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.shell.kill()
            self.shell.wait()


def run_readme(blocks: list[Block], folder: Path) -> list[Failure]:
    """Run every block that is not skipped, in order; the commands whose output differs."""
    failures: list[Failure] = []
    session = ReadmeRun(folder)
    try:
        runnable = [block for block in blocks if block.skip is None]
        first = runnable[0].commands[0] if runnable and runnable[0].commands else None
        assert first is not None and SERVER_COMMAND.match(first.text), (
            "the first command the README runs must be `make run` (the examples assume it is going)"
        )
        for block in blocks:
            if block.skip is not None:
                continue
            for command in block.commands:
                text = session.localise(command.text)
                expected = [session.localise(line) for line in command.expected]
                if session.server_command(text):
                    continue
                if session.server is None or session.server.poll() is not None:
                    raise RuntimeError(f"the broker is not running:\n{session.server_log.read_text()[-3000:]}")
                returncode, got, stderr = session.run(text)
                if returncode == TIMED_OUT:  # the session is stuck: later commands would only queue behind it
                    failures.append(Failure(block, command, expected, got, stderr, returncode, "timed out"))
                    raise RuntimeError("\n\n".join(map(str, failures)) + "\n\nthe rest of the README was not run")
                status = EXIT_STATUS.fullmatch(expected[-1].strip()) if expected else None
                wanted_status = int(status.group(1)) if status else 0
                reason = output_difference(expected[:-1] if status else expected, got)
                if returncode != wanted_status:
                    reason = f"exit status {returncode}, expected {wanted_status}" + (f"; {reason}" if reason else "")
                if reason is not None:
                    failures.append(Failure(block, command, expected, got, stderr, returncode, reason))
    finally:
        session.close()
    return failures
