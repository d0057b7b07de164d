"""loopwatch: report an asyncio (or uvloop) event loop to the loopwatch exporter.

    import loopwatch

    async def main() -> None:
        async with loopwatch.watch("api"):
            ...

The loop sends heartbeats with task counters; a watchdog thread reports
stalls with the blocking code site. Standard library only; a missing exporter
costs the app nothing. See docs/protocol.md for the wire format.
"""

from __future__ import annotations

from ._headers import RateLimit, ratelimit_from_headers, throttle_kind
from ._pool import PoolStats, PoolTracker
from ._reporter import Reporter, start, watch
from ._version import __version__

__all__ = [
    "PoolStats",
    "PoolTracker",
    "RateLimit",
    "Reporter",
    "__version__",
    "ratelimit_from_headers",
    "start",
    "throttle_kind",
    "watch",
]
