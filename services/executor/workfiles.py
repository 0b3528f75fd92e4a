"""Reading what a job left in its working dir (its result, its artifacts) without letting
it point the executor anywhere else.

The executor may run as root while the job runs as another user who owns the dir: a
symlink, a dir swapped for a symlink, or a hard link to a file of someone else's must not
make the executor read (and publish) a file the job could not read itself. So every path
is opened one component at a time below a dir fd, never following a symlink, and only a
regular file the job's user owns is read.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class WorkFileError(Exception):
    """A file of the job's that may not be read, and why (a sentence for the terminal)."""


@dataclass(frozen=True)
class JobFile:
    """An open regular file of the job's: its path relative to the working dir, its size."""

    name: str
    fd: int
    size: int


def open_file(work_dir: str, name: str, owner: int | None) -> JobFile | None:
    """Open ``name`` (relative, ``/``-separated) below ``work_dir``; None if it does not
    exist. ``owner``: the uid the file must belong to (the job user's), or None."""
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise WorkFileError(f"{name}: not a plain relative path")
    try:
        fd = os.open(work_dir, OPEN_DIR)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WorkFileError(f"the working dir cannot be opened: {exc.strerror}") from None
    try:
        for part in parts[:-1]:
            below = os.open(part, OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = below
        file_fd = os.open(parts[-1], OPEN_FILE, dir_fd=fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WorkFileError(f"{name}: {_why(exc)}") from None
    finally:
        os.close(fd)
    st = os.fstat(file_fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file"
    elif owner is not None and st.st_uid != owner:
        problem = "not a file of the job's user"
    if problem:
        os.close(file_fd)
        raise WorkFileError(f"{name}: {problem}")
    return JobFile(name, file_fd, st.st_size)


def _why(exc: OSError) -> str:
    if isinstance(exc, NotADirectoryError) or exc.errno == 40:  # ELOOP: a symlink
        return "a symlink or not below the working dir"
    return exc.strerror or str(exc)


def read_capped(job_file: JobFile, max_bytes: int) -> bytes:
    """The file's content, or WorkFileError if it holds more than ``max_bytes``; closes it."""
    with open(job_file.fd, "rb", closefd=True) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise WorkFileError(f"{job_file.name}: larger than {max_bytes} bytes")
    return data


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A manifest artifact glob as a regex over ``/``-separated relative paths: ``*`` and
    ``?`` stay within one path component, ``**`` spans any number of them."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matching(work_dir: str, patterns: list[str]) -> list[str]:
    """Relative paths of the files below ``work_dir`` that match one of ``patterns``,
    sorted; symlinked dirs are not entered (the files are opened by ``open_file``)."""
    regexes = [glob_regex(p) for p in patterns]
    found = []
    for top, _, files in os.walk(work_dir, followlinks=False):
        rel_top = os.path.relpath(top, work_dir)
        for name in files:
            rel = name if rel_top == "." else f"{rel_top}/{name}"
            if any(r.match(rel) for r in regexes):
                found.append(rel)
    return sorted(found)


def close(job_files: list[JobFile]) -> None:
    for job_file in job_files:
        with contextlib.suppress(OSError):
            os.close(job_file.fd)
