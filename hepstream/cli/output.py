"""What the commands print: progress lines on stderr while working, a summary table at the end.

Progress goes to stderr so that ``--json`` output on stdout stays one clean
JSON object that another program can parse.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table
from rich.text import Text


class Progress:
    def __init__(self, enabled: bool = True):
        self.console = Console(stderr=True, soft_wrap=True)  # a line each, as a log or a terminal wraps it
        self.enabled = enabled
        self.started = time.monotonic()

    def step(self, message: str) -> None:
        """One line: seconds since start, then ``message`` as it is (a stage's stderr may hold ``[...]``,
        which rich would take for markup, and fail on)."""
        if self.enabled:
            line = Text(f"{time.monotonic() - self.started:6.1f}s", style="dim")
            line.append(f"  {message}")
            self.console.print(line)

    def summary(self, title: str, figures: dict) -> None:
        table = Table(title=title, show_header=False)
        for key, value in figures.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        Console().print(table)
