"""Print the SHA-256 of every regular file under a root, sorted by path, with progress."""

import hashlib
import os
import sys

root = os.path.realpath(sys.argv[1])
if not os.path.isdir(root):
    print(f"not a directory: {root}", file=sys.stderr)
    sys.exit(2)
files = []
for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
        path = os.path.join(dirpath, name)
        if os.path.isfile(path) and not os.path.islink(path):
            files.append(path)
for i, path in enumerate(files, 1):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    print(f"{digest.hexdigest()}  {os.path.relpath(path, root)}")
    print(f"# {i}/{len(files)} files")
