"""The deployment files are valid and wired as README.md says."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from server.config import Settings
from tests.servers import (
    nginx_binary,
    nginx_has_http2_directive,
    render_nginx_conf,
    self_signed_certificate,
)

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = (ROOT / "deploy" / "nginx.conf").read_text()
# The server block that proxies the app (HTTPS), and the plain-HTTP one that redirects.
APP_SERVER = NGINX_CONF[NGINX_CONF.index("listen 443 ssl;") :]
REDIRECT_SERVER = NGINX_CONF[NGINX_CONF.index("listen 80;") : NGINX_CONF.index("listen 443 ssl;")]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    return loaded


def location(name: str) -> str:
    match = re.search(r"location " + re.escape(name) + r" \{(.*?)\n        \}", APP_SERVER, re.S)
    assert match, f"no location {name}"
    return match.group(1)


def test_rendered_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    certificate, key = self_signed_certificate(tmp_path / "tls")
    for tls in (True, False):
        conf = tmp_path / "nginx.conf"
        rendered = render_nginx_conf(
            ["127.0.0.1:1", "127.0.0.1:2"],
            "127.0.0.1:3",
            redirect_listen="127.0.0.1:4",
            certificate=certificate,
            key=key,
            tls=tls,
            http2_directive=nginx_has_http2_directive(),
        )
        conf.write_text(rendered)
        result = subprocess.run(
            [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr


def test_nginx_serves_tls_only_and_redirects_plain_http() -> None:
    assert "return 301 https://$host$request_uri;" in REDIRECT_SERVER
    assert "location /.well-known/acme-challenge/" in REDIRECT_SERVER  # Let's Encrypt HTTP-01
    assert "proxy_pass" not in REDIRECT_SERVER
    assert "http2 on;" in APP_SERVER
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in APP_SERVER
    ciphers = re.search(r"ssl_ciphers ([^;]+);", APP_SERVER)
    assert ciphers and all(c.startswith("ECDHE-") for c in ciphers.group(1).split(":"))
    assert re.search(
        r'add_header Strict-Transport-Security "max-age=\d{8,}[^"]*" always;', APP_SERVER
    )
    assert "ssl_certificate /etc/nginx/tls/fullchain.pem;" in APP_SERVER
    assert "ssl_certificate_key /etc/nginx/tls/privkey.pem;" in APP_SERVER
    nginx = compose()["services"]["nginx"]
    assert any(v.endswith(":/etc/nginx/tls:ro") for v in nginx["volumes"])
    published = sorted(port.rsplit(":", 1)[1] for port in nginx["ports"])
    assert published == ["443", "80"]


def test_nginx_upstream_is_sticky_and_lists_the_compose_apps() -> None:
    upstream = re.search(r"upstream consultation_app \{(.*?)\}", NGINX_CONF, re.S)
    assert upstream
    body = upstream.group(1)
    assert re.search(r"^\s*(ip_hash|hash \S+ consistent);", body, re.M)
    servers = re.findall(r"server (app\d+):8080", body)
    app_services = [name for name in compose()["services"] if name.startswith("app")]
    assert sorted(servers) == sorted(app_services)
    assert len(servers) >= 2


def test_socketio_location_upgrades_websockets_and_outlives_heartbeats() -> None:
    socket_io = location("/socket.io/")
    assert "proxy_set_header Upgrade $http_upgrade;" in socket_io
    assert "proxy_set_header Connection $connection_upgrade;" in socket_io
    assert "proxy_buffering off;" in socket_io
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", socket_io).group(1))  # type: ignore[union-attr]
    defaults = Settings()
    assert read_timeout > 2 * (defaults.ping_interval + defaults.ping_timeout)
    assert "proxy_http_version 1.1;" in NGINX_CONF
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Real-IP"):
        assert f"proxy_set_header {header}" in NGINX_CONF
    assert "proxy_pass http://consultation_app;" in location("/")
    raw = location("/ws/chat")
    assert "proxy_set_header Upgrade $http_upgrade;" in raw
    assert "proxy_set_header Connection $connection_upgrade;" in raw
    raw_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", raw).group(1))  # type: ignore[union-attr]
    assert raw_timeout > 2 * defaults.ping_interval


def test_compose_wires_mongo_redis_apps_and_nginx() -> None:
    services = compose()["services"]
    assert services["mongo"]["image"].startswith("mongo:")
    assert "healthcheck" in services["mongo"]
    assert any("/data/db" in v for v in services["mongo"]["volumes"])
    assert services["redis"]["image"].startswith("redis:")
    apps = {name: spec for name, spec in services.items() if name.startswith("app")}
    assert len(apps) >= 2
    for spec in apps.values():
        env = spec["environment"]
        assert env["MONGODB_URL"].startswith("mongodb://mongo:")
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert "JWT_SECRET" in env
        assert "METRICS_TOKEN" in env  # Prometheus scrapes with it
        assert env["HOST"] == "0.0.0.0"
        assert spec["build"]["dockerfile"] == "Dockerfile"
        assert spec["depends_on"]["mongo"]["condition"] == "service_healthy"
    nginx = services["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert set(nginx["depends_on"]) >= set(apps)


def test_the_dockerfile_runs_the_server_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "server"]' in dockerfile
    assert re.search(r"^USER \w+", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile


def exported_series() -> set[str]:
    """Every series name the server's /metrics can carry (counters with _total, histograms
    with _bucket/_sum/_count), from the registry an app builds."""
    from server.app import build
    from tests.conftest import settings_for_tests

    registry = build(settings_for_tests()).metrics.registry
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, [""])
    }


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads(
        (ROOT / "deploy" / "grafana" / "dashboards" / "consultations.json").read_text()
    )
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bchat_[a-z_]+\b", target["expr"])
    }
    exported = exported_series()
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, sorted(queried - exported)
    # And every family is on the dashboard somewhere.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in queried}
    assert families <= shown, sorted(families - shown)


def test_prometheus_scrapes_every_app_and_grafana_is_provisioned() -> None:
    services = compose()["services"]
    apps = sorted(name for name in services if name.startswith("app"))
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    [job] = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for config in job["static_configs"] for t in config["targets"]]
    assert sorted(targets) == [f"{app}:8080" for app in apps]
    prometheus = services["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    # The scrape carries METRICS_TOKEN, which compose hands Prometheus as a file.
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/prometheus/metrics_token",
    }
    [config] = prometheus["configs"]
    assert config["target"] == "/etc/prometheus/metrics_token"
    assert "METRICS_TOKEN" in compose()["configs"][config["source"]]["content"]
    grafana = services["grafana"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboards = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())
    assert dashboards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    # /metrics is not on the public port.
    assert "return 404;" in location("= /metrics")
