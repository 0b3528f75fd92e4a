"""The AsyncAPI 3.0 document of domed's NATS surface, computed from the contract.

It describes domed as one application: it *sends* the job events on
``job.{job_id}.{kind}`` and *receives* the requests of the request/reply API, each
answered on the requester's inbox with its reply or an error reply. Payloads are the
JSON Schemas of ``contracts.schemas``, their ``$defs`` lifted into
``components.schemas`` so that every reference resolves inside the document.

``just schemas`` writes it to ``contracts/asyncapi.json``; a test fails when the
committed file drifts, and another validates it with the official AsyncAPI parser.
"""

from __future__ import annotations

import copy
from typing import Any

from contracts import subjects, surface
from contracts.errors import MEANING, STATUS
from contracts.schemas import all_schemas

VERSION = "0.1.0"
"""The version of domed's API the document describes (``info.version``)."""
_COMPONENT_REF = "#/components/schemas/"


def _camel(name: str) -> str:
    """``jobs.list.request`` -> ``JobsListRequest``: a component key."""
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", ".").split("."))


def _lift(name: str, schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Move ``schema``'s ``$defs`` into ``components`` and return a reference to it.

    A schema that is only a ``$ref`` to one of its own ``$defs`` (msgspec's shape) becomes
    that definition; pydantic's shape (properties at the top) is stored under ``name``."""
    schema = copy.deepcopy(schema)
    defs = schema.pop("$defs", {})
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    _rewrite_refs(schema)
    for def_name, definition in defs.items():
        _rewrite_refs(definition)
        known = components.get(def_name)
        if known is not None and known != definition:
            raise ValueError(f"two different schemas are both named {def_name}")
        components[def_name] = definition
    if set(schema) == {"$ref"}:
        return schema
    components[_camel(name)] = schema
    return {"$ref": _COMPONENT_REF + _camel(name)}


def _rewrite_refs(node: Any) -> None:
    """``#/$defs/X`` -> ``#/components/schemas/X``; an OpenAPI-style ``discriminator``
    object becomes the property name AsyncAPI's schema object expects."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = _COMPONENT_REF + ref.removeprefix("#/$defs/")
        disc = node.get("discriminator")
        if isinstance(disc, dict):
            node["discriminator"] = disc["propertyName"]
        for value in node.values():
            _rewrite_refs(value)
    elif isinstance(node, list):
        for value in node:
            _rewrite_refs(value)


_EVENT_HEADERS = {
    "type": "object",
    "description": "Headers of a stored event as the stream republishes it.",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "description": "`<job_id>.<kind>.<n>`: a retried publish is stored once.",
        },
        "Nats-Stream": {"type": "string", "description": f"`{subjects.STREAM}`."},
        "Nats-Sequence": {"type": "string", "description": "The event's stream sequence."},
        "Nats-Subject": {"type": "string", "description": "The stored subject."},
        "Nats-Time-Stamp": {"type": "string", "description": "When the stream stored it."},
        "Nats-Last-Sequence": {
            "type": "string",
            "description": "The stream sequence of the stream's previous message.",
        },
    },
}

_ERROR_HEADERS = {
    "type": "object",
    "properties": {
        "Nats-Service-Error": {"type": "string", "description": "The error message."},
        "Nats-Service-Error-Code": {
            "type": "string",
            "description": "The HTTP-like status: "
            + ", ".join(f"{STATUS[c]} `{c.value}`" for c in STATUS),
        },
    },
    "required": ["Nats-Service-Error", "Nats-Service-Error-Code"],
}


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document, as plain JSON data."""
    schemas = all_schemas()
    components: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    for ev in surface.EVENTS:
        name = f"event.{ev.kind}"
        messages[_camel(name)] = {
            "name": ev.kind,
            "title": f"{ev.kind} event",
            "summary": ev.summary,
            "description": f"Written by the {ev.written_by}.",
            "contentType": "application/json",
            "headers": _EVENT_HEADERS,
            "payload": _lift(name, schemas[name], components),
        }
        channel = f"job{_camel(ev.kind)}"
        channels[channel] = {
            "address": subjects.event_subject("{job_id}", ev.kind),
            "title": f"{ev.kind} events",
            "description": f"Every stored `{ev.kind}` event of a job. Subscribe to "
            "`job.<job_id>.*` for all of one job's events, or `job.*.<kind>` for one kind.",
            "parameters": {
                "job_id": {"description": "The job's id: one URL-safe subject token (a ULID)."}
            },
            "messages": {ev.kind: {"$ref": f"#/components/messages/{_camel(name)}"}},
        }
        operations[f"publish{_camel(ev.kind)}"] = {
            "action": "send",
            "title": f"Publish {ev.kind}",
            "summary": ev.summary,
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{ev.kind}"}],
        }

    error_message = {
        "name": "error",
        "title": "Error reply",
        "summary": "Any endpoint's answer when the request fails.",
        "description": "Codes: "
        + "; ".join(f"`{c.value}` ({STATUS[c]}): {MEANING[c]}" for c in STATUS),
        "contentType": "application/json",
        "headers": _ERROR_HEADERS,
        "payload": _lift("error.reply", schemas["error.reply"], components),
    }
    messages["ErrorReply"] = error_message

    for ep in surface.ENDPOINTS:
        key = _camel(ep.address.removeprefix("domed.").replace("{tool_id}", "tool"))
        request_msg, reply_msg = f"{key}Request", f"{key}Reply"
        messages[request_msg] = {
            "name": f"{ep.address} request",
            "contentType": "application/json",
            "payload": _lift(ep.request, schemas[ep.request], components),
        }
        messages[reply_msg] = {
            "name": f"{ep.address} reply",
            "contentType": "application/json",
            "payload": _lift(ep.reply, schemas[ep.reply], components),
        }
        channels[key] = {
            "address": ep.address,
            "title": ep.address,
            "description": f"Served by `{ep.service}` (NATS Services API, queue group `q`).",
            "messages": {"request": {"$ref": f"#/components/messages/{request_msg}"}},
        }
        if ep.address != ep.subject:
            channels[key]["parameters"] = {
                "tool_id": {
                    "description": "The tool's manifest id; its dots are subject tokens "
                    f"(the service subscribes to `{ep.subject}`)."
                }
            }
        channels[f"{key}Reply"] = {
            "address": None,
            "title": f"{ep.address} reply",
            "description": "The requester's inbox (the request's reply subject).",
            "messages": {
                "reply": {"$ref": f"#/components/messages/{reply_msg}"},
                "error": {"$ref": "#/components/messages/ErrorReply"},
            },
        }
        operations[f"serve{key}"] = {
            "action": "receive",
            "title": ep.address,
            "summary": ep.summary,
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/request"}],
            "reply": {
                "channel": {"$ref": f"#/channels/{key}Reply"},
                "messages": [
                    {"$ref": f"#/channels/{key}Reply/messages/reply"},
                    {"$ref": f"#/channels/{key}Reply/messages/error"},
                ],
            },
        }

    return {
        "asyncapi": "3.0.0",
        "id": "urn:domed:nats",
        "info": {
            "title": "domed",
            "version": VERSION,
            "description": "A job-execution daemon for NATS users: ask it to run a tool named "
            "in a manifest, and every step of the job is an event in the JetStream stream "
            f"`{subjects.STREAM}`. The request/reply endpoints are NATS Services "
            "(`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS` find them).",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "The embedded nats-server of `domed up`.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(sorted(components.items())), "messages": messages},
    }
