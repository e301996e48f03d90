"""A real PostgreSQL server for the tests: Debian's binaries, a cluster in a temporary folder, 127.0.0.1 on a
free port, trust authentication. As root the server runs as the ``postgres`` user (it refuses root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.ports import free_port

BIN_DIRS = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14", "13")]


def pg_bin() -> Path | None:
    for d in BIN_DIRS:
        if (d / "initdb").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found else None




class PgServer:
    """``start()`` / ``stop()`` / ``restart()``; ``new_database()`` → a URL of an empty, migrated database."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql; make system-deps)")
        self.root = Path(tempfile.mkdtemp(prefix="l4e-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._user = None
        if os.geteuid() == 0:
            self._user = "postgres"
            pw = pwd.getpwnam(self._user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--locale=C", "-E", "UTF8")
        self._template: str | None = None

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / tool), *args]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start and wait until it accepts connections; a failure raises with pg_ctl's output and the log's tail."""
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        done = self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "60",
                         "start", check=False)
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start (pg_ctl exit {done.returncode}): {done.stdout}"
                               f"{done.stderr}\n--- server log ---\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop and wait until the postmaster is gone (escalating to ``immediate`` if ``mode`` does not get there
        in 30 s), so that a ``start`` right after never meets the old server."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)
        if self.running() and mode != "immediate":
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", check=False)
        if self.running():
            raise RuntimeError(f"PostgreSQL did not stop\n--- server log ---\n{self.log_tail()}")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.root / "log").read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no server log: {exc})"

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh database with the service's schema (copied from a template migrated once)."""
        import psycopg

        from agent.lookout_local import migrate

        with psycopg.connect(self.url(), autocommit=True) as conn:
            if self._template is None:
                self._template = "l4e_template"
                conn.execute(f"CREATE DATABASE {self._template}")
                migrate.upgrade(self.url(self._template))
            name = "t_" + uuid.uuid4().hex[:12]
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {self._template}")
        return self.url(name)
