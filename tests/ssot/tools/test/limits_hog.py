"""What the resource-limit tests run: each mode uses one resource until told to stop."""

import os
import sys
import time

mode, amount, hold_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
if mode == "memory":  # hold `amount` MiB, 8 MiB at a time, touching every page
    held = []
    for step in range(amount // 8):
        held.append(bytearray(b"x" * (8 * 1024 * 1024)))
        print(f"holding {(step + 1) * 8} MiB", flush=True)
elif mode == "pids":  # try to start `amount` sleeping children
    started = 0
    for _ in range(amount):
        try:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            started += 1
        except OSError:
            time.sleep(0.01)
    print(f"started {started} children", flush=True)
elif mode == "cpu":  # spin in `amount` processes
    for _ in range(amount - 1):
        if os.fork() == 0:
            break
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:
        pass
    sys.exit(0)
elif mode == "files":  # open /dev/null `amount` times
    handles = []
    try:
        for _ in range(amount):
            handles.append(open(os.devnull))
    except OSError as exc:
        print(f"refused after {len(handles)}: {exc.strerror}", flush=True)
        sys.exit(3)
    print(f"opened {len(handles)}", flush=True)
time.sleep(hold_s)
