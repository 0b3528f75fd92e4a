"""URLs are printed without their user info; each service has an inbox prefix of its own."""

from __future__ import annotations

import pytest

from services.runtime.connection import inbox_prefix
from services.runtime.settings import redact_url, redact_urls_in


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://router:s3cret@127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://token@host:4222", "nats://host:4222"),
        ("tls://u:p@nats.example.com", "tls://nats.example.com"),
        ("user:pw@host:4222", "host:4222"),  # nats-py adds nats:// itself
        ("nats://u:p@ss@host:1", "nats://host:1"),  # an unescaped @ in the password
        ("nats://u:p%40ss@host:1", "nats://host:1"),
        (
            "nats://r:a@127.0.0.1:15231,nats://r:a@127.0.0.1:15232, nats://r:a@127.0.0.1:15233",
            "nats://127.0.0.1:15231,nats://127.0.0.1:15232, nats://127.0.0.1:15233",
        ),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_urls_in_text() -> None:
    text = "router ready: 3 tools, NATS nats://router:pw@10.0.0.1:4222,nats://router:p@w@h:2"
    assert redact_urls_in(text) == "router ready: 3 tools, NATS nats://10.0.0.1:4222,nats://h:2"
    assert redact_urls_in("no url here, a@b") == "no url here, a@b"
    assert redact_urls_in("see http://host/path@x") == "see http://host/path@x"


@pytest.mark.parametrize(
    ("name", "service", "prefix"),
    [
        ("domed-router", "", "_INBOX_domed-router"),
        ("domed-projector", "", "_INBOX_domed-projector"),
        ("domed-executor", "", "_INBOX_domed-executor"),
        # a custom --name: the service kind names the prefix, so the allowlist still fits
        ("gpu-box-7", "executor", "_INBOX_domed-executor"),
        ("domed-provision-router", "router", "_INBOX_domed-router"),
        # no kind known: the name, made one subject token
        ("my.exec *1", "", "_INBOX_my_exec__1"),
    ],
)
def test_inbox_prefix(name: str, service: str, prefix: str) -> None:
    assert inbox_prefix(name, service) == prefix
