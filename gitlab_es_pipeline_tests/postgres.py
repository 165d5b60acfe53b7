"""A real PostgreSQL server in a temporary folder, for the tests (initdb + pg_ctl)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import psycopg2

from gitlab_es_pipeline_tests.processes import free_port


def _bin_dir() -> str | None:
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(candidates[-1]) if candidates else None


class TempPostgres:
    """initdb refuses to run as root, so as root the server runs as the `postgres` user."""

    def __init__(self, root: Path, durable: bool = False) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
        self.bin = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.user = "dagster"
        self.database = "dagster"
        # The tests need no durability (fsync off: faster); a benchmark measures a server
        # configured as in production.
        self.durable = durable

    def _run(self, *args: str) -> None:
        command = [os.path.join(self.bin, args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd="/")

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> TempPostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        self._run(
            "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database
        )
        return self

    def new_database(self, name: str) -> str:
        """An empty database of its own for a test; its URL."""
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
