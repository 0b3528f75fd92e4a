"""One settings object per process, filled by the CLI and passed in; never read deep inside."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_URL = "nats://127.0.0.1:4222"


def resolve_nats_url(explicit: str | None, environ: dict[str, str] | None = None) -> str:
    """``--nats-url``, else ``DOMED_NATS_URL``, else ``NATS_URL`` (as the nats CLI), else the embedded default."""
    env = os.environ if environ is None else environ
    return explicit or env.get("DOMED_NATS_URL") or env.get("NATS_URL") or DEFAULT_URL


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
    ssot: Path = Path("ssot")
    data_dir: Path = Path(".domed")
    name: str = ""
    stream: StreamSettings = field(default_factory=StreamSettings)
    request_timeout_s: float = 2.0
    # executor
    slots: int = 8
    drain_timeout_s: float = 10.0
    # projector
    rebuild: bool = False
