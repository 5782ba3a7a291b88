"""A loopback HTTP server that answers byte ranges, as grid HTTP(S) endpoints (XRootD, dCache, EOS) do.

Python's own ``http.server`` ignores ``Range`` and sends whole files, which
uproot rightly refuses; reading ROOT over HTTP needs ranges.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

FORBIDDEN = "forbidden.root"  # a path the server refuses with 403, as storage does without a valid token


class RangeHandler(SimpleHTTPRequestHandler):
    def _target(self) -> tuple[str, int] | None:
        if self.path.endswith(FORBIDDEN):
            self.send_error(HTTPStatus.FORBIDDEN)
            return None
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        return path, os.path.getsize(path)

    def do_HEAD(self):
        target = self._target()
        if target:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Length", str(target[1]))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

    def do_GET(self):
        target = self._target()
        if not target:
            return
        path, size = target
        start, stop = 0, size - 1
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start, stop = int(match[1]), min(int(match[2] or size - 1), size - 1)
        with open(path, "rb") as file:
            file.seek(start)
            data = file.read(stop - start + 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if match else HTTPStatus.OK)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{stop}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class RangeServer:
    """Serves ``folder`` on 127.0.0.1 at a free port from a thread; a context manager."""

    def __init__(self, folder):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
