"""Run a private PostgreSQL cluster from the server binaries as the embedded database.

ARCHITECTURE 7: with no ``GX_DATABASE_URL`` the sandbox, tests and benchmarks start their own
cluster: ``initdb`` into a temporary directory, a server listening only on 127.0.0.1 at a free
port (plus a unix socket inside the temporary directory), trust authentication, and one
database. The binaries come from ``pg_config --bindir``, then PATH, then
``/usr/lib/postgresql/<version>/bin`` (Debian's layout, highest version first).

PostgreSQL refuses to run as root, so when this process is root the cluster is created and
run as an unprivileged system user (``postgres`` by default) that owns the directory.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "database_url",
    "find_bindir",
    "open_database",
    "process_alive",
]

DATABASE_URL_ENV = "GX_DATABASE_URL"
_server_binaries = ("initdb", "pg_ctl", "postgres")

initdb_timeout_s_max = 120
start_timeout_s_max = 60
stop_timeout_s_max = 30
start_attempts_max = 3  # a free port can be taken between probing and binding
log_tail_chars_max = 2000

_T = TypeVar("_T")


class EmbeddedPostgresError(RuntimeError):
    """Raise when the embedded PostgreSQL cluster cannot be found, started or stopped."""


def database_url() -> str | None:
    """Return the database named by ``GX_DATABASE_URL``, or None to use an embedded one."""
    url = os.environ.get(DATABASE_URL_ENV, "").strip()
    return url or None


@contextlib.contextmanager
def open_database(database: str = "gx") -> Iterator[str]:
    """Yield a DSN: ``GX_DATABASE_URL`` if set, else an embedded cluster stopped on exit."""
    url = database_url()
    if url is not None:
        yield url
        return
    with EmbeddedPostgres(database=database) as pg:
        yield pg.dsn


def find_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    initdb = shutil.which("initdb")
    if initdb is not None:
        # PATH often holds symlinks; resolve to the real bindir so the siblings match.
        candidates.append(Path(initdb).resolve().parent)
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: _version_key(Path(p).parent.name),
        reverse=True,
    )
    candidates.extend(Path(p) for p in debian)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in _server_binaries):
            return bindir
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via pg_config, PATH "
        "or /usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql) or "
        f"set {DATABASE_URL_ENV} to an existing database"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """Return the environment minus PG* variables, which would redirect the tools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # Messages are matched in logs and shown to users; keep them in one language.
    env["LC_ALL"] = "C"
    return env


def process_alive(pid: int) -> bool:
    """Return whether ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state follows the parenthesised command name, which may itself contain spaces.
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


class EmbeddedPostgres:
    """A private PostgreSQL cluster on 127.0.0.1; use as a context manager or start()/stop().

    ``data_dir`` defaults to a fresh temporary directory that :meth:`stop` removes; a given
    directory is kept, and reused if it already holds a cluster. ``fsync=False`` (the default,
    for tests) trades crash safety for speed.
    """

    def __init__(
        self,
        *,
        database: str = "gx",
        user: str = "postgres",
        data_dir: str | os.PathLike[str] | None = None,
        fsync: bool = False,
        run_as: str = "postgres",
        bindir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Describe the cluster; ``run_as`` is the system user used only when we are root."""
        self.database = database
        self.user = user
        self.fsync = fsync
        self.run_as = run_as
        self._given_data_dir = Path(data_dir) if data_dir is not None else None
        self._given_bindir = Path(bindir) if bindir is not None else None
        self._lock = threading.Lock()
        self._base_dir: Path | None = None
        self._data_dir: Path | None = None
        self._port: int | None = None
        self._pid: int | None = None
        self._bindir: Path | None = None

    # Lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Initialise (if needed) and start the cluster, create the database; return self."""
        with self._lock:
            if self._port is not None:
                return self
            self._bindir = self._given_bindir or find_bindir()
            self._base_dir = Path(tempfile.mkdtemp(prefix="gx-pg-"))
            atexit.register(self.stop)
            try:
                self._prepare_dirs()
                self._initdb()
                self._start_server()
                self._create_database()
            except BaseException:
                self._stop_locked()
                raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the temporary directory."""
        with self._lock:
            self._stop_locked()

    def stop_server(self, mode: str = "immediate") -> None:
        """Stop the server only, keeping its data and port, for fault tests; `immediate` is
        a crash (recovery from the WAL on start), `fast` a clean shutdown."""
        with self._lock:
            data_dir = self._require(self._data_dir)
            args = [str(self._tool("pg_ctl")), "stop", "-w", "-m", mode, "-t",
                    str(stop_timeout_s_max), "-D", str(data_dir)]  # fmt: skip
            self._run(args, stop_timeout_s_max + 10, "pg_ctl stop")
            self._pid = None

    def start_server(self) -> None:
        """Start the server stopped by `stop_server` again, on the same port."""
        with self._lock:
            self._start_server(self._running_port())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Queries ---------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """Return ``postgresql://user@127.0.0.1:port/database``."""
        return f"postgresql://{self.user}@127.0.0.1:{self._running_port()}/{self.database}"

    @property
    def port(self) -> int:
        """Return the TCP port the server listens on at 127.0.0.1."""
        return self._running_port()

    @property
    def pid(self) -> int | None:
        """Return the postmaster's process id, or None when stopped."""
        return self._pid

    @property
    def data_dir(self) -> Path | None:
        """Return the cluster's data directory, or None when stopped."""
        return self._data_dir

    # Steps -----------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        base = self._require(self._base_dir)
        self._data_dir = self._given_data_dir or base / "data"
        (base / "sock").mkdir(mode=0o700)
        # PostgreSQL insists on 0700 (or 0750) for the data directory.
        self._data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = self._run_as_user()
            # initdb and the server write here as the unprivileged user.
            for path in (base, base / "sock", self._data_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            if self._given_data_dir is not None:
                _require_searchable(self._data_dir.parent, owner)
                for root, dirs, files in os.walk(self._given_data_dir):
                    for name in dirs + files:
                        os.chown(os.path.join(root, name), owner.pw_uid, owner.pw_gid)

    def _initdb(self) -> None:
        data_dir = self._require(self._data_dir)
        if (data_dir / "PG_VERSION").exists():
            return
        args = [
            str(self._tool("initdb")),
            "-D",
            str(data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ]
        if not self.fsync:
            args.append("--no-sync")
        self._run(args, initdb_timeout_s_max, "initdb")

    def _start_server(self, port: int | None = None) -> None:
        """Start the server on `port`, else on a free port (retried if taken meanwhile)."""
        base, data_dir = self._require(self._base_dir), self._require(self._data_dir)
        log_path = base / "postgres.log"
        given = port
        for attempt in range(1, start_attempts_max + 1):
            port = given or _free_port()
            options = [
                "-p",
                str(port),
                "-k",
                str(base / "sock"),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"fsync={'on' if self.fsync else 'off'}",
            ]
            if not self.fsync:
                options += ["-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
            args = [
                str(self._tool("pg_ctl")),
                "start",
                "-w",
                "-t",
                str(start_timeout_s_max),
                "-D",
                str(data_dir),
                "-l",
                str(log_path),
                # pg_ctl hands -o to /bin/sh, hence shell quoting.
                "-o",
                shlex.join(options),
            ]
            try:
                self._run(args, start_timeout_s_max + 10, "pg_ctl start")
            except EmbeddedPostgresError:
                if (
                    given is None
                    and attempt < start_attempts_max
                    and "could not bind" in _tail(log_path)
                ):
                    continue
                raise
            self._port = port
            self._pid = self._read_pid(data_dir)
            return

    def _create_database(self) -> None:
        if self.database == "postgres":
            return
        args = [
            str(self._tool("createdb")),
            "-h",
            "127.0.0.1",
            "-p",
            str(self._running_port()),
            "-U",
            self.user,
            self.database,
        ]
        # createdb is a client; it runs as us and connects over TCP with trust auth.
        try:
            self._run(args, start_timeout_s_max, "createdb", as_owner=False)
        except EmbeddedPostgresError as exc:
            # A reused data_dir already holds the database; LC_ALL=C keeps this in English.
            if f'database "{self.database}" already exists' not in str(exc):
                raise

    def _stop_locked(self) -> None:
        base, data_dir, pid = self._base_dir, self._data_dir, self._pid
        self._port = None
        self._pid = None
        if base is None:
            return
        atexit.unregister(self.stop)
        try:
            if data_dir is not None and (data_dir / "postmaster.pid").exists():
                self._stop_server(data_dir, pid)
        finally:
            self._base_dir = None
            self._data_dir = None
            shutil.rmtree(base, ignore_errors=True)

    def _stop_server(self, data_dir: Path, pid: int | None) -> None:
        args = [
            str(self._tool("pg_ctl")),
            "stop",
            "-w",
            "-m",
            "fast",
            "-t",
            str(stop_timeout_s_max),
            "-D",
            str(data_dir),
        ]
        try:
            self._run(args, stop_timeout_s_max + 10, "pg_ctl stop")
        except EmbeddedPostgresError:
            # Backstop: never leave a server behind, even if it lost its mind.
            if pid is not None and process_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise
        deadline = time.monotonic() + stop_timeout_s_max
        while pid is not None and process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    # Helpers ---------------------------------------------------------------------------

    def _run(self, args: list[str], timeout_s: int, what: str, *, as_owner: bool = True) -> None:
        base = self._require(self._base_dir)
        uid: int | None = None
        gid: int | None = None
        extra_groups: list[int] | None = None
        if as_owner and os.geteuid() == 0:
            owner = self._run_as_user()
            # Drop root's supplementary groups too, not only the uid.
            uid, gid, extra_groups = owner.pw_uid, owner.pw_gid, []
        try:
            result = subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=_clean_env(),
                # The unprivileged user may not be able to enter our working directory.
                cwd=base,
                check=False,
                user=uid,
                group=gid,
                extra_groups=extra_groups,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{what} took over {timeout_s} s; see {base / 'postgres.log'}"
            ) from exc
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            log = _tail(base / "postgres.log")
            raise EmbeddedPostgresError(
                f"{what} failed with exit code {result.returncode}: {detail}"
                + (f"\nserver log tail:\n{log}" if log else "")
                + f"\nset {DATABASE_URL_ENV} to use an existing database instead"
            )

    def _run_as_user(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self.run_as)
        except KeyError:
            raise EmbeddedPostgresError(
                f"PostgreSQL refuses to run as root and system user {self.run_as!r} does not "
                f"exist: create it (useradd --system {self.run_as}), pass run_as=<user>, run "
                f"as a non-root user, or set {DATABASE_URL_ENV}"
            ) from None

    def _tool(self, name: str) -> Path:
        bindir = self._require(self._bindir)
        path = bindir / name
        if not os.access(path, os.X_OK):
            found = shutil.which(name)
            if found is None:
                raise EmbeddedPostgresError(f"{name} not found in {bindir} or PATH: install it")
            return Path(found)
        return path

    def _running_port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("embedded PostgreSQL is not running: call start() first")
        return self._port

    @staticmethod
    def _read_pid(data_dir: Path) -> int | None:
        try:
            return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise EmbeddedPostgresError("embedded PostgreSQL is not running: call start() first")
        return value


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-log_tail_chars_max:].strip()
    except OSError:
        return ""


def _require_searchable(directory: Path, owner: pwd.struct_passwd) -> None:
    """Raise unless ``owner`` can reach ``directory``: initdb runs as that user, not as root."""
    groups = set(os.getgrouplist(owner.pw_name, owner.pw_gid))
    for path in (directory, *directory.parents):
        mode = path.stat()
        if mode.st_uid == owner.pw_uid:
            bit = stat.S_IXUSR
        elif mode.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            raise EmbeddedPostgresError(
                f"data_dir: user {owner.pw_name!r} (PostgreSQL does not run as root) cannot "
                f"enter {path}; choose a data directory under a path it can reach "
                f"(e.g. chmod o+x {path}) or leave data_dir unset for a temporary one"
            )
