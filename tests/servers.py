"""Launchers for every real server the tests run, one of each kind:

- ``serve`` — an aiohttp application (ours or a fake) in this process, on a free port;
- ``AppProcess`` — ``python -m server`` as users start it, in a clean environment;
- ``ExternalServer`` — a server binary (redis-server, SecantusDB, nginx) on a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
KEPT_ENVIRONMENT = ("PATH", "HOME", "LANG", "SYSTEMROOT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a server process: nothing of this machine's settings leaks in."""
    env = {k: v for k, v in os.environ.items() if k in KEPT_ENVIRONMENT}
    env.setdefault("PATH", "/usr/bin:/bin")
    env.update(extra)
    return env


def http_json(url: str, timeout: float = 3, headers: Mapping[str, str] | None = None) -> Any:
    """``(status, body)`` of a GET whose answer is JSON."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


# -- in this process ------------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    app: web.Application


@contextlib.asynccontextmanager
async def serve(app: web.Application, *, shutdown_timeout: float = 1) -> AsyncIterator[Served]:
    """Run ``app`` on a free loopback port until the block ends."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield Served(f"http://{host}:{port}", app)
    finally:
        await runner.cleanup()


# -- server binaries ------------------------------------------------------------------------------


@dataclass
class ExternalServer:
    """A real server binary on a port of its own, started and killed by the tests."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> ExternalServer:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)
        return self

    def terminate(self) -> None:
        """A clean stop (SIGTERM), waited for."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def binary(name: str, *extra_dirs: str) -> str:
    found = shutil.which(name) or next(
        (p for d in extra_dirs if (p := shutil.which(name, path=d))), None
    )
    assert found, f"{name} is missing: scripts/test installs it"
    return found


@dataclass
class MongoServer(ExternalServer):
    """SecantusDB, a MongoDB-wire server."""

    storage_path: str = ":memory:"  # a directory keeps data across restarts

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def command(self) -> list[str]:
        executable = binary("secantusd-py", os.path.dirname(sys.executable))
        address = ["--host", "127.0.0.1", "--port", str(self.port)]
        return [executable, *address, "--storage-path", self.storage_path]


@dataclass
class RedisServer(ExternalServer):
    """Our own redis-server, never a system instance."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        options = {"--port": str(self.port), "--bind": "127.0.0.1", "--save": ""}
        return [binary("redis-server"), *sum(options.items(), ()), "--appendonly", "no"]


# -- python -m server -----------------------------------------------------------------------------


@dataclass
class AppProcess:
    """``python -m server`` in a clean environment, logging to a file."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AppProcess:
        env = clean_env(**self.env, PORT=str(self.port), HOST="127.0.0.1")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=log, stderr=log
            )
        wait_for_port(self.port)
        return self

    def wait_ready(self, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            try:
                status, body = self.readiness()
                if status == 200:
                    return dict(body)
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.url} not ready after {timeout}s: {body}\n{self.log()}")

    def readiness(self) -> tuple[int, Any]:
        result: tuple[int, Any] = http_json(self.url + "/readyz")
        return result

    def connections(self) -> int:
        return int(http_json(self.url + "/healthz")[1]["connections"])

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# -- nginx, from deploy/nginx.conf ----------------------------------------------------------------


def render_nginx_conf(
    upstreams: list[str],
    listen: str,
    *,
    redirect_listen: str,
    certificate: Path,
    key: Path,
    tls: bool = True,
    http2_directive: bool = True,
) -> str:
    """deploy/nginx.conf with only the upstream servers, the listen addresses and the
    certificate paths replaced. ``tls=False`` serves the app's server block as plain HTTP on
    ``listen`` (the tests that are not about TLS); an nginx older than 1.25.1 gets HTTP/2 as
    the ``listen`` parameter it knows instead of ``http2 on;``."""
    source = (ROOT / "deploy" / "nginx.conf").read_text()
    server_lines = re.findall(r"^(\s*)server app\d+:8080( [^;]*)?;$", source, flags=re.M)
    assert server_lines, "deploy/nginx.conf has no 'server appN:8080' upstream lines"
    indent, params = server_lines[0]
    rendered_servers = "\n".join(f"{indent}server {u}{params};" for u in upstreams)
    source = re.sub(
        r"(^\s*server app\d+:8080( [^;]*)?;\n)+", rendered_servers + "\n", source, flags=re.M
    )
    listen_params = " ssl" if tls else ""
    if tls and not http2_directive:
        listen_params += " http2"
    replacements = {
        "listen 80;": f"listen {redirect_listen};",
        "listen 443 ssl;": f"listen {listen}{listen_params};",
        "http2 on;": "http2 on;" if tls and http2_directive else "",
        "/etc/nginx/tls/fullchain.pem;": f"{certificate};",
        "/etc/nginx/tls/privkey.pem;": f"{key};",
    }
    for old, new in replacements.items():
        assert source.count(old) == 1, f"deploy/nginx.conf should have {old!r} once"
        source = source.replace(old, new)
    return source


def nginx_has_http2_directive() -> bool:
    """``http2 on;`` exists from nginx 1.25.1 (Debian 12 ships 1.22)."""
    result = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True)
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", result.stderr + result.stdout)
    assert found, result.stderr
    return tuple(int(part) for part in found.groups()) >= (1, 25, 1)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost made with openssl (EC P-256, two days)."""
    folder.mkdir(parents=True, exist_ok=True)
    certificate, key = folder / "fullchain.pem", folder / "privkey.pem"
    if not certificate.exists():
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(certificate), "-days", "2",
                "-subj", "/CN=localhost",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return certificate, key


def nginx_binary() -> str:
    return binary("nginx", "/usr/sbin")


@dataclass
class Nginx(ExternalServer):
    """deploy/nginx.conf in front of ``upstreams``. With ``tls`` it serves HTTPS/WSS on
    ``port`` (a self-signed certificate, :attr:`certificate`) and redirects plain HTTP from
    ``redirect_port``; without, the same server block answers plain HTTP on ``port``."""

    upstreams: list[str] = field(default_factory=list)
    workdir: Path = Path(".")
    tls: bool = False
    redirect_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def certificate(self) -> Path:
        return self.workdir / "tls" / "fullchain.pem"

    def command(self) -> list[str]:
        conf = self.workdir / "nginx.conf"
        return [nginx_binary(), "-p", str(self.workdir), "-c", str(conf), "-e", "stderr"]

    def start(self) -> Nginx:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        certificate, key = self_signed_certificate(self.workdir / "tls")
        conf.write_text(
            render_nginx_conf(
                self.upstreams,
                f"127.0.0.1:{self.port}",
                redirect_listen=f"127.0.0.1:{self.redirect_port}",
                certificate=certificate,
                key=key,
                tls=self.tls,
                http2_directive=nginx_has_http2_directive(),
            )
        )
        check = subprocess.run([*self.command(), "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        with (self.workdir / "nginx.log").open("ab") as log:
            self.process = subprocess.Popen(
                [*self.command(), "-g", f"daemon off; pid {self.workdir / 'nginx.pid'};"],
                stdout=log,
                stderr=log,
            )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self.terminate()


# -- a Redis Cluster (three masters, no replicas) -------------------------------------------------


@dataclass
class RedisClusterNode(ExternalServer):
    bus_port: int = field(default_factory=free_port)
    workdir: Path = Path(".")

    def command(self) -> list[str]:
        options = {
            "--port": str(self.port),
            "--bind": "127.0.0.1",
            "--cluster-enabled": "yes",
            "--cluster-port": str(self.bus_port),
            "--cluster-config-file": str(self.workdir / f"nodes-{self.port}.conf"),
            "--cluster-node-timeout": "2000",
            "--save": "",
            "--appendonly": "no",
            "--dir": str(self.workdir),
        }
        return [binary("redis-server"), *sum(options.items(), ())]

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [binary("redis-cli"), "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout.strip()

    @property
    def node_id(self) -> str:
        return self.cli("cluster", "myid")


@dataclass
class RedisCluster:
    """Three masters on loopback, created with ``redis-cli --cluster create``."""

    workdir: Path
    nodes: list[RedisClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, masters: int = 3) -> RedisCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = [RedisClusterNode(workdir=self.workdir) for _ in range(masters)]
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = ["--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(
            [binary("redis-cli"), *create],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        self.wait_consistent()
        return self

    def wait_consistent(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [node.cli("cluster", "info") for node in self.nodes]
            if all("cluster_state:ok" in info for info in infos):
                slots = {node.cli("cluster", "slots") for node in self.nodes}
                if len(slots) == 1:  # every node sees the same slot map
                    return
            time.sleep(0.2)
        raise TimeoutError("the Redis Cluster did not become consistent")

    def owner_of(self, slot: int) -> RedisClusterNode:
        for node in self.nodes:
            for line in node.cli("cluster", "nodes").splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for span in fields[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return node
        raise LookupError(f"no node owns slot {slot}")

    def move_slot(self, slot: int, to: RedisClusterNode) -> None:
        """Move one slot (and its keys) to another master, as a resharding does."""
        source = self.owner_of(slot)
        if source is to:
            return
        to.cli("cluster", "setslot", str(slot), "importing", source.node_id)
        source.cli("cluster", "setslot", str(slot), "migrating", to.node_id)
        while keys := source.cli("cluster", "getkeysinslot", str(slot), "100").split():
            source.cli("migrate", "127.0.0.1", str(to.port), "", "0", "5000", "keys", *keys)
        for node in self.nodes:
            node.cli("cluster", "setslot", str(slot), "node", to.node_id)
        self.wait_consistent()

    def shard_channels(self, node: RedisClusterNode, pattern: str = "*") -> list[str]:
        return node.cli("pubsub", "shardchannels", pattern).split()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
