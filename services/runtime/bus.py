"""Former home of the shared NATS shell, now split by idea: ``connection`` (connect,
disconnect), ``provisioning`` (stream, buckets, the executors' consumer), ``jobstream``
(publishing and reading a job's events) and ``failures`` (what an error means, retries).
These names stay importable from here until every caller imports those modules."""

from services.runtime.connection import (
    SERVICE_KINDS,
    connect,
    disconnect,
    inbox_prefix,
    subscriptions_sent,
)
from services.runtime.failures import (
    UNAVAILABLE_ERRORS,
    WRONG_LAST_SEQUENCE,
    is_stream_full,
    is_wrong_last_sequence,
    retry_until,
    unavailable,
)
from services.runtime.jobstream import (
    FIRST_TERMINAL,
    cas_headers,
    encode,
    event_message,
    last_event,
    no_terminal_yet,
    publish_event,
    publish_if_newest,
)
from services.runtime.provisioning import (
    PROVISION_HINT,
    NotProvisionedError,
    ProvisioningError,
    create_executors_consumer,
    ensure_kv,
    ensure_stream,
    executors_consumer_config,
    executors_consumer_differences,
    kv_prefix,
    kv_stream,
    stream_config,
)

__all__ = [
    "FIRST_TERMINAL",
    "PROVISION_HINT",
    "SERVICE_KINDS",
    "UNAVAILABLE_ERRORS",
    "WRONG_LAST_SEQUENCE",
    "NotProvisionedError",
    "ProvisioningError",
    "cas_headers",
    "connect",
    "create_executors_consumer",
    "disconnect",
    "encode",
    "ensure_kv",
    "ensure_stream",
    "event_message",
    "executors_consumer_config",
    "executors_consumer_differences",
    "inbox_prefix",
    "is_stream_full",
    "is_wrong_last_sequence",
    "kv_prefix",
    "kv_stream",
    "last_event",
    "no_terminal_yet",
    "publish_event",
    "publish_if_newest",
    "retry_until",
    "stream_config",
    "subscriptions_sent",
    "unavailable",
]
