"""What the commands print: progress lines on stderr while working, a summary table at the end.

Progress goes to stderr so that ``--json`` output on stdout stays one clean
JSON object that another program can parse.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table


class Progress:
    def __init__(self, enabled: bool = True):
        self.console = Console(stderr=True, soft_wrap=True)  # a line each, as a log or a terminal wraps it
        self.enabled = enabled
        self.started = time.monotonic()

    def step(self, message: str) -> None:
        if self.enabled:
            self.console.print(f"[dim]{time.monotonic() - self.started:6.1f}s[/dim]  {message}")

    def summary(self, title: str, figures: dict) -> None:
        table = Table(title=title, show_header=False)
        for key, value in figures.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        Console().print(table)
