"""A TCP proxy in front of the real broker that can cut and block connections: the link faults of
IoT uplinks (a dropped cellular link, a flapping Wi-Fi), injected at the network level."""

from __future__ import annotations

import select
import socket
import threading
from typing import List, Tuple


class FaultProxy:
    """Listens on a free loopback port and forwards to (host, port) until cut or blocked."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.blocked = threading.Event()
        self.closed = threading.Event()
        self.pairs: List[Tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.blocked.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        socks = [a, b]
        try:
            while not self.closed.is_set():
                ready, _, _ = select.select(socks, [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            pass
        finally:
            for s in socks:
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every current connection (both sides see a reset)."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.cuts += 1

    def block(self) -> None:
        """Cut and refuse new connections until ``unblock``."""
        self.blocked.set()
        self.cut()

    def unblock(self) -> None:
        """Accept connections again."""
        self.blocked.clear()

    def close(self) -> None:
        """Stop everything."""
        self.closed.set()
        self.cut()
        self.server.close()
