"""Server processes under test: a real `cityos serve` on a fresh SQLite file or a PostgreSQL schema,
and the constant-JSON app on the same stack. Each is its own process, started and stopped by pid,
with its peak RSS read from /proc (Linux): with several workers, summed over its process tree."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
SERVER_SRC_ENV = "CITYOS_BENCH_SERVER_SRC"  # --server-src: the src/ directory the cityos servers run from
SERVER_CPUS_ENV = "CITYOS_BENCH_SERVER_CPUS"  # --server-cpus: the CPUs every server process is pinned to
PORTS_ENV = "CITYOS_BENCH_PORTS"  # e.g. 7700-7799: the servers' ports are taken from this range only


def _plain_url(url: str) -> str:
    """A libpq URL without the query options only asyncpg knows (psql refuses them)."""
    return urlunsplit(urlsplit(url)._replace(query=""))


def free_port() -> int:
    """A port nothing listens on: any the kernel gives, or one of CITYOS_BENCH_PORTS (LOW-HIGH) when
    set, for a machine where each user has a port range."""
    span = os.environ.get(PORTS_ENV, "")
    candidates = range(int(span.split("-")[0]), int(span.split("-")[1]) + 1) if span else [0]
    for candidate in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            if candidate and listening(candidate):
                continue
            port: int = sock.getsockname()[1]
            if candidate and port in _given:
                continue
            _given.add(port)
            return port
    raise StartFailed(f"no free port in {PORTS_ENV}={span}")


_given: set[int] = set()  # ports handed out in this run (a server may not have bound its port yet)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def server_cpus() -> str:
    """The CPU list of --server-cpus (taskset syntax, e.g. 0-7), '' when the servers are not pinned."""
    return os.environ.get(SERVER_CPUS_ENV, "")


def pinned(args: Sequence[str]) -> list[str]:
    """args run under `taskset -c <server CPUs>` when --server-cpus is given (taskset execs the command,
    so the pid stays the server's; its workers inherit the affinity)."""
    cpus = server_cpus()
    return ["taskset", "-c", cpus, *args] if cpus else list(args)


def parse_cpus(text: str) -> set[int]:
    """'0-3,6' -> {0, 1, 2, 3, 6}."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def load_average() -> tuple[float, float, float]:
    """/proc/loadavg's 1, 5 and 15 minute averages (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a process (its peak resident set since start), in MiB; None off Linux."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def descendants(pid: int) -> list[int]:
    """Every process below pid (uvicorn's worker processes and their helpers), from /proc (Linux)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            pending += children
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time these processes have used so far (utime + stime of /proc/PID/stat).
    CPU per operation is what a regression check can compare on a loaded machine: wall-clock rates
    move with the other processes, the work a request costs does not (much)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / os.sysconf("SC_CLK_TCK")


def socket_ports(pids: Sequence[int], remote_port: int) -> set[int]:
    """Local ports of these processes' TCP connections to `remote_port` (their PostgreSQL
    connections), from /proc/PID/fd and /proc/PID/net/tcp*."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports: set[int] = set()
    for pid in pids[:1]:
        for table in ("tcp", "tcp6"):
            try:
                lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                local, remote, inode = parts[1], parts[2], parts[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


class StartFailed(RuntimeError):
    """A server (or its database) could not be brought up: the message says why."""


class ServerProcess:
    """A server subprocess; `with` waits until `ready_path` answers and stops it by pid on exit."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        port: int,
        ready_path: str,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name, self.args, self.port, self.ready_path, self.log = name, pinned(args), port, ready_path, log
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def peak_rss_mb(self) -> float | None:
        """The process's VmHWM, plus its descendants' (each worker's peak, summed) when it has any."""
        own = peak_rss_mb(self.pid)
        if own is None:
            return None
        return own + sum(peak_rss_mb(child) or 0.0 for child in descendants(self.pid))

    def tree(self) -> list[int]:
        return [self.pid, *descendants(self.pid)]

    def cpu_seconds(self) -> float:
        """CPU used so far by the server's processes and, on PostgreSQL, by the database backends
        serving its connections (found by their client ports in pg_stat_activity)."""
        tree = self.tree()
        return cpu_seconds(tree) + cpu_seconds(self.database_pids(tree))

    def database_pids(self, tree: list[int]) -> list[int]:
        url = (self.env or {}).get("CITYOS_DATABASE", "")
        if not url.startswith(("postgresql://", "postgres://")):
            return []
        ports = socket_ports(tree, urlsplit(url).port or 5432)
        if not ports:
            return []
        query = "SELECT pid, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL"
        out = subprocess.run(
            ["psql", _plain_url(url), "-tAF", " ", "-c", query], capture_output=True, text=True, timeout=10
        ).stdout
        return [int(pid) for pid, port in (line.split() for line in out.splitlines() if line) if int(port) in ports]

    def __enter__(self) -> ServerProcess:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.base}{self.ready_path}", timeout=1)
                return self
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise StartFailed(f"{self.name} did not start:\n{self.log.read_text()}") from None
                time.sleep(0.1)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    """SIGTERM by pid, then SIGKILL if it is still running after `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RemoteServer(ServerProcess):
    """A server this harness did not start (--url, --floor-url): loaded over the network, never stopped;
    its memory and CPU are not seen from here."""

    def __init__(self, name: str, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise StartFailed(f"{name}: expected http://host:port, got {url!r}")
        super().__init__(name, [], parts.port, "/", Path(os.devnull))
        self.host = parts.hostname

    @property
    def pid(self) -> int:
        return 0

    def peak_rss_mb(self) -> float | None:
        return None

    def tree(self) -> list[int]:
        return []

    def cpu_seconds(self) -> float:
        return 0.0

    def __enter__(self) -> ServerProcess:
        try:
            httpx.get(f"{self.base}/version", timeout=10)
        except httpx.TransportError as exc:
            raise StartFailed(f"{self.name} at {self.base} does not answer: {exc}") from None
        return self

    def stop(self) -> None:
        return


def cityos_server(
    workdir: Path,
    postgres: str | None = None,
    *,
    workers: int = 1,
    durability: str = "",
    name: str = "bench",
    extra: Sequence[str] = (),
    database: Path | None = None,
) -> ServerProcess:
    """`cityos serve` as a user runs it: on a new database file in workdir (`name`.db), or on
    the PostgreSQL URL `postgres` (a migrated schema), given in CITYOS_DATABASE; private networks are
    allowed so a local notification receiver can be reached. durability: --durability, when given;
    extra: more options; database: an existing SQLite file to serve (kept as it is)."""
    port = free_port()
    args = [sys.executable, "-m", "cityos", "serve", "--port", str(port)]
    args += ["--log-level", "warning", "--allow-private-networks"]
    if durability:
        args += ["--durability", durability]
    suffix = "" if name == "bench" else f"-{name}"
    env = dict(os.environ)
    if server_src := env.get(SERVER_SRC_ENV):  # an older checkout's server, measured by this harness
        env["PYTHONPATH"] = server_src
    args += list(extra)
    if postgres is None and database is not None:
        args += ["--database", str(database)]
        log = workdir / f"cityos-sqlite{suffix}.log"
    elif postgres is None:
        database = workdir / f"{name}.db"
        for ending in ("", "-wal", "-shm"):
            Path(f"{database}{ending}").unlink(missing_ok=True)
        args += ["--database", str(database)]
        log = workdir / f"cityos-sqlite{suffix}.log"
    else:
        env.update({"CITYOS_DATABASE": postgres})
        log = workdir / f"cityos-postgres-{workers}w{suffix}.log"
    if workers > 1:
        args += ["--workers", str(workers)]
    return ServerProcess("cityos serve", args, port, "/version", log, env)


def constant_server(workdir: Path, *options: str) -> ServerProcess:
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.constant_app", "--port", str(port), *options]
    env_name = "-".join(o.lstrip("-") for o in options) or "default"
    return ServerProcess("constant-JSON app", args, port, "/constant", workdir / f"constant-{env_name}.log")


def machine() -> str:
    """nproc, memory and CPU model: enough to compare two tables."""
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    except OSError:
        cpu = ""
    return f"{os.cpu_count()} CPUs{memory}{', ' + cpu if cpu else ''}, Python {sys.version.split()[0]}"


def log_problems(log: Path) -> list[str]:
    """The lines of a server log that report a failure: logged errors and exceptions (tracebacks are
    reduced to their last line, the exception itself)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    problems: list[str] = []
    in_traceback = False
    for line in lines:
        if line.startswith("Traceback "):
            in_traceback = True
        elif in_traceback and line and not line.startswith((" ", "\t", "Traceback", "The above", "During handling")):
            problems.append(line)
            in_traceback = False
        elif any(level in line for level in (" ERROR ", " CRITICAL ")):
            problems.append(line)
    return problems
