"""Several real app processes, and a real nginx rendered from deploy/nginx.conf."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def http_json(url: str, timeout: float = 3) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@dataclass
class AppProcess:
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AppProcess:
        env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
        env.update(self.env, PORT=str(self.port), HOST="127.0.0.1")
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
                status, body = http_json(self.url + "/readyz")
                if status == 200:
                    return dict(body)
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.url} not ready after {timeout}s: {body}\n{self.log()}")

    def readiness(self) -> tuple[int, Any]:
        return http_json(self.url + "/readyz")

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


def render_nginx_conf(upstreams: list[str], listen: str) -> str:
    """deploy/nginx.conf with only the upstream servers and the listen address replaced."""
    source = (ROOT / "deploy" / "nginx.conf").read_text()
    server_lines = re.findall(r"^(\s*)server app\d+:8080( [^;]*)?;$", source, flags=re.M)
    assert server_lines, "deploy/nginx.conf has no 'server appN:8080' upstream lines"
    indent, params = server_lines[0]
    rendered_servers = "\n".join(f"{indent}server {u}{params};" for u in upstreams)
    source = re.sub(
        r"(^\s*server app\d+:8080( [^;]*)?;\n)+", rendered_servers + "\n", source, flags=re.M
    )
    rendered, count = re.subn(r"listen 80;", f"listen {listen};", source)
    assert count == 1
    return rendered


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    assert found, "nginx is missing: scripts/test installs it"
    return found


@dataclass
class Nginx:
    upstreams: list[str]
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(render_nginx_conf(self.upstreams, f"127.0.0.1:{self.port}"))
        command = [nginx_binary(), "-p", str(self.workdir), "-c", str(conf), "-e", "stderr"]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        with (self.workdir / "nginx.log").open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "-g", f"daemon off; pid {self.workdir / 'nginx.pid'};"],
                stdout=log,
                stderr=log,
            )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
