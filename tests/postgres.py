"""A real PostgreSQL server for the tests: initdb in a temporary folder, 127.0.0.1 on a
free port, fsync off, password authentication; stopped and deleted at the end.

The server's binaries are found in $MLINFRA_PG_BIN, /usr/lib/postgresql/<15 first>/bin
(Debian, Ubuntu), or on PATH. initdb refuses to run as root: as root, the server runs
as the `postgres` user. `.ci/run` installs the server where it is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

USER = "mlinfra"
PASSWORD = "s3cret-pass"  # a throwaway server's
DATABASE = "mlinfra"


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are: PostgreSQL 15 preferred, then the newest."""
    named = os.environ.get("MLINFRA_PG_BIN")
    if named:
        return Path(named) if (Path(named) / "initdb").exists() else None
    debian = Path("/usr/lib/postgresql")
    versions = sorted((p for p in debian.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: (p.parent.name != "15", -int(p.parent.name)
                                     if p.parent.name.isdigit() else 0))
    if versions:
        return versions[0]
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One throwaway server; `url()` names a schema of its own in its database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="mlinfra-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, user="postgres")

    def _run(self, *args: str) -> None:
        argv = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_postgres:
            shutil.chown(pwfile, user="postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        for attempt in range(5):
            self.port = _free_port()
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                          "-t", "60", "start", "-o",
                          f"-c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off "
                          f"-c synchronous_commit=off -c full_page_writes=off "
                          f"-c unix_socket_directories={self.root} -c max_connections=200")
                break
            except RuntimeError:
                if attempt == 4:
                    raise
        import psycopg

        with psycopg.connect(self.url(database="postgres"), password=PASSWORD,
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def stop(self) -> None:
        try:
            if self.port:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, schema: str | None = None, database: str = DATABASE,
            password: str | None = None) -> str:
        auth = f"{USER}:{password}" if password is not None else USER
        query = f"?schema={schema}" if schema else ""
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}{query}"

    def new_schema(self) -> str:
        return f"t_{uuid.uuid4().hex[:12]}"

    def sql(self, statement: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run one statement as the test's own client; returns its rows, if any."""
        import psycopg

        with psycopg.connect(self.url(), password=PASSWORD, autocommit=True) as conn:
            cur = conn.execute(statement, args or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []
