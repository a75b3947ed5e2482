"""Publishing simulated sensor messages to a broker, paced by simulated time."""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional, Tuple

from fedmq.shared.mqtt import new_client
from fedmq.shared.topicmap.model import BrokerSettings


class Publisher:
    """One MQTT connection that publishes ``(sim time, topic, payload)`` messages in order (QoS 1 keeps
    the order and loses nothing), at ``speed`` simulated seconds per wall second (0: as fast as it goes)."""

    def __init__(self, broker: BrokerSettings, client_id: str = "fedmq-sim-homes") -> None:
        self.client = new_client(client_id, broker)
        self.broker = broker
        self.sent = 0

    def __enter__(self) -> "Publisher":
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, messages: Iterable[Tuple[float, str, bytes]], speed: float = 0.0, qos: int = 1,
                progress: Optional[Callable[[int, float], None]] = None) -> int:
        """Send every message; returns how many. ``progress(sent, sim time)`` is called now and then."""
        wall0: Optional[float] = None
        sim0 = 0.0
        last = None
        for t, topic, payload in messages:
            if speed > 0:
                if wall0 is None:
                    wall0, sim0 = time.monotonic(), t
                delay = wall0 + (t - sim0) / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            last = self.client.publish(topic, payload, qos=qos)
            self.sent += 1
            if self.sent % 2000 == 0:
                last.wait_for_publish(30)  # keep paho's queue short
                if progress:
                    progress(self.sent, t)
        if last is not None:
            last.wait_for_publish(60)
        return self.sent
