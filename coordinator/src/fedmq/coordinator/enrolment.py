"""Enrolment of new devices with one-time tokens (run by the root coordinator when the topic map's
``security.dir`` is set).

A device logs in as its token's user and publishes ``{"v": 1, "token": "<id>.<secret>", "node_id": "..."}``
on ``_enrol/request/<id>``. The coordinator checks the token, that the id is admitted by the topic map's
rules, and that it is neither revoked nor taken; then it issues the device's certificate, password and
signing key, adds it to the password file, the ACL and keys.json, answers on ``_enrol/reply/<id>``, and
a moment later makes Mosquitto reload (the token's user disappears). Refusals are answered and counted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Callable, Optional

from fedmq.broker.provision import EnrolmentRefused, enrol
from fedmq.coordinator.rejections import Rejections
from fedmq.shared.topicmap import TopicMap

log = logging.getLogger("fedmq.enrolment")
RELOAD_DELAY_S = 2.0  # let the reply reach the device before its token user disappears


class Enrolment:
    """Handles enrolment requests; ``on_enrolled`` is told about every new node (to reload keys)."""

    def __init__(self, tm: TopicMap, publish: Callable[[str, bytes, bool], None], rejections: Rejections,
                 on_enrolled: Callable[[str], None]) -> None:
        assert tm.security.dir
        self.tm = tm
        self.directory = tm.security.dir
        self.publish = publish
        self.rejections = rejections
        self.on_enrolled = on_enrolled
        self.topics = tm.topics()
        self.reload_at: Optional[float] = None

    def subscription(self) -> str:
        """The topic filter of all requests."""
        return self.topics.enrol_request("+")

    def handle(self, token_id: str, payload: bytes, topic: str) -> None:
        """Answer one request."""
        try:
            req = json.loads(payload.decode("utf-8"))
            if not isinstance(req, dict) or req.get("v") != 1:
                raise ValueError("not a version 1 request")
            token, node_id = req.get("token"), req.get("node_id")
            if not isinstance(token, str) or not isinstance(node_id, str) or token.split(".", 1)[0] != token_id:
                raise ValueError("token and node_id must be strings, the token for this topic")
        except (UnicodeDecodeError, ValueError) as exc:
            self.rejections.reject("enrol: malformed", topic, str(exc))
            return
        try:
            files = enrol(self.tm, self.directory, token_id, token.split(".", 1)[1] if "." in token else "", node_id)
        except EnrolmentRefused as exc:
            self.rejections.reject(f"enrol: {exc}", topic, node_id)
            self._reply(token_id, {"status": "refused", "reason": str(exc)})
            return
        log.warning("enrolled %s into group %s", node_id, files["group"] or "(root)")
        self._reply(token_id, {"status": "ok", "node_id": node_id, **files})
        self.on_enrolled(node_id)
        self.reload_at = time.monotonic() + RELOAD_DELAY_S

    def _reply(self, token_id: str, body: dict) -> None:
        self.publish(self.topics.enrol_reply(token_id), json.dumps({"v": 1, **body}).encode("utf-8"), False)

    def tick(self) -> None:
        """Make Mosquitto reload its password and ACL files once the reply had time to go out."""
        if self.reload_at is None or time.monotonic() < self.reload_at:
            return
        self.reload_at = None
        pid_file = self.tm.security.broker_pid_file
        if not pid_file:
            log.warning("enrolment changed the password and ACL files: reload Mosquitto (SIGHUP) to apply them")
            return
        try:
            with open(pid_file, encoding="utf-8") as fh:
                os.kill(int(fh.read().strip()), signal.SIGHUP)
        except (OSError, ValueError) as exc:
            log.error("could not signal Mosquitto via %s: %s; reload it by hand", pid_file, exc)
