"""What services.runtime.ordered relies on inside nats-py, checked by name and signature.

``RawClient`` and ``_RawParser`` override private parts of nats-py's client and
protocol parser. Those may change in any release, so pyproject.toml pins nats-py to
the minor versions checked here; each test below names the internal it needs, and
fails with what changed rather than with a wrong or missing message at run time.
After a nats-py upgrade: re-read nats/aio/client.py and nats/protocol/parser.py
against ordered.py, then add the minor version to CHECKED_MINORS and widen the pin.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats.protocol.parser
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.protocol.parser import Parser

CHECKED_MINORS = ("2.16",)
ROOT = Path(__file__).resolve().parents[2]


def _changed(what: str) -> str:
    return (
        f"nats-py {version('nats-py')} changed {what}, which services/runtime/ordered.py "
        "relies on: re-check RawClient and _RawParser against nats-py's aio/client.py and "
        "protocol/parser.py before widening the nats-py pin in pyproject.toml"
    )


def _params(function: Callable[..., Any]) -> list[tuple[str, Any]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_installed_nats_py_is_a_checked_minor_version() -> None:
    installed = version("nats-py")
    assert installed.rsplit(".", 1)[0] in CHECKED_MINORS, (
        f"nats-py {installed} is installed, but ordered.py was checked against "
        f"{', '.join(m + '.x' for m in CHECKED_MINORS)} only: see this module's doc"
    )


def test_pyproject_pins_nats_py_to_the_checked_minor_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [pin] = [d for d in project["dependencies"] if re.match(r"nats-py\b", d)]
    match = re.fullmatch(r"nats-py>=(\d+)\.(\d+),<(\d+)\.(\d+)", pin.replace(" ", ""))
    assert match, f"nats-py is required as {pin!r}: pin it to minor versions, >=X.Y,<X.Z"
    low, high = (int(match[1]), int(match[2])), (int(match[3]), int(match[4]))
    allowed = (
        {f"{low[0]}.{minor}" for minor in range(low[1], high[1])} if low[0] == high[0] else set()
    )
    assert allowed and allowed <= set(CHECKED_MINORS), (
        f"{pin!r} allows nats-py versions ordered.py was not checked against "
        f"(checked: {', '.join(CHECKED_MINORS)})"
    )


def test_the_client_parses_what_it_reads_with_its_parser_attribute() -> None:
    """RawClient swaps ``self._ps`` for its own parser after ``Client.__init__()``."""
    assert all(p.default is not inspect.Parameter.empty for p in _client_init_params()), _changed(
        "Client.__init__ (it must take no required arguments)"
    )
    assert isinstance(Client()._ps, Parser), _changed("Client._ps (the protocol parser)")
    source = inspect.getsource(Client._read_loop)
    assert "self._ps.parse(" in source, _changed("Client._read_loop (it fed self._ps.parse)")
    for method in ("_process_op_err", "_attempt_reconnect"):
        assert hasattr(Client, method), _changed(f"Client.{method}")


def _client_init_params() -> list[inspect.Parameter]:
    return list(inspect.signature(Client.__init__).parameters.values())[1:]


def test_the_client_dispatches_a_message_through_process_msg() -> None:
    assert _params(Client._process_msg) == [
        ("self", inspect.Parameter.empty),
        ("sid", inspect.Parameter.empty),
        ("subject", inspect.Parameter.empty),
        ("reply", inspect.Parameter.empty),
        ("data", inspect.Parameter.empty),
        ("headers", inspect.Parameter.empty),
    ], _changed("Client._process_msg(sid, subject, reply, data, headers)")
    assert inspect.iscoroutinefunction(Client._process_msg), _changed(
        "Client._process_msg (no longer a coroutine function)"
    )
    assert "in_msgs" in Client().stats, _changed('Client.stats["in_msgs"]')


def test_the_parser_keeps_its_buffer_and_state_where_ordered_reads_them() -> None:
    assert _params(Parser.__init__) == [("self", inspect.Parameter.empty), ("nc", None)], _changed(
        "Parser.__init__(nc=None)"
    )
    assert _params(Parser.parse) == [("self", inspect.Parameter.empty), ("data", b"")], _changed(
        'Parser.parse(data=b"")'
    )
    assert inspect.iscoroutinefunction(Parser.parse), _changed("Parser.parse (not a coroutine)")
    parser = Parser(nc=None)
    assert isinstance(parser.buf, bytearray), _changed("Parser.buf (a bytearray)")
    assert parser.nc is None, _changed("Parser.nc")
    control_line = getattr(nats.protocol.parser, "AWAITING_CONTROL_LINE", None)
    assert control_line is not None and parser.state == control_line, _changed(
        "nats.protocol.parser.AWAITING_CONTROL_LINE (the parser's state between frames)"
    )
    source = inspect.getsource(Parser.parse)
    assert "self.buf.extend(data)" in source, _changed("Parser.parse (it appended data to buf)")
    assert "self.nc._process_msg(" in source, _changed(
        "Parser.parse (it dispatched through nc._process_msg)"
    )


def test_a_subscription_keeps_its_id_as_sid() -> None:
    """OrderedReader keys its subscription by ``sub._id``, as the wire spells the sid."""
    assert "id" in inspect.signature(Subscription.__init__).parameters, _changed(
        "Subscription.__init__(id=...)"
    )
    assert Subscription(conn=None, id=42)._id == 42, _changed("Subscription._id")
