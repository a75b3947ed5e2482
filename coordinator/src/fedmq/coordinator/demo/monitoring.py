"""The demo's windows on the federation: the live dashboard (served by the demo process) and the
coordinator's Prometheus endpoint, each on its usual port or, when that is taken, on a free one."""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, List, Optional

from fedmq.shared.identities import DASHBOARD
from fedmq.shared.topicmap import load_topic_map

if TYPE_CHECKING:
    from fedmq.coordinator.monitor.dashboard import Dashboard


def available(address: str) -> str:
    """``address`` if its port is free, else the same host with a free port."""
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
            return address
        except OSError:
            s.bind((host, 0))
            return f"{host}:{s.getsockname()[1]}"


def metrics_flag(address: Optional[str]) -> List[str]:
    """The coordinator's ``--metrics`` arguments (none when off)."""
    return ["--metrics", available(address)] if address and address != "off" else []


def start_dashboard(address: Optional[str], topic_map: str, security_dir: Optional[str]) -> "Optional[Dashboard]":
    """The dashboard of the federation ``topic_map`` describes, served from a thread of this process."""
    if not address or address == "off":
        return None
    from fedmq.coordinator.monitor.connect import monitor_broker
    from fedmq.coordinator.monitor.dashboard import Dashboard

    tm = load_topic_map(topic_map)
    board = Dashboard(tm, monitor_broker(tm, security_dir, DASHBOARD), available(address))
    threading.Thread(target=board.serve_forever, name="fedmq-demo-dashboard", daemon=True).start()
    return board


def announce(board: "Optional[Dashboard]", metrics: List[str]) -> None:
    """Print where to look."""
    if board is not None:
        print(f"fedmq demo: live dashboard at {board.url}", flush=True)
    if metrics:
        print(f"fedmq demo: Prometheus metrics at http://{metrics[1]}/metrics", flush=True)
