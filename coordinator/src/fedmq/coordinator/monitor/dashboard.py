"""``fedmq dashboard``: one web page of the running federation, fed live by server-sent events.

A thread feeds a ``FederationView`` from the broker's retained topics; the HTTP server (standard library,
one thread per client) serves ``/`` (the page: HTML, CSS and JavaScript in one file, no CDN, no build
step), ``/state`` (the view as JSON) and ``/events`` (the view again each time it changes, as
``text/event-stream``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Optional

from fedmq.coordinator.monitor.connect import open_view
from fedmq.shared.topicmap import TopicMap
from fedmq.shared.topicmap.loader import address_problem
from fedmq.shared.topicmap.model import BrokerSettings

log = logging.getLogger("fedmq.dashboard")
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
MAX_CLIENTS = 32
INITIAL_STATE = b"null/*initial state*/"  # in dashboard.html, replaced by the state when the page is served


class Dashboard:
    """The page's server and the view behind it."""

    def __init__(self, tm: TopicMap, broker: BrokerSettings, listen: str) -> None:
        problem = address_problem(listen)
        if problem:
            raise ValueError(f"--listen {listen!r} {problem}")
        self.page = resources.files("fedmq.coordinator.monitor").joinpath("dashboard.html").read_bytes()
        self.link, self.view = open_view(tm, broker)
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.clients = threading.BoundedSemaphore(MAX_CLIENTS)
        host, _, port = listen.rpartition(":")
        self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), _handler(self))
        self.server.daemon_threads = True
        bound_host, bound_port = self.server.server_address[:2]
        self.url = f"http://{bound_host!s}:{bound_port}/"
        self.feeder = threading.Thread(target=self._feed, name="fedmq-dashboard-feed", daemon=True)
        self.feeder.start()

    def _feed(self) -> None:
        while not self.stopping.is_set():
            msg = self.link.get(timeout=0.25)
            if msg is not None and self.view.feed(msg):
                with self.changed:
                    self.changed.notify_all()

    def state(self) -> bytes:
        """The view as JSON bytes."""
        return json.dumps(self.view.snapshot(), separators=(",", ":")).encode()

    def page_now(self) -> bytes:
        """The page with the current state in it, so its first paint shows the federation before the event
        stream delivers (a slow link, a screenshot). ``<`` is escaped: the JSON cannot end its script element."""
        return self.page.replace(INITIAL_STATE, self.state().replace(b"<", b"\\u003c"), 1)

    def wait_change(self, seen: int, timeout: float) -> int:
        """Block until the view's version differs from ``seen`` (or ``timeout``); the version now."""
        with self.changed:
            self.changed.wait_for(lambda: self.view.version != seen or self.stopping.is_set(), timeout)
        return self.view.version

    def serve_forever(self) -> None:
        """Serve until ``stop`` (or Ctrl-C / SIGTERM in the caller)."""
        log.info("dashboard on %s", self.url)
        self.server.serve_forever(poll_interval=0.25)

    def stop(self) -> None:
        """Stop serving, end the event streams, disconnect."""
        self.stopping.set()
        with self.changed:
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()
        self.link.stop()


def _handler(board: Dashboard) -> type:
    """The request handler class serving ``board``."""
    return type("DashboardHandler", (_Handler,), {"board": board})


class _Handler(BaseHTTPRequestHandler):
    """The page, its state as JSON, and server-sent events whenever the state changes."""

    server_version = "fedmq-dashboard"
    board: Dashboard

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self) -> None:  # the standard library's name
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self.board.page_now())
        elif path == "/state":
            self._send(200, "application/json", self.board.state())
        elif path == "/events":
            self._events()
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _events(self) -> None:
        if not self.board.clients.acquire(blocking=False):
            self._send(503, "text/plain; charset=utf-8", b"too many dashboard clients\n")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self._stream()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page was closed
        finally:
            self.board.clients.release()

    def _stream(self) -> None:
        """The state on every change, a keepalive comment when nothing changed for KEEPALIVE_S."""
        board = self.board
        seen: Optional[int] = None
        last_sent = time.monotonic()
        while not board.stopping.is_set():
            if seen != board.view.version:
                seen = board.view.version
                self.wfile.write(b"data: " + board.state() + b"\n\n")
                self.wfile.flush()
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= KEEPALIVE_S:
                self.wfile.write(b": keepalive\n\n")
                self.wfile.flush()
                last_sent = time.monotonic()
            board.wait_change(seen, 1.0)
