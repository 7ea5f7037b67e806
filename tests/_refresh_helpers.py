"""A real HTTP server on 127.0.0.1 for the refresh checks: files with ETag / Last-Modified."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    body: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = "Mon, 02 Nov 2026 10:00:00 GMT"
    send_length: bool = True


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, Served] = {}
    requests: list[tuple[str, str]] = []

    def _head(self) -> Served | None:
        self.requests.append((self.command, self.path))
        f = self.files.get(self.path)
        if f is None:
            self.send_error(404)
            return None
        self.send_response(200)
        if f.send_length:
            self.send_header("Content-Length", str(len(f.body)))
        if f.etag:
            self.send_header("ETag", f.etag)
        if f.last_modified:
            self.send_header("Last-Modified", f.last_modified)
        self.end_headers()
        return f

    def do_HEAD(self) -> None:  # noqa: N802
        self._head()

    def do_GET(self) -> None:  # noqa: N802
        f = self._head()
        if f is not None:
            self.wfile.write(f.body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_server(files: dict[str, Served]) -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"files": files, "requests": []})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", handler
    finally:
        srv.shutdown()
        srv.server_close()
