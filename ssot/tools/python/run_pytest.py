"""Run pytest on a path with a tiny plugin that prints one PROGRESS line per test."""

import sys

import pytest


class Progress:
    def __init__(self) -> None:
        self.total = 0
        self.done = 0

    def pytest_collection_modifyitems(self, items):
        self.total = len(items)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.done += 1
            print(f"PROGRESS {self.done}/{self.total} {report.nodeid} {report.outcome}", flush=True)


sys.exit(pytest.main([sys.argv[1], "-q", "-p", "no:cacheprovider"], plugins=[Progress()]))
