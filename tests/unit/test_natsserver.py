"""nats-server's configuration: no monitoring port unless one is asked for."""

from __future__ import annotations

from pathlib import Path

from services.runtime.natsserver import NatsServer


def test_no_monitoring_by_default(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path, port=4222)
    assert "http" not in server.config_text()
    assert server.monitor_url is None


def test_monitoring_on_the_servers_host_when_asked(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path, port=4222, monitor_port=8222)
    assert "http: 127.0.0.1:8222\n" in server.config_text()
    assert server.monitor_url == "http://127.0.0.1:8222"
