#!/usr/bin/env python3
"""Appends a few lines per second to each of N log files (benches/logs.sh).

    python3 benches/tools/append_logs.py DIR FILES LINES_PER_SECOND_PER_FILE

Creates DIR/app-000.log … (empty) first, then appends plain INFO lines,
now and then a rate-limit warning or `Executing <Handle …> took N seconds`,
to every file in turn, each line written and flushed on its own (as a
logging handler does), until SIGTERM. Then prints the number of lines written
on stdout. Standard library only.
"""
import os
import random
import signal
import sys
import time

stop = False


def on_term(*_):
    global stop
    stop = True


def main():
    d, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    signal.signal(signal.SIGTERM, on_term)
    files = [open(os.path.join(d, "app-%03d.log" % i), "a", encoding="utf-8") for i in range(n)]
    rnd = random.Random(7)
    written = 0
    nxt = time.monotonic()
    while not stop:
        for i, f in enumerate(files):
            r = rnd.random()
            t = time.strftime("%Y-%m-%d %H:%M:%S")
            if r < 0.05:
                line = "%s,000 WARNING app.client: rate limit exceeded for api.github.com, retrying in %.1fs" % (t, rnd.uniform(1, 9))
            elif r < 0.06:
                line = "%s,000 WARNING asyncio: Executing <Handle <TaskWakeupMethWrapper object at 0x7f%010x>> took %.3f seconds" % (t, rnd.getrandbits(40), rnd.uniform(0.1, 3))
            else:
                line = '%s,000 INFO aiohttp.access: 10.0.%d.%d "GET /api/v1/items/%d HTTP/1.1" 200 %d %.3fms' % (
                    t, i, rnd.randint(1, 254), rnd.randint(1, 10**6), rnd.randint(80, 9000), rnd.uniform(0.3, 40))
            f.write(line + "\n")
            f.flush()
            written += 1
        nxt += 1 / rate
        time.sleep(max(0.0, nxt - time.monotonic()))
    for f in files:
        f.close()
    print(written, flush=True)


if __name__ == "__main__":
    main()
