"""What the retry tests run: count its runs in a file; fail (or hang until stopped) until
a given run."""

import signal
import sys

counter, succeed_at, hang = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "hang"
try:
    with open(counter) as fh:
        run = int(fh.read()) + 1
except FileNotFoundError:
    run = 1
with open(counter, "w") as fh:
    fh.write(str(run))
print(f"run {run}", flush=True)
if run < succeed_at:
    while hang:  # until its timeout stops it
        signal.pause()
    sys.exit(3)
