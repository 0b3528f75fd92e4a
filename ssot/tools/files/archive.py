"""Write SOURCE as a .tar.gz at OUTPUT (written to a temp name, then renamed), listing
members; the result is the archive's path, size, SHA-256 and member count."""

import argparse
import contextlib
import hashlib
import json
import os
import tarfile

parser = argparse.ArgumentParser()
parser.add_argument("--source", required=True)
parser.add_argument("--output", required=True)
args = parser.parse_args()
source = os.path.realpath(args.source)
if not os.path.isdir(source):
    parser.error(f"not a directory: {source}")
partial = args.output + ".partial"
# Never through a symlink someone left at the partial name: it could point outside the
# output directory. A partial left by an earlier run is ours to replace.
with contextlib.suppress(FileNotFoundError):
    os.unlink(partial)
fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
count = 0
with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            arcname = os.path.relpath(path, os.path.dirname(source))
            tar.add(path, arcname=arcname, recursive=False)
            print(arcname)
            count += 1
digest = hashlib.sha256()
with open(partial, "rb") as done:
    for block in iter(lambda: done.read(1 << 20), b""):
        digest.update(block)
size = os.path.getsize(partial)
os.replace(partial, args.output)
print(f"archived {count} files to {args.output}")
if "DOMED_RESULT" in os.environ:
    result = {"output": args.output, "size": size, "sha256": digest.hexdigest(), "files": count}
    with open(os.environ["DOMED_RESULT"], "w") as fh:
        json.dump(result, fh)
