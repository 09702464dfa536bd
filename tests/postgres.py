"""A throwaway PostgreSQL server for the tests: Debian's initdb and pg_ctl, a cluster in a temp dir, on
127.0.0.1 at a free port, password auth; a fresh database per test.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster belongs to the `postgres` account
Debian's package creates (or `nobody`), and initdb/pg_ctl run under it (subprocess `user=`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

SEARCH = "/usr/lib/postgresql"
START_TIMEOUT = 60
# Test speed over durability: the cluster is deleted at the end of the session.
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"


class PostgresUnavailable(Exception):
    """Neither a PostgreSQL server nor a way to run one here; the message says what is missing."""


def server_bin() -> Path:
    """The newest installed server's bin directory (Debian keeps initdb off PATH)."""
    found = sorted(Path(SEARCH).glob("*/bin/initdb"), key=lambda p: _version(p.parent.parent.name), reverse=True)
    on_path = shutil.which("initdb")
    for initdb in [*found, *([Path(on_path)] if on_path else [])]:
        if (initdb.parent / "pg_ctl").exists():
            return initdb.parent
    raise PostgresUnavailable(
        f"PostgreSQL's server programs (initdb, pg_ctl) are not installed (looked in {SEARCH}/*/bin and PATH); "
        "install Debian's postgresql package (scripts/test.sh does when run as root)"
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _owner() -> pwd.struct_passwd | None:
    """Who runs the server: None = this user; as root, an unprivileged account (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root and there is no postgres or nobody account to run PostgreSQL as")


@dataclass
class Cluster:
    bin: Path
    root: Path
    port: int
    password: str
    owner: pwd.struct_passwd | None
    user: str = "kontext"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    async def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        admin = await asyncpg.connect(self.url())
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return self.url(name)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        uid, gid = (None, None) if self.owner is None else (self.owner.pw_uid, self.owner.pw_gid)
        return subprocess.run(  # noqa: S603  # our own arguments
            [str(self.bin / argv[0]), *argv[1:]], capture_output=True, text=True, check=False, timeout=120,
            cwd=self.root, user=uid, group=gid, extra_groups=None if self.owner is None else [],
        )  # fmt: skip

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> Cluster:
    """initdb + pg_ctl start; raises PostgresUnavailable when nothing can run it, RuntimeError when it fails."""
    owner = _owner()
    root = Path(tempfile.mkdtemp(prefix="kontext-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    try:
        cluster = Cluster(server_bin(), root, 0, secrets.token_urlsafe(16), owner)
        _initdb(cluster)
        _start(cluster)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def _initdb(cluster: Cluster) -> None:
    password_file = cluster.root / "password"
    password_file.write_text(cluster.password, encoding="utf-8")
    if cluster.owner is not None:
        os.chown(password_file, cluster.owner.pw_uid, cluster.owner.pw_gid)
    done = cluster.run(
        "initdb", "-D", str(cluster.root / "data"), "-U", cluster.user, f"--pwfile={password_file}",
        "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
    )  # fmt: skip
    password_file.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def _start(cluster: Cluster) -> None:
    for _ in range(3):  # the free port may be taken between finding and binding it
        cluster.port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {cluster.port} -c unix_socket_directories={cluster.root}"
        done = cluster.run(
            "pg_ctl", "-D", str(cluster.root / "data"), "-l", str(cluster.root / "server.log"), "-w",
            "-t", str(START_TIMEOUT), "-o", f"{options} {SERVER_OPTIONS}", "start",
        )  # fmt: skip
        if done.returncode == 0:
            return
    log = (cluster.root / "server.log").read_text(encoding="utf-8", errors="replace")[-3000:]
    raise RuntimeError(f"pg_ctl start failed ({done.returncode}):\n{done.stderr[-2000:]}\n{log}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
