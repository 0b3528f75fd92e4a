"""Count down from --from to 0, printing each step and a progress line."""

import argparse
import time

parser = argparse.ArgumentParser()
parser.add_argument("--from", dest="start", type=int, required=True)
parser.add_argument("--interval", type=float, default=0.1)
args = parser.parse_args()
total = args.start
for i, n in enumerate(range(args.start, -1, -1)):
    print(n, flush=True)
    print(f"progress {i}/{total}", flush=True)
    if n:
        time.sleep(args.interval)
print("liftoff", flush=True)
