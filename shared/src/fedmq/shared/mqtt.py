"""One MQTT v5 connection with a persistent session, automatic reconnect with backoff, a last will,
and a bounded inbox that a single worker thread drains (paho's network thread never runs our logic).
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fedmq.shared import chunks
from fedmq.shared.topicmap.errors import ConfigIssue, TopicMapError
from fedmq.shared.topicmap.model import BrokerSettings

SESSION_EXPIRY_S = 3600
PACKET_OVERHEAD = 512  # fixed header, topic and properties of one PUBLISH, generously
QUICK_DROP_S = 3.0  # a connection lost this soon after it was made counts as a quick drop
REFUSAL_REMINDER = 50  # a broker refusing us the same way is said once, then every this many refusals
SESSION_TAKEN_OVER = 142  # MQTT v5 DISCONNECT reason: another connection with the same client id


def authenticate(client: mqtt.Client, broker: BrokerSettings, key: str = "broker") -> None:
    """Set up TLS and the user name and password a ``broker`` section names on a paho client; a file that
    cannot be used raises TopicMapError naming the key (``key`` is the section's path) and the file."""
    where, named = f"{key}.tls", broker.tls.ca_file if broker.tls else ""
    try:
        if broker.tls is not None:
            client.tls_set(ca_certs=broker.tls.ca_file, certfile=broker.tls.cert_file, keyfile=broker.tls.key_file,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if broker.username:
            password = None
            if broker.password_file:
                where, named = f"{key}.password_file", broker.password_file
                with open(broker.password_file, encoding="utf-8") as fh:
                    password = fh.read().strip()
            client.username_pw_set(broker.username, password)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise TopicMapError([ConfigIssue(named or key, None, where, f"cannot be used: {exc}",
                                         "check the files the broker section names and their permissions")]) from None


def new_client(client_id: str, broker: BrokerSettings, key: str = "broker", *, max_queued: int = 0,
               max_delay_s: int = 16) -> mqtt.Client:
    """The one way fedmq makes a paho client: MQTT v5 with paho's current callback API, the ``broker`` section's
    TLS and credentials (``key`` names the section in errors), reconnecting with backoff from 1 s to
    ``max_delay_s``, at most ``max_queued`` outgoing messages queued (0: no bound)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    authenticate(client, broker, key)
    client.reconnect_delay_set(min_delay=1, max_delay=max_delay_s)
    client.max_queued_messages_set(max_queued)
    return client


class PayloadTooLarge(ValueError):
    """Raised instead of sending a message the broker would refuse (and disconnect us for)."""


@dataclass
class Message:
    """An incoming message as the worker sees it."""

    topic: str
    payload: bytes
    retain: bool
    chunked: bool = False  # reassembled from chunks (its first chunk already passed the rate limit)


class MqttLink:
    """A paho client wrapped for fedmq: subscriptions survive reconnects, messages land in ``inbox``.

    ``will`` is published (retained) by the broker if we vanish; ``birth`` is published (retained)
    by us on every successful connect. Messages over ``chunk_bytes`` are sent in chunks, and chunks
    received are reassembled (``fedmq.shared.chunks``) before ``get`` returns them; ``on_reject`` hears
    of chunks that are malformed or never completed as ``(reason, topic, detail)``.
    """

    def __init__(self, client_id: str, broker: BrokerSettings, *, will: Optional[Tuple[str, bytes]] = None,
                 birth: Optional[Tuple[str, bytes]] = None, persistent: bool = True, inbox_size: int = 10_000,
                 max_packet_bytes: Optional[int] = None, chunk_bytes: Optional[int] = None,
                 chunk_timeout_s: float = 60.0, on_reject: Optional[Callable[[str, str, str], None]] = None,
                 admit_chunk: Optional[Callable[[str], bool]] = None,
                 no_retain: Optional[Callable[[str], bool]] = None, log: Optional[logging.Logger] = None) -> None:
        self.log = log or logging.getLogger("fedmq.mqtt")
        self.broker = broker
        self.persistent = persistent
        self.max_payload = (max_packet_bytes - PACKET_OVERHEAD) if max_packet_bytes else None
        self.chunk_bytes = chunk_bytes
        self.reassembler = chunks.Reassembler(max_packet_bytes or (256 << 20), chunk_timeout_s)
        self.on_reject = on_reject or (lambda reason, topic, detail: self.log.warning("dropped %s on %s: %s",
                                                                                     reason, topic, detail))
        self.admit_chunk = admit_chunk  # may a new chunked message on this topic be taken (rate limits)
        self.no_retain = no_retain  # topics where nothing may stay retained: such messages are refused and cleared
        self._retained_chunks: Dict[str, int] = {}  # retained topic -> chunks last published under it
        self._last_expiry = time.monotonic()
        self.inbox: "queue.Queue[Message]" = queue.Queue(maxsize=inbox_size)
        self.connected = threading.Event()
        self.bytes_in = 0
        self.bytes_out = 0
        self.connects = 0
        self.sessions_lost = 0  # reconnections on which the broker had no session for us any more
        self.last_refusal: Optional[str] = None  # the reason of the last refused CONNECT, until one succeeds
        self.refusals = 0  # CONNECTs the broker refused
        self._subs: List[Tuple[str, int]] = []
        self.birth = birth
        self._unacked: Set[int] = set()  # mids of QoS 1 messages not acknowledged yet (kept across reconnects)
        self._early: Set[int] = set()  # mids acknowledged before publish() recorded them
        self._acked = threading.Condition()
        self._closing = False
        self._lock = threading.Lock()
        c = new_client(client_id, broker)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        self._fails = 0
        self._refused_now = False  # the attempt that ends now had its CONNACK refused (said in _on_connect)
        self._connected_at = 0.0
        self._quick_drops = 0  # connections lost within QUICK_DROP_S of being made, in a row
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        self.client = c

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect, to ``topic`` and its chunks."""
        with self._lock:
            new = [(topic, qos)] + ([] if topic.endswith("#") else [(chunks.chunk_filter(topic), qos)])
            self._subs.extend(new)
            if self.connected.is_set():
                for t, q in new:
                    self.client.subscribe(t, qos=q)

    def start(self, wait_s: Optional[float] = 10.0) -> bool:
        """Connect in the background (retrying forever); wait up to ``wait_s`` for the first CONNACK."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S if self.persistent else 0
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s,
                                  clean_start=not self.persistent, properties=props)
        self.client.loop_start()
        return self.connected.wait(wait_s) if wait_s else self.connected.is_set()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message (paho resends QoS 1 after a reconnect), in chunks if it is over ``chunk_bytes``;
        refuse what the broker would refuse."""
        frames = chunks.split(payload, self.chunk_bytes) if self.chunk_bytes and len(payload) > self.chunk_bytes else []
        if retain:  # clear what an earlier version of this retained message left behind
            before = self._retained_chunks.get(topic)
            if frames and before == 0:
                self._send(topic, b"", qos, True)
            for i in range(len(frames), before or 0):
                self._send(chunks.chunk_topic(topic, i), b"", qos, True)
            self._retained_chunks[topic] = len(frames)
        if frames:
            for i, frame in enumerate(frames):
                self._send(chunks.chunk_topic(topic, i), frame, qos, retain)
            return
        if self.max_payload is not None and len(payload) > self.max_payload:
            raise PayloadTooLarge(f"{len(payload)} bytes on {topic} is over the broker's packet limit "
                                  "(set transport.max_payload_bytes to send it in chunks)")
        self._send(topic, payload, qos, retain)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        # Never call paho while holding our lock: paho calls on_publish while holding its own.
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            with self._acked:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                else:
                    self._unacked.add(info.mid)
        self.bytes_out += len(payload)

    def get(self, timeout: float) -> Optional[Message]:
        """Next incoming message (chunked ones reassembled), or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._expire_chunks()
            try:
                msg = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if not msg.payload:
                continue  # a retained message being cleared; fedmq never sends empty messages otherwise
            base = chunks.base_topic(msg.topic)
            if msg.retain and self.no_retain is not None and self.no_retain(chunks.owner_topic(msg.topic)):
                self.on_reject("retained message", msg.topic, "nothing may stay retained here; clearing it")
                self._send(msg.topic, b"", 1, True)  # the broker forgets it: no replay to the next subscriber
                continue
            if base is None:
                return msg
            if (self.admit_chunk is not None and not msg.retain and self.reassembler.opens_set(msg.topic, msg.payload)
                    and not self.admit_chunk(base)):  # each chunked message counts once, at its first chunk
                self.on_reject("rate limit", msg.topic, "a new chunked message over the sender's message rate")
                continue
            try:
                whole = self.reassembler.add(msg.topic, msg.payload)
            except chunks.ChunkError as exc:
                self.on_reject("bad chunk", msg.topic, str(exc))
                continue
            if whole is not None:
                return Message(whole[0], whole[1], msg.retain, chunked=True)

    def _expire_chunks(self) -> None:
        now = time.monotonic()
        if now - self._last_expiry < 1.0:
            return
        self._last_expiry = now
        for topic, got, count in self.reassembler.expire(now):
            self.on_reject("incomplete chunks", topic, f"{got} of {count} chunks arrived within "
                           f"{self.reassembler.timeout_s:.0f}s (transport.chunk_timeout_s)")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the broker has acknowledged every QoS 1 message published so far."""
        deadline = time.monotonic() + timeout
        with self._acked:
            while self._unacked:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._acked.wait(min(remaining, 0.1))
        return True

    def stop(self, final: Optional[Tuple[str, bytes]] = None) -> None:
        """Optionally publish a last retained message, flush what is unacknowledged, disconnect, stop the thread."""
        if final is not None and self.connected.is_set():
            self.publish(final[0], final[1], retain=True)
        self.flush()
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            self._refused_now = True
            if str(reason) != self.last_refusal or self.refusals % REFUSAL_REMINDER == 0:  # once, then seldom
                self.log.error("broker %s:%s refused the connection of %s: %s; check the user and its password "
                               "(broker.username, broker.password_file) or certificate (broker.tls.cert_file) "
                               "against the broker's users (a revoked identity is refused like this); retrying "
                               "with backoff, this is said again every %d refusals", self.broker.host,
                               self.broker.port, self._identity(), reason, REFUSAL_REMINDER)
            self.last_refusal = str(reason)
            self.refusals += 1
            return
        self.connects += 1
        self._connected_at = time.monotonic()
        if self.connects > 1 and self.persistent and not getattr(flags, "session_present", True):
            self.sessions_lost += 1  # the broker forgot us: what it had not delivered for us is gone
        self.last_refusal = None
        self.log.info("connected to %s:%s (session present: %s)", self.broker.host, self.broker.port,
                      getattr(flags, "session_present", "?"))
        with self._lock:
            for topic, qos in self._subs:
                client.subscribe(topic, qos=qos)
            if self.birth is not None:  # announce again after every (re)connect: the will may have fired
                client.publish(self.birth[0], self.birth[1], qos=1, retain=True)
            self.connected.set()

    def _identity(self) -> str:
        """Who we log in as, for messages: the user name, or the client certificate."""
        if self.broker.username:
            return f"user {self.broker.username!r}"
        if self.broker.tls is not None and self.broker.tls.cert_file:
            return f"the certificate {self.broker.tls.cert_file}"
        return "an anonymous client"

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        """A connection attempt that failed before any CONNACK (refused, timed out, TLS verification):
        logged with its reason once, and then every 10th time, while paho backs off (up to 16 s apart)."""
        self._fails += 1
        if self._fails == 1 or self._fails % 10 == 0:
            reason = self._diagnose()
            self.log.warning("cannot reach the broker at %s:%s (attempt %d: %s); retrying with backoff",
                             self.broker.host, self.broker.port, self._fails, reason)

    def _diagnose(self) -> str:
        """Why the broker cannot be reached, found by a TCP connection to it (and a TLS handshake for a TLS port)."""
        try:
            with socket.create_connection((self.broker.host, self.broker.port), timeout=3) as sock:
                if self.broker.tls is not None:
                    return self._diagnose_tls(sock)
        except socket.timeout:
            return "timed out"
        except ConnectionRefusedError:
            return "connection refused: is Mosquitto running on that port?"
        except OSError as exc:
            return exc.strerror or str(exc)
        return self._speaks_tls()

    def _speaks_tls(self) -> str:
        """For a plain-TCP client whose MQTT connection failed: whether the port expects TLS."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection((self.broker.host, self.broker.port), timeout=3) as sock:
                with ctx.wrap_socket(sock):
                    return ("the port speaks TLS and this client does not: set broker.tls (ca_file, and cert_file "
                            "and key_file where the broker wants client certificates) in the configuration")
        except (ssl.SSLError, OSError):
            return "TCP works, the MQTT connection failed (see the broker's log)"

    def _diagnose_tls(self, sock: socket.socket) -> str:
        """The TLS handshake's own error, e.g. the broker's certificate failing verification against our CA."""
        tls = self.broker.tls
        assert tls is not None
        try:
            ctx = ssl.create_default_context(cafile=tls.ca_file)
            if tls.cert_file:
                ctx.load_cert_chain(tls.cert_file, tls.key_file)
            with ctx.wrap_socket(sock, server_hostname=self.broker.host):
                pass
        except ssl.SSLCertVerificationError as exc:
            return (f"TLS verification failed: {exc.verify_message} (check that {tls.ca_file} is the CA that signed "
                    "the broker's certificate, and that the certificate names this host)")
        except (ssl.SSLError, OSError) as exc:
            return f"TLS handshake failed: {exc}"
        return "TCP and TLS work, the MQTT connection failed (see the broker's log)"

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                       props: object) -> None:
        quick = time.monotonic() - self._connected_at < QUICK_DROP_S
        self._quick_drops = self._quick_drops + 1 if quick else 0
        refused, self._refused_now = self._refused_now, False
        if self._closing or refused:
            pass
        elif not self.connected.is_set():
            self._on_connect_fail(client, userdata)  # dropped before any CONNACK: e.g. plain TCP to a TLS port
        elif getattr(reason, "value", None) == SESSION_TAKEN_OVER or self._quick_drops >= 3:
            self.log.error(
                "the broker dropped us %s: most likely another client is using our client id %s (two "
                "processes running with the same id take each other's connection over: stop one of them)",
                "(session taken over)"
                if getattr(reason, "value", None) == SESSION_TAKEN_OVER
                else f"right after connecting, {self._quick_drops} times in a row",
                self.client._client_id.decode(errors="replace"),
            )
        elif self.connected.is_set():
            self.log.warning("lost the broker (%s); reconnecting with backoff", reason)
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: object, props: object) -> None:
        with self._acked:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._early.add(mid)
            self._acked.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.bytes_in += len(msg.payload)
        # A full inbox blocks paho's thread: TCP back-pressure, never a silent drop.
        self.inbox.put(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))
