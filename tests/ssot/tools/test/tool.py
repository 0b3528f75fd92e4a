"""One test program with many behaviours, so each test tool is a line in a manifest."""

import argparse
import json
import os
import signal
import sys
import time

p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd", required=True)
a = sub.add_parser("argv")
a.add_argument("rest", nargs=argparse.REMAINDER)
s = sub.add_parser("spew")
s.add_argument("--lines", type=int, required=True)
s.add_argument("--stderr-every", type=int, default=0)
s.add_argument("--width", type=int, default=0)
b = sub.add_parser("bigline")
b.add_argument("--bytes", type=int, required=True)
sub.add_parser("binary")
sub.add_parser("no_newline")
sub.add_parser("env")
e = sub.add_parser("exit")
e.add_argument("--code", type=int, required=True)
sl = sub.add_parser("sleep")
sl.add_argument("--seconds", type=float, required=True)
sub.add_parser("scratch")
es = sub.add_parser("escape")
es.add_argument("--pidfile", required=True)
es.add_argument("--seconds", type=float, default=0)
la = sub.add_parser("late")
la.add_argument("--quiet", type=float, required=True)
la.add_argument("--seconds", type=float, required=True)
t = sub.add_parser("trap_term")
t.add_argument("--pidfile", required=True)
f = sub.add_parser("fork_tree")
f.add_argument("--pidfile", required=True)
c = sub.add_parser("counter")
c.add_argument("--file", required=True)
c.add_argument("--seconds", type=float, default=0)
c.add_argument("--gate", default="")
se = sub.add_parser("secret")
se.add_argument("--env", default="")
se.add_argument("--file", default="")
se.add_argument("--pad", type=int, default=0)
se.add_argument("--report", action="store_true")
args = p.parse_args()

if args.cmd == "argv":
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    print(json.dumps(rest))
elif args.cmd == "spew":
    pad = "x" * args.width
    out = sys.stdout
    for i in range(args.lines):
        if args.stderr_every and i % args.stderr_every == 0:
            out.flush()
            print(f"err {i}", file=sys.stderr, flush=True)
        else:
            out.write(f"line {i}{pad}\n")
    out.flush()
elif args.cmd == "bigline":
    sys.stdout.write("a" * args.bytes + "\n")
elif args.cmd == "binary":
    sys.stdout.buffer.write(b"ok \xff\xfe bad \xc3\x28 utf8\n\x00nul\n")
elif args.cmd == "no_newline":
    sys.stdout.write("first\nlast without newline")
elif args.cmd == "env":
    print(json.dumps(dict(os.environ), sort_keys=True))
elif args.cmd == "exit":
    print(f"exiting with {args.code}", file=sys.stderr)
    sys.exit(args.code)
elif args.cmd == "escape":  # a daemon in a session of its own, then exit
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.write(ready_w, f"{os.getpid()}\n".encode())
            while True:
                signal.pause()
        os._exit(0)
    os.close(ready_w)
    daemon = int(os.fdopen(ready_r).readline())
    with open(args.pidfile, "w") as fh:
        fh.write(str(daemon))
    print(f"daemon {daemon} in session {os.getsid(daemon)}", flush=True)
    time.sleep(args.seconds)
elif args.cmd == "scratch":  # leave files in the working dir
    os.makedirs("deep/er", exist_ok=True)
    for name in ("a.txt", "deep/b.txt", "deep/er/c.txt"):
        with open(name, "w") as fh:
            fh.write("scratch\n")
    print(os.getcwd(), flush=True)
elif args.cmd == "late":  # silent at first, then one line, then sleep
    time.sleep(args.quiet)
    print("late", flush=True)
    time.sleep(args.seconds)
elif args.cmd == "sleep":
    print("sleeping", flush=True)
    time.sleep(args.seconds)
    print("woke", flush=True)
elif args.cmd == "trap_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(args.pidfile, "w") as fh:
        fh.write(str(os.getpid()))
    print("ignoring SIGTERM", flush=True)
    while True:
        signal.pause()
elif args.cmd == "fork_tree":
    ready_r, ready_w = os.pipe()
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            # a double fork: the grandchild is reparented but stays in the job's process group
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                os.write(ready_w, b"!")  # ready: TERM is ignored from here on
                while True:
                    signal.pause()
            os._exit(0)
        os.waitpid(pid, 0)
    os.close(ready_w)
    assert os.read(ready_r, 1) + os.read(ready_r, 1) == b"!!"  # both grandchildren are up
    me = os.getpgrp()
    group = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == me:
                    group.append(int(entry))
            except OSError:
                pass
    with open(args.pidfile, "w") as fh:
        json.dump(group, fh)
    print(f"group {me} has {len(group)} processes", flush=True)
    while True:
        signal.pause()
elif args.cmd == "counter":
    n = int(open(args.file).read()) if os.path.exists(args.file) else 0
    with open(args.file, "w") as fh:
        fh.write(str(n + 1))
    print(f"run {n + 1}", flush=True)
    if args.gate:
        # Wait until the caller opens this run's gate (a FIFO) for writing, then closes it.
        with open(f"{args.gate}.{n + 1}") as gate:
            gate.read()
    else:
        time.sleep(args.seconds)
    print("done", flush=True)
elif args.cmd == "secret":  # reads its token from the environment or a file, never argv
    if args.env:
        token = os.environ[args.env]
    else:
        with open(args.file) as fh:
            token = fh.read()
    if args.report:
        print(
            json.dumps(
                {
                    "token_in_argv": any(token in a for a in sys.argv),
                    "mode": oct(os.stat(args.file).st_mode & 0o777) if args.file else None,
                    "path": args.file,
                }
            ),
            flush=True,
        )
    if args.pad:
        print("progress using " + token, flush=True)
    print("x" * args.pad + f"the token is {token}!", flush=True)
