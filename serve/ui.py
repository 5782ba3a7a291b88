"""``GET /ui``: the report's page, drawn from the served model's store when asked, for a browser tab left open.

The page is :mod:`hepstream.report`'s, so ``/ui`` and ``hepstream report``
never disagree. It is rebuilt at most every ``cache_s`` seconds, whatever
the number of open tabs (drawing takes about a second of CPU), in the thread
pool, so scoring requests never wait for it; and it reloads itself with a
``<meta http-equiv="refresh">``. The serving app has no held-out files and no
broker, so its ROC and score panels say so and its lag is left out:
``hepstream report`` draws those. Like every endpoint but health, it needs
the bearer token when the server has tokens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import HTMLResponse


class CachedPage:
    """A page built by ``build`` and kept ``cache_s`` seconds; one build at a time, others wait for it."""

    def __init__(self, build: Callable[[], str], cache_s: float, clock: Callable[[], float] = time.monotonic):
        self.build = build
        self.cache_s = cache_s
        self.clock = clock
        self._lock = threading.Lock()
        self._page: str | None = None
        self._built_at = 0.0

    def get(self) -> str:
        with self._lock:
            if self._page is None or self.clock() - self._built_at >= self.cache_s:
                self._page = self.build()
                self._built_at = self.clock()
            return self._page


def ui_router(store, refresh_s: float = 10.0, cache_s: float = 5.0) -> APIRouter:
    """The ``/ui`` route over ``store`` (``versions()``, ``read_meta(version)``, ``model``)."""
    from hepstream.report.history import read_history
    from hepstream.report.page import build_report, report_html

    page = CachedPage(lambda: report_html(build_report(read_history(store)), refresh_s), cache_s)
    router = APIRouter()

    # Not in the OpenAPI schema: a page for people, not an operation for clients.
    @router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    def ui() -> HTMLResponse:  # a plain def: FastAPI runs it in its thread pool, off the event loop
        return HTMLResponse(page.get())

    return router
