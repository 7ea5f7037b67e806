"""A real HTTP server on 127.0.0.1 that misbehaves on request, for the download tests.

Each path is a :class:`Route`: the bytes to serve plus the faults to inject. Counted faults
(``fail``, ``drops``, ``stalls``, ``truncations``) apply to that many GET requests, then the
route behaves; ``-1`` means every request. Every request is recorded (method, path, headers,
status, body bytes sent) so tests can assert what the client really asked for.

    with FaultyServer() as srv:
        srv.route("/x.bin", Route(body, drop_after=1000, drops=1))
        url = srv.url("/x.bin")
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)  # e.g. ETag, Last-Modified
    fail: list[int] = field(default_factory=list)  # statuses answered, in order, before serving
    status: int | None = None  # answered to every GET (e.g. 404), overrides everything else
    ignore_range: bool = False  # answer 200 with the whole body even when a Range is asked
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drops: int = 0  # ... for this many responses
    stall_after: int | None = None  # stop sending for stall_s after this many body bytes ...
    stall_s: float = 5.0
    stalls: int = 0  # ... for this many responses
    truncate_to: int | None = None  # serve only the first N bytes, as if that were the file ...
    truncations: int = 0  # ... for this many responses
    wrong_bytes: bool = False  # flip one byte in the middle (same size, wrong md5)
    chunk: int = 16 * 1024  # write size
    delay_s: float = 0.0  # pause after each chunk: a slow server


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    sent: int = 0

    @property
    def range_start(self) -> int | None:
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("range", ""))
        return int(m.group(1)) if m else None


def _take(count: int) -> tuple[bool, int]:
    """(apply the fault now, remaining count) for a counted fault."""
    if count == 0:
        return False, 0
    return True, (count - 1 if count > 0 else -1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test output
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _plan(self) -> tuple[Route | None, Seen, dict[str, bool | int]]:
        owner = self.server.owner
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        with owner.lock:
            owner.requests.append(seen)
            route = owner.routes.get(self.path)
            plan: dict[str, bool | int] = {}
            if route is not None and not seen.method == "HEAD":
                plan["fail"] = route.fail.pop(0) if route.fail else 0
                if not plan["fail"]:
                    plan["drop"], route.drops = _take(route.drops)
                    plan["stall"], route.stalls = _take(route.stalls)
                    plan["truncate"], route.truncations = _take(route.truncations)
        return route, seen, plan

    def _error(self, seen: Seen, status: int) -> None:
        body = f"<html><body>error {status}</body></html>".encode()
        seen.status = status
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        if status in (429, 503):
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        route, seen, plan = self._plan()
        if route is None:
            return self._error(seen, 404)
        if route.status is not None or plan.get("fail"):
            return self._error(seen, route.status or int(plan["fail"]))
        body = route.body
        if route.wrong_bytes:
            mid = len(body) // 2
            body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :]
        if plan.get("truncate") and route.truncate_to is not None:
            body = body[: route.truncate_to]
        start = seen.range_start
        status = 206 if start is not None and not route.ignore_range and not head else 200
        if status == 206 and start is not None and start >= len(body):
            seen.status = 416
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        start = start if status == 206 and start is not None else 0
        payload = body[start:]
        seen.status = status
        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        for key, value in route.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self._send_body(payload, route, plan, seen)
        return None

    def _send_body(self, payload: bytes, route: Route, plan: dict[str, bool | int], seen: Seen) -> None:
        drop_at = route.drop_after if plan.get("drop") else None
        stall_at = route.stall_after if plan.get("stall") else None
        try:
            pos = 0
            while pos < len(payload):
                end = min(pos + route.chunk, len(payload))
                for limit in (drop_at, stall_at):
                    if limit is not None and pos < limit < end:
                        end = limit
                self.wfile.write(payload[pos:end])
                seen.sent = pos = end
                if drop_at is not None and pos >= drop_at:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if stall_at is not None and pos >= stall_at:
                    stall_at = None
                    self.wfile.flush()
                    time.sleep(route.stall_s)
                if route.delay_s:
                    self.wfile.flush()
                    time.sleep(route.delay_s)
        except OSError:  # the client gave up (timeout) or was killed: nothing to do
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must not hold up shutdown
    owner: FaultyServer

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # resets by a client that gave up are expected
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class FaultyServer:
    """Threaded HTTP server on a free port of 127.0.0.1; use as a context manager."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def route(self, path: str, route: Route) -> str:
        """Serve ``route`` at ``path``; return its URL."""
        with self.lock:
            self.routes[path] = route
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}{path}"

    def seen(self, path: str, method: str = "GET") -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if r.path == path and r.method == method]

    def __enter__(self) -> FaultyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
