"""Who submitted a job: what the router believes of the ``Nats-Request-Info`` header.

nats-server adds that header (JSON: ``acc``, ``user``, ``name``, ``host``...) to a request
that crossed from a client's account into the router's through a service import with
``share: true``, replacing any header of that name the client sent. Inside one account
the server adds nothing and passes on whatever the client wrote, so the router believes
the header only when it names another account than the router's own:

- a request from the router's own account (the services, the admin) records no
  submitter, whatever header it carries;
- in the global account (``$G``, a server without accounts: the embedded ``domed up``)
  no request can come through an import, so none records one;
- a router that could not learn its own account believes nothing.

Anyone who can connect to the router's own account can therefore claim any identity:
that account holds the services and the admin only (deploy/nats/accounts.conf).

Pure: the shell asks the server for the account (``$SYS.REQ.USER.INFO``) and passes the
answer in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

from contracts import headers
from contracts.events import SubmittedBy

GLOBAL_ACCOUNT: Final = "$G"
"""The account of every client of a server that has no accounts configured."""


class _RequestInfo(msgspec.Struct, frozen=True):
    acc: str = ""
    user: str = ""
    name: str = ""
    host: str = ""


class _UserInfoData(msgspec.Struct, frozen=True):
    account: str = ""


class _UserInfo(msgspec.Struct, frozen=True):
    data: _UserInfoData | None = None


def account_of(user_info: bytes) -> str | None:
    """The account in a ``$SYS.REQ.USER.INFO`` reply; None for anything else (an error
    reply, another server's shape)."""
    try:
        info = msgspec.json.decode(user_info, type=_UserInfo)
    except msgspec.DecodeError:
        return None
    return info.data.account if info.data is not None and info.data.account else None


def submitted_by(request_headers: Mapping[str, str], own_account: str | None) -> SubmittedBy | None:
    """The submitter the server named in ``request_headers``, or None when it did not (see
    the module docstring for when the header is believed)."""
    raw = request_headers.get(headers.REQUEST_INFO)
    if raw is None or own_account is None or own_account == GLOBAL_ACCOUNT:
        return None
    try:
        info = msgspec.json.decode(raw, type=_RequestInfo)
    except msgspec.DecodeError:
        return None
    if not info.acc or info.acc == own_account:
        return None
    return SubmittedBy(
        account=info.acc, user=info.user or None, name=info.name or None, host=info.host or None
    )
