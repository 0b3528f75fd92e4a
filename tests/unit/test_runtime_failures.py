"""services.runtime.failures: which JetStream refusals are worth retrying soon, and what a
client is told."""

from __future__ import annotations

import nats.errors
import nats.js.errors

from services.runtime import failures


def _refused(description: str, err_code: int = 10077) -> nats.js.errors.APIError:
    return nats.js.errors.ServiceUnavailableError(
        code=503, err_code=err_code, description=description
    )


def test_a_stream_at_its_limits_is_not_a_passing_outage() -> None:
    assert failures.is_stream_full(_refused("maximum bytes exceeded"))
    assert failures.is_stream_full(_refused("maximum messages exceeded"))
    assert not failures.is_stream_full(_refused("JetStream system temporarily unavailable", 10008))
    assert not failures.is_stream_full(nats.errors.TimeoutError())


def test_clients_are_told_what_the_server_said() -> None:
    full = failures.unavailable(_refused("maximum bytes exceeded"))
    assert full.code == "unavailable" and "maximum bytes exceeded" in full.message
    cut_off = failures.unavailable(nats.errors.NoRespondersError())
    assert cut_off.message == "JetStream is not reachable: NoRespondersError"
