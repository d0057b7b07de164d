"""A small asyncio service with the two classic bugs, for tests/apps.rs.

One handler blocks the loop with a synchronous call; one background task
dies with an exception nobody retrieves. Prints BLOCK / UNBLOCKED / DONE so
the test knows where it is.
"""
import asyncio
import os
import sys
import time

import loopwatch


def load_profile() -> None:
    time.sleep(3)  # BLOCKING-LINE: a sync call on the loop


async def refresh_cache() -> None:
    await asyncio.sleep(0.3)
    raise ValueError("cache backend returned garbage")


async def main() -> None:
    reporter = loopwatch.start("blocking-app", loop_name="main")
    task = asyncio.create_task(refresh_cache())
    await asyncio.sleep(1.5)
    print("BLOCK", flush=True)
    load_profile()
    print("UNBLOCKED", flush=True)
    await asyncio.sleep(1.5)
    reporter.stop()
    del task
    print("DONE", flush=True)


if __name__ == "__main__":
    if os.environ.get("USE_UVLOOP") == "1":
        import uvloop

        uvloop.install()
    asyncio.run(main())
    sys.exit(0)
