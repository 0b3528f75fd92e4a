"""What the resource-limit tests run: each mode uses one resource; with `hold` it then
waits to be stopped (by its limit, or by its executor) instead of exiting."""

import os
import signal
import sys

mode, amount, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "true"

with open("/proc/self/cgroup") as own:  # where its executor put it (the v1 memory one)
    lines = own.read().splitlines()
placed = [line for line in lines if ":memory:" in line] or [line for line in lines if "::" in line]
print(f"cgroup {placed[0].split(':', 2)[2]}", file=sys.stderr, flush=True)


def stopped_only_by_a_signal() -> None:
    while True:
        signal.pause()


if mode == "memory":  # hold `amount` MiB, 8 MiB at a time, touching every page
    held = []
    for step in range(amount // 8):
        held.append(bytearray(b"x" * (8 * 1024 * 1024)))
        print(f"holding {(step + 1) * 8} MiB", flush=True)
elif mode == "pids":  # try to start `amount` children that wait to be killed with the job
    started = 0
    for _ in range(amount):
        try:
            if os.fork() == 0:
                stopped_only_by_a_signal()
            started += 1
        except OSError:
            pass
    print(f"started {started} children", flush=True)
elif mode == "cpu":  # spin in `amount` processes until stopped
    for _ in range(amount - 1):
        if os.fork() == 0:
            break
    while True:
        pass
elif mode == "files":  # open /dev/null `amount` times
    handles = []
    try:
        for _ in range(amount):
            handles.append(open(os.devnull))
    except OSError as exc:
        print(f"refused after {len(handles)}: {exc.strerror}", flush=True)
        sys.exit(3)
    print(f"opened {len(handles)}", flush=True)
if hold:
    stopped_only_by_a_signal()
