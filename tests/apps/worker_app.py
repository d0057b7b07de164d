"""A plain ASGI app for uvicorn --workers N, for tests/workers.rs.

Every worker process starts the loopwatch client in its lifespan startup
(inside the worker's running loop) and stops it, sending bye, at shutdown.
GET /block blocks the worker's loop with a synchronous sleep; GET / answers.
Prints STARTED <pid> / BLOCK <pid> / UNBLOCKED <pid> / STOPPED <pid> so the
test knows which worker is where (workers share uvicorn's stdout).
"""

import os
import time

import loopwatch

APP = os.environ.get("WORKER_APP_NAME", "multi")
BLOCK_S = float(os.environ.get("WORKER_APP_BLOCK_S", "4"))

_reporter = None


def render_report() -> None:
    time.sleep(BLOCK_S)  # BLOCKING-LINE: a sync call on the worker's loop


async def _lifespan(receive, send) -> None:
    global _reporter
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _reporter = loopwatch.start(APP, loop_name="main")
            print(f"STARTED {os.getpid()}", flush=True)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _reporter is not None:
                await _reporter.astop()
            print(f"STOPPED {os.getpid()}", flush=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    body = b"ok\n"
    if scope["path"] == "/block":
        print(f"BLOCK {os.getpid()}", flush=True)
        render_report()
        print(f"UNBLOCKED {os.getpid()}", flush=True)
        body = f"unblocked {os.getpid()}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})
