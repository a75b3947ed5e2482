"""A node's side of secure aggregation for one round (protocol section 9): advertise two X25519 keys,
secret-share its mask key and self-mask seed with the roster (sealed to each peer), mask its weighted
update once it is trained and the peers' shares have arrived, and help unmask the sum by sending the
aggregator shares of the survivors' seeds and of the dropped nodes' keys, never both for one node."""

from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Optional, Set, Tuple

import numpy as np

from fedmq.shared.secagg import crypto, field, masks, shamir
from fedmq.shared.secagg.messages import SecAggMessage, open_plaintext, share_plaintext

Send = Callable[[SecAggMessage], None]


class SecureClient:
    """One node's secure aggregation in one round of its group."""

    def __init__(
        self,
        node: str,
        federation: str,
        group: Tuple[str, ...],
        session: Tuple[int, int, int],
        frac_bits: int,
        send: Send,
        send_masked: Callable[[np.ndarray], None],
        log: logging.Logger,
    ) -> None:
        self.node, self.session, self.frac_bits = node, session, frac_bits
        self.send, self.send_masked, self.log = send, send_masked, log
        self.ctx = masks.context(federation, "/".join(group), *session)
        self.c_sk, c_pk = crypto.new_keypair()
        self.s_sk, s_pk = crypto.new_keypair()
        self.b_seed = os.urandom(32)
        self.roster: Dict[str, Tuple[bytes, bytes]] = {}
        self.index: Dict[str, int] = {}
        self.threshold = 0
        self.held: Dict[str, Tuple[int, int]] = {}  # owner -> (share of its seed, share of its mask key)
        self.u2: Optional[List[str]] = None
        self.x: Optional[np.ndarray] = None
        self.masked_sent = self.unmasked = False
        send(SecAggMessage("keys", *session, keys={"": (c_pk, s_pk)}))

    @property
    def shared(self) -> bool:
        """True once this node's shares went out (then it may train)."""
        return bool(self.roster)

    def _share_key(self, peer: str) -> bytes:
        return crypto.agree(self.c_sk, self.roster[peer][0], self.ctx + b"|share")

    def _aad(self, sender: str, receiver: str) -> bytes:
        return self.ctx + f"|{sender}>{receiver}".encode()

    def on_message(self, msg: SecAggMessage) -> None:
        """The aggregator's roster, delivered shares or survivors (ValueError if unacceptable)."""
        if msg.session != self.session:
            return
        {"roster": self._on_roster, "deliver": self._on_deliver, "survivors": self._on_survivors}[msg.type](msg)

    def _on_roster(self, msg: SecAggMessage) -> None:
        if self.roster:
            return
        if self.node not in msg.keys or len(msg.keys) < 2 or not 2 <= msg.threshold <= len(msg.keys):
            raise ValueError("roster without this node, or with a threshold below 2")
        nodes = sorted(msg.keys)
        self.roster, self.threshold = dict(msg.keys), msg.threshold
        self.index = {n: i + 1 for i, n in enumerate(nodes)}
        b = shamir.split(self.b_seed, len(nodes), msg.threshold)
        s = shamir.split(crypto.private_bytes(self.s_sk), len(nodes), msg.threshold)
        sealed = {}
        for n in nodes:
            i = self.index[n] - 1
            if n == self.node:
                self.held[n] = (b[i], s[i])
            else:
                sealed[n] = crypto.seal(
                    self._share_key(n), share_plaintext(self.node, n, b[i], s[i]), self._aad(self.node, n)
                )
        self.send(SecAggMessage("shares", *self.session, sealed=sealed))

    def _on_deliver(self, msg: SecAggMessage) -> None:
        if not self.roster or self.u2 is not None:
            return
        if not set(msg.sealed) <= set(self.roster) - {self.node} or len(msg.sealed) + 1 < self.threshold:
            raise ValueError("delivered shares from nodes off the roster, or fewer than the threshold")
        for sender, sealed in msg.sealed.items():
            plain = crypto.open_sealed(self._share_key(sender), sealed, self._aad(sender, self.node))
            self.held[sender] = open_plaintext(plain, sender, self.node)
        self.u2 = sorted([*msg.sealed, self.node])
        self._maybe_send()

    def set_input(self, vector: np.ndarray, weight: float, rng: np.random.Generator) -> None:
        """The trained update: ``weight * vector`` then ``weight``, encoded into the field."""
        self.x = field.encode(np.concatenate([np.asarray(vector, np.float64) * weight, [weight]]), self.frac_bits, rng)
        self._maybe_send()

    def _maybe_send(self) -> None:
        if self.x is None or self.u2 is None or self.masked_sent:
            return
        peers = {n: self.roster[n][1] for n in self.u2}
        self.masked_sent = True
        self.send_masked(masks.mask(self.x, self.node, self.b_seed, self.s_sk, peers, self.ctx))

    def _on_survivors(self, msg: SecAggMessage) -> None:
        survivors: Set[str] = set(msg.nodes)
        if self.unmasked or self.u2 is None or not self.masked_sent:
            return
        if self.node not in survivors or not survivors <= set(self.u2) or len(survivors) < self.threshold:
            raise ValueError(
                "survivors must include this node, be among those that shared keys, and reach the threshold"
            )
        dropped = set(self.u2) - survivors
        self.unmasked = True
        self.send(
            SecAggMessage(
                "unmask",
                *self.session,
                b_shares={n: self.held[n][0] for n in survivors},
                s_shares={n: self.held[n][1] for n in dropped},
            )
        )
        self.log.info(
            "round %d: sent unmasking shares (%d survivors, %d dropped)", self.session[0], len(survivors), len(dropped)
        )
