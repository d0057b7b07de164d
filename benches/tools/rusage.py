#!/usr/bin/env python3
"""Runs one command and prints the CPU it spent (for benches/logs.sh).

    python3 benches/tools/rusage.py STDOUT_FILE -- COMMAND [ARG...]

The command's stdout goes to STDOUT_FILE, its stderr is inherited. Prints one
line: `utime_s stime_s maxrss_kib wall_s exit_code`, from os.wait4 on that
child alone (its own rusage, children it waited for included), so other
processes on the machine do not count. Standard library only.
"""
import os
import subprocess
import sys
import time


def main():
    out, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    if sep != "--" or not cmd:
        sys.exit(__doc__)
    with open(out, "wb") as f:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=f)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
    print("%.3f %.3f %d %.3f %d" % (ru.ru_utime, ru.ru_stime, ru.ru_maxrss, wall, os.waitstatus_to_exitcode(status)))


if __name__ == "__main__":
    main()
