"""Load and validate a topic map: every problem is reported with file, line, key path and fix."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from fedmq.shared import data as data_sources
from fedmq.shared.codecs import CODECS, TOPK_INDEX, TOPK_VALUES, Codec
from fedmq.shared.files import unreadable
from fedmq.shared.kinds import CLASSIFIER_KINDS, MODEL_KINDS, NEEDS_HIDDEN, spec_problem
from fedmq.shared.plugins import plugins
from fedmq.shared.topicmap.errors import ConfigIssue
from fedmq.shared.topicmap.model import (
    SCALING_MODES,
    AsyncSettings,
    BrokerSettings,
    Compression,
    DataRef,
    Group,
    Limits,
    ModelSpec,
    Monitoring,
    Privacy,
    RoundPolicy,
    ScalingPolicy,
    SecureAggregation,
    SecuritySettings,
    Strategy,
    TlsSettings,
    TopicMap,
    Transport,
)
from fedmq.shared.topicmap.reader import Reader, join_path, load_file
from fedmq.shared.topicmap.yamlsrc import LineDict, load_yaml
from fedmq.shared.topics import level_problem, prefix_problem

TOP_KEYS = ("federation", "broker", "model", "rounds", "limits", "evaluation", "checkpoint", "security", "compression",
            "transport", "strategy", "scaling", "metrics", "tree")
TOPIC_MAP_CHECKS = "fedmq.topic_map_checks"  # entry points: check(reader, raw section, topic map) -> None
MAX_DEPTH = 32  # levels of groups below the root
LEVEL_FIX = "use letters, digits, '-', '_' or '.'; no '+', '#', '/', and no leading '_' or '$'"


def load_topic_map(file: str, state_dir: Optional[str] = None) -> TopicMap:
    """Read, parse and validate a topic map file; raise ``TopicMapError`` listing every issue. A relative
    ``checkpoint.dir`` is taken relative to ``state_dir`` when given (a service's state directory, e.g.
    systemd's StateDirectory=), else to the topic map's own directory."""
    data, reader = load_file(file)
    return _build(data, reader, state_dir)


def parse_topic_map(text: str, file: str = "<topic map>") -> TopicMap:
    """Validate a topic map given as text (``file`` names it in messages)."""
    return _build(load_yaml(text.encode("utf-8"), file), Reader(file))


def _build(data: Any, r: Reader, state_dir: Optional[str] = None) -> TopicMap:
    top = r.mapping(data, "", 1, TOP_KEYS, required=("federation", "model", "tree"))
    if top is None:
        r.stop()
    federation = r.value(top, "federation", "", str, "", check=level_problem, fix=LEVEL_FIX)
    broker = read_broker(r, top.get("broker"), "broker", r.line_of(top, "broker"), os.path.dirname(r.file))
    model = _model(r, top.get("model"), r.line_of(top, "model"))
    limits = _limits(r, top.get("limits"), r.line_of(top, "limits"))
    evaluation = read_data_ref(r, top.get("evaluation"), "evaluation", r.line_of(top, "evaluation"),
                               os.path.dirname(r.file)) if "evaluation" in top else None
    checkpoint_dir = None
    if "checkpoint" in top:
        ck = r.mapping(top["checkpoint"], "checkpoint", r.line_of(top, "checkpoint"), ("dir",), ("dir",))
        d = r.value(ck, "dir", "checkpoint", str, None)
        if d and state_dir and not os.path.isabs(d):
            checkpoint_dir = os.path.normpath(os.path.join(os.path.abspath(state_dir), d))
        else:
            checkpoint_dir = _relative_to(r.file, d) if d else None
    security = read_security(r, top.get("security"), r.line_of(top, "security"), r.file,
                             ("signatures", "keys", "signing_key", "dir", "broker_pid_file"))
    root = _tree(r, top.get("tree"), federation or "", r.line_of(top, "tree"))
    policy = _policy(r, top.get("rounds"), r.line_of(top, "rounds"), root)
    compression = _compression(r, top.get("compression"), r.line_of(top, "compression"))
    transport = _transport(r, top.get("transport"), r.line_of(top, "transport"), limits)
    strategy = _strategy(r, top.get("strategy"), r.line_of(top, "strategy"), compression.update)
    scaling = _scaling(r, top.get("scaling"), r.line_of(top, "scaling"), strategy)
    monitoring = _monitoring(r, top.get("metrics"), r.line_of(top, "metrics"))
    r.raise_if_any()
    tm = TopicMap(file=r.file, federation=federation, broker=broker, model=model, policy=policy,
                  limits=limits, root=root, evaluation=evaluation, checkpoint_dir=checkpoint_dir,
                  security=security, compression=compression, transport=transport, strategy=strategy,
                  scaling=scaling, monitoring=monitoring)
    for check in plugins(TOPIC_MAP_CHECKS):  # e.g. the coordinator checks the strategy's components
        check.load()(r, top.get("strategy"), tm)
    r.raise_if_any()
    return tm


def address_problem(value: object) -> Optional[str]:
    """Why ``value`` is not a ``host:port`` listening address (port 0 to 65535), or None."""
    if not isinstance(value, str) or ":" not in value:
        return "must be host:port"
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return "must be host:port with a port from 0 to 65535"
    return None


def _monitoring(r: Reader, value: Any, line: Optional[int]) -> Monitoring:
    """``metrics: {address: 127.0.0.1:9464, per_node: false}``."""
    if value is None:
        return Monitoring()
    m = r.mapping(value, "metrics", line, ("address", "per_node"))
    return Monitoring(address=r.value(m, "address", "metrics", str, None, check=address_problem,
                                      fix="where Prometheus scrapes the coordinator, e.g. 127.0.0.1:9464"),
                      per_node=r.value(m, "per_node", "metrics", bool, False))


def _scaling(r: Reader, value: Any, line: Optional[int], strategy: Strategy) -> ScalingPolicy:
    """``scaling: auto | federated | none`` or ``{mode: ..., every_rounds: N}``."""
    if value is None:
        return ScalingPolicy()
    if isinstance(value, str):
        value = {"mode": value}
    m = r.mapping(value, "scaling", line, ("mode", "every_rounds"))
    mode = r.value(m, "mode", "scaling", str, "auto", choices=SCALING_MODES)
    every = r.value(m, "every_rounds", "scaling", int, 0, minimum=0,
                    fix="rounds between two gatherings of the statistics (0: once, before round 1)")
    if mode == "federated" and strategy.mode == "async":
        r.error(line, "scaling", "federated scaling runs before the rounds of a sync federation, not in async mode",
                "set scaling: none, or strategy.mode: sync")
    return ScalingPolicy(mode=mode, every_rounds=every)


def file_issues(tm: TopicMap) -> List[ConfigIssue]:
    """What ``fedmq coordinator run`` will need from the file system, checked now: every file the topic map
    names can be read, and the checkpoint directory is (or can be made) a writable directory."""
    issues: List[ConfigIssue] = []
    b, sec = tm.broker, tm.security
    named = {"broker.password_file": b.password_file, "security.keys": sec.keys,
             "security.signing_key": sec.signing_key,
             "evaluation.path": tm.evaluation.path if tm.evaluation is not None else None}
    if b.tls is not None:
        named.update({"broker.tls.ca_file": b.tls.ca_file, "broker.tls.cert_file": b.tls.cert_file,
                      "broker.tls.key_file": b.tls.key_file})
    for key, path, why in unreadable(named):
        issues.append(ConfigIssue(tm.file, None, key, f"{path}: {why}",
                                  "check the path (relative to the topic map) and its permissions"))
    d = tm.checkpoint_dir
    if d:
        existing = d
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if os.path.exists(d) and not os.path.isdir(d):
            issues.append(ConfigIssue(tm.file, None, "checkpoint.dir", f"{d} is a file, not a directory",
                                      "point checkpoint.dir at a directory"))
        elif not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            issues.append(ConfigIssue(tm.file, None, "checkpoint.dir", f"{existing} is not a writable directory",
                                      "make it writable for the coordinator's user, or choose another directory"))
    return issues


def _relative_to(file: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(file)), path))


def read_security(r: Reader, value: Any, line: Optional[int], file: str, allowed: Tuple[str, ...]) -> SecuritySettings:
    """Read a ``security:`` section (topic maps: signatures, keys, signing_key; node configs: keys, signing_key)."""
    if value is None:
        return SecuritySettings()
    m = r.mapping(value, "security", line, allowed)
    keys = r.value(m, "keys", "security", str, None)
    signing = r.value(m, "signing_key", "security", str, None)
    signatures = r.value(m, "signatures", "security", bool, True) if "signatures" in allowed else bool(keys or signing)
    if signatures and m is not None and not (keys and signing):
        r.error(m.line, "security", "signatures need both 'keys' (public keys) and 'signing_key' (own private key)",
                "point them at keys.json and clients/<id>.sign from 'fedmq broker provision'")
    paths = {k: r.value(m, k, "security", str, None) for k in ("dir", "broker_pid_file") if k in allowed}
    return SecuritySettings(signatures=bool(signatures), keys=_relative_to(file, keys) if keys else None,
                            signing_key=_relative_to(file, signing) if signing else None,
                            **{k: _relative_to(file, v) for k, v in paths.items() if v})


def _beside(base_dir: str, path: Optional[str]) -> Optional[str]:
    """A path from a config file, relative to that file's directory."""
    return os.path.join(base_dir, path) if path and not os.path.isabs(path) else path


def read_broker(r: Reader, value: Any, path: str, line: Optional[int], base_dir: str) -> BrokerSettings:
    """Read a ``broker:`` section (shared by topic maps and node configs)."""
    if value is None:
        return BrokerSettings()
    m = r.mapping(value, path, line,
                  ("host", "port", "keepalive_s", "tls", "username", "password_file", "topic_prefix"))
    tls = None
    if m is not None and "tls" in m:
        t = r.mapping(
            m["tls"], join_path(path, "tls"), r.line_of(m, "tls"), ("ca_file", "cert_file", "key_file"), ("ca_file",)
        )
        tp = join_path(path, "tls")
        tls = TlsSettings(
            ca_file=_beside(base_dir, r.value(t, "ca_file", tp, str, "")) or "",
            cert_file=_beside(base_dir, r.value(t, "cert_file", tp, str, None)),
            key_file=_beside(base_dir, r.value(t, "key_file", tp, str, None)),
        )
    return BrokerSettings(
        host=r.value(m, "host", path, str, "127.0.0.1"),
        port=r.value(m, "port", path, int, 1883, minimum=1, maximum=65535),
        keepalive_s=r.value(m, "keepalive_s", path, int, 30, minimum=5, maximum=65535),
        tls=tls,
        username=r.value(m, "username", path, str, None),
        password_file=_beside(base_dir, r.value(m, "password_file", path, str, None)),
        topic_prefix=r.value(
            m,
            "topic_prefix",
            path,
            str,
            "",
            check=prefix_problem,
            fix="topic levels each followed by '/', e.g. 'tenant-42/' ('' for none)",
        ),
    )


def read_data_ref(r: Reader, value: Any, path: str, line: Optional[int], base_dir: str) -> Optional[DataRef]:
    """Read a data source reference: ``{kind: KIND, ...}``; the kind's own class checks its options."""
    kinds = data_sources.source_kinds()
    if not isinstance(value, dict):
        r.mapping(value, path, line, ())
        return None
    kind = r.value(value, "kind", path, str, "npz", choices=kinds)
    cls = data_sources.source_class(kind) if kind in kinds else None
    if cls is None:
        return None
    m = r.mapping(value, path, line, ("kind", *cls.keys), cls.required)
    if m is None:
        return None
    options = cls.read_options(r, m, path, base_dir)
    return DataRef(kind=kind, path=options.pop("path", ""), options=options)


def _classes(r: Reader, m: Optional[LineDict], kind: str, classes: List[Any]) -> None:
    """A classifier's labels: at least two, integers or strings, each once."""
    if m is not None and len(classes) < 2:
        r.error(
            r.line_of(m, "classes") if "classes" in m else m.line,
            "model.classes",
            f"a {kind} needs at least two class labels",
            "list every label, e.g. classes: [0, 1, 2]",
        )
    for i, c in enumerate(classes):
        if isinstance(c, bool) or not isinstance(c, (int, str)):
            r.error(
                r.item_line(classes, i),
                f"model.classes[{i}]",
                f"labels must be integers or strings, not {c!r}",
                "write each label as an integer or a string",
            )
    if len(set(map(str, classes))) != len(classes):
        r.error(r.line_of(m, "classes"), "model.classes", "duplicate class labels", "list each label once")


def _model(r: Reader, value: Any, line: Optional[int]) -> ModelSpec:
    m = r.mapping(
        value, "model", line, ("kind", "features", "classes", "hidden", "seed", "options"), ("kind", "features")
    )
    kind = r.value(m, "kind", "model", str, "softmax_regression", choices=MODEL_KINDS)
    features = r.value(m, "features", "model", int, 1, minimum=1, maximum=10_000_000)
    classes = r.value(m, "classes", "model", list, [])
    hidden = r.value(m, "hidden", "model", list, [])
    options = r.value(m, "options", "model", dict, {})
    if kind == "tflite":
        problem = spec_problem(kind, classes or [], hidden or [], options or {})
        if problem and m is not None:
            r.error(
                r.line_of(m, "options") if "options" in (problem.split()[0]) else m.line,
                "model",
                problem,
                "see docs/topic-map.md, model kind tflite",
            )
    elif kind in CLASSIFIER_KINDS:
        _classes(r, m, kind, classes)
    elif classes:
        r.error(r.line_of(m, "classes"), "model.classes", f"a {kind} has no classes", "remove model.classes")
    for i, h in enumerate(hidden):
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            r.error(
                r.item_line(hidden, i),
                f"model.hidden[{i}]",
                f"layer size must be a positive integer, not {h!r}",
                "e.g. hidden: [32, 16]",
            )
    if kind in NEEDS_HIDDEN and m is not None and not hidden:
        r.error(m.line, "model.hidden", f"a {kind} needs hidden layer sizes", "add e.g. hidden: [32]")
    if kind not in NEEDS_HIDDEN and kind != "tflite" and hidden:
        r.error(
            r.line_of(m, "hidden"),
            "model.hidden",
            f"a {kind} has no hidden layers",
            "remove model.hidden or use kind: mlp",
        )
    for k, v in (options or {}).items():
        if not isinstance(v, (int, float, str, bool)):
            r.error(
                r.line_of(options, k), f"model.options.{k}", "must be a scalar", "use a number, string or true/false"
            )
    return ModelSpec(
        kind=kind,
        features=features,
        classes=tuple(classes),
        hidden=tuple(h for h in hidden if isinstance(h, int)),
        seed=r.value(m, "seed", "model", int, 0, minimum=0),
        options=dict(options or {}),
    )


def _limits(r: Reader, value: Any, line: Optional[int]) -> Limits:
    if value is None:
        return Limits()
    d = Limits()
    keys = (
        "max_message_bytes",
        "max_samples",
        "max_update_norm",
        "max_messages_per_node_s",
        "message_burst",
        "max_tracked_nodes",
    )
    m = r.mapping(value, "limits", line, keys)
    return Limits(
        max_message_bytes=r.value(
            m, "max_message_bytes", "limits", int, d.max_message_bytes, minimum=1024, maximum=256 * 1024 * 1024
        ),
        max_samples=r.value(m, "max_samples", "limits", int, d.max_samples, minimum=1),
        max_update_norm=r.value(m, "max_update_norm", "limits", float, None, minimum=0.0),
        max_messages_per_node_s=r.value(
            m, "max_messages_per_node_s", "limits", float, d.max_messages_per_node_s, minimum=0.01
        ),
        message_burst=r.value(m, "message_burst", "limits", int, d.message_burst, minimum=1),
        max_tracked_nodes=r.value(m, "max_tracked_nodes", "limits", int, d.max_tracked_nodes, minimum=1),
    )


def _compression(r: Reader, value: Any, line: Optional[int]) -> Compression:
    if value is None:
        return Compression()
    keys = ("update", "delta", "int8_block", "topk_fraction", "topk_index", "topk_values", "error_feedback", "model")
    m = r.mapping(value, "compression", line, keys)
    p = "compression"
    name = r.value(m, "update", p, str, "raw", choices=CODECS)
    lossy = name in ("int8", "topk")
    delta = r.value(m, "delta", p, bool, lossy)
    codec = Codec(
        name=name,
        delta=delta,
        block=r.value(m, "int8_block", p, int, 0, minimum=0, maximum=1 << 20),
        fraction=r.value(m, "topk_fraction", p, float, 0.01, minimum=1e-6, maximum=1.0),
        error_feedback=r.value(m, "error_feedback", p, bool, lossy and delta),
        index=r.value(m, "topk_index", p, str, Codec.index, choices=TOPK_INDEX),
        values=r.value(m, "topk_values", p, str, Codec.values, choices=TOPK_VALUES),
    )
    problem = codec.problem()
    if problem:
        r.error(
            r.line_of(m, "delta") or r.line_of(m, "update") or line,
            "compression",
            problem,
            "set compression.delta: true, or drop error_feedback",
        )
    model = r.value(m, "model", p, str, "raw", choices=("raw", "float16"))
    return Compression(update=codec, model=model)


def _transport(r: Reader, value: Any, line: Optional[int], limits: Limits) -> Transport:
    if value is None:
        return Transport()
    m = r.mapping(value, "transport", line, ("max_payload_bytes", "chunk_timeout_s"))
    return Transport(
        max_payload_bytes=r.value(
            m,
            "max_payload_bytes",
            "transport",
            int,
            None,
            minimum=1024,
            maximum=limits.max_message_bytes,
            fix="use a broker's payload cap such as 131072 (AWS IoT Core), at most limits.max_message_bytes",
        ),
        chunk_timeout_s=r.value(m, "chunk_timeout_s", "transport", float, 60.0, minimum=1.0),
    )


# the section's own keys; any other key is a parameter of the chosen components, which the coordinator's
# check (an entry point in TOPIC_MAP_CHECKS) validates
STRATEGY_KEYS = (
    "aggregator",
    "bucket_size",
    "clip_norm",
    "weight_cap",
    "proximal_mu",
    "server_optimizer",
    "server_lr",
    "privacy",
    "mode",
    "partial_work",
    "async",
    "edge_rounds",
    "secure",
)
MAX_EDGE_ROUNDS = 100


def _strategy(r: Reader, value: Any, line: Optional[int], codec: Codec) -> Strategy:
    if value is None:
        return Strategy()
    m = r.mapping(value, "strategy", line, value.keys() if isinstance(value, dict) else ())
    p, d = "strategy", Strategy()
    privacy = None
    if m is not None and "privacy" in m:
        pm = r.mapping(
            m["privacy"],
            "strategy.privacy",
            r.line_of(m, "privacy"),
            ("mode", "noise_multiplier", "clip_norm", "delta"),
            ("clip_norm",),
        )
        q, dp = "strategy.privacy", Privacy()
        privacy = Privacy(
            mode=r.value(pm, "mode", q, str, dp.mode, choices=("central", "local")),
            noise_multiplier=r.value(pm, "noise_multiplier", q, float, dp.noise_multiplier, minimum=0.0),
            clip_norm=r.value(pm, "clip_norm", q, float, dp.clip_norm, minimum=1e-12),
            delta=r.value(pm, "delta", q, float, dp.delta, minimum=1e-12, maximum=0.5),
        )
    s = Strategy(
        aggregator=r.value(m, "aggregator", p, str, d.aggregator),
        bucket_size=r.value(m, "bucket_size", p, int, d.bucket_size, minimum=1, maximum=1000),
        **_bound(r, m, "clip_norm", privacy is not None, "a positive number (the L2 norm every change is clipped to)"),
        **_bound(r, m, "weight_cap", privacy is not None, "a positive number of samples"),
        proximal_mu=r.value(m, "proximal_mu", p, float, d.proximal_mu, minimum=0.0),
        partial_work=r.value(m, "partial_work", p, bool, d.partial_work),
        server_optimizer=r.value(m, "server_optimizer", p, str, d.server_optimizer),
        server_lr=r.value(m, "server_lr", p, float, d.server_lr, minimum=1e-12),
        params={k: v for k, v in (m or {}).items() if k not in STRATEGY_KEYS},
        privacy=privacy,
        mode=r.value(m, "mode", p, str, d.mode, choices=("sync", "async")),
        asynchronous=_async(r, m),
        edge_rounds=_edge_rounds(r, m),
        secure=_secure(r, m),
    )
    _check_combinations(r, m, s, codec)
    return s


def _bound(r: Reader, m: Optional[dict], key: str, privacy: bool, number: str) -> Dict[str, Any]:
    """``clip_norm`` or ``weight_cap``: ``auto`` (the default, adaptive), ``none`` (off) or a fixed number; as
    the Strategy fields ``<key>`` (the number) and ``<clip|weight>_auto``. Privacy fixes both itself."""
    auto_field = "clip_auto" if key == "clip_norm" else "weight_auto"
    value = r.value(
        m,
        key,
        "strategy",
        (float, str),
        "auto",
        check=lambda v: (
            None if not isinstance(v, str) or v in ("auto", "none") else f"must be auto, none or {number}, not {v!r}"
        ),
        fix=f"write strategy.{key}: auto (the default), none, or {number}",
    )
    if isinstance(value, float) and value <= 0:
        r.error(r.line_of(m, key), f"strategy.{key}", f"must be positive, not {value}", f"use auto, none or {number}")
    fixed = value if isinstance(value, float) and value > 0 else None
    return {key: fixed, auto_field: value == "auto" and not privacy}


def _async(r: Reader, m: Optional[dict]) -> AsyncSettings:
    d, q = AsyncSettings(), "strategy.async"
    if m is None or "async" not in m:
        return d
    am = r.mapping(
        m["async"], q, r.line_of(m, "async"), ("buffer_size", "max_staleness", "staleness_exponent", "flush_s")
    )
    return AsyncSettings(
        buffer_size=r.value(am, "buffer_size", q, int, d.buffer_size, minimum=1),
        max_staleness=r.value(am, "max_staleness", q, int, d.max_staleness, minimum=0),
        staleness_exponent=r.value(am, "staleness_exponent", q, float, d.staleness_exponent, minimum=0.0),
        flush_s=r.value(am, "flush_s", q, float, d.flush_s, minimum=0.0, maximum=3600.0),
    )


def _edge_rounds(r: Reader, m: Optional[dict]) -> Tuple[int, ...]:
    value = r.value(m, "edge_rounds", "strategy", list, [])
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_EDGE_ROUNDS]
    if bad:
        r.error(
            r.line_of(m, "edge_rounds"),
            "strategy.edge_rounds",
            f"entries must be integers from 1 to {MAX_EDGE_ROUNDS}, not {bad[0]!r}",
            "one count per level below the root, e.g. [3] or [2, 2]",
        )
        return ()
    return tuple(value)


def _secure(r: Reader, m: Optional[dict]) -> Optional[SecureAggregation]:
    if m is None or "secure" not in m or m["secure"] is False:
        return None
    d, q = SecureAggregation(), "strategy.secure"
    if m["secure"] is True:
        return d
    sm = r.mapping(m["secure"], q, r.line_of(m, "secure"), ("threshold", "frac_bits", "phase_s"))
    return SecureAggregation(
        threshold=r.value(sm, "threshold", q, float, d.threshold, minimum=0.51, maximum=1.0),
        frac_bits=r.value(sm, "frac_bits", q, int, d.frac_bits, minimum=8, maximum=30),
        phase_s=r.value(sm, "phase_s", q, float, d.phase_s, minimum=0.1, maximum=3600.0),
    )


def _check_combinations(r: Reader, m: Optional[dict], s: Strategy, codec: Codec) -> None:
    """Refuse strategy parts that do not compose, naming the key to change."""
    refused = [
        (
            s.mode == "async" and s.robust,
            "aggregator",
            "a robust rule needs one round's set of updates; async "
            "mode applies a buffer of changes trained from different models",
            "use aggregator: fedavg with mode: async",
        ),
        (
            s.mode == "async" and s.privacy is not None,
            "privacy",
            "the privacy accountant counts sampled rounds, which async mode does not have",
            "use mode: sync with privacy",
        ),
        (
            s.mode == "async" and s.secure is not None,
            "secure",
            "secure aggregation masks one round's cohort; async mode has none",
            "use mode: sync with secure",
        ),
        (
            s.mode == "async" and any(n > 1 for n in s.edge_rounds),
            "edge_rounds",
            "edge schedules are rounds; async mode has none",
            "drop edge_rounds or use mode: sync",
        ),
        (
            s.robust and any(n > 1 for n in s.edge_rounds),
            "edge_rounds",
            "after several edge aggregations a group "
            "sends one edge model, not its nodes' updates, so a robust rule at the root has nothing to screen",
            "use aggregator: fedavg with edge_rounds",
        ),
        (
            s.privacy is not None and any(n > 1 for n in s.edge_rounds),
            "edge_rounds",
            "the privacy accounting assumes one clipped change per node per round",
            "drop edge_rounds with privacy",
        ),
        (
            s.privacy is not None and s.robust,
            "aggregator",
            "differential privacy is accounted for the mean of clipped changes, not for a robust rule",
            "use aggregator: fedavg with privacy",
        ),
        (
            s.privacy is not None and s.clip_norm is not None,
            "clip_norm",
            "privacy.clip_norm already bounds every change",
            "drop strategy.clip_norm",
        ),
        (
            s.privacy is not None and s.weight_cap is not None,
            "weight_cap",
            "with privacy every update weighs 1",
            "drop strategy.weight_cap",
        ),
        (
            s.clip_auto and s.mode == "async",
            "clip_norm",
            "the adaptive bound tracks the change norms of whole rounds, which async mode does not have",
            "set strategy.clip_norm to a number (or none, unbounded)",
        ),
        (
            s.clip_auto and any(n > 1 for n in s.edge_rounds),
            "clip_norm",
            "the adaptive bound is calibrated on the "
            "nodes' own updates in the first round, and edge rounds send edge models instead",
            "set strategy.clip_norm to a number (or none, unbounded)",
        ),
        (
            s.clip_auto and s.secure is not None,
            "clip_norm",
            "secure aggregation hides every update's norm, so an adaptive bound has nothing to track",
            "set strategy.clip_norm to a number: nodes clip to it and every group checks its unmasked sum against it",
        ),
        (
            s.secure is not None and codec.name != "raw",
            "secure",
            "secure aggregation encodes updates in its own "
            f"finite field; the update codec {codec.name!r} cannot be masked",
            "use compression.update: raw with secure",
        ),
        (
            s.secure is not None and s.robust,
            "secure",
            "a robust rule needs every update in the clear; secure aggregation reveals only sums",
            "use aggregator: fedavg with secure",
        ),
    ]
    for failed, key, why, fix in refused:
        if failed:
            r.error(r.line_of(m, key), f"strategy.{key}", why, fix)


POLICY_KEYS = (
    "rounds",
    "fraction",
    "min_nodes",
    "max_nodes",
    "deadline_s",
    "quorum",
    "on_quorum_failure",
    "max_retries",
    "local_epochs",
    "batch_size",
    "learning_rate",
    "hop_margin_s",
    "wait_for_nodes_s",
    "seed",
)


def _policy(r: Reader, value: Any, line: Optional[int], root: Group) -> RoundPolicy:
    d = RoundPolicy()
    m = r.mapping(value, "rounds", line, POLICY_KEYS) if value is not None else None
    p = "rounds"
    quorum = r.value(m, "quorum", p, (int, float), d.quorum, minimum=0)
    if isinstance(quorum, float) and not 0 < quorum <= 1:
        r.error(
            r.line_of(m, "quorum"),
            "rounds.quorum",
            f"a fractional quorum must be in (0, 1], not {quorum}",
            "use a fraction of the selected nodes such as 0.8, or a node count such as 4",
        )
    if isinstance(quorum, int) and quorum < 1:
        r.error(r.line_of(m, "quorum"), "rounds.quorum", "a quorum count must be at least 1", "use 1 or more")
    policy = RoundPolicy(
        rounds=r.value(m, "rounds", p, int, d.rounds, minimum=1),
        fraction=r.value(m, "fraction", p, float, d.fraction, minimum=0.0, maximum=1.0),
        min_nodes=r.value(m, "min_nodes", p, int, d.min_nodes, minimum=1),
        max_nodes=r.value(m, "max_nodes", p, int, None, minimum=1),
        deadline_s=r.value(m, "deadline_s", p, float, d.deadline_s, minimum=0.5),
        quorum=quorum,
        on_quorum_failure=r.value(m, "on_quorum_failure", p, str, d.on_quorum_failure, choices=("retry", "stop")),
        max_retries=r.value(m, "max_retries", p, int, d.max_retries, minimum=0),
        local_epochs=r.value(m, "local_epochs", p, int, d.local_epochs, minimum=1),
        batch_size=r.value(m, "batch_size", p, int, d.batch_size, minimum=1),
        learning_rate=r.value(m, "learning_rate", p, float, d.learning_rate, minimum=0.0),
        hop_margin_s=r.value(m, "hop_margin_s", p, float, d.hop_margin_s, minimum=0.0),
        wait_for_nodes_s=r.value(m, "wait_for_nodes_s", p, float, d.wait_for_nodes_s, minimum=0.0),
        seed=r.value(m, "seed", p, int, d.seed, minimum=0),
    )
    if m is not None and policy.fraction == 0:
        r.error(r.line_of(m, "fraction"), "rounds.fraction", "a fraction of 0 selects nobody", "use a value in (0, 1]")
    _check_policy_fits(r, m, policy, root)
    return policy


def _check_policy_fits(r: Reader, m: Optional[dict], policy: RoundPolicy, root: Group) -> None:
    """Policies that can never be satisfied by the nodes the tree names."""
    if m is None:
        m = {}
    if policy.max_nodes is not None and policy.max_nodes < policy.min_nodes:
        r.error(
            r.line_of(m, "max_nodes"),
            "rounds.max_nodes",
            f"max_nodes ({policy.max_nodes}) is below min_nodes ({policy.min_nodes})",
            "raise max_nodes or lower min_nodes",
        )
    if isinstance(policy.quorum, int):
        cap = policy.max_nodes
        if cap is not None and policy.quorum > cap:
            r.error(
                r.line_of(m, "quorum"),
                "rounds.quorum",
                f"quorum {policy.quorum} is above max_nodes {cap}: no round could ever close",
                f"use a quorum of at most {cap}, or a fraction such as 0.8",
            )
    edge_margin = policy.hop_margin_s * max((len(g.path) for g in root.walk()), default=0)
    if edge_margin >= policy.deadline_s:
        r.error(
            r.line_of(m, "deadline_s"),
            "rounds.deadline_s",
            f"deadline {policy.deadline_s}s leaves no time for {edge_margin}s of hop margins in a tree this deep",
            "raise deadline_s or lower hop_margin_s",
        )
    if root.has_patterns:
        return  # the tree admits nodes by pattern: its size is not known before they arrive
    total = len(root.named_nodes())
    if policy.min_nodes > total:
        r.error(
            r.line_of(m, "min_nodes"),
            "rounds.min_nodes",
            f"min_nodes {policy.min_nodes} is above the {total} nodes the tree names",
            f"use at most {total}, or add nodes",
        )
    if isinstance(policy.quorum, int) and policy.quorum > total:
        r.error(
            r.line_of(m, "quorum"),
            "rounds.quorum",
            f"quorum {policy.quorum} is above the {total} nodes the tree names: no round could ever close",
            f"use a quorum of at most {total}, or a fraction such as 0.8",
        )


GROUP_KEYS = ("nodes", "admit", "edge", "groups", "broker", "workers")


def _tree(r: Reader, value: Any, federation: str, line: Optional[int]) -> Group:
    seen_nodes: Dict[str, str] = {}
    return _group(r, value, federation, (), "tree", line, seen_nodes)


def _named_nodes(r: Reader, m: Optional[LineDict], key_path: str, where: str, seen_nodes: Dict[str, str]
                 ) -> List[str]:
    """A group's ``nodes``: valid ids, each named once in the whole tree (``seen_nodes``: id -> group)."""
    nodes: List[str] = []
    for i, n in enumerate(r.value(m, "nodes", key_path, list, [])):
        nline = r.item_line(m["nodes"] if m is not None else None, i)
        problem = level_problem(n) if not isinstance(n, (int, float)) or isinstance(n, bool) else None
        if isinstance(n, (int, float)) and not isinstance(n, bool):
            n = str(n)
        if problem:
            r.error(nline, f"{key_path}.nodes[{i}]", f"node id {n!r} {problem}", LEVEL_FIX)
            continue
        if n in seen_nodes:
            r.error(
                nline,
                f"{key_path}.nodes[{i}]",
                f"node {n!r} is already named in group {seen_nodes[n]}",
                "give every node a unique id across the whole federation",
            )
            continue
        seen_nodes[n] = where
        nodes.append(n)
    return nodes


def _group(
    r: Reader,
    value: Any,
    name: str,
    path: Tuple[str, ...],
    key_path: str,
    line: Optional[int],
    seen_nodes: Dict[str, str],
) -> Group:
    if value is None:
        value = {}
    m = r.mapping(value, key_path, line, GROUP_KEYS)
    nodes = _named_nodes(r, m, key_path, "/".join(path) or "(root)", seen_nodes)
    admit = r.string_list(
        m,
        "admit",
        key_path,
        check=_pattern_problem,
        fix="a glob such as 'kitchen-*' made of allowed id characters, '*', '?' and '[...]'",
    )
    edge = r.value(m, "edge", key_path, bool, False)
    if edge and not path:
        r.error(
            r.line_of(m, "edge"),
            f"{key_path}.edge",
            "the root group cannot be an edge group",
            "set edge: true on a child group instead",
        )
    site_broker = None
    if m is not None and "broker" in m:
        site_broker = read_broker(r, m["broker"], f"{key_path}.broker", r.line_of(m, "broker"), os.path.dirname(r.file))
        if not edge:
            r.error(
                r.line_of(m, "broker"),
                f"{key_path}.broker",
                "a group with its own (site) broker needs edge: true",
                "add edge: true: the site's edge aggregator runs next to the site broker",
            )
    children: List[Group] = []
    groups = r.value(m, "groups", key_path, dict, {})
    for child_name, child_value in (groups or {}).items():
        cline = r.line_of(groups, child_name)
        cpath = f"{key_path}.groups.{child_name}"
        problem = level_problem(child_name)
        if problem:
            r.error(cline, cpath, f"group name {child_name!r} {problem}", LEVEL_FIX)
            continue
        if len(path) + 1 > MAX_DEPTH:
            r.error(
                cline,
                cpath,
                f"the tree is more than {MAX_DEPTH} groups deep",
                "flatten the tree: homes, buildings and regions need a handful of levels",
            )
            continue
        children.append(_group(r, child_value, child_name, path + (child_name,), cpath, cline, seen_nodes))
    workers = r.value(m, "workers", key_path, int, 1, minimum=1, maximum=64)
    if workers > 1 and (not edge or children):
        r.error(
            r.line_of(m, "workers"),
            f"{key_path}.workers",
            "a group split over several workers must be an edge group without child groups",
            "set edge: true and move the child groups elsewhere, or use workers: 1",
        )
    return Group(
        name=name,
        path=path,
        nodes=tuple(nodes),
        admit=tuple(admit),
        edge=bool(edge),
        children=tuple(children),
        line=line,
        broker=site_broker,
        workers=workers,
    )


def _pattern_problem(p: Any) -> Optional[str]:
    if not isinstance(p, str) or not p:
        return "must be a non-empty string"
    bare = p.replace("*", "x").replace("?", "x").replace("[", "x").replace("]", "x").replace("!", "x")
    return level_problem(bare)
