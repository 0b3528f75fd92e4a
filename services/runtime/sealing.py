"""Secret parameters sealed for the executors, so that only they can read them at rest.

The router seals a job's secret parameters with the executors' public key (a libsodium
sealed box: X25519 + XSalsa20-Poly1305, through PyNaCl) before it stores them in the
``domed-secrets`` bucket; an executor opens them with the private key only executors
hold. A NATS admin, a user allowed to read the bucket, or anyone with the server's store
files sees ciphertext, also of values purged long ago.

Key files hold the 32-byte key in base64 on one line (``secrets.key`` private, mode 0600;
``secrets.pub`` public). Which files a service uses (deploy/README.md, Secrets):

- an executor: ``Settings.secrets_key``, else ``<data dir>/secrets.key``;
- the router: ``Settings.secrets_public_key``, else ``<data dir>/secrets.pub``, else the
  public half of ``<data dir>/secrets.key``.

When none exists in the data dir, the first service to need one creates the pair there (the
one-machine set-up of ``domed up``, where all services share a data dir). An explicitly
named file that is missing is an error, never replaced.
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from pathlib import Path

import nacl.exceptions
import nacl.public

KEY_FILE = "secrets.key"
PUBLIC_FILE = "secrets.pub"


class SealingError(Exception):
    """A key file is missing or unusable, or a sealed value cannot be opened with our key."""


def seal(public_key: nacl.public.PublicKey, plaintext: bytes) -> bytes:
    """``plaintext`` sealed so that only the holder of the private key can open it."""
    return bytes(nacl.public.SealedBox(public_key).encrypt(plaintext))


def unseal(private_key: nacl.public.PrivateKey, sealed: bytes) -> bytes:
    """The plaintext of a value ``seal`` made for our public key; SealingError otherwise
    (another key pair, or the value was altered)."""
    try:
        return bytes(nacl.public.SealedBox(private_key).decrypt(sealed))
    except nacl.exceptions.CryptoError:
        raise SealingError(
            "the job's secrets were sealed with another key than this executor's "
            "(are the router's secrets.pub and this executor's secrets.key one pair?)"
        ) from None


def executor_key(explicit: Path | None, data_dir: Path) -> nacl.public.PrivateKey:
    """The private key an executor opens secrets with (created in ``data_dir`` if absent)."""
    if explicit is not None:
        return nacl.public.PrivateKey(_read_key(explicit))
    return _private_in(data_dir)


def router_key(explicit: Path | None, data_dir: Path) -> nacl.public.PublicKey:
    """The public key the router seals secrets with."""
    if explicit is not None:
        return nacl.public.PublicKey(_read_key(explicit))
    public = data_dir / PUBLIC_FILE
    if public.exists():
        return nacl.public.PublicKey(_read_key(public))
    return _private_in(data_dir).public_key


def _private_in(data_dir: Path) -> nacl.public.PrivateKey:
    path = data_dir / KEY_FILE
    if not path.exists():
        _create_once(path, nacl.public.PrivateKey.generate())
    return nacl.public.PrivateKey(_read_key(path))


def _create_once(path: Path, key: nacl.public.PrivateKey) -> None:
    """Write ``key`` to ``path`` unless another process got there first: services started
    together must end up with one pair, so the file appears whole, by a link, or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secrets-key-")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(bytes(key)) + b"\n")
        os.fsync(fd)
        os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _read_key(path: Path) -> bytes:
    try:
        raw = base64.b64decode(path.read_bytes().strip(), validate=True)
    except FileNotFoundError:
        raise SealingError(f"secrets key file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise SealingError(f"secrets key file {path} is unusable: {exc}") from None
    if len(raw) != 32:
        raise SealingError(f"secrets key file {path} does not hold a 32-byte key in base64")
    return raw
