"""services.router.identity: the submitter is believed only from the server, which names
another account than the router's own; and the tool of a per-tool submit is the subject's."""

from __future__ import annotations

import json

import pytest

from contracts import headers
from contracts.api import ToolSubmitRequest
from contracts.errors import DomedError, ErrorCode
from contracts.events import SubmittedBy
from services.router.core import tool_submit
from services.router.identity import account_of, submitted_by

INFO = json.dumps(
    {
        "start": "2026-12-04T22:41:00.768089277Z",
        "host": "127.0.0.1",
        "id": 8,
        "acc": "CLIENTS",
        "user": "ci",
        "name": "ci-bot",
        "lang": "python3",
        "ver": "2.16.0",
        "rtt": 344963,
        "server": "NDNUJ3",
        "kind": "Client",
        "client_type": "nats",
    }
)


@pytest.mark.parametrize(
    ("request_headers", "own", "expected"),
    [
        (
            {headers.REQUEST_INFO: INFO},
            "DOMED",
            SubmittedBy(account="CLIENTS", user="ci", name="ci-bot", host="127.0.0.1"),
        ),
        ({headers.REQUEST_INFO: json.dumps({"acc": "CLIENTS"})}, "DOMED", SubmittedBy("CLIENTS")),
        # from the router's own account: the server added nothing, a client wrote it
        ({headers.REQUEST_INFO: json.dumps({"acc": "DOMED", "user": "x"})}, "DOMED", None),
        # one account for everyone: no import, so no header is the server's
        ({headers.REQUEST_INFO: INFO}, "$G", None),
        # the router does not know its account: it believes nothing
        ({headers.REQUEST_INFO: INFO}, None, None),
        ({}, "DOMED", None),
        ({headers.REQUEST_INFO: "not json"}, "DOMED", None),
        ({headers.REQUEST_INFO: json.dumps({"acc": 5})}, "DOMED", None),
        ({headers.REQUEST_INFO: json.dumps({"user": "x"})}, "DOMED", None),
    ],
)
def test_the_submitter_is_believed_only_from_another_account(
    request_headers: dict[str, str], own: str | None, expected: SubmittedBy | None
) -> None:
    assert submitted_by(request_headers, own) == expected


@pytest.mark.parametrize(
    ("reply", "account"),
    [
        (b'{"server":{"name":"n"},"data":{"user":"router","account":"DOMED"}}', "DOMED"),
        (b'{"server":{"name":"n"},"data":{"user":"","account":"$G"}}', "$G"),
        (b'{"error":{"code":503}}', None),
        (b"", None),
        (b"[1]", None),
    ],
)
def test_the_account_is_read_from_the_user_info_reply(reply: bytes, account: str | None) -> None:
    assert account_of(reply) == account


def test_a_per_tool_submit_runs_the_subjects_tool() -> None:
    req = tool_submit(
        "domed.jobs.submit.python.pytest",
        ToolSubmitRequest(params={"a": 1}, labels={"k": "v"}, timeout_s=5, idempotency_key="i"),
    )
    assert (req.tool, req.params, req.labels, req.timeout_s, req.idempotency_key) == (
        "python.pytest",
        {"a": 1},
        {"k": "v"},
        5,
        "i",
    )
    same = tool_submit("domed.jobs.submit.demo.echo", ToolSubmitRequest(tool="demo.echo"))
    assert same.tool == "demo.echo"


def test_a_body_naming_another_tool_is_an_invalid_request() -> None:
    with pytest.raises(DomedError) as caught:
        tool_submit("domed.jobs.submit.demo.echo", ToolSubmitRequest(tool="files.archive"))
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert "files.archive" in caught.value.message and "demo.echo" in caught.value.message
