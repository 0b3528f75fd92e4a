"""Run pytest on a path with a tiny plugin that prints one PROGRESS line per test; the
result counts the outcomes and names the failing tests, and junit.xml (an artifact) has
the whole report."""

import json
import os
import sys

import pytest

FAILING_MAX = 200  # ids in the result; junit.xml has them all


class Progress:
    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        self.failing: list[str] = []

    def pytest_collection_modifyitems(self, items):
        self.total = len(items)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.done += 1
            print(f"PROGRESS {self.done}/{self.total} {report.nodeid} {report.outcome}", flush=True)
        if report.when == "call":
            self.counts["failed" if report.failed else report.outcome] += 1
        elif report.failed:  # setup or teardown
            self.counts["errors"] += 1
        elif report.when == "setup" and report.skipped:
            self.counts["skipped"] += 1
        if report.failed and len(self.failing) < FAILING_MAX and report.nodeid not in self.failing:
            self.failing.append(report.nodeid)


progress = Progress()
code = pytest.main(
    [
        sys.argv[1],
        "-q",
        "-p",
        "no:cacheprovider",
        f"--rootdir={sys.argv[1]}",  # test ids relative to the suite, not to the working dir
        f"--junitxml={os.path.abspath('junit.xml')}",
    ],
    plugins=[progress],
)
if "DOMED_RESULT" in os.environ:
    result = {**progress.counts, "exit_code": int(code), "failing": progress.failing}
    with open(os.environ["DOMED_RESULT"], "w") as fh:
        json.dump(result, fh)
sys.exit(code)
