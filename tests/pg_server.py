"""A throwaway PostgreSQL server for the test session.

:class:`PgServer` runs ``initdb`` into a fresh temporary folder and starts ``postgres`` on
127.0.0.1 and a free port, with its unix socket in that folder and durability switched off
(``fsync``, ``synchronous_commit``, ``full_page_writes``): the data dies with the session
anyway. PostgreSQL refuses to run as root, so under root (as in CI) the folder is handed to
the ``postgres`` system user (or ``nobody``) and the server runs through ``runuser``.

Run it alone to get a server for manual work: ``python tests/pg_server.py`` prints a DSN
and serves until interrupted.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

__all__ = (
    "INSTALL_HINT",
    "PgServer",
    "ServerNotFound",
    "assert_no_leaked_connections",
    "drop_schema",
    "find_bindir",
    "new_schema_name",
)

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or under "
    "/usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: apt-get install postgresql) "
    "or set SIDECARS_TEST_PG_DSN to an existing server's DSN"
)


class ServerNotFound(RuntimeError):
    """No ``initdb``/``pg_ctl`` to start a server with."""


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, then the newest
    ``/usr/lib/postgresql/<version>/bin``.

    Raises:
        ServerNotFound: neither place has both.
    """
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: _version_key(Path(p).parent.name), reverse=True)
    candidates.extend(Path(p) for p in versions)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise ServerNotFound(INSTALL_HINT)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise ServerNotFound("running as root, but neither a 'postgres' nor a 'nobody' user exists")


class PgServer:
    """One PostgreSQL server in a temporary folder, started and stopped by the caller.

    Args:
        bindir: the folder of ``initdb`` and ``pg_ctl`` (found with :func:`find_bindir`
            by default).
    """

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = find_bindir() if bindir is None else bindir
        self.root = Path(tempfile.mkdtemp(prefix="sidecars-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.user: str | None = _unprivileged_user() if os.geteuid() == 0 else None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o700)

    @property
    def dsn(self) -> str:
        """A DSN for the ``postgres`` superuser over TCP (trust authentication)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, check=check, timeout=120
        )

    def start(self) -> str:
        """Create the cluster and start the server; return its DSN.

        Raises:
            RuntimeError: initdb or the server failed (the message carries their output).
        """
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed:\n{exc.stdout}\n{exc.stderr}") from exc
        # The port is free when chosen but may be taken before the server binds it.
        last = ""
        for _ in range(5):
            self.port = _free_port()
            options = " ".join(
                [
                    "-h 127.0.0.1",
                    f"-p {self.port}",
                    f"-k {self.root}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=300",
                ]
            )
            result = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
                check=False,
            )
            if result.returncode == 0:
                return self.dsn
            last = f"{result.stdout}\n{result.stderr}\n{self._log_tail()}"
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not start:\n{last}")

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (fast: nothing in it is worth a checkpoint) and delete its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(
                    "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def new_schema_name() -> str:
    """A schema name no other test uses."""
    return f"t_{uuid.uuid4().hex}"


async def drop_schema(dsn: str, name: str) -> None:
    """Drop a test's schema and everything in it."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def assert_no_leaked_connections(store: object) -> None:
    """Fail when a PostgresStore's pool still has connections checked out."""
    pool = getattr(store, "pool", None)
    if pool is not None:
        in_use = pool.get_size() - pool.get_idle_size()
        assert in_use == 0, f"{in_use} pool connection(s) still checked out at teardown"


if __name__ == "__main__":
    server = PgServer()
    print(server.start(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
