"""The NATS headers domed's events carry and the checks it asks JetStream to make, named
once: services build and read them from here, and clients can rely on the names."""

from __future__ import annotations

from typing import Final

MSG_ID: Final = "Nats-Msg-Id"
"""Every event's id (``subjects.msg_id``): the stream stores a retried publish once."""

SEQUENCE: Final = "Nats-Sequence"
"""The stream sequence of a stored event, on its republished copy (``job.<id>.<kind>``)."""

EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
"""Compare-and-set: store the message only if the newest message on the subject (or on
``EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT``) has this sequence; ``0``: only if there is none."""

EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: Final = "Nats-Expected-Last-Subject-Sequence-Subject"
"""The subject (a filter, e.g. ``job.<id>.*``) that ``EXPECTED_LAST_SUBJECT_SEQUENCE`` is
checked against, instead of the message's own subject."""

REQUEST_INFO: Final = "Nats-Request-Info"
"""Who sent a request, as JSON (``acc``, ``user``, ``name``, ``host``...): set by
nats-server on a request that crossed an account boundary through a service import with
``share: true``. Inside one account any client can set it, so it is believed only when it
names another account than the receiver's own (docs/authorization.md)."""
