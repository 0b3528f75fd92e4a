"""Keeping a service's NATS credentials out of reach of the jobs it runs.

A job runs beside the executor: as the same user unless ``--job-user`` says otherwise.
Such a job can read ``/proc/<pid>/environ`` of any process of its user, and that file
shows the environment the process started with (a NATS URL with its password, say)
whatever the process removed since. So once a service has read its settings it:

- removes the credential variables from its own environment, so nothing it starts
  inherits them (a job's ``env_allowlist`` cannot pass them on either);
- makes itself non-dumpable (``PR_SET_DUMPABLE`` 0): its ``/proc/<pid>`` files
  (``environ``, ``mem``, ``fd``) then belong to root, and no process of its user can read
  them or attach to it; only root (CAP_SYS_PTRACE) still can.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, MutableMapping

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3

CREDENTIAL_VARS = frozenset(
    {
        "DOMED_NATS_URL",
        "NATS_URL",
        "NATS_CREDS",
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_TOKEN",
        "NATS_NKEY",
        "NATS_KEY",
        "NATS_CERT",
        "NATS_CA",
    }
)
"""Where a NATS URL, user, password, token, key, creds file or TLS client certificate
(and the CA that goes with it) may be given to domed or the ``nats`` CLI: never passed on
to a job."""


def without_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` without the credential variables."""
    return {k: v for k, v in environ.items() if k not in CREDENTIAL_VARS}


def protect_process(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Remove the credential variables from ``environ`` and make this process
    non-dumpable; False if the kernel refused the latter."""
    for name in CREDENTIAL_VARS:
        environ.pop(name, None)
    return set_dumpable(False)


def set_dumpable(dumpable: bool) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, int(dumpable), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def is_dumpable() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)) == 1
