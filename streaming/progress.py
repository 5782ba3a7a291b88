"""How a producer run shows its progress: bars on a terminal, plain periodic lines in a log, a summary at the end.

A grid job's log is a file, where redrawn bars become noise; a physicist at a
terminal wants to see the rate move. Both get the same figures (files,
events, MB, rate) from the same counters. Everything goes to stderr, so the
JSON report on stdout stays parseable.
"""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    """Counts what was acknowledged; subclasses decide how to show it. This base shows nothing."""

    def __init__(self):
        self._lock = threading.Lock()
        self.files_total = self.files_done = self.events = self.bytes = 0
        self.started = time.monotonic()

    def start(self, files: int) -> None:
        self.files_total = files
        self.started = time.monotonic()

    def found(self, files: int) -> None:
        """More files to publish than :meth:`start` said: a follower finds them as they land."""
        with self._lock:
            self.files_total += files
        self._show()

    def advance(self, events: int, nbytes: int) -> None:
        with self._lock:
            self.events += events
            self.bytes += nbytes
        self._show()

    def file_done(self, url: str, error: str | None) -> None:
        with self._lock:
            self.files_done += 1
        self._show()

    def close(self, report) -> None:
        """Print the final summary of a :class:`~hepstream.streaming.producer.ProduceReport`."""

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (f"{self.files_done}/{self.files_total} files, {self.events:,} events, "
                f"{self.bytes / 1e6:,.1f} MB, {self.events / elapsed:,.0f} events/s")

    def _show(self) -> None:
        pass


class LogProgress(Progress):
    """One plain line every ``every_s`` seconds, and a summary at the end."""

    def __init__(self, every_s: float = 10.0, stream=None):
        super().__init__()
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self._last = time.monotonic()

    def _show(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            print(f"produce: {self.line()}", file=self.stream, flush=True)

    def close(self, report) -> None:
        print(f"produce: done in {report.elapsed_s:.1f} s: {self.line()}; {len(report.failed)} failed",
              file=self.stream, flush=True)
        for failed in report.failed:
            outcome = (f"PARTIAL ({failed.entries_published} of {failed.file_entries} entries published)"
                       if failed.partial else "FAILED")
            print(f"produce: {outcome} {failed.url}: {failed.error}", file=self.stream, flush=True)


class BarProgress(LogProgress):
    """rich progress bars over files and events, redrawn in place; the summary as :class:`LogProgress`."""

    def __init__(self, stream=None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bars

        super().__init__(stream=stream)
        self._bars = Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[figures]}"), TimeElapsedColumn(),
                          console=Console(file=self.stream), transient=False)
        self._files = None

    def start(self, files: int) -> None:
        super().start(files)
        self._bars.start()
        self._files = self._bars.add_task("files", total=files, figures="")

    def _show(self) -> None:
        if self._files is not None:
            self._bars.update(self._files, total=self.files_total, completed=self.files_done, figures=self.line().split(", ", 1)[1])

    def close(self, report) -> None:
        self._bars.stop()
        super().close(report)


def progress_for(stream=None, every_s: float = 10.0) -> Progress:
    """Bars when ``stream`` (stderr by default) is a terminal, periodic lines otherwise."""
    stream = stream or sys.stderr
    return BarProgress(stream) if stream.isatty() else LogProgress(every_s, stream)
