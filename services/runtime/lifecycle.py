"""Process lifetime for a service: run until SIGTERM/SIGINT, then shut down in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

VERSION = "0.1.0"
GC_YOUNG = 10_000


def configure_logging(name: str) -> None:
    level = os.environ.get("DOMED_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT (a second signal is treated the same)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run ``main(stop)`` on a fresh loop; ``stop`` is set by SIGTERM/SIGINT.

    Garbage collection is tuned for services that allocate fast and free almost
    everything by reference counting (docs/benchmarks.md, stop 13): everything imported
    so far lives as long as the process, so it is moved out of the collector's way
    (``gc.freeze``), and the young generation is collected every ``GC_YOUNG`` net
    allocations instead of 700. A projector rebuild of the bench's 200k events spent
    58 ms collecting by default, 18-31 ms frozen, 3-4 ms with both; its RSS did not move.
    """

    async def runner() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await main(stop)

    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    try:
        asyncio.run(runner())
    except KeyboardInterrupt:
        return 130
    return 0
