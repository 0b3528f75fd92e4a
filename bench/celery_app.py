"""The Celery application of the peer case: one task that runs a command the way a
Celery user would, with ``subprocess.run``, and returns its exit code.

Imported by the Celery worker (``celery -A bench.celery_app worker``) and by the
bench's Celery client, never by the bench process itself: Celery is an optional
extra (``pip install -e '.[bench]'``). Both find Redis through BENCH_CELERY_URL.
"""

from __future__ import annotations

import os
import subprocess

from celery import Celery

URL_ENV = "BENCH_CELERY_URL"

_url = os.environ[URL_ENV]
app = Celery("bench", broker=_url, backend=_url)
# JSON, as Celery's defaults; results in the same Redis as the queue, as in Celery's
# own Redis tutorial.
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.run")
def run(argv: list[str]) -> int:
    return subprocess.run(argv, check=False).returncode
