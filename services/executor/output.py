"""A job's output on its way to the event pipeline: secrets masked, split into lines,
progress read, counted per stream and capped at ``max_output_bytes``.

The process is spawned before its ``started`` is stored (the event carries the pid), so
its first bytes may come before there is a pipeline to take lines: they are kept, in
order, and go out once the pipeline is attached, after ``started``.
"""

from __future__ import annotations

from contracts.manifest import Manifest
from services.executor import core
from services.executor.publisher import EventPipeline

STREAMS = ("stdout", "stderr")


class JobOutput:
    def __init__(self, manifest: Manifest, secrets: list[str]) -> None:
        self.splitters = {s: core.LineSplitter(manifest.limits.max_line_bytes) for s in STREAMS}
        # Masked before splitting, so a split cannot leave part of a secret in clear.
        self.maskers = {s: core.SecretMasker(secrets) for s in STREAMS} if secrets else None
        self.budget = core.OutputBudget(manifest.limits.max_output_bytes)
        self.progress = core.ProgressParser(manifest.progress)
        self.counts = core.LineCounter()
        self.secrets = secrets
        # Nothing to parse: whole chunks of lines go out at once.
        self.plain = manifest.progress is None
        self.pipeline: EventPipeline | None = None
        self._early: list[tuple[str, bytes]] = []

    def on_output(self, stream: str, data: bytes) -> None:
        if self.pipeline is None:
            self._early.append((stream, data))
            return
        self._emit(stream, self._lines(stream, data))

    def _lines(self, stream: str, data: bytes) -> list[str]:
        if self.maskers is not None:
            data = self.maskers[stream].feed(data)
        return self.splitters[stream].feed(data)

    def attach(self, pipeline: EventPipeline) -> None:
        """From now on lines go to ``pipeline``, those that came early first."""
        self.pipeline = pipeline
        early, self._early = self._early, []
        for stream, data in early:
            self._emit(stream, self._lines(stream, data))

    def finish(self) -> None:
        """The process's pipes are closed: what is left is each stream's last line."""
        for stream in STREAMS:
            held = self.maskers[stream].finish() if self.maskers is not None else b""
            self._emit(stream, self.splitters[stream].feed(held) + self.splitters[stream].finish())

    def _emit(self, stream: str, lines: list[str]) -> None:
        pipeline = self.pipeline
        assert pipeline is not None
        if not lines:
            return
        if self.plain and self.budget.admit_all(lines):  # the common case: per chunk
            self.counts.add(stream, len(lines))
            pipeline.add_lines(stream, lines)
            return
        for line in lines:
            reading = self.progress.parse(line)
            if reading is not None:
                pipeline.add_progress(reading)
            if self.budget.admit(line):
                self.counts.add(stream, 1)
                pipeline.add_line(stream, line)
