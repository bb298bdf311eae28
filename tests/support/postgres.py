"""A throwaway PostgreSQL cluster on 127.0.0.1 for the tests: MLflow's production store.

sqlite serialises every write, so races between steps that write to one run at the same
moment (unique keys, read-then-write) only show on a server database. The cluster lives in
its own temporary directory under /tmp, listens on a free loopback port (unix socket in its
data directory), trusts local connections for user ``mlflow`` and holds database ``mlflow``.

PostgreSQL refuses to run as root: as root, its programs run as the ``postgres`` user through
``runuser``, so the directory is handed to that user (mkdtemp's 0700 directories and pytest's
tmp dirs are not traversable by it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.mlflow_server import free_port

BINARY_GLOB = "/usr/lib/postgresql/*/bin"
INSTALL_HINT = (
    "install it with `apt-get install -y postgresql` (Debian/Ubuntu; .ci/run does this), "
    "or point POSTGRES_BINDIR at a directory holding initdb, pg_ctl and createdb"
)
USER = "mlflow"
DATABASE = "mlflow"
# Durability is not what these tests are about: a throwaway cluster need not fsync.
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def find_bindir() -> Path:
    """PostgreSQL's server programs: $POSTGRES_BINDIR, else the newest /usr/lib/postgresql/N."""
    override = os.environ.get("POSTGRES_BINDIR")
    candidates = (
        [Path(override)]
        if override
        else sorted(
            (Path(found) for found in glob.glob(BINARY_GLOB)),
            key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.name)],
            reverse=True,
        )
    )
    needed = ("initdb", "pg_ctl", "createdb")
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in needed):
            return bindir
    raise RuntimeError(
        f"PostgreSQL server programs ({', '.join(needed)}) not found "
        f"in {override or BINARY_GLOB}: {INSTALL_HINT}"
    )


class PostgresCluster:
    """``initdb`` + ``pg_ctl start`` in a fresh /tmp directory; ``stop()`` removes it all."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.port = free_port()
        self.base: Path | None = None  # the temporary directory: data/ and postgres.log
        self._postmaster_pid: int | None = None
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                self._postgres_user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "PostgreSQL will not run as root and there is no `postgres` user to run "
                    f"it as: {INSTALL_HINT}"
                ) from None

    @property
    def data_dir(self) -> Path:
        assert self.base is not None, "not started"
        return self.base / "data"

    @property
    def sqlalchemy_uri(self) -> str:
        """The URI for ``mlflow server --backend-store-uri``: psycopg2 (plain ``postgresql://``
        would pick psycopg 3, which the test venv does not have)."""
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self, timeout_s: float = 60) -> PostgresCluster:
        self.base = Path(tempfile.mkdtemp(prefix="kvh-postgres-"))
        try:
            if self._as_root:
                os.chown(self.base, self._postgres_user.pw_uid, self._postgres_user.pw_gid)
            self._run(
                "initdb", "-D", self.data_dir, "-A", "trust", "-U", USER,
                "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write(f"port = {self.port}\nunix_socket_directories = '{self.data_dir}'\n")
                conf.writelines(f"{name} = {value}\n" for name, value in _SETTINGS.items())
            self._run(
                "pg_ctl", "-D", self.data_dir, "-l", self.base / "postgres.log",
                "-w", "-t", str(int(timeout_s)), "start",
            )  # fmt: skip
            self._postmaster_pid = int(
                (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            )
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; then kill whatever of this cluster is left, remove its dir."""
        if self.base is None:
            return
        if self._postmaster_pid is not None:
            leftovers = {self._postmaster_pid, *_children(self._postmaster_pid)}
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "-t", "30", "stop")
            leftovers |= set(_children(self._postmaster_pid))
            deadline = time.monotonic() + 5
            while (alive := [pid for pid in leftovers if _alive(pid)]) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.1)
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._postmaster_pid = None
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def log_tail(self, chars: int = 3000) -> str:
        if self.base is None or not (self.base / "postgres.log").exists():
            return ""
        return (self.base / "postgres.log").read_text(errors="replace")[-chars:]

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, program: str, *args: str | Path) -> None:
        command = [str(self.bindir / program), *map(str, args)]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command,
            cwd=self.base,  # postgres may not be allowed into the caller's directory
            env={**os.environ, "LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stdout}{result.stderr}"
                f"\n--- postgres.log ---\n{self.log_tail()}"
            )


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``: the postmaster's backends and helpers (each is
    its own process group, so they cannot be signalled as the postmaster's group)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = Path(stat).read_text()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            if int(text.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(text.split(" ", 1)[0]))
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie left for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
