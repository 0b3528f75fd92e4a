"""TLS to nats-server, with certificates made by trustme:

- the three services and the CLI run a job end to end over TLS with client certificates
  (the server requires one);
- a service or the CLI refuses a server whose certificate does not verify, or that does
  not offer TLS when TLS options were given: exit 3, saying why, before any credentials;
- deploy/nats/cluster-tls forms its cluster over mutual TLS and serves clients over TLS.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from services.runtime.natsserver import NatsServer
from tests.integration.test_permissions import USERS, SecuredServer, wait_healthy
from tests.support import ROOT, ServiceProcess, run_cli


@dataclass
class Certs:
    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("domed-client@example.org")
    c = Certs(
        d / "ca.pem",
        d / "server.pem",
        d / "server-key.pem",
        d / "client.pem",
        d / "client-key.pem",
        d / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(c.ca))
    other.cert_pem.write_to_path(str(c.other_ca))
    server.cert_chain_pems[0].write_to_path(str(c.server))
    server.private_key_pem.write_to_path(str(c.server_key))
    client.cert_chain_pems[0].write_to_path(str(c.client))
    client.private_key_pem.write_to_path(str(c.client_key))
    return c


@pytest.fixture(scope="module")
def tls_server(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server that speaks TLS only and requires a client certificate from its CA."""
    config = (
        f'tls {{\n  cert_file: "{certs.server}"\n  key_file: "{certs.server_key}"\n'
        f'  ca_file: "{certs.ca}"\n  verify: true\n  timeout: 2\n}}\n'
    )
    server = NatsServer(store_dir=tmp_path_factory.mktemp("tls-nats"), extra_config=config)
    server.start()
    yield server
    server.stop()


def tls_args(certs: Certs, ca: Path | None = None) -> list[str]:
    return [
        "--tls-ca", str(ca or certs.ca), "--tls-cert", str(certs.client),
        "--tls-key", str(certs.client_key),
    ]  # fmt: skip


async def test_a_job_runs_end_to_end_over_tls(
    tls_server: NatsServer, certs: Certs, ssot: Path, tmp_path: Path
) -> None:
    procs = [
        ServiceProcess(name, tls_server.url, ssot, tmp_path / "data", *tls_args(certs)).start()
        for name in ("router", "executor", "projector")
    ]
    try:
        for proc in procs:
            await proc.wait_ready()
        r = await run_cli(
            "submit", "demo.echo", "-p", "text=over tls", "--follow",
            "--nats-url", tls_server.url, *tls_args(certs),
        )  # fmt: skip
        assert r.returncode == 0 and r.stdout == "over tls\n", r.stderr
        job_id = r.stderr.split()[0]
        show = await run_cli(
            "jobs", "show", job_id, "--json", "--nats-url", tls_server.url, *tls_args(certs)
        )
        assert show.returncode == 0 and json.loads(show.stdout)["state"] == "succeeded"
    finally:
        for proc in procs:
            proc.kill()
    # without a client certificate the server does not let it in
    bare = await run_cli("tools", "ls", "--nats-url", tls_server.url, "--tls-ca", str(certs.ca))
    assert bare.returncode == 3, bare.stderr


async def test_a_service_refuses_a_server_whose_certificate_does_not_verify(
    tls_server: NatsServer, certs: Certs, ssot: Path, tmp_path: Path
) -> None:
    common = ("--ssot", str(ssot), "--data-dir", str(tmp_path / "data"))
    started = time.monotonic()
    r = await run_cli(
        "router", *common, "--nats-url", tls_server.url, *tls_args(certs, certs.other_ca),
        timeout=30,
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "refusing NATS at nats://127.0.0.1:" in r.stderr, r.stderr
    assert "certificate verify failed" in r.stderr, r.stderr
    assert time.monotonic() - started < 20
    cli = await run_cli(
        "jobs", "ls", "--nats-url", tls_server.url, *tls_args(certs, certs.other_ca)
    )
    assert cli.returncode == 3 and "certificate verify failed" in cli.stderr, cli.stderr


async def test_tls_options_refuse_a_server_without_tls_before_sending_credentials(
    certs: Certs, ssot: Path, tmp_path: Path
) -> None:
    password = secrets.token_hex(8)
    plain = NatsServer(
        store_dir=tmp_path / "plain",
        extra_config=f'authorization {{ user: u, password: "{password}" }}\n',
    ).start()
    try:
        url = f"nats://u:{password}@127.0.0.1:{plain.port}"
        common = ("--ssot", str(ssot), "--data-dir", str(tmp_path / "data"))
        r = await run_cli("executor", *common, "--nats-url", url, "--tls-ca", str(certs.ca))
        assert r.returncode == 3 and "does not offer TLS" in r.stderr, r.stderr
        c = await run_cli("tools", "ls", "--nats-url", url, "--tls-ca", str(certs.ca))
        assert c.returncode == 3 and "does not offer TLS" in c.stderr, c.stderr
        for out in (r, c):
            assert password not in out.stdout + out.stderr
    finally:
        plain.stop()


@dataclass
class TlsNode(SecuredServer):
    """A deploy/nats/cluster-tls node with its certificate paths moved to the test's."""

    tls_dir: Path = Path("/nonexistent")

    def config_text(self) -> str:
        return super().config_text().replace("/etc/nats/domed/tls/", f"{self.tls_dir}/")

    def wait_ready(self, timeout_s: float) -> None:  # the client port speaks TLS: ask /healthz
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.host}:{self.http_port}/varz"
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, (
                self.log_path.read_text()
            )
            try:
                with urllib.request.urlopen(url, timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"node on {self.port} did not start")


async def test_the_tls_cluster_configs_form_a_cluster_over_mutual_tls(
    ssot: Path, tmp_path: Path
) -> None:
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))
    for name in ("server", "route"):
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(str(tls_dir / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(tls_dir / f"{name}-key.pem"))
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    ports: dict[int, int] = {}
    nodes = [
        TlsNode(
            store_dir=tmp_path / f"n{i}",
            template=ROOT / "deploy" / "nats" / "cluster-tls" / f"node{i}.conf",
            passwords=passwords,
            ports=ports,
            tls_dir=tls_dir,
        )
        for i in (1, 2, 3)
    ]
    try:
        for node in nodes:
            node.start()
        await wait_healthy(nodes)  # JetStream has a meta leader: the routes are up
        for node in nodes:
            with urllib.request.urlopen(
                f"http://{node.host}:{node.http_port}/routez", timeout=5
            ) as resp:
                routes = json.load(resp)["routes"]
            assert len({r["remote_name"] for r in routes}) == 2, routes
            assert not re.search(r"TLS .*handshake error", node.log_path.read_text())
        url = nodes[0].user_url("submitter")
        ok = await run_cli("tools", "ls", "--nats-url", url, "--tls-ca", str(tls_dir / "ca.pem"))
        # no router runs: reaching the server over TLS is what this shows
        assert ok.returncode == 1 and "no service answers" in ok.stderr, ok.stderr
    finally:
        for node in nodes:
            node.stop()
