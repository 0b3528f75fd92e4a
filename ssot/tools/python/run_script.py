"""Run one script from ./scripts beside this file, passing the remaining arguments.

The script name is checked by the manifest's pattern; this also refuses anything
that resolves outside the scripts directory (a symlink, say).
"""

import os
import runpy
import sys

here = os.path.dirname(os.path.realpath(__file__))
scripts = os.path.join(here, "scripts")
name = sys.argv[1]
rest = sys.argv[2:]
if rest[:1] == ["--"]:
    rest = rest[1:]
path = os.path.realpath(os.path.join(scripts, name))
if os.path.commonpath([scripts, path]) != scripts or not os.path.isfile(path):
    print(f"no such script: {name}", file=sys.stderr)
    sys.exit(2)
sys.argv = [path, *rest]
runpy.run_path(path, run_name="__main__")
