"""TLS to nats-server, in the conventions of the ``nats`` CLI: a CA file to verify the
server's certificate with, and a client certificate and key for servers that ask for
one (``--tls-ca``, ``--tls-cert``, ``--tls-key``; ``NATS_CA``, ``NATS_CERT``,
``NATS_KEY``).

With any of them given, a connection is TLS or nothing: the server's certificate must
verify against the CA (the system's CAs without one) and its name match the URL's host,
and a server that does not offer TLS is refused before the credentials are sent.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TlsRefused(OSError):
    """The connection cannot be made safely: the server's certificate does not verify,
    the handshake failed, or the server does not offer TLS. Starting again will not help
    until the certificates or the server's configuration change."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA, the client certificate and its key are (any may be absent)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def wanted(self) -> bool:
        """True when any TLS option was given: then nothing but TLS is accepted."""
        return any((self.ca, self.cert, self.key))


def resolve_tls(
    ca: Path | str | None = None,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> TlsFiles:
    """The options given, else ``NATS_CA``, ``NATS_CERT``, ``NATS_KEY`` (as the nats CLI)."""
    env = os.environ if environ is None else environ

    def pick(given: Path | str | None, var: str) -> Path | None:
        value = given or env.get(var) or None
        return Path(value) if value else None

    return TlsFiles(pick(ca, "NATS_CA"), pick(cert, "NATS_CERT"), pick(key, "NATS_KEY"))


def client_context(files: TlsFiles) -> ssl.SSLContext | None:
    """The SSL context to connect with, or None when no TLS option was given;
    ``TlsRefused`` for a certificate without its key (or the reverse) or a file that
    cannot be loaded, naming it."""
    if not files.wanted:
        return None
    if bool(files.cert) != bool(files.key):
        raise TlsRefused("a TLS client certificate needs its key, and a key its certificate")
    try:
        context = ssl.create_default_context(cafile=str(files.ca) if files.ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsRefused(f"cannot load the CA file {files.ca}: {exc}") from exc
    if files.cert and files.key:
        try:
            context.load_cert_chain(str(files.cert), str(files.key))
        except (OSError, ssl.SSLError) as exc:
            raise TlsRefused(
                f"cannot load the client certificate {files.cert} with key {files.key}: {exc}"
            ) from exc
    return context


def refuse_plaintext(nc: Any) -> None:
    """Make ``nc`` (a nats-py Client, before it connects) refuse a server that did not
    switch the connection to TLS, before it sends its CONNECT (which carries the
    credentials). nats-py 2.16 upgrades to TLS only when the server's INFO asks for it,
    and builds CONNECT with ``_connect_command`` right after; the check wraps that."""
    build = nc._connect_command

    def checked() -> bytes:
        if not nc._server_info.get("tls_required"):
            raise TlsRefused(
                "the server does not offer TLS, but TLS options were given "
                "(--tls-ca/--tls-cert/--tls-key or NATS_CA/NATS_CERT/NATS_KEY)"
            )
        return bytes(build())

    nc._connect_command = checked
