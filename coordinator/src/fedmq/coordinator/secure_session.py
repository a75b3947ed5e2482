"""The aggregator's side of secure aggregation for one group and one round (protocol section 9).

Phases: collect the nodes' public keys (U1) and publish the roster; collect their sealed shares (U2)
and deliver each node the shares addressed to it; sum the masked inputs as they arrive (U3) and publish
the survivors; collect unmasking shares from at least ``threshold`` survivors, rebuild the survivors'
self-mask seeds and the dropped nodes' mask keys, and remove the masks. The result is the sum of the
survivors' weighted updates and their total weight; no single update is ever seen. Each phase ends when
every expected node has answered or after ``phase_s``; the masked-input phase ends early enough to leave
time for unmasking before the round's deadline.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

import numpy as np

from fedmq.coordinator.rejections import Rejections
from fedmq.shared.messages import MessageError
from fedmq.shared.secagg import crypto, field, masks, shamir
from fedmq.shared.secagg.messages import SecAggMessage
from fedmq.shared.topicmap.model import SecureAggregation
from fedmq.shared.topics import Topics

Publish = Callable[[str, bytes, bool], None]
Result = Tuple[np.ndarray, List[str]]  # (sum of the survivors' vectors, weight last; the survivors)


class SecureSession:
    """One group's secure aggregation in one round; ``result`` is set once unmasked, ``failed`` if not."""

    def __init__(
        self,
        settings: SecureAggregation,
        topics: Topics,
        group: Tuple[str, ...],
        session: Tuple[int, int, int],
        nodes: Set[str],
        width: int,
        close_at: float,
        publish: Publish,
        rejections: Rejections,
        log: logging.Logger,
        federation: str,
    ) -> None:
        self.settings, self.topics, self.group, self.session = settings, topics, group, session
        self.expected, self.width, self.publish, self.rejections, self.log = (
            set(nodes),
            width + 1,
            publish,
            rejections,
            log,
        )
        now = time.time()
        self.close_at = close_at
        self.reserve = min(settings.phase_s, (close_at - now) / 4)  # kept for unmasking at the end
        self.ctx = masks.context(federation, "/".join(group), *session)
        self.phase, self.phase_end = "keys", now + settings.phase_s
        self.keys: Dict[str, Tuple[bytes, bytes]] = {}
        self.u1: List[str] = []
        self.threshold = 0
        self.sealed: Dict[str, Dict[str, bytes]] = {}
        self.total = np.zeros(self.width, np.int64)
        self.u3: List[str] = []
        self.unmask_shares: Dict[str, SecAggMessage] = {}
        self.result: Optional[Result] = None
        self.failed = ""

    @property
    def done(self) -> bool:
        """True once unmasked or failed."""
        return self.result is not None or bool(self.failed)

    def _fail(self, why: str) -> None:
        self.failed = why
        self.phase = "failed"
        self.log.warning("round %d: secure aggregation failed: %s", self.session[0], why)

    # --- messages ------------------------------------------------------------------------------------

    def on_message(self, node: str, payload: bytes, topic: str) -> None:
        """A node's keys, shares or unmasking shares."""
        try:
            msg = SecAggMessage.decode(payload, ("keys", "shares", "unmask"))
        except MessageError as exc:
            self.rejections.reject("malformed secure aggregation message", topic, str(exc))
            return
        wanted = {"keys": "keys", "shares": "shares", "unmask": "unmask"}[msg.type]
        if msg.session != self.session or self.phase != wanted:
            self.rejections.reject("stale round", topic, f"{msg.type} for session {msg.session} in phase {self.phase}")
            return
        problem = getattr(self, "_on_" + msg.type)(node, msg)
        if problem:
            self.rejections.reject("bad secure aggregation message", topic, problem)
        self.tick(time.time())

    def _on_keys(self, node: str, msg: SecAggMessage) -> str:
        if node not in self.expected or node in self.keys:
            return f"{node} is not expected here, or sent its keys twice"
        self.keys[node] = msg.keys[""]
        return ""

    def _on_shares(self, node: str, msg: SecAggMessage) -> str:
        if node not in self.u1 or node in self.sealed:
            return f"{node} is not on the roster, or sent its shares twice"
        if set(msg.sealed) != set(self.u1) - {node}:
            return "shares must be addressed to every other node on the roster"
        self.sealed[node] = msg.sealed
        return ""

    def on_masked(self, node: str, masked: np.ndarray) -> str:
        """A masked input (the ``@masked`` tensor of the node's update); the problem, or '' if taken."""
        if self.phase != "masked":
            return f"masked input in phase {self.phase}"
        if node not in self.sealed or node in self.u3:
            return f"{node} did not share its keys this round, or already sent its input"
        if not field.is_vector(masked, self.width):
            return f"@masked must be {self.width} int64 field elements below 2^61 - 1"
        self.total = field.add(self.total, masked)
        self.u3.append(node)
        self.tick(time.time())
        return ""

    def _on_unmask(self, node: str, msg: SecAggMessage) -> str:
        dropped = set(self.sealed) - set(self.u3)
        if node not in self.u3 or node in self.unmask_shares:
            return f"{node} is not a survivor, or answered twice"
        if set(msg.b_shares) != set(self.u3) or set(msg.s_shares) != dropped:
            return "needs a share of every survivor's seed and of every dropped node's key, nothing else"
        self.unmask_shares[node] = msg
        return ""

    # --- phases --------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """End the current phase once everyone expected answered, or its time is up."""
        if self.phase == "keys" and (set(self.keys) == self.expected or now >= self.phase_end):
            self._roster(now)
        elif self.phase == "shares" and (set(self.sealed) == set(self.u1) or now >= self.phase_end):
            self._deliver(now)
        elif self.phase == "masked" and (set(self.u3) == set(self.sealed) or now >= self.close_at - self.reserve):
            self._survivors(now)
        elif self.phase == "unmask" and (set(self.unmask_shares) == set(self.u3) or now >= self.phase_end):
            self._unmask()

    def next_deadline(self) -> Optional[float]:
        """When ``tick`` may next have work."""
        if self.done:
            return None
        return self.close_at - self.reserve if self.phase == "masked" else self.phase_end

    def _roster(self, now: float) -> None:
        self.u1 = sorted(self.keys)
        if len(self.u1) < 2:
            self._fail(f"{len(self.u1)} node(s) sent keys; masking needs at least 2")
            return
        self.threshold = max(2, math.ceil(self.settings.threshold * len(self.u1)))
        msg = SecAggMessage("roster", *self.session, keys={n: self.keys[n] for n in self.u1}, threshold=self.threshold)
        self.publish(self.topics.secagg_all(self.group), msg.encode(), False)
        self.phase, self.phase_end = "shares", now + self.settings.phase_s

    def _deliver(self, now: float) -> None:
        u2 = sorted(self.sealed)
        if len(u2) < self.threshold:
            self._fail(f"{len(u2)} node(s) shared their keys, the threshold is {self.threshold}")
            return
        for v in u2:
            sealed = {u: self.sealed[u][v] for u in u2 if u != v}
            self.publish(
                self.topics.secagg_to(self.group, v),
                SecAggMessage("deliver", *self.session, sealed=sealed).encode(),
                False,
            )
        self.phase = "masked"

    def _survivors(self, now: float) -> None:
        if len(self.u3) < self.threshold:
            self._fail(f"{len(self.u3)} masked input(s) arrived, the threshold is {self.threshold}")
            return
        self.u3.sort()
        self.publish(
            self.topics.secagg_all(self.group), SecAggMessage("survivors", *self.session, nodes=self.u3).encode(), False
        )
        self.phase, self.phase_end = "unmask", min(now + self.settings.phase_s, self.close_at)

    def _unmask(self) -> None:
        answers = self.unmask_shares
        if len(answers) < self.threshold:
            self._fail(f"{len(answers)} survivor(s) sent unmasking shares, the threshold is {self.threshold}")
            return
        x_of = {n: i + 1 for i, n in enumerate(self.u1)}  # each node's share index
        try:
            seeds = {v: shamir.combine({x_of[h]: m.b_shares[v] for h, m in answers.items()}) for v in self.u3}
            dropped = {}
            for v in set(self.sealed) - set(self.u3):
                sk = crypto.private_key(shamir.combine({x_of[h]: m.s_shares[v] for h, m in answers.items()}))
                if crypto.public_bytes(sk) != self.keys[v][1]:
                    raise ValueError(f"the key rebuilt for {v} does not match its public key")
                dropped[v] = sk
        except ValueError as exc:
            self._fail(f"unmasking shares do not combine: {exc}")
            return
        public = {n: self.keys[n][1] for n in self.u3}
        vec = field.decode(masks.unmask(self.total, seeds, dropped, self.u3, public, self.ctx), self.settings.frac_bits)
        if not vec[-1] > 0:
            self._fail("the unmasked total weight is not positive (inconsistent shares?)")
            return
        self.result = (vec, list(self.u3))
        self.phase = "done"
        self.log.info(
            "round %d: secure sum of %d nodes unmasked (%d dropped after sharing keys)",
            self.session[0],
            len(self.u3),
            len(dropped),
        )
