"""Example messages for the reference pages: one job of ``demo.echo`` seen through every
event and every endpoint.

Each example is checked against the contract's JSON Schema of its message when the pages
are generated (``checked``), so a change to the contract that makes one wrong fails
``just schemas`` and the drift test instead of leaving a wrong example in the docs.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from contracts.schemas import all_schemas

JOB = "01J9Z3K8M4Q2W5E7R1T6Y8U0PA"
SHA = "7663ca34b94a62ed9abc5c52be1b725e3a1b9b0533ba66f41ce06deaaff1a98f"

EVENTS: dict[str, dict[str, Any]] = {
    "queued": {
        "kind": "queued",
        "job_id": JOB,
        "tool": "demo.echo",
        "tool_version": 1,
        "manifest_sha256": SHA,
        "params": {"text": "hello"},
        "submitted_at": "2026-12-04T09:30:00.120000Z",
        "timeout_s": 30.0,
        "labels": {"team": "ci"},
        "submitted_by": {
            "account": "CLIENTS",
            "user": "ci",
            "name": "ci-runner-7",
            "host": "10.0.4.17",
        },
    },
    "cancel": {
        "kind": "cancel",
        "job_id": JOB,
        "requested_at": "2026-12-04T09:30:00.400000Z",
        "reason": "wrong input",
    },
    "started": {
        "kind": "started",
        "job_id": JOB,
        "executor": "build-3-41822",
        "pid": 41907,
        "attempt": 1,
        "started_at": "2026-12-04T09:30:00.125000Z",
    },
    "log": {
        "kind": "log",
        "job_id": JOB,
        "attempt": 1,
        "stream": "stdout",
        "seq": 0,
        "lines": ["hello"],
        "ts": "2026-12-04T09:30:00.127000Z",
    },
    "progress": {
        "kind": "progress",
        "job_id": JOB,
        "attempt": 1,
        "current": 3,
        "total": 5,
        "percent": 60.0,
        "ts": "2026-12-04T09:30:00.300000Z",
    },
    "terminal": {
        "kind": "terminal",
        "job_id": JOB,
        "state": "succeeded",
        "exit_code": 0,
        "started_at": "2026-12-04T09:30:00.125000Z",
        "finished_at": "2026-12-04T09:30:00.129000Z",
        "duration_s": 0.004,
        "attempt": 1,
        "lines": {"stdout": 1, "stderr": 0},
        "truncated": False,
        "signals_sent": [],
        "rusage": {"max_rss_kb": 1664, "user_s": 0.0, "sys_s": 0.001},
    },
}

_STATE = {
    "job_id": JOB,
    "tool": "demo.echo",
    "tool_version": 1,
    "params": {"text": "hello"},
    "labels": {"team": "ci"},
    "submitted_by": {
        "account": "CLIENTS",
        "user": "ci",
        "name": "ci-runner-7",
        "host": "10.0.4.17",
    },
    "state": "succeeded",
    "submitted_at": "2026-12-04T09:30:00.120000Z",
    "timeout_s": 30.0,
    "attempt": 1,
    "started_at": "2026-12-04T09:30:00.125000Z",
    "finished_at": "2026-12-04T09:30:00.129000Z",
    "duration_s": 0.004,
    "exit_code": 0,
    "executor": "build-3-41822",
    "pid": 41907,
    "lines": {"stdout": 1, "stderr": 0},
    "rusage": {"max_rss_kb": 1664, "user_s": 0.0, "sys_s": 0.001},
    "last_seq": 44,
}

# message name (a key of all_schemas()) -> example body
MESSAGES: dict[str, Any] = {
    "submit.tool.request": {"params": {"text": "hello"}, "labels": {"team": "ci"}},
    "submit.request": {"tool": "demo.echo", "params": {"text": "hello"}, "labels": {"team": "ci"}},
    "submit.reply": {"job_id": JOB, "state": "queued", "duplicate": False},
    "cancel.request": {"job_id": JOB, "reason": "wrong input"},
    "cancel.reply": {"job_id": JOB, "state": "running"},
    "tools.list.request": {},
    "tools.list.reply": {
        "tools": [
            {
                "id": "demo.echo",
                "version": 1,
                "description": "Print the given text, one argument, as given.",
            }
        ]
    },
    "tools.get.request": {"id": "demo.echo"},
    "tools.explain.request": {"tool": "demo.echo", "params": {"text": "hello"}},
    "tools.explain.reply": {
        "argv": ["echo", "hello"],
        "working_dir_policy": "temp",
        "env_names": ["DOMED_JOB_ID", "DOMED_RESULT", "LANG", "PATH"],
        "timeout_s": 30.0,
        "manifest_sha256": SHA,
    },
    "jobs.get.request": {"job_id": JOB},
    "jobs.get.reply": {**_STATE, "projected_seq": 44},
    "jobs.list.request": {"tool": "demo.echo", "state": "succeeded", "limit": 1},
    "jobs.list.reply": {"jobs": [_STATE], "projected_seq": 44, "next_cursor": "MDFKOVozSzhN"},
    "jobs.events.request": {"job_id": JOB, "after_seq": 40},
    "jobs.events.reply": {
        "events": [
            {"subject": f"job.{JOB}.{kind}", "seq": seq, "data": EVENTS[kind]}
            for seq, kind in ((41, "queued"), (42, "started"), (43, "log"), (44, "terminal"))
        ],
        "complete": True,
        "projected_seq": 44,
    },
    "jobs.artifact.request": {"job_id": JOB, "name": "junit.xml"},
    "jobs.artifact.reply": {
        "name": "junit.xml",
        "size": 11,
        "sha256": "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
        "chunks": 1,
        "chunk": 0,
        "seq": 12,
        "data": "aGVsbG8gd29ybGQ=",
    },
    "error.reply": {
        "error": {
            "code": "unknown_tool",
            "message": "no tool has id 'demo.ecko'; did you mean demo.echo?",
            "details": {"close_matches": ["demo.echo"]},
        }
    },
}


def checked(name: str, example: Any) -> str:
    """``example`` as indented JSON, after checking it against the schema of ``name``."""
    schema = all_schemas()[name]
    errors = sorted(Draft202012Validator(schema).iter_errors(example), key=str)
    if errors:
        raise ValueError(f"the example of {name} breaks its schema: {errors[0].message}")
    return json.dumps(example, indent=2)
