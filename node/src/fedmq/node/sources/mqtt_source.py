"""``data: kind: mqtt``: learn from the home's live sensor streams.

The source connects to the home's broker (its own ``broker`` block: the federation's Mosquitto or
another one), subscribes to the declared signals, samples them into one row per period
(``fedmq.node.sources.sampler``) kept in a bounded SQLite store on the gateway
(``fedmq.node.sources.store``), and builds the training set from the store when a round needs it
(``fedmq.node.sources.features``). Readings that cannot be used are counted by reason and dropped.
Nothing read here ever leaves the gateway.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import paho.mqtt.client as mqtt

from fedmq.node.sources.features import Feature, Label, assemble, history, latest, read_features
from fedmq.node.sources.sampler import Sampler
from fedmq.node.sources.signals import BadValue, NoValue, Signal, parse_json, payload_text, read_signal
from fedmq.node.sources.store import SampleStore
from fedmq.shared.data import DataError, DataSource
from fedmq.shared.mqtt import new_client
from fedmq.shared.topicmap.loader import read_broker
from fedmq.shared.topicmap.model import BrokerSettings
from fedmq.shared.topicmap.reader import Reader, join_path

DAY_S = 86400.0
TIME_MODES = ("clock", "reading", "arrival")  # where a reading's time comes from (docs/data.md, "Time")
TICK_S = 0.5
REPORT_S = 60.0
SUBSCRIBE_WAIT_S = 10.0


def _timezone(name: str) -> Optional[dt.tzinfo]:
    """None for the gateway's local time, else the named zone (raises ValueError if unknown)."""
    if name == "local":
        return None
    if name.upper() == "UTC":
        return dt.timezone.utc
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, or a malformed key
        raise ValueError(name) from None


class MqttSource(DataSource):
    """Signals from MQTT topics, sampled every ``period_s`` into a store; features and label declared."""

    kind = "mqtt"
    live = True
    keys = ("broker", "signals", "features", "label", "period_s", "max_age_s", "store", "clock_topic", "timezone",
            "client_id", "time")
    required = ("broker", "signals", "features", "label")

    @classmethod
    def read_options(cls, r: Reader, m: Dict[str, Any], path: str, base_dir: str) -> Dict[str, Any]:
        """Validate the mqtt source's keys (see docs/data.md)."""
        broker = read_broker(r, m.get("broker"), join_path(path, "broker"), r.line_of(m, "broker"), base_dir)
        seq = m.get("signals")
        signals: List[Signal] = []
        if not isinstance(seq, list) or not seq:
            r.error(r.line_of(m, "signals"), join_path(path, "signals"), "must be a non-empty list of signals",
                    "e.g. signals: [{name: temp, zigbee2mqtt: living_room, field: temperature}]")
        else:
            for i, item in enumerate(seq):
                sig = read_signal(r, item, f"{join_path(path, 'signals')}[{i}]", r.item_line(seq, i))
                if sig is not None:
                    signals.append(sig)
        names = [s.name for s in signals]
        if len(set(names)) != len(names):
            r.error(r.line_of(m, "signals"), join_path(path, "signals"), "signal names must be unique",
                    "give each signal its own name")
        features = read_features(r, m.get("features"), join_path(path, "features"), r.line_of(m, "features"), names)
        label = _read_label(r, m.get("label"), join_path(path, "label"), r.line_of(m, "label"), names)
        period = r.value(m, "period_s", path, float, 60.0, minimum=1.0, maximum=DAY_S,
                         fix="whole seconds per sample, e.g. period_s: 60 (faster readings combine by aggregate)")
        if period and not float(period).is_integer():
            r.error(r.line_of(m, "period_s"), join_path(path, "period_s"),
                    f"must be a whole number of seconds, not {period:g} (rows are kept per second)",
                    f"e.g. period_s: {max(1, round(period)):g}, with aggregate: mean for signals read faster")
        if label is not None and label.horizon_s and period and not float(label.horizon_s / period).is_integer():
            r.error(r.line_of(m, "label"), join_path(path, "label.horizon_s"),
                    f"must be a whole number of periods ({period:g} s)", f"e.g. horizon_s: {period * 60:g}")
        store = _read_store(r, m.get("store"), join_path(path, "store"), r.line_of(m, "store"), base_dir)
        tz = r.value(m, "timezone", path, str, "local")
        try:
            _timezone(tz)
        except ValueError:
            r.error(r.line_of(m, "timezone"), join_path(path, "timezone"), f"unknown time zone {tz!r}",
                    "local (the gateway's), UTC, or an IANA name such as Europe/Berlin")
        clock = r.value(m, "clock_topic", path, str, "")
        time_mode = r.value(m, "time", path, str, "", choices=TIME_MODES)  # '': the clock if there is one
        if time_mode == "clock" and not clock:
            r.error(r.line_of(m, "time"), join_path(path, "time"), "time: clock needs a clock_topic",
                    "set clock_topic, or time: reading (the readings' own timestamps) or arrival")
        client_id = r.value(m, "client_id", path, str,
                            "fedmq-data-" + hashlib.sha256(store["path"].encode()).hexdigest()[:12])
        return {"broker": broker, "signals": signals, "features": features, "label": label, "period_s": period,
                "max_age_s": r.value(m, "max_age_s", path, float, 5 * (period or 60.0), minimum=0.0,
                                     fix="how long a reading may be repeated into later periods, e.g. 600"),
                "store": store, "clock_topic": clock, "timezone": tz, "client_id": client_id, "time": time_mode}

    def __init__(self, ref: Any) -> None:
        super().__init__(ref)
        o = self.options
        self.broker: BrokerSettings = o["broker"]
        self.signals: List[Signal] = o["signals"]
        self.features: List[Feature] = o["features"]
        self.label: Label = o["label"]
        self.period_s: float = o["period_s"]
        self.tz = _timezone(o["timezone"])
        inputs = {f.signal for f in self.features if f.signal}
        self.inputs = [s.name in inputs for s in self.signals]  # a row needs these; the label alone may be missing
        label = next((s for s in self.signals if s.name == self.label.signal), None)
        self.label_names: Dict[float, str] = label.names() if label is not None else {}
        self.store: Optional[SampleStore] = None
        self.ingest: Optional[Ingest] = None
        self.client: Optional[mqtt.Client] = None
        self.log = logging.getLogger("fedmq.data")
        self._stop = threading.Event()
        self.subscribed = threading.Event()  # the home broker acknowledged our subscriptions
        self._ticker: Optional[threading.Thread] = None
        self.row_listeners: List[Callable[[], None]] = []  # told of every row stored (serving: a prediction each)

    # --- what the node sees ---------------------------------------------------------------------

    @property
    def width(self) -> int:
        """Columns of x."""
        return sum(f.width for f in self.features)

    def feature_names(self) -> List[str]:
        """Every column of x by name."""
        return [n for f in self.features for n in f.names()]

    def describe(self) -> str:
        """Where the samples come from and what the store holds."""
        path = self.options["store"]["path"]
        rows = self._open_store().count() if self.store is not None or os.path.exists(path) else 0
        return (f"{len(self.signals)} signals from {self.broker.host}:{self.broker.port} every {self.period_s:g}s, "
                f"{rows} rows in {path}; {self.width} features: {', '.join(self.feature_names())}; label "
                f"{self.label.signal}" + (f" in {self.label.horizon_s:g}s" if self.label.horizon_s else ""))

    def files(self) -> Dict[str, str]:
        """TLS and password files of the home broker."""
        b, out = self.broker, {}
        if b.tls is not None:
            out.update({"broker.tls.ca_file": b.tls.ca_file, "broker.tls.cert_file": b.tls.cert_file or "",
                        "broker.tls.key_file": b.tls.key_file or ""})
        if b.password_file:
            out["broker.password_file"] = b.password_file
        return {k: v for k, v in out.items() if v}

    def counters(self) -> Dict[str, Any]:
        """Messages seen, rows stored and dropped, readings dropped by reason."""
        return self.ingest.counters() if self.ingest else {"messages": 0}

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """The training set from the rows stored now (none while no store exists: checking creates none)."""
        if self.store is None and not os.path.exists(self.options["store"]["path"]):
            return self.samples(np.zeros(0, np.int64), np.zeros((0, len(self.signals))))
        return self.samples(*self._open_store().rows())

    def samples(self, t: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The samples (x, y) that rows ``(t, v)`` hold."""
        x, y, _ = assemble(self.features, self.label, [s.name for s in self.signals], t, v, self.period_s, self.tz)
        return x, y

    def replay(self, messages: Iterable[Tuple[str, bytes]]) -> Tuple[np.ndarray, np.ndarray]:
        """The samples that recorded ``(topic, payload)`` messages give, sampled exactly as the live stream
        is (in memory, no broker and no store): for baselines and tests."""
        times: List[int] = []
        rows: List[np.ndarray] = []

        def keep(t: int, v: np.ndarray) -> None:
            times.append(t)
            rows.append(v)

        ingest = self._ingest(keep)
        for topic, payload in messages:
            ingest.feed(topic, payload)
        v = np.stack(rows) if rows else np.zeros((0, len(self.signals)))
        return self.samples(np.asarray(times, np.int64), v)

    def now(self) -> Optional[float]:
        """The stream's current time: the clock topic's last value (None before it said anything), else the
        gateway's clock."""
        if not self.options["clock_topic"]:
            return time.time()
        return self.ingest.clock if self.ingest is not None else None

    def current(self) -> Tuple[np.ndarray, int]:
        """The feature vector of the newest stored row and that row's period start (Unix seconds);
        DataError saying what is missing when there is none: silent signals, or too short a history."""
        now = self.now()
        if now is None:
            raise DataError(f"no time yet from the clock topic {self.options['clock_topic']}")
        if self.ingest is not None:
            silent = [self.signals[i].name for i in self.ingest.sampler.silent(now)]
            if silent:
                raise DataError(f"no recent reading of {', '.join(silent)} (within {self.options['max_age_s']:g} s)")
        t, v = self._open_store().tail(history(self.features))
        x = latest(self.features, [s.name for s in self.signals], t, v, self.period_s, self.tz)
        if x is None:
            raise DataError(f"fewer than {history(self.features)} consecutive rows stored yet" if len(t) else
                            "no rows stored yet")
        return x, int(t[-1])

    def rows_stored(self) -> int:
        """Rows in the store now."""
        return self._open_store().count()

    def _ingest(self, on_row: Callable[[int, np.ndarray], None]) -> "Ingest":
        """The reading path, from messages to rows handed to ``on_row``."""
        o = self.options
        return Ingest(self.signals, Sampler(self.signals, self.period_s, o["max_age_s"], on_row, self.inputs),
                      o["clock_topic"], o["time"], self.tz)

    def _open_store(self) -> SampleStore:
        if self.store is None:
            st = self.options["store"]
            self.store = SampleStore(st["path"], [s.name for s in self.signals], self.period_s,
                                     max_age_s=st["max_age_days"] * DAY_S, max_rows=st["max_rows"])
        return self.store

    # --- collecting -----------------------------------------------------------------------------

    def start(self, log: logging.Logger) -> None:
        """Open the store, connect to the home broker and subscribe to every signal."""
        self.log = log
        store = self._open_store()

        def stored(t: int, v: np.ndarray) -> None:
            store.append(t, v)
            for listener in self.row_listeners:
                listener()

        self.ingest = self._ingest(stored)
        b = self.broker
        c = new_client(self.options["client_id"], b, "data.broker", max_delay_s=30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = lambda *_: self.subscribed.set()
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # readings published while we restart wait for us
        c.connect_async(b.host, b.port, keepalive=b.keepalive_s, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        self._ticker = threading.Thread(target=self._tick, name="fedmq-data-tick", daemon=True)
        self._ticker.start()
        log.info("data: %d signals from %s:%d, a row every %gs into %s", len(self.signals), b.host, b.port,
                 self.period_s, store.path)
        if not self.subscribed.wait(SUBSCRIBE_WAIT_S):
            log.warning("data: the home broker %s:%d has not answered within %gs; collecting once it does",
                        b.host, b.port, SUBSCRIBE_WAIT_S)

    def stop(self) -> None:
        """Disconnect and commit what is queued."""
        self._stop.set()
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
        if self._ticker is not None:
            self._ticker.join(2)
        if self.store is not None:
            self.store.close()
            self.store = None

    def _tick(self) -> None:
        last_report = time.monotonic()
        while not self._stop.wait(TICK_S):
            assert self.ingest is not None and self.store is not None
            if not self.options["clock_topic"]:
                self.ingest.sampler.advance(time.time())
            try:
                self.store.flush()
            except Exception as exc:  # a full disk: say so, keep collecting, try again next tick
                self.log.error("data: cannot write the store %s: %s", self.store.path, exc)
            if time.monotonic() - last_report >= REPORT_S:
                last_report = time.monotonic()
                self.log.info("data: %s", self.counters())

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: Any, props: object) -> None:
        if getattr(reason, "is_failure", False):
            self.log.error("data: the home broker %s:%d refused the connection: %s", self.broker.host,
                           self.broker.port, reason)
            return
        topics = {s.topic for s in self.signals} | ({self.options["clock_topic"]} - {""})
        client.subscribe([(topic, 1) for topic in sorted(topics)])
        self.log.info("data: connected to %s:%d, subscribed to %d topics", self.broker.host, self.broker.port,
                      len(topics))

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: Any, props: object) -> None:
        if not self._stop.is_set():
            self.log.warning("data: lost the home broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        assert self.ingest is not None
        try:
            self.ingest.feed(msg.topic, bytes(msg.payload))
        except Exception:  # never let one reading stop the stream
            self.ingest.bad["internal error"] += 1
            self.log.exception("data: error on a reading from %s", msg.topic)


class Ingest:
    """Routes messages to signals, turns payloads into readings at their time, counts what it drops.

    A reading's time is the clock topic's (``time: clock``), its own timestamp where its format carries one
    (``time: reading``: zigbee2mqtt's ``last_seen``, Tasmota's ``Time``; arrival time where a message has
    none), or its arrival (``time: arrival``). Under a clock, readings that come before its first tick (a
    retained label, say) are held and taken at that first tick: none is lost."""

    def __init__(self, signals: List[Signal], sampler: Sampler, clock_topic: str, mode: str = "",
                 tz: Optional[dt.tzinfo] = None) -> None:
        self.sampler = sampler
        self.clock_topic = clock_topic
        self.mode = mode or ("clock" if clock_topic else "arrival")
        self.tz = tz
        self.clock: Optional[float] = None
        self.before_clock: Dict[int, float] = {}  # the latest reading of each signal before the first tick
        self.exact: Dict[str, List[Tuple[int, Signal]]] = {}
        self.wild: List[Tuple[int, Signal]] = []
        for i, s in enumerate(signals):
            if "+" in s.topic or "#" in s.topic:
                self.wild.append((i, s))
            else:
                self.exact.setdefault(s.topic, []).append((i, s))
        self.messages = 0
        self.bad: Counter = Counter()
        self.no_value = 0  # readings saying a signal has no value now (not dropped: they end its value)
        self.arrival_times = 0  # readings timed by arrival under time: reading (their message had no time)

    def counters(self) -> Dict[str, Any]:
        """Messages seen, rows stored, unlabelled and dropped, readings dropped by reason."""
        s = self.sampler
        return {"messages": self.messages, "rows": s.rows, "unlabelled_rows": s.unlabelled_rows,
                "dropped_rows": s.dropped_rows, "dropped": dict(self.bad), "no_value": self.no_value,
                "arrival_times": self.arrival_times}

    def feed(self, topic: str, payload: bytes) -> None:
        """One message from the home's broker."""
        self.messages += 1
        if topic == self.clock_topic:
            self._tick(payload)
            return
        targets = self.exact.get(topic, [])
        if self.wild:
            targets = targets + [(i, s) for i, s in self.wild if mqtt.topic_matches_sub(s.topic, topic)]
        if not targets:
            return
        try:
            text = payload_text(payload)
            timed = self.mode == "reading"
            obj = parse_json(text) if any(s.field or (timed and s.time_field) for _, s in targets) else None
        except BadValue as exc:
            self.bad[exc.reason] += 1
            return
        for i, sig in targets:
            try:
                value = sig.pick(text, obj)
            except NoValue:
                value = math.nan
                self.no_value += 1
            except BadValue as exc:
                self.bad[exc.reason] += 1
                continue
            t = self._time(sig, obj)
            if t is None:  # under a clock that has not ticked yet: taken at its first tick
                self.before_clock[i] = value
            else:
                self.sampler.add(i, value, t)

    def _tick(self, payload: bytes) -> None:
        t = _clock_value(payload)
        if t is None:
            self.bad["bad clock"] += 1
            return
        first = self.clock is None
        self.clock = t
        self.sampler.advance(t)
        if first:
            for i, value in self.before_clock.items():
                self.sampler.add(i, value, t)
            self.before_clock.clear()

    def _time(self, sig: Signal, obj: Any) -> Optional[float]:
        """When a reading was made, by the source's time mode."""
        if self.mode == "clock":
            return self.clock
        if self.mode == "reading" and sig.time_field:
            t = _reading_time(obj, sig.time_field, self.tz)
            if t is not None:
                return t
            self.arrival_times += 1
        return time.time()


def _reading_time(obj: Any, path: str, tz: Optional[dt.tzinfo]) -> Optional[float]:
    """The time a payload carries at ``path``: Unix seconds or milliseconds, or ISO 8601 (local time of the
    source's time zone when it has no offset, as Tasmota sends it)."""
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return _time_value(obj, tz, local=True)


def _time_value(v: Any, tz: Optional[dt.tzinfo], *, local: bool) -> Optional[float]:
    """Unix seconds from a number (seconds, or milliseconds past 1e11: zigbee2mqtt's epoch) or an ISO 8601
    string (one without an offset is in ``tz``, the gateway's zone when ``local`` and ``tz`` is None, else
    UTC); None for anything else, or a time that is not finite and positive."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            try:
                d = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                return None
            if d.tzinfo is None:
                d = d.replace(tzinfo=tz) if tz is not None else d.astimezone() if local else d.replace(
                    tzinfo=dt.timezone.utc)
            v = d.timestamp()
    elif isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    else:
        v = float(v) / (1000.0 if v > 1e11 else 1.0)
    return v if math.isfinite(v) and v > 0 else None


def _clock_value(payload: bytes) -> Optional[float]:
    """A clock message's time: Unix seconds, or an ISO 8601 date-time (UTC unless it has an offset)."""
    try:
        return _time_value(payload.decode("utf-8").strip(), None, local=False)
    except UnicodeDecodeError:
        return None


def _read_label(r: Reader, value: Any, path: str, line: Optional[int], signals: List[str]) -> Optional[Label]:
    m = r.mapping(value, path, line, ("signal", "horizon_s"), ("signal",))
    if m is None:
        return None
    signal = r.value(m, "signal", path, str, "")
    if signal not in signals:
        r.error(r.line_of(m, "signal"), join_path(path, "signal"), f"names no declared signal ({signal!r})",
                f"one of: {', '.join(signals)}")
    horizon = r.value(m, "horizon_s", path, float, 0.0, minimum=0.0, maximum=365 * DAY_S,
                      fix="seconds ahead for a forecast, e.g. horizon_s: 3600 (0: the class now)")
    return Label(signal, horizon)


def _read_store(r: Reader, value: Any, path: str, line: Optional[int], base_dir: str) -> Dict[str, Any]:
    m: Optional[Dict[str, Any]] = r.mapping(value, path, line, ("path", "max_age_days", "max_rows")) \
        if value is not None else {}
    p = r.value(m, "path", path, str, "fedmq-store.sqlite")
    return {"path": os.path.normpath(os.path.join(os.path.abspath(base_dir), p)),
            "max_age_days": r.value(m, "max_age_days", path, float, 30.0, minimum=0.001, maximum=3650.0),
            "max_rows": r.value(m, "max_rows", path, int, 100_000, minimum=10, maximum=100_000_000)}
