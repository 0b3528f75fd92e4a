"""One settings object per process, filled by the CLI and passed in; never read deep inside."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.tls import TlsFiles

DEFAULT_URL = "nats://127.0.0.1:4222"
LIMIT_MODES = ("auto", "cgroup2", "cgroup1", "rlimit")
"""What ``--limits`` accepts (services/executor/limits.py); ``auto`` picks the best mode
this host allows."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?(.*)$", re.S)
_USERINFO_IN_TEXT = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^\s/,'\"]+@")


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list of them) without user info, so it can be printed:
    ``nats://router:secret@10.0.0.1:4222`` becomes ``nats://10.0.0.1:4222``.

    Use it wherever a NATS URL is logged or shown; a URL may carry a password or a token.
    """
    parts = []
    for part in url.split(","):
        lead = part[: len(part) - len(part.lstrip())]
        m = _SCHEME.match(part.lstrip())
        assert m is not None
        scheme, rest = m.group(1) or "", m.group(2)
        if "@" in rest:
            rest = rest.rsplit("@", 1)[1]
        parts.append(lead + scheme + rest)
    return ",".join(parts)


def redact_urls_in(text: str) -> str:
    """``text`` with the user info of every ``scheme://user:password@host`` in it removed."""
    return _USERINFO_IN_TEXT.sub(r"\1", text)


def resolve_nats_url(explicit: str | None, environ: dict[str, str] | None = None) -> str:
    """``--nats-url``, else ``DOMED_NATS_URL``, else ``NATS_URL`` (as the nats CLI), else the embedded default."""
    env = os.environ if environ is None else environ
    return explicit or env.get("DOMED_NATS_URL") or env.get("NATS_URL") or DEFAULT_URL


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6, ``:9464`` for every interface) as
    ``(host, port)``; ValueError saying what is wrong otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def resolve_nats_creds(explicit: str | None, environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return explicit or env.get("DOMED_NATS_CREDS") or env.get("NATS_CREDS") or None


@dataclass(frozen=True)
class StreamSettings:
    """Settings of the event stream and the work consumer. Every service agrees on them."""

    replicas: int = 1
    max_age_s: float = 0.0
    max_bytes: int = -1
    duplicate_window_s: float = 120.0
    ack_wait_s: float = 30.0
    max_ack_pending: int = 10_000


@dataclass(frozen=True)
class Settings:
    nats_url: str = DEFAULT_URL
    nats_creds: str | None = None
    # TLS to the server: CA, client certificate and key (services/runtime/tls.py)
    tls: TlsFiles = field(default_factory=TlsFiles)
    # the service this process runs (router, executor, projector), if the CLI started one;
    # it names the service's inbox prefix (services/runtime/connection.py, connect)
    service: str = ""
    ssot: Path = Path("ssot")
    data_dir: Path = Path(".domed")
    name: str = ""
    stream: StreamSettings = field(default_factory=StreamSettings)
    request_timeout_s: float = 2.0
    # HOST:PORT to serve Prometheus metrics on at /metrics; empty: none
    # (services/runtime/metrics.py)
    metrics_addr: str = ""
    # router: what one client request may store (docs/reference/api.md, too_large); the
    # body cap stays well under the server's max payload (1 MiB by default) so a job's
    # whole state always fits in one reply
    max_body_bytes: int = 256 * 1024
    max_param_bytes: int = 64 * 1024  # each parameter's value, as JSON
    max_param_depth: int = 32  # nesting of a parameter's value
    max_labels_bytes: int = 16 * 1024  # all labels, keys and values, as JSON
    max_reason_bytes: int = 1024  # a cancel's reason, UTF-8
    # router: the public key secrets are sealed with (services/runtime/sealing.py)
    secrets_public_key: Path | None = None
    # router: how long a job's sealed secrets may wait in domed-secrets for an executor
    secrets_ttl_s: float = 7 * 24 * 3600.0
    # executor: the private key that opens the secrets (services/runtime/sealing.py)
    secrets_key: Path | None = None
    # executor
    slots: int = 8
    drain_timeout_s: float = 10.0
    # adopt the orphans of jobs' processes (executor/adopted.py); off only when the
    # executor is embedded in a process that has children of its own (the tests)
    adopt_orphans: bool = True
    # how jobs' resource limits are enforced: auto | cgroup2 | cgroup1 | rlimit
    # (services/executor/limits.py)
    limits: str = "auto"
    # projector
    rebuild: bool = False
    # how long a finished job stays in the store and domed-jobs after it ended; None: as
    # long as the stream keeps events (its max age), 0: forever (services/projector/retention.py)
    retain_s: float | None = None
    # `domed up`: router, executor and projector serve metrics on 127.0.0.1 at this port,
    # the next and the one after (0: none)
    metrics_port: int = 0
