"""In-process actors for integration tests: the real coordinator service in a thread (so a test can read its
counters) and a rogue node that speaks the protocol as the test dictates."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from fedhelp import FED
from fedmq.coordinator.service import CoordinatorService
from fedmq.shared.envelope import Envelope, Kind, encode
from fedmq.shared.messages import Control, Status
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap import BrokerSettings, load_topic_map
from fedmq.shared.topics import Topics


class InThreadCoordinator:
    """The real CoordinatorService, run in a thread so the test can look at its counters."""

    def __init__(self, topic_map: str, **kw: Any) -> None:
        self.rounds: List[Dict[str, Any]] = []
        self.service = CoordinatorService(load_topic_map(topic_map), fresh=True, on_round=self.rounds.append, **kw)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.service.run()
        except Exception as exc:  # surfaced by the test (wait() fails at once with it)
            logging.getLogger("tests.coordinator").exception("the coordinator stopped")
            self.error = exc

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds, or at once with the
        coordinator's error if it stopped."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            if self.error is not None:
                raise AssertionError(f"the coordinator stopped while waiting for {what}: {self.error!r}")
            time.sleep(0.05)
        alive = "running" if self.thread.is_alive() else "not running"
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (coordinator {alive}, "
                             f"{len(self.rounds)} rounds done, presence {self.service.presence.state})")

    def __enter__(self) -> "InThreadCoordinator":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop()
        self.thread.join(10)


class RogueNode:
    """A node written from the protocol document, that sends what the test tells it to."""

    def __init__(self, port: int, node: str, group: str) -> None:
        self.topics = Topics(FED)
        self.node, self.group = node, group
        self.link = MqttLink(f"rogue-{node}", BrokerSettings(port=port),
                             birth=(self.topics.status(group, node), Status(node, "online", samples=50).encode()))
        self.link.subscribe(self.topics.control(group))
        self.link.start()

    def wait_start(self, timeout: float = 20) -> Control:
        """The next start control that selects this node and is still open."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = self.link.get(0.2)
            if msg:
                ctl = Control.decode(msg.payload)
                if ctl.type == "start" and self.node in ctl.selected and ctl.deadline_at > time.time():
                    return ctl
        raise AssertionError("never selected")

    def send(self, payload: bytes) -> None:
        """Publish raw bytes on this node's update topic."""
        self.link.publish(self.topics.update(self.group, self.node), payload)

    def update(self, ctl: Control, weights: Dict[str, Any], **overrides: Any) -> bytes:
        """An update envelope for the round ``ctl`` started, with fields overridden as the test wants."""
        fields = dict(kind=Kind.UPDATE, federation=FED, round=ctl.round, attempt=ctl.attempt, sender=self.node,
                      model_version=ctl.model_version, tensors=weights, samples=50)
        fields.update(overrides)
        return encode(Envelope(**fields))  # type: ignore[arg-type]
