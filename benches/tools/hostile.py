#!/usr/bin/env python3
"""Attackers for benches/hostile.sh (issue 15), Python standard library only.

    python3 benches/tools/hostile.py ATTACK HTTP_PORT UDP_PORT SECONDS

Each attack runs for about SECONDS (or does its one thing and exits), then
prints one line `key=value ...` on stdout with what it sent and saw.
Attacks: series, junkapps, idle, slowloris, posts, stacks, garbage.
Every process it opens is a socket to 127.0.0.1; it starts no process.
"""
import asyncio
import json
import os
import random
import socket
import sys
import threading
import time
import urllib.request

ATTACK, HTTP, UDP, SECS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
HOST = "127.0.0.1"


def post(body: bytes, timeout=30.0):
    """POST NDJSON to /api/v1/events; returns (status, parsed answer or text)."""
    req = urllib.request.Request(f"http://{HOST}:{HTTP}/api/v1/events", data=body, method="POST",
                                 headers={"Content-Type": "application/x-ndjson"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            txt = r.read()
            return r.status, json.loads(txt)
    except urllib.error.HTTPError as e:
        return e.code, e.read()[:200]


def batches(lines, limit=1_000_000):
    """Groups encoded NDJSON lines into bodies of at most `limit` bytes."""
    cur, size = [], 0
    for ln in lines:
        if size + len(ln) + 1 > limit and cur:
            yield b"\n".join(cur) + b"\n"
            cur, size = [], 0
        cur.append(ln)
        size += len(ln) + 1
    if cur:
        yield b"\n".join(cur) + b"\n"


def hb(app, loop, pid, failures=(), lag=0.0):
    return json.dumps({"v": 1, "type": "heartbeat", "app": app, "loop": loop, "pid": pid,
                       "interval_s": 0.25, "stall_threshold_s": 0.5, "lag_s": lag,
                       "tasks_pending": 1, "tasks_created": 1, "slow_callbacks": 0,
                       "failures": list(failures), "cancellations": []},
                      separators=(",", ":")).encode()


def ready():
    """Tells hostile.sh the attack is in its steady state (wrk starts then)."""
    path = os.environ.get("READY")
    if path:
        open(path, "w").close()


def report(**kw):
    print(" ".join(f"{k}={v}" for k, v in kw.items()), flush=True)


# (a) 10 apps x 16 loops, each loop reporting 100 task names x 50 exception
# types (5,000 {task, exception} pairs; a message holds ~100, so 50 heartbeats
# a loop carry them all; counts are cumulative and grow every round).
def series():
    apps, loops, tasks, excs = 10, 16, 100, 50
    deadline = time.monotonic() + SECS
    rounds = accepted = rejected = posts = 0
    while True:
        rounds += 1
        lines = []
        for a in range(apps):
            for l in range(loops):
                pairs = [{"task": f"task_{t:03d}", "exception": f"Error{e:02d}", "count": rounds}
                         for t in range(tasks) for e in range(excs)]
                for i in range(0, len(pairs), 100):
                    lines.append(hb(f"hostile-{a}", f"loop{l}", 1000 + a, pairs[i:i + 100]))
        for body in batches(lines):
            st, ans = post(body)
            posts += 1
            if st == 200:
                accepted += ans["accepted"]; rejected += ans["rejected"]
        if rounds == 1:
            ready()
            deadline = time.monotonic() + SECS
        if time.monotonic() >= deadline:
            break
    report(rounds=rounds, posts=posts, lines_accepted=accepted, lines_rejected=rejected)


# (b) JUNK (49) junk app names, one non-heartbeat datagram each (a `pool`
# report), then a real app's heartbeat: at once, and again after
# silence_timeout.
def junkapps():
    junk = int(os.environ.get("JUNK", 49))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(junk):
        msg = {"v": 1, "type": "pool", "app": f"junk-{i:02d}-{random.getrandbits(32):08x}", "loop": "main",
               "pid": 4242, "pool": "p", "size": 1, "max": 1, "in_use": 0, "waiting": 0}
        s.sendto(json.dumps(msg).encode(), (HOST, UDP))
    time.sleep(0.3)
    s.sendto(hb("real-app", "main", 777), (HOST, UDP))
    time.sleep(0.3)
    first = metric_value('loopwatch_loop_up{app_name="real-app",loop="main"}')
    ready()
    # keep the real app heartbeating for the rest of the run
    deadline = time.monotonic() + SECS
    while time.monotonic() < deadline:
        s.sendto(hb("real-app", "main", 777), (HOST, UDP))
        time.sleep(0.25)
    last = metric_value('loopwatch_loop_up{app_name="real-app",loop="main"}')
    report(junk_sent=junk, real_app_up_at_once=first, real_app_up_after=last, after_s=SECS)


def metric_value(series_name):
    try:
        with urllib.request.urlopen(f"http://{HOST}:{HTTP}/metrics", timeout=10) as r:
            for ln in r.read().decode().splitlines():
                if ln.startswith(series_name + " "):
                    return ln.split()[-1]
    except Exception as e:  # noqa: BLE001
        return f"error:{e.__class__.__name__}"
    return "absent"


# (c) 1,000 idle TCP connections, reopened whenever the server closes one.
# (d) 500 slowloris connections: a request line, then one header byte a second.
async def holder(n, slow):
    opened = closed_by_server = failed = 0
    deadline = time.monotonic() + SECS

    async def one(i):
        nonlocal opened, closed_by_server, failed
        while time.monotonic() < deadline:
            try:
                r, w = await asyncio.open_connection(HOST, HTTP)
            except OSError:
                failed += 1
                await asyncio.sleep(0.2)
                continue
            opened += 1
            try:
                if slow:
                    w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    await w.drain()
                while time.monotonic() < deadline:
                    if slow:
                        w.write(b"X")
                        await w.drain()
                    try:
                        data = await asyncio.wait_for(r.read(4096), timeout=1.0)
                    except asyncio.TimeoutError:
                        continue
                    if not data:
                        closed_by_server += 1
                        break
            except OSError:
                closed_by_server += 1
            finally:
                w.close()
        return

    async def mark():
        await asyncio.sleep(2)
        ready()
    await asyncio.gather(mark(), *(one(i) for i in range(n)))
    report(connections=n, opened=opened, closed_by_server=closed_by_server, connect_failed=failed)


# (e) N concurrent 1 MiB POSTs (valid heartbeat NDJSON), each connection
# posting again as soon as it is answered.
async def posts(n):
    line = hb("posters", "main", 4343)
    body = b""
    while len(body) + len(line) + 1 <= 1024 * 1024:
        body += line + b"\n"
    head = (f"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    deadline = time.monotonic() + SECS
    stats = {"posts": 0, "ok": 0, "status_other": 0, "errors": 0}

    async def one():
        while time.monotonic() < deadline:
            try:
                r, w = await asyncio.open_connection(HOST, HTTP)
                w.write(head + body)
                await w.drain()
                status = await asyncio.wait_for(r.readline(), timeout=60)
                stats["posts"] += 1
                if b" 200 " in status:
                    stats["ok"] += 1
                else:
                    stats["status_other"] += 1
                w.close()
            except (OSError, asyncio.TimeoutError):
                stats["errors"] += 1
                await asyncio.sleep(0.1)

    ready()
    await asyncio.gather(*(one() for _ in range(n)))
    report(concurrent=n, body_bytes=len(body), **stats)


# (f) every loop full of stacks: 49 apps x 16 loops x 2 processes, each
# process 10 ended stalls and one current, each stall a ~7.5 KB stack; then
# 4 readers fetch every page of /api/v1/loops?limit=1000 until the deadline.
def stacks():
    frames = [f"/srv/app/{'very_long_module_name_' * 6}{i}.py:{i} handler_{i}" for i in range(48)]
    sites = [f"/srv/app/blocking_{k}.py:{k} sync_call" for k in range(5)]
    lines = []
    for a in range(49):
        for l in range(16):
            for p in range(2):
                pid = 10000 + a * 100 + l * 4 + p
                app, loop = f"stacky-{a:02d}", f"loop{l:02d}"
                lines.append(hb(app, loop, pid))
                for k in range(1, 12):
                    st = json.dumps({"v": 1, "type": "stall", "app": app, "loop": loop, "pid": pid,
                                     "stall_id": k, "blocked_s": 1.5, "site": sites[k % 5],
                                     "stack": frames}, separators=(",", ":")).encode()
                    lines.append(st)
                    if k < 11:
                        lines.append(hb(app, loop, pid, lag=1.5))
    fill_bytes = sum(len(x) + 1 for x in lines)
    acc = rej = 0
    for body in batches(lines):
        st, ans = post(body)
        if st == 200:
            acc += ans["accepted"]; rej += ans["rejected"]
    ready()
    deadline = time.monotonic() + SECS
    res = {"pages": 0, "bytes": 0, "max_page": 0, "errors": 0, "full_walks": 0, "loops_seen": 0}
    lock = threading.Lock()

    def reader():
        while time.monotonic() < deadline:
            off, seen = 0, 0
            while off is not None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://{HOST}:{HTTP}/api/v1/loops?offset={off}&limit=1000",
                                                timeout=30) as r:
                        data = r.read()
                    doc = json.loads(data)
                except Exception:  # noqa: BLE001
                    with lock:
                        res["errors"] += 1
                    break
                seen += len(doc["loops"])
                with lock:
                    res["pages"] += 1
                    res["bytes"] += len(data)
                    res["max_page"] = max(res["max_page"], len(data))
                off = doc["next_offset"]
            if off is None:  # a complete walk, not one cut by the deadline
                with lock:
                    res["full_walks"] += 1
                    res["loops_seen"] = seen

    ts = [threading.Thread(target=reader) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    report(fill_lines=len(lines), fill_bytes=fill_bytes, accepted=acc, rejected=rej, **res)


# (g) 300,000 garbage datagrams, paced evenly over SECS: random bytes, not
# JSON, wrong version, wrong types, oversize.
def garbage(total=300_000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    kinds = [
        lambda i: os.urandom(64 + i % 512),
        lambda i: b"{not json" + str(i).encode(),
        lambda i: json.dumps({"v": 9, "type": "heartbeat", "app": "g", "loop": "m", "pid": 1}).encode(),
        lambda i: json.dumps({"v": 1, "type": "heartbeat", "app": ["x"], "loop": 5, "pid": -1}).encode(),
        lambda i: b"{\"v\":1,\"pad\":\"" + b"A" * 9000 + b"\"}",
    ]
    sent = failed = 0
    ready()
    t0 = time.monotonic()
    per_batch = 500
    for start in range(0, total, per_batch):
        for i in range(start, min(total, start + per_batch)):
            try:
                s.sendto(kinds[i % len(kinds)](i), (HOST, UDP))
                sent += 1
            except OSError:
                failed += 1
        due = t0 + SECS * (start + per_batch) / total
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    report(sent=sent, send_failed=failed, seconds=round(time.monotonic() - t0, 1))


if __name__ == "__main__":
    if ATTACK == "series":
        series()
    elif ATTACK == "junkapps":
        junkapps()
    elif ATTACK == "idle":
        asyncio.run(holder(int(os.environ.get("N", 1000)), slow=False))
    elif ATTACK == "slowloris":
        asyncio.run(holder(int(os.environ.get("N", 500)), slow=True))
    elif ATTACK == "posts":
        asyncio.run(posts(int(os.environ.get("N", 200))))
    elif ATTACK == "stacks":
        stacks()
    elif ATTACK == "garbage":
        garbage(int(os.environ.get("N", 300_000)))
    else:
        sys.exit(f"unknown attack {ATTACK}")
