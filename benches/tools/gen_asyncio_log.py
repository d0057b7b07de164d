#!/usr/bin/env python3
"""Writes a realistic Python service log for benches/logs.sh (issue 13).

    python3 benches/tools/gen_asyncio_log.py LINES OUT.log EXPECTED.json [SEED]

Lines as Python's `logging` writes them (`2026-11-30 04:10:00,123 INFO
app.http: …`): mostly INFO/DEBUG access and job lines with varying numbers,
about 5 % repeated rate-limit warnings, and about 1 % lines that the
built-in asyncio rules match — `Task exception was never retrieved` (with
the `future:` line and a traceback below it), `Executing <Handle …> took N
seconds`, `Task was destroyed but it is pending!`, `coroutine '…' was never
awaited`, `RuntimeError: asyncio.run() cannot be called from a running event
loop` and `TypeError: 'NoneType' object is not callable` (both as the last
line of a traceback). No line matches two rules, so the sum of the rules'
counts equals a `grep -c` of their alternation.

Writes exactly LINES lines (a traceback in progress at the end is completed
and counted, so the file may be a few lines longer; the real count is in
EXPECTED.json) and EXPECTED.json: lines, per-rule counts, exceptions by type,
slow-callback count. Standard library only; deterministic for a seed.
"""
import json
import random
import sys

RULES = [
    "asyncio_task_exception_never_retrieved",
    "asyncio_slow_callback",
    "asyncio_run_in_running_loop",
    "asyncio_task_destroyed_pending",
    "asyncio_coroutine_never_awaited",
    "nonetype_not_callable",
]


def main():
    want = int(sys.argv[1])
    out_path, exp_path = sys.argv[2], sys.argv[3]
    rnd = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 13)
    rules = dict.fromkeys(RULES, 0)
    exceptions = {}
    lines = 0
    buf = []
    sec = 0
    ms = 0

    def ts():
        return "2026-11-30 %02d:%02d:%02d,%03d" % (4 + sec // 3600 % 20, sec // 60 % 60, sec % 60, ms)

    paths = ["/api/v1/items/%d", "/api/v1/users/%d/orders", "/healthz", "/api/v1/search?q=%d",
             "/api/v2/carts/%d/checkout", "/metrics", "/api/v1/inventory/%d/reserve"]
    jobs = ["sync_catalog", "refresh_tokens", "flush_events", "reindex_shard", "send_digest"]
    excs = ["ValueError: invalid literal for int() with base 10: 'abc'",
            "KeyError: 'user_id'",
            "ConnectionResetError: [Errno 104] Connection reset by peer",
            "asyncio.exceptions.TimeoutError",
            "aiohttp.client_exceptions.ClientPayloadError: Response payload is not completed"]

    def traceback(last):
        frames = rnd.randint(1, 3)
        out = ["Traceback (most recent call last):"]
        for i in range(frames):
            out.append('  File "/app/service/handlers.py", line %d, in handle_%d' % (rnd.randint(10, 900), i))
            out.append("    result = await self.backend.fetch(request, timeout=%d)" % rnd.randint(1, 30))
        out.append(last)
        name = last.split(":", 1)[0]
        exceptions[name] = exceptions.get(name, 0) + 1
        return out

    with open(out_path, "w", encoding="utf-8") as f:
        while lines < want:
            ms += rnd.randint(0, 40)
            if ms >= 1000:
                sec += ms // 1000
                ms %= 1000
            r = rnd.random()
            block = []
            if r < 0.01:
                kind = rnd.randrange(6)
                task = rnd.randint(1, 99999)
                if kind == 0:
                    rules[RULES[0]] += 1
                    block.append("%s ERROR asyncio: Task exception was never retrieved" % ts())
                    block.append("future: <Task finished name='Task-%d' coro=<Worker.run() done, defined at "
                                 "/app/service/worker.py:%d> exception=%s>"
                                 % (task, rnd.randint(10, 400), "ValueError('bad payload')"))
                    block += traceback(rnd.choice(excs))
                elif kind == 1:
                    rules[RULES[1]] += 1
                    block.append("%s WARNING asyncio: Executing <Handle <TaskWakeupMethWrapper object at 0x7f%010x>"
                                 "(<Future finis...events.py:429>) created at /usr/lib/python3.11/asyncio/"
                                 "tasks.py:670> took %.3f seconds" % (ts(), rnd.getrandbits(40), rnd.uniform(0.1, 8)))
                elif kind == 2:
                    rules[RULES[2]] += 1
                    block.append("%s ERROR app.jobs: job %s failed" % (ts(), rnd.choice(jobs)))
                    block += traceback("RuntimeError: asyncio.run() cannot be called from a running event loop")
                elif kind == 3:
                    rules[RULES[3]] += 1
                    block.append("%s ERROR asyncio: Task was destroyed but it is pending!" % ts())
                    block.append("task: <Task pending name='Task-%d' coro=<Poller.loop() running at "
                                 "/app/service/poller.py:%d> wait_for=<Future pending cb=[Task.task_wakeup()]>>"
                                 % (task, rnd.randint(10, 400)))
                elif kind == 4:
                    rules[RULES[4]] += 1
                    block.append("/app/service/client.py:%d: RuntimeWarning: coroutine 'Client.fetch_%d' "
                                 "was never awaited" % (rnd.randint(10, 400), rnd.randint(1, 9)))
                else:
                    rules[RULES[5]] += 1
                    block.append("%s ERROR app.http: Error handling request" % ts())
                    block += traceback("TypeError: 'NoneType' object is not callable")
            elif r < 0.06:
                block.append("%s WARNING app.client: rate limit exceeded for api.github.com, retrying in %.1fs "
                             "(attempt %d)" % (ts(), rnd.uniform(0.5, 30), rnd.randint(1, 5)))
            elif r < 0.80:
                p = rnd.choice(paths)
                if "%d" in p:
                    p = p % rnd.randint(1, 10**6)
                block.append('%s INFO aiohttp.access: 10.%d.%d.%d [30/Nov/2026:04:10:00 +0000] "GET %s HTTP/1.1" '
                             '%d %d "-" "python-requests/2.31.0" %.3fms'
                             % (ts(), rnd.randint(0, 255), rnd.randint(0, 255), rnd.randint(1, 254), p,
                                rnd.choice((200, 200, 200, 201, 204, 304, 404)), rnd.randint(80, 90000),
                                rnd.uniform(0.3, 400)))
            elif r < 0.95:
                block.append("%s INFO app.jobs: job %s finished in %.2fs, %d rows, request_id=%08x-%04x"
                             % (ts(), rnd.choice(jobs), rnd.uniform(0.01, 30), rnd.randint(0, 10**5),
                                rnd.getrandbits(32), rnd.getrandbits(16)))
            else:
                block.append("%s DEBUG app.cache: cache miss for key user:%d:profile, loaded in %.1fms"
                             % (ts(), rnd.randint(1, 10**6), rnd.uniform(0.1, 50)))
            buf += block
            lines += len(block)
            if len(buf) >= 10000:
                f.write("\n".join(buf) + "\n")
                buf = []
        # A last plain line so that a traceback at the end is followed by a
        # line (loopwatch counts a traceback's exception on the next line or
        # at the end of a read).
        buf.append("%s INFO app: shutdown complete" % ts())
        lines += 1
        f.write("\n".join(buf) + "\n")

    with open(exp_path, "w") as f:
        json.dump({"lines": lines, "rules": rules, "rule_lines": sum(rules.values()),
                   "exceptions": exceptions}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
