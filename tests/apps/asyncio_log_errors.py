"""An asyncio app without the loopwatch client: its unretrieved task
exceptions and slow callbacks reach its log file through `logging` only
(asyncio debug mode on). tests/logs.rs counts them from the file.

Usage: asyncio_log_errors.py LOGFILE
"""

import asyncio
import gc
import logging
import sys
import time

logging.basicConfig(
    filename=sys.argv[1],
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
log = logging.getLogger("app")


async def fail(exc: BaseException) -> None:
    raise exc


async def main() -> None:
    asyncio.get_running_loop().slow_callback_duration = 0.1
    tasks = [
        asyncio.ensure_future(fail(ValueError("bad value"))),
        asyncio.ensure_future(fail(KeyError("missing"))),
        asyncio.ensure_future(fail(ValueError("again"))),
    ]
    await asyncio.sleep(0.05)
    # Nobody retrieves their exceptions: asyncio logs them when collected.
    del tasks
    gc.collect()
    # Two callbacks that block the loop: 0.3 s and 0.7 s.
    time.sleep(0.3)
    await asyncio.sleep(0)
    time.sleep(0.7)
    await asyncio.sleep(0)
    for user in range(8):
        log.warning("rate limit exceeded for user %d, retrying in %d s", 1000 + user, user)
    await asyncio.sleep(0.05)


asyncio.run(main(), debug=True)
print("done", flush=True)
