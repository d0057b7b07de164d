#!/usr/bin/env python3
"""Load for benches/soak.sh, Python standard library only.

    python3 benches/tools/soak_sender.py UDP_PORT APPS LOOPS HZ GARBAGE_PER_S

Sends APPS x LOOPS loops' heartbeats (each loop HZ a second, spread evenly
over the period, app `soak-A`, loop `lL`, one pid per app), each carrying
two task-failure entries with slowly growing counts, plus GARBAGE_PER_S
garbage datagrams a second (random bytes, not JSON, a wrong version,
oversize), all over UDP to 127.0.0.1, until SIGTERM; then prints
`sent=N garbage=N send_failed=N seconds=S`.
"""
import json
import os
import signal
import socket
import sys
import time

port, apps, loops, hz, garbage_rate = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                       float(sys.argv[4]), float(sys.argv[5]))
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)

SLICES = 40  # sends per second are grouped into 40 slices


def heartbeat(a, l, n):
    return json.dumps({"v": 1, "type": "heartbeat", "app": f"soak-{a:03d}", "loop": f"l{l}",
                       "pid": 20000 + a, "interval_s": 1 / hz, "stall_threshold_s": 0.5, "lag_s": 0.001,
                       "tasks_pending": 3, "tasks_created": n, "slow_callbacks": 0,
                       "failures": [{"task": "worker", "exception": "TimeoutError", "count": n // 100},
                                    {"task": "poller", "exception": "ConnectionError", "count": n // 400}],
                       "cancellations": []}, separators=(",", ":")).encode()


GARBAGE = [
    lambda i: os.urandom(100 + i % 300),
    lambda i: b"{not json " + str(i).encode(),
    lambda i: json.dumps({"v": 7, "type": "heartbeat", "app": "x", "loop": "m", "pid": 1}).encode(),
    lambda i: b"{\"v\":1,\"pad\":\"" + b"A" * 9000 + b"\"}",
]

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dest = ("127.0.0.1", port)
keys = [(a, l) for a in range(apps) for l in range(loops)]
per_slice = len(keys) * hz / SLICES
garbage_per_slice = garbage_rate / SLICES
sent = garb = failed = 0
n = 0
acc = gacc = 0.0
idx = 0
t0 = nxt = time.monotonic()
while not stop:
    n += 1
    acc += per_slice
    k = int(acc)
    acc -= k
    for _ in range(k):
        a, l = keys[idx]
        idx = (idx + 1) % len(keys)
        try:
            s.sendto(heartbeat(a, l, n), dest)
            sent += 1
        except OSError:
            failed += 1
    gacc += garbage_per_slice
    g = int(gacc)
    gacc -= g
    for _ in range(g):
        try:
            s.sendto(GARBAGE[garb % len(GARBAGE)](garb), dest)
            garb += 1
        except OSError:
            failed += 1
    nxt += 1 / SLICES
    time.sleep(max(0.0, nxt - time.monotonic()))
print(f"sent={sent} garbage={garb} send_failed={failed} seconds={time.monotonic() - t0:.0f}", flush=True)
